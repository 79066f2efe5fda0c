"""Batch views + manifest: machine_state, machine_history and fleet_summary, published
atomically.

machine_state holds per machine the latest cycle and event time, the latest readings,
the health features of the latest gold row, and the RUL the registry's champion predicts
for the machine's latest window (built and scored with the code the speed layer uses,
prognos.core.scoring), with its alert level. Without a champion the views are published
with null predictions (alert level "unknown") and a warning. The manifest names exactly
what the views cover: per Kafka partition the next offset after the last bronze record
handled (kept in silver or quarantined), the max event time, the Delta versions of the
input tables, the model version used and the run id.

machine_history is silver's readings laid out for the serving layer's history query: rows
sorted by machine and event time, cut into files by machine range, so that delta-rs reads
one machine's time range from a file or two (file statistics, then row groups) and the
serving process never holds the master dataset (bench/history_read.py measures it).
"""

from __future__ import annotations

import contextlib
import json
import logging

from prognos.core import lake, logs
from prognos.core.alerting import ALERT_LEVELS, alert_level
from prognos.core.features import HEALTH
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import get_table, is_delta_table, table_path

log = logging.getLogger("prognos.views")

READINGS = [f"setting_{i}" for i in range(1, 4)] + [f"sensor_{i}" for i in range(1, 22)]
RUL_QUANTILES = {"rul_p10": 0.1, "rul_p50": 0.5, "rul_p90": 0.9}
# machine_history's layout: files of this many rows (one machine range each), row groups
# of this many rows (the unit a history read decodes); see bench/history_read.py
HISTORY_ROWS_PER_FILE = 250_000
HISTORY_ROW_GROUP_ROWS = 10_000
PARQUET_BLOCK_SIZE_CONF = "parquet.block.size"


def latest_rows(frame, rows: int = 1):
    """The last `rows` cycles of each machine."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest_first = Window.partitionBy("machine_id").orderBy(F.col("cycle").desc())
    ranked = frame.withColumn("_rank", F.row_number().over(newest_first))
    return ranked.where(F.col("_rank") <= rows).drop("_rank")


def _as_map(columns):
    from pyspark.sql import functions as F

    pairs = [part for name in columns for part in (F.lit(name), F.col(name).cast("double"))]
    return F.create_map(*pairs)


def health_features(gold):
    """Per machine, the latest gold row's health index and its rolling features."""
    from pyspark.sql import functions as F

    names = [c for c in gold.columns if c.startswith(f"{HEALTH}_")]
    return gold.groupBy("machine_id").agg(
        F.max_by(HEALTH, "cycle").alias("health_index"),
        F.max_by(_as_map(names), "cycle").alias("features"),
    )


def machine_state(spark, silver, gold, predictions: dict, run_id: str, model_version, settings):
    """One row per machine: latest cycle and readings, health, prediction, alert level."""
    from pyspark.sql import functions as F

    spec = get_table("machine_state")
    state = silver.groupBy("machine_id").agg(
        F.max("cycle").alias("last_cycle"),
        F.max("event_time").alias("last_event_time"),
        F.count("*").alias("readings_count"),
        F.max_by(_as_map(READINGS), "cycle").alias("sensors"),  # (machine_id, cycle) is a key
    )
    if gold is not None:
        state = state.join(health_features(gold), "machine_id", "left")
    scored = spark.createDataFrame(
        [(m, rul, alert_level(rul, settings)) for m, rul in predictions.items()],
        "machine_id string, predicted_rul double, alert_level string",
    )
    state = state.join(scored, "machine_id", "left")
    return state.select(
        "machine_id",
        "last_cycle",
        "last_event_time",
        "readings_count",
        F.col("predicted_rul"),
        F.lit(model_version).cast("string").alias("model_version"),
        F.lit(run_id).alias("run_id"),
        F.coalesce("alert_level", F.lit("unknown")).alias("alert_level"),
        _column_or_null(state, "health_index", "double"),
        "sensors",
        _column_or_null(state, "features", "map<string,double>"),
    ).select(*spec.column_names)


def machine_history(silver, rows: int):
    """silver's readings, range-partitioned by machine into files of about
    HISTORY_ROWS_PER_FILE rows, each sorted by machine and event time."""
    files = max(1, -(-rows // HISTORY_ROWS_PER_FILE))
    return (
        silver.select(*get_table("machine_history").column_names)
        .repartitionByRange(files, "machine_id", "event_time")
        .sortWithinPartitions("machine_id", "event_time")
    )


def history_block_size(rows: int) -> int:
    """Parquet block size (bytes) giving row groups of about HISTORY_ROW_GROUP_ROWS rows
    (Spark's Parquet writer cuts row groups by bytes, not rows)."""
    row_bytes = 8 * len(get_table("machine_history").columns) + 16  # plain encoded, a bound
    return max(1 << 20, HISTORY_ROW_GROUP_ROWS * row_bytes)


def _column_or_null(frame, name: str, type_name: str):
    from pyspark.sql import functions as F

    return F.col(name) if name in frame.columns else F.lit(None).cast(type_name).alias(name)


def fleet_summary(spark, state, run_id: str, computed_at, settings: Settings):
    """One row: machines and readings, machines per alert level, RUL distribution."""
    from pyspark.sql import functions as F

    spec = get_table("fleet_summary")
    per_level = [
        F.sum(F.when(F.col("alert_level") == level, 1).otherwise(0)).cast("long").alias(level)
        for level in ALERT_LEVELS
    ]
    quantiles = [
        F.percentile("predicted_rul", F.lit(q)).alias(name) for name, q in RUL_QUANTILES.items()
    ]
    row = state.agg(
        F.count("*").alias("machines"),
        F.coalesce(F.sum("readings_count"), F.lit(0)).alias("readings"),
        F.sum(F.when(F.col("predicted_rul") <= settings.alert_amber_rul, 1).otherwise(0)).alias(
            "at_risk"
        ),
        F.min("predicted_rul").alias("min_predicted_rul"),
        F.avg("predicted_rul").alias("mean_predicted_rul"),
        F.max("predicted_rul").alias("max_predicted_rul"),
        F.max("last_event_time").alias("max_event_time"),
        *per_level,
        *quantiles,
    )
    by_level = F.create_map(
        *[part for level in ALERT_LEVELS for part in (F.lit(level), F.coalesce(level, F.lit(0)))]
    )
    return row.select(
        F.lit(run_id).alias("run_id"),
        "machines",
        F.col("readings").cast("long").alias("readings"),
        F.coalesce(F.col("at_risk"), F.lit(0)).cast("long").alias("at_risk"),
        "min_predicted_rul",
        "mean_predicted_rul",
        "max_event_time",
        F.lit(computed_at).cast("timestamp").alias("computed_at"),
        by_level.alias("machines_by_level"),
        *RUL_QUANTILES,
        "max_predicted_rul",
    ).select(*spec.column_names)


def covered_offsets(spark, settings: Settings, versions: dict) -> dict[int, int]:
    """Next offset per Kafka partition after every record silver or quarantine holds."""
    from pyspark.sql import functions as F

    frames = [
        lake.read_table(spark, name, settings, version=versions[name]).select(
            "kafka_partition", "kafka_offset"
        )
        for name in ("silver", "quarantine")
        if versions.get(name) is not None
    ]
    if not frames:
        return dict.fromkeys(range(settings.topic_readings_partitions), 0)
    union = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    rows = union.groupBy("kafka_partition").agg(F.max("kafka_offset").alias("last")).collect()
    offsets = dict.fromkeys(range(settings.topic_readings_partitions), 0)  # none read yet
    offsets.update({int(row["kafka_partition"]): int(row["last"]) + 1 for row in rows})
    return offsets


def load_champion(settings: Settings):
    """The registry's champion of the serving model (loaded), or None with a warning."""
    from prognos.core.scoring import champion_watcher

    champion = champion_watcher(settings).current()
    if champion is None:
        log.warning(
            "no champion of model %r in the registry %s: machine_state is published with "
            "null predicted_rul and alert level 'unknown'",
            settings.serving_model,
            settings.registry,
        )
    return champion


def predict(silver, champion) -> dict[str, float]:
    """Predicted RUL per machine: the champion scores each machine's latest window."""
    if champion is None:
        return {}
    from prognos.core.scoring import score_latest_windows, scoring_input_columns

    columns = ["machine_id", "cycle", *scoring_input_columns(champion.spec)]
    recent = latest_rows(silver.select(*columns), champion.spec.history_needed)
    return score_latest_windows(champion, recent.toPandas())


def build(
    spark, settings: Settings, run_id: str, logical_date, airflow_run_id: str | None = None
) -> dict:
    """Build and publish the views; run_id names the interval (the same on a rerun)."""
    versions = _input_versions(spark, settings)
    if versions.get("silver") is None:
        return {"published": False, "reason": "silver is empty"}
    silver = lake.read_table(spark, "silver", settings, version=versions["silver"])
    gold = None
    if versions.get("gold_features") is not None:
        gold = lake.read_table(spark, "gold_features", settings, version=versions["gold_features"])
    champion = load_champion(settings)
    model_version = champion.version if champion else None
    predictions = predict(silver, champion)
    state = machine_state(spark, silver, gold, predictions, run_id, model_version, settings)
    state = state.persist()
    summary = fleet_summary(spark, state, run_id, logical_date, settings)
    max_event_time = summary.collect()[0]["max_event_time"]
    details = {
        "input_versions": versions,
        "model_version": model_version,
        "model": settings.serving_model,
        "machines_scored": len(predictions),
        "logical_date": str(logical_date),
        "airflow_run_id": airflow_run_id,
    }
    rows = silver.count()
    manifest = {
        "run_id": run_id,
        "partition_offsets": covered_offsets(spark, settings, versions),
        "max_event_time": max_event_time,
        "rows_covered": rows,
        "details": json.dumps(details, sort_keys=True),
    }
    published = {
        "machine_state": state,
        "machine_history": machine_history(silver, rows),
        "fleet_summary": summary,
    }
    with session_conf(spark, PARQUET_BLOCK_SIZE_CONF, str(history_block_size(rows))):
        row = lake.publish(spark, settings, published, manifest)
    state.unpersist()
    outputs = {**row["table_versions"], **logs.versions(settings, "batch_manifest")}
    logs.lineage("views", airflow_run_id or run_id, versions, outputs, settings, interval=run_id)
    return {"published": True, "model_version": model_version, "manifest": row}


@contextlib.contextmanager
def session_conf(spark, key: str, value: str):
    """A session conf for the duration of a block (Spark copies session confs into the
    Hadoop conf of each write: so the Parquet writer's block size is set here)."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def _input_versions(spark, settings: Settings) -> dict:
    versions = {}
    for name in ("bronze", "silver", "quarantine", "gold_features"):
        present = is_delta_table(table_path(name, settings))
        versions[name] = lake.latest_version(spark, name, settings) if present else None
    return versions


def main(argv=None) -> None:
    from spark_jobs import common

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = common.job_parser(__doc__.splitlines()[0]).parse_args(argv)
    settings = get_settings()
    with common.lake_job("views", args, settings):
        spark = common.session("views", settings)
        interval = common.interval_id_of(args)
        logical_date, run_id = common.logical_date_of(args), common.run_id_of(args)
        built = build(spark, settings, interval, logical_date, run_id)
        common.report({"run_id": run_id, **built})


if __name__ == "__main__":
    main()

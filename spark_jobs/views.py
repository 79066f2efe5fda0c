"""Batch views + manifest: machine_state and fleet_summary, published atomically.

The manifest names exactly what the views cover: per Kafka partition the next offset
after the last bronze record handled (kept in silver or quarantined), the max event time,
the Delta versions of the input tables, the model version used and the run id.
Batch scoring is not wired yet: predicted RUL and model version are null (the registry's
champion, if any, is recorded in the manifest details).
"""

from __future__ import annotations

import json

from prognos.core import lake
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import get_table, is_delta_table, table_path


def machine_state(silver, run_id: str, model_version: str | None):
    """One row per machine: latest cycle, its event time, readings count, prediction."""
    from pyspark.sql import functions as F

    spec = get_table("machine_state")
    latest = silver.groupBy("machine_id").agg(
        F.max("cycle").alias("last_cycle"),
        F.max("event_time").alias("last_event_time"),
        F.count("*").alias("readings_count"),
    )
    return latest.select(
        "machine_id",
        "last_cycle",
        "last_event_time",
        "readings_count",
        F.lit(None).cast("double").alias("predicted_rul"),
        F.lit(model_version).cast("string").alias("model_version"),
        F.lit(run_id).alias("run_id"),
    ).select(*spec.column_names)


def fleet_summary(spark, state, run_id: str, computed_at, settings: Settings):
    from pyspark.sql import functions as F

    spec = get_table("fleet_summary")
    row = state.agg(
        F.count("*").alias("machines"),
        F.coalesce(F.sum("readings_count"), F.lit(0)).alias("readings"),
        F.sum(F.when(F.col("predicted_rul") <= settings.alert_amber_rul, 1).otherwise(0)).alias(
            "at_risk"
        ),
        F.min("predicted_rul").alias("min_predicted_rul"),
        F.avg("predicted_rul").alias("mean_predicted_rul"),
        F.max("last_event_time").alias("max_event_time"),
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


def champion_version(settings: Settings) -> str | None:
    """The registry's champion of the serving model, or None."""
    try:
        from prognos.core.registry import FilesystemRegistry

        registry = FilesystemRegistry(settings.registry)
        return str(registry.champion(settings.serving_model))
    except Exception:  # no registry, no model, no champion: views carry no prediction
        return None


def build(
    spark, settings: Settings, run_id: str, logical_date, airflow_run_id: str | None = None
) -> dict:
    """Build and publish the views; run_id names the interval (the same on a rerun)."""
    versions = _input_versions(spark, settings)
    if versions.get("silver") is None:
        return {"published": False, "reason": "silver is empty"}
    silver = lake.read_table(spark, "silver", settings, version=versions["silver"])
    # Batch scoring with the champion is not wired yet: views carry no prediction and
    # name no model; the champion found (if any) is recorded for lineage.
    model_version = None
    state = machine_state(silver, run_id, model_version).persist()
    summary = fleet_summary(spark, state, run_id, logical_date, settings)
    max_event_time = summary.collect()[0]["max_event_time"]
    details = {
        "input_versions": versions,
        "model_version": model_version,
        "registry_champion": champion_version(settings),
        "logical_date": str(logical_date),
        "airflow_run_id": airflow_run_id,
    }
    manifest = {
        "run_id": run_id,
        "partition_offsets": covered_offsets(spark, settings, versions),
        "max_event_time": max_event_time,
        "rows_covered": silver.count(),
        "details": json.dumps(details, sort_keys=True),
    }
    row = lake.publish(
        spark, settings, {"machine_state": state, "fleet_summary": summary}, manifest
    )
    state.unpersist()
    return {"published": True, "manifest": row}


def _input_versions(spark, settings: Settings) -> dict:
    versions = {}
    for name in ("bronze", "silver", "quarantine", "gold_features"):
        present = is_delta_table(table_path(name, settings))
        versions[name] = lake.latest_version(spark, name, settings) if present else None
    return versions


def main(argv=None) -> None:
    from spark_jobs import common

    args = common.job_parser(__doc__.splitlines()[0]).parse_args(argv)
    settings = get_settings()
    spark = common.session("views", settings)
    interval = common.interval_id_of(args)
    built = build(spark, settings, interval, common.logical_date_of(args), common.run_id_of(args))
    common.report({"run_id": common.run_id_of(args), **built})


if __name__ == "__main__":
    main()

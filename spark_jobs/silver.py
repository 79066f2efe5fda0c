"""Silver: bronze rows new since the last run -> validated, deduplicated silver.

Progress is an availableNow stream over bronze with its own checkpoint, each micro-batch
handled by `process_batch`: Great Expectations (prognos.core.quality, the suite generated
from the fleet's event contract, the rules the speed layer applies) on pandas per
partition; rows failing any rule, and duplicates of a (machine_id, cycle) already kept,
go to quarantine with every reason and their Kafka coordinates; the rest is MERGEd
(insert-only) into silver. Every write carries txnAppId/txnVersion, so a replayed batch
changes nothing. The gate: a batch whose failure share (duplicates excluded) exceeds
the threshold fails the job after its quarantine rows and validation results are written.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from prognos.core import lake, logs
from prognos.core.errors import PrognosError
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import get_table, table_path

QUERY_NAME = "silver"
DUPLICATE = "duplicate:machine_id,cycle"
PAYLOAD_FIELDS = ("machine_id", "cycle", "event_time", "source", "schema_version")


class GateFailedError(PrognosError):
    """Too large a share of a batch failed validation."""


def validated_schema():
    """Bronze coordinates + the silver columns (typed) + the failed rules of each row."""
    from pyspark.sql.types import ArrayType, StringType, StructField, StructType

    bronze = get_table("bronze").spark_schema
    silver = get_table("silver").spark_schema
    keep = ["key", "value", "topic", "partition", "offset", "ingest_time"]
    fields = [bronze[name] for name in keep]
    fields += [silver[f.name] for f in silver.fields if f.name not in ("ingest_time",)]
    fields.append(StructField("reasons", ArrayType(StringType())))
    return StructType(fields)


def validate_partitions(now_epoch: float, contract, tolerance_s: float):
    """A mapInPandas function: validate each bronze row with the GE suite of the
    fleet's event contract (prognos.domain.events)."""

    def validate(batches):
        from prognos.core import quality

        rules = quality.build_rules(None, now_epoch, tolerance_s, contract)
        for bronze in batches:
            yield _validated_frame(bronze, quality, rules, contract)

    return validate


def _validated_frame(bronze, quality, rules, contract):
    import pandas as pd

    flat = quality.flatten_payloads(bronze["value"], contract)
    outcome = quality.validate_events(flat, rules)
    out = bronze[["key", "value", "topic", "partition", "offset", "ingest_time"]].reset_index(
        drop=True
    )
    valid = pd.Series([not reasons for reasons in outcome.failed_rules])
    out["machine_id"] = flat["machine_id"].where(valid, None).astype(object)
    out["cycle"] = pd.array(flat["cycle__num"].where(valid), dtype="Int32")
    micros = (flat[quality.EVENT_EPOCH].where(valid) * 1e6).round()  # Spark keeps microseconds
    out["event_time"] = pd.to_datetime(micros, unit="us", utc=True)
    for name in contract.reading_names:
        out[name] = flat[f"{name}__num"].where(valid)
    out["source"] = flat["source"].where(valid, None).astype(object)
    out["schema_version"] = pd.array(flat["schema_version__num"].where(valid), dtype="Int32")
    out["kafka_partition"] = out["partition"].astype("int32")
    out["kafka_offset"] = out["offset"].astype("int64")
    out["reasons"] = outcome.failed_rules
    return out


def process_batch(
    batch_df,
    batch_id: int,
    *,
    settings: Settings,
    run_id: str,
    app_id: str,
    contract,
    rule_names: list[str],
    now_epoch: float,
) -> dict:
    """Validate, quarantine, gate and merge one micro-batch of bronze rows."""
    from pyspark.sql import functions as F

    spark = batch_df.sparkSession
    checked = batch_df.mapInPandas(
        validate_partitions(now_epoch, contract, settings.batch_future_tolerance_s),
        validated_schema(),
    ).persist()
    # one join with silver serves the counts, the quarantine, the results and the merge
    ranked = _rank_against_silver(spark, checked, settings).persist()
    try:
        valid, duplicates = _split_duplicates(ranked, checked.columns)
        invalid = checked.where(F.size("reasons") > 0)
        counts = {
            "rows": checked.count(),
            "invalid": invalid.count(),
            "duplicates": duplicates.count(),
        }
        quarantine = _quarantine_rows(invalid.unionByName(duplicates), run_id)
        lake.idempotent_append(quarantine, batch_id, "quarantine", settings, f"{app_id}-q")
        results = _validation_results(spark, checked, duplicates, rule_names, run_id, counts)
        lake.idempotent_append(results, batch_id, "validation_results", settings, f"{app_id}-r")
        _gate(counts, settings.batch_max_failure_share, batch_id)
        silver_rows = valid.select(*get_table("silver").column_names)
        lake.idempotent_merge(
            silver_rows, batch_id, "silver", settings, f"{app_id}-s", update=False
        )
        return counts
    finally:
        ranked.unpersist()
        checked.unpersist()


def _rank_against_silver(spark, checked, settings: Settings):
    """Valid rows with their rank among the batch's copies of their (machine, cycle) and
    the Kafka coordinates of the silver row holding that key (null when none); the same
    Kafka record already in silver (a replayed batch) is dropped."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ok = checked.where(F.size("reasons") == 0)
    order = Window.partitionBy("machine_id", "cycle").orderBy("partition", "offset")
    ranked = ok.withColumn("_rank", F.row_number().over(order))
    silver_path = table_path("silver", settings)
    if lake.is_delta_table(silver_path):
        existing = lake.read_table(spark, "silver", settings).select(
            "machine_id",
            "cycle",
            F.col("kafka_partition").alias("_p"),
            F.col("kafka_offset").alias("_o"),
        )
        ranked = ranked.join(existing, ["machine_id", "cycle"], "left")
    else:
        ranked = ranked.withColumn("_p", F.lit(None).cast("int")).withColumn(
            "_o", F.lit(None).cast("long")
        )
    same_record = (F.col("_p") == F.col("kafka_partition")) & (F.col("_o") == F.col("kafka_offset"))
    return ranked.where(~same_record | F.col("_p").isNull())


def _split_duplicates(ranked, columns: list[str]):
    """(first occurrence of each new key, later copies): a key already in silver from
    another Kafka record is a duplicate."""
    from pyspark.sql import functions as F

    is_duplicate = (F.col("_rank") > 1) | F.col("_p").isNotNull()
    valid = ranked.where(~is_duplicate).select(*columns)
    duplicates = (
        ranked.where(is_duplicate).select(*columns).withColumn("reasons", F.array(F.lit(DUPLICATE)))
    )
    return valid, duplicates


def _quarantine_rows(rows, run_id: str):
    from pyspark.sql import functions as F

    return rows.select(
        "key",
        "value",
        "topic",
        "kafka_partition",
        "kafka_offset",
        "reasons",
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("quarantined_at"),
    )


def _validation_results(spark, checked, duplicates, rule_names, run_id: str, counts: dict):
    from pyspark.sql import functions as F

    total = counts["rows"]
    failures = (
        checked.select(F.explode("reasons").alias("rule"))
        .unionByName(duplicates.select(F.explode("reasons").alias("rule")))
        .groupBy("rule")
        .count()
        .collect()
    )
    counts = {row["rule"]: row["count"] for row in failures}
    now = datetime.now(UTC)
    rows = [
        (run_id, rule, counts.get(rule, 0) == 0, int(counts.get(rule, 0)), int(total), now)
        for rule in [*rule_names, DUPLICATE]
    ]
    return spark.createDataFrame(rows, schema=get_table("validation_results").spark_schema)


def _gate(counts: dict, max_share: float, batch_id: int) -> None:
    if not counts["rows"]:
        return
    share = counts["invalid"] / counts["rows"]
    if share > max_share:
        raise GateFailedError(
            f"silver gate: {counts['invalid']} of {counts['rows']} rows ({share:.1%}) failed "
            f"validation in batch {batch_id}, above the {max_share:.1%} threshold "
            "(PROGNOS_BATCH_MAX_FAILURE_SHARE); they are in the quarantine table"
        )


def silver_frame_of_fleet(fleet, start: datetime, cycle_seconds: float = 60.0, source="fleet"):
    """Silver rows (pandas, the silver schema's columns) of a fleet frame from
    prognos.core.replay.fleet_frame, as if replayed and ingested: for benchmarks and
    tests that start from silver instead of Kafka (Kafka coordinates are synthetic)."""
    import numpy as np
    import pandas as pd

    columns = get_table("silver").column_names
    frame = fleet.rename(columns={"machine_id": "unit", "machine": "machine_id"})
    return frame.assign(
        cycle=frame["cycle"].astype("int32"),
        event_time=pd.Timestamp(start) + pd.to_timedelta(frame["cycle"] * cycle_seconds, "s"),
        source=source,
        schema_version=np.int32(1),
        kafka_partition=np.int32(0),
        kafka_offset=np.arange(len(frame), dtype=np.int64),
        ingest_time=pd.Timestamp(start),
    )[columns]


def run(spark, settings: Settings, run_id: str, timeout_s: float = 900) -> dict:
    """Process every bronze row not yet seen; return the totals of this run."""
    from prognos.core import quality
    from prognos.core.fleet import default_contract

    bronze_path = table_path("bronze", settings)
    if not lake.is_delta_table(bronze_path):
        return {"rows": 0, "invalid": 0, "duplicates": 0, "batches": 0}
    now_epoch = time.time()
    inputs = logs.versions(settings, "bronze")  # availableNow reads up to this version
    contract = default_contract(settings)
    rules = quality.build_rules(None, now_epoch, settings.batch_future_tolerance_s, contract)
    rule_names = [rule.name for rule in rules]
    checkpoint = lake.checkpoint_path(settings, QUERY_NAME)
    totals = {"rows": 0, "invalid": 0, "duplicates": 0, "batches": 0}
    errors: list[Exception] = []

    def handle(batch_df, batch_id):
        try:
            counts = process_batch(
                batch_df,
                batch_id,
                settings=settings,
                run_id=run_id,
                app_id=_app_id(checkpoint),
                contract=contract,
                rule_names=rule_names,
                now_epoch=now_epoch,
            )
        except GateFailedError as error:
            errors.append(error)
            raise
        for name, value in counts.items():
            totals[name] += value
        totals["batches"] += 1

    query = (
        spark.readStream.format("delta")
        .load(str(bronze_path))
        .writeStream.foreachBatch(handle)
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .queryName(QUERY_NAME)
        .start()
    )
    try:
        lake.await_query(query, settings, timeout_s=timeout_s)
    except lake.StreamFailedError:
        if errors:
            raise errors[0] from None
        raise
    outputs = logs.versions(settings, "silver", "quarantine", "validation_results")
    logs.lineage("silver", run_id, inputs, outputs, settings, **totals)
    return totals


def _app_id(checkpoint) -> str:
    """The streaming query's id (stable for the life of its checkpoint)."""
    metadata = json.loads((checkpoint / "metadata").read_text().splitlines()[0])
    return f"silver-{metadata['id']}"


def main(argv=None) -> None:
    import sys

    from spark_jobs import common

    args = common.job_parser(__doc__.splitlines()[0]).parse_args(argv)
    settings = get_settings()
    with common.lake_job("silver", args, settings):
        spark = common.session("silver", settings)
        try:
            common.report(
                {"run_id": common.run_id_of(args), **run(spark, settings, common.run_id_of(args))}
            )
        except GateFailedError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()

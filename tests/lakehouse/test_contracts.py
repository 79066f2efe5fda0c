"""Delta contracts: idempotent foreachBatch writes, atomic publication, time travel,
compaction, vacuum. Every table is also read back through delta-rs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from lakehelp import arrow_rows, assert_same_through_delta_rs, spark_rows, with_catalog_columns

from prognos.core import lake, tables


def _state_rows(spark, machines: range, run_id: str, rul: float):
    rows = [
        {
            "machine_id": f"m-{m:03d}",
            "last_cycle": m,
            "last_event_time": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m),
            "readings_count": m * 10,
            "predicted_rul": rul + m,
            "model_version": "1",
            "run_id": run_id,
        }
        for m in machines
    ]
    return spark.createDataFrame(rows, schema=tables.get_table("machine_state").spark_schema)


def _summary(spark, run_id: str, machines: int):
    row = {
        "run_id": run_id,
        "machines": machines,
        "readings": machines * 10,
        "at_risk": 0,
        "min_predicted_rul": 1.0,
        "mean_predicted_rul": 2.0,
        "max_event_time": datetime(2026, 1, 1, tzinfo=UTC),
        "computed_at": datetime.now(UTC),
    }
    return spark.createDataFrame([row], schema=tables.get_table("fleet_summary").spark_schema)


def test_replayed_foreach_batch_id_changes_nothing(spark, lake_settings):
    app_id = "speed-view-merge"
    first = _state_rows(spark, range(0, 10), "b0", 100.0)
    lake.idempotent_merge(first, 0, "machine_state", lake_settings, app_id=app_id)
    second = _state_rows(spark, range(5, 15), "b1", 50.0)
    lake.idempotent_merge(second, 1, "machine_state", lake_settings, app_id=app_id)
    version = lake.latest_version(spark, "machine_state", lake_settings)
    before = spark_rows(lake.read_table(spark, "machine_state", lake_settings))

    # the same batch ids replayed (as after a crash), even with other contents
    lake.idempotent_merge(second, 1, "machine_state", lake_settings, app_id=app_id)
    replay = _state_rows(spark, range(0, 20), "b0-replayed", 1.0)
    lake.idempotent_merge(replay, 0, "machine_state", lake_settings, app_id=app_id)

    assert lake.latest_version(spark, "machine_state", lake_settings) == version
    assert spark_rows(lake.read_table(spark, "machine_state", lake_settings)) == before
    assert len(before) == 15
    assert spark.conf.get(lake.TXN_APP_ID_CONF, None) is None  # unset after each write
    assert_same_through_delta_rs(spark, "machine_state", lake_settings)


def test_replayed_append_batch_id_changes_nothing(spark, lake_settings):
    rows = _summary(spark, "r1", 3)
    for _ in range(3):
        lake.idempotent_append(rows, 7, "fleet_summary", lake_settings, app_id="q-1")
    lake.idempotent_append(rows, 7, "fleet_summary", lake_settings, app_id="q-2")
    assert lake.read_table(spark, "fleet_summary", lake_settings).count() == 2
    assert_same_through_delta_rs(spark, "fleet_summary", lake_settings)


def test_merge_in_foreach_batch_of_a_stream_is_idempotent(spark, lake_settings):
    """A real foreachBatch: the query id is the app id, the batch id the txn version."""
    source = spark.readStream.format("rate").option("rowsPerSecond", 50).load()

    def merge_batch(batch_df, batch_id):
        from pyspark.sql import functions as F

        rows = batch_df.select(
            F.format_string("m-%03d", (F.col("value") % 20).cast("int")).alias("machine_id"),
            F.col("value").cast("int").alias("last_cycle"),
            F.col("timestamp").alias("last_event_time"),
            F.lit(1).cast("long").alias("readings_count"),
            F.lit(None).cast("double").alias("predicted_rul"),
            F.lit("0").alias("model_version"),
            F.lit(f"batch-{batch_id}").alias("run_id"),
        ).dropDuplicates(["machine_id"])
        rows = with_catalog_columns(rows, "machine_state")
        lake.idempotent_merge(rows, batch_id, "machine_state", lake_settings, app_id="stream")
        # the replay a crash between the Delta commit and the checkpoint commit causes
        lake.idempotent_merge(rows, batch_id, "machine_state", lake_settings, app_id="stream")

    query = (
        source.writeStream.foreachBatch(merge_batch)
        .option("checkpointLocation", str(lake_settings.checkpoints / "merge"))
        .trigger(processingTime="1 second")
        .start()
    )
    try:
        assert lake.wait_for(lambda: (query.lastProgress or {}).get("batchId", -1) >= 1, 180)
    finally:
        query.stop()
    from delta.tables import DeltaTable

    path = str(tables.table_path("machine_state", lake_settings))
    merges = DeltaTable.forPath(spark, path).history().where("operation = 'MERGE'").count()
    batches = len(list((lake_settings.checkpoints / "merge" / "commits").glob("[0-9]*")))
    assert merges <= batches + 1  # one MERGE per batch (+ one possibly in flight at stop)
    assert_same_through_delta_rs(spark, "machine_state", lake_settings)


def test_publication_is_atomic_under_a_concurrent_reader(spark, lake_settings):
    """Each publication writes both views with one run id; a reader (delta-rs, as the
    serving layer) must always see the same run id in the manifest and in both views."""
    observed, mixes, errors = [], [], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                published = lake.read_published_arrow(lake_settings)
            except Exception as error:
                errors.append(repr(error))
                return
            if published is None:
                continue
            run_id = published.manifest["run_id"]
            seen = {
                name: set(view.column("run_id").to_pylist())
                for name, view in published.tables.items()
            }
            observed.append(run_id)
            if any(ids != {run_id} for ids in seen.values()):
                mixes.append((run_id, seen))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for number in range(3):
            run_id = f"run-{number}"
            machines = range(0, 5 + number)
            lake.publish(
                spark,
                lake_settings,
                {
                    "machine_state": _state_rows(spark, machines, run_id, 10.0 * number),
                    "fleet_summary": _summary(spark, run_id, len(machines)),
                },
                {"run_id": run_id, "partition_offsets": {0: 10 * number, 1: 5},
                 "max_event_time": datetime(2026, 1, 1, tzinfo=UTC), "rows_covered": number},
            )  # fmt: skip
        lake.wait_for(lambda: observed and observed[-1] == "run-2", 30)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert not mixes
    assert len(set(observed)) >= 2  # the reader really ran across publications

    latest = lake.read_published(spark, lake_settings)
    assert latest.manifest["run_id"] == "run-2"
    assert latest.manifest["partition_offsets"] == {0: 20, 1: 5}
    assert latest.tables["machine_state"].count() == 7
    versions = latest.manifest["table_versions"]
    arrow = lake.read_published_arrow(lake_settings)
    assert arrow.manifest["table_versions"] == versions
    for name, version in versions.items():
        spark_view = latest.tables[name]
        assert arrow_rows(arrow.tables[name], spark_view.columns) == spark_rows(spark_view)
        assert_same_through_delta_rs(spark, name, lake_settings, version=version)
    assert_same_through_delta_rs(spark, "batch_manifest", lake_settings)


def test_manifest_refuses_unknown_fields(spark, lake_settings):
    with pytest.raises(ValueError, match="unknown manifest fields: offsets"):
        lake.publish(spark, lake_settings, {}, {"run_id": "r", "offsets": {}})


def test_time_travel_by_version_and_timestamp(spark, lake_settings):
    from delta.tables import DeltaTable

    contents = {}
    for number in range(3):
        df = _state_rows(spark, range(number + 1), f"v{number}", float(number))
        version = lake.write_table(df, "machine_state", lake_settings, mode="overwrite")
        contents[version] = spark_rows(df)
    path = str(tables.table_path("machine_state", lake_settings))
    history = DeltaTable.forPath(spark, path).history().select("version", "timestamp").collect()
    stamps = {row["version"]: row["timestamp"] for row in history}
    for version, rows in contents.items():
        by_version = lake.read_table(spark, "machine_state", lake_settings, version=version)
        assert spark_rows(by_version) == rows
        by_time = lake.read_table(spark, "machine_state", lake_settings, timestamp=stamps[version])
        assert spark_rows(by_time) == rows
        assert_same_through_delta_rs(spark, "machine_state", lake_settings, version=version)


def test_compaction_reduces_files_and_keeps_contents(spark, lake_settings):
    for number in range(6):
        lake.write_table(_summary(spark, f"r{number}", number), "fleet_summary", lake_settings)
    before_files = lake.file_count("fleet_summary", lake_settings)
    before = spark_rows(lake.read_table(spark, "fleet_summary", lake_settings))
    metrics = lake.compact(spark, "fleet_summary", lake_settings)
    assert metrics["numFilesRemoved"] >= 6
    assert lake.file_count("fleet_summary", lake_settings) < before_files
    assert lake.file_count("fleet_summary", lake_settings) == 1
    assert spark_rows(lake.read_table(spark, "fleet_summary", lake_settings)) == before
    assert_same_through_delta_rs(spark, "fleet_summary", lake_settings)


def test_vacuum_keeps_every_file_a_retained_version_needs(spark, lake_settings):
    versions = {}
    for number in range(3):
        df = _state_rows(spark, range(number + 2), f"v{number}", float(number))
        versions[lake.write_table(df, "machine_state", lake_settings, mode="overwrite")] = (
            spark_rows(df)
        )
    lake.compact(spark, "machine_state", lake_settings)

    with pytest.raises(ValueError, match=r"below the floor of 168\.0 h"):
        lake.vacuum(spark, "machine_state", lake_settings, retention_hours=1)

    lake.vacuum(spark, "machine_state", lake_settings, retention_hours=1, allow_below_floor=True)
    for version, rows in versions.items():  # all written within the last hour: all kept
        read = lake.read_table(spark, "machine_state", lake_settings, version=version)
        assert spark_rows(read) == rows
        assert_same_through_delta_rs(spark, "machine_state", lake_settings, version=version)

    latest = spark_rows(lake.read_table(spark, "machine_state", lake_settings))
    lake.vacuum(spark, "machine_state", lake_settings, retention_hours=0, allow_below_floor=True)
    assert spark_rows(lake.read_table(spark, "machine_state", lake_settings)) == latest
    assert_same_through_delta_rs(spark, "machine_state", lake_settings)
    assert spark.conf.get(lake.RETENTION_CHECK_CONF) == "true"  # restored

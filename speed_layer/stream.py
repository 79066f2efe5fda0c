"""The speed layer's streaming query: `spark-submit speed_layer/stream.py`.

Kafka readings -> per-machine state (validation, watermark, history, features, champion
scoring; speed_layer.state) -> foreachBatch: dead letters to the dead-letter topic (reason
header), late rows to late_rows, alerts to the alerts topic and table, machine rows merged
into speed_view. Delta writes carry (query id, batch id) as txnAppId/txnVersion, so a
batch replayed after a crash changes nothing; Kafka writes are skipped for a batch the
speed view already holds, and carry deterministic keys for consumers to deduplicate.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from prognos.core import boundary, lake
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import create_table, get_table, table_path

QUERY_NAME = "speed-layer"
CONCURRENT_RETRIES = 5


def checkpoint_dir(settings: Settings) -> Path:
    return lake.checkpoint_path(settings, QUERY_NAME)


def machine_rows(spark, settings: Settings):
    """Kafka rows keyed by machine, with an event time for the watermark.

    The event time is taken from the JSON without full validation (the state function
    validates); a time beyond the future tolerance is ignored so it cannot push the
    watermark ahead.
    """
    from pyspark.sql import functions as F

    kafka = lake.kafka_stream(
        spark,
        settings,
        settings.topic_readings,
        max_offsets_per_trigger=settings.speed_max_offsets_per_trigger,
    )
    event_time = F.to_timestamp(F.get_json_object(F.col("value").cast("string"), "$.event_time"))
    horizon = F.current_timestamp() + F.expr(
        f"INTERVAL {int(settings.batch_future_tolerance_s)} SECONDS"
    )
    return kafka.select(
        F.coalesce(F.col("key").cast("string"), F.lit("")).alias("machine_key"),
        "value",
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.when(event_time <= horizon, event_time).alias("event_time"),
    ).withWatermark("event_time", settings.speed_watermark)


def routed_rows(spark, settings: Settings):
    """The state function's output: one row per dead, late, view or alert record."""
    from pyspark.sql.streaming.state import GroupStateTimeout

    from speed_layer.state import OUTPUT_SCHEMA, STATE_SCHEMA, make_state_function

    return (
        machine_rows(spark, settings)
        .groupBy("machine_key")
        .applyInPandasWithState(
            make_state_function(settings),
            OUTPUT_SCHEMA,
            STATE_SCHEMA,
            "append",
            GroupStateTimeout.NoTimeout,
        )
    )


class BatchWriter:
    """foreachBatch: route one micro-batch of state output to topics and tables."""

    def __init__(self, settings: Settings, checkpoint: Path, metrics=None):
        self.settings = settings
        self.checkpoint = checkpoint
        self.metrics = metrics
        self._app_id: str | None = None

    @property
    def app_id(self) -> str:
        """The query id (kept in the checkpoint): stable across restarts."""
        if self._app_id is None:
            metadata = json.loads((self.checkpoint / "metadata").read_text())
            self._app_id = f"prognos-speed-{metadata['id']}"
        return self._app_id

    def __call__(self, batch_df, batch_id: int) -> None:
        started = time.monotonic()
        spark = batch_df.sparkSession
        if self._already_written(batch_id):
            return
        batch = batch_df.persist()
        try:
            counts = {kind: 0 for kind in ("dead", "late", "view", "alert")}
            for row in batch.groupBy("kind").count().collect():
                counts[row["kind"]] = row["count"]
            if counts["dead"]:
                self._send_dead_letters(batch.where("kind = 'dead'"))
            if counts["late"]:
                self._write_late(batch.where("kind = 'late'"), batch_id)
            if counts["alert"]:
                self._write_alerts(batch.where("kind = 'alert'"), batch_id)
            max_event_time = self._merge_views(spark, batch.where("kind = 'view'"), batch_id)
        finally:
            batch.unpersist()
        if self.metrics is not None:
            self.metrics.batch_written(counts, max_event_time, time.monotonic() - started)

    def _already_written(self, batch_id: int) -> bool:
        """True when the speed view (written last) already holds this batch."""
        from deltalake import DeltaTable

        path = table_path("speed_view", self.settings)
        if not (path / "_delta_log").is_dir():
            return False
        done = DeltaTable(str(path)).transaction_version(self.app_id)
        return done is not None and done >= batch_id

    def _send_dead_letters(self, dead) -> None:
        from pyspark.sql import functions as F

        header = F.struct(F.lit("reason").alias("key"), F.encode("reason", "UTF-8").alias("value"))
        coordinates = F.concat_ws(
            ":", F.lit(self.settings.topic_readings), "kafka_partition", "kafka_offset"
        )
        source = F.struct(
            F.lit("source").alias("key"), F.encode(coordinates, "UTF-8").alias("value")
        )
        (
            dead.select(
                F.encode(coordinates, "UTF-8").alias("key"),
                "value",
                F.array(header, source).alias("headers"),
            )
            .write.format("kafka")
            .option("kafka.bootstrap.servers", self.settings.kafka_bootstrap_servers)
            .option("topic", self.settings.topic_dead_letter)
            .save()
        )

    def _write_late(self, late, batch_id: int) -> None:
        from pyspark.sql import functions as F

        rows = late.select(
            "machine_id",
            "cycle",
            "event_time",
            "value",
            "kafka_partition",
            "kafka_offset",
            "watermark",
            F.current_timestamp().alias("recorded_at"),
        )
        _retrying(
            lambda: lake.idempotent_append(
                rows, batch_id, "late_rows", self.settings, f"{self.app_id}-late"
            )
        )

    def _write_alerts(self, alerts, batch_id: int) -> None:
        from pyspark.sql import functions as F

        rows = alerts.select(
            "alert_id",
            "machine_id",
            "cycle",
            "event_time",
            "predicted_rul",
            "threshold",
            "model_version",
            F.current_timestamp().alias("raised_at"),
            "alert_level",
            "previous_level",
        ).persist()
        message = F.to_json(F.struct(*[F.col(c) for c in rows.columns]))
        (
            rows.select(F.encode("alert_id", "UTF-8").alias("key"), message.alias("value"))
            .write.format("kafka")
            .option("kafka.bootstrap.servers", self.settings.kafka_bootstrap_servers)
            .option("topic", self.settings.topic_alerts)
            .save()
        )
        _retrying(
            lambda: lake.idempotent_merge(
                rows, batch_id, "alerts", self.settings, f"{self.app_id}-alerts", update=False
            )
        )
        rows.unpersist()

    def _merge_views(self, spark, views, batch_id: int):
        """Merge machine rows into speed_view (rows the manifest covers are deleted);
        always commits, so the table records the batch id. Returns the max event time."""
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        covered = boundary.manifest_offsets(self.settings)
        floor = (
            F.create_map(*[F.lit(x) for pair in covered.items() for x in pair])[
                F.col("kafka_partition")
            ]
            if covered
            else F.lit(None)
        )
        pending = F.filter(
            "pending_offsets", lambda offset: offset >= F.coalesce(floor, F.lit(0).cast("long"))
        )
        features_type = "map<string,double>"
        rows = views.select(
            "machine_id",
            F.col("cycle").alias("last_cycle"),
            F.col("event_time").alias("last_event_time"),
            F.size(pending).cast("long").alias("readings_count"),
            "predicted_rul",
            "model_version",
            F.lit(batch_id).cast("long").alias("batch_id"),
            F.current_timestamp().alias("updated_at"),
            "alert_level",
            F.from_json("sensors_json", features_type).alias("sensors"),
            F.from_json("features_json", features_type).alias("features"),
            "kafka_partition",
            "kafka_offset",
            pending.alias("pending_offsets"),
        )
        max_event_time = rows.agg(F.max("last_event_time")).collect()[0][0]
        create_table(spark, "speed_view", self.settings)
        target = DeltaTable.forPath(spark, str(table_path("speed_view", self.settings)))
        columns = get_table("speed_view").column_names

        def merge() -> None:
            (
                target.alias("t")
                .merge(rows.alias("s"), "t.machine_id = s.machine_id")
                .whenMatchedDelete("size(s.pending_offsets) = 0")
                .whenMatchedUpdate(set={c: f"s.`{c}`" for c in columns})
                .whenNotMatchedInsert(
                    "size(s.pending_offsets) > 0", values={c: f"s.`{c}`" for c in columns}
                )
                .execute()
            )

        _retrying(lambda: lake.with_idempotent_txn(spark, self.app_id, batch_id, merge))
        return max_event_time


def _retrying(action, attempts: int = CONCURRENT_RETRIES) -> None:
    """Run a Delta write, retrying when a concurrent writer (the batch expiry) conflicts."""
    for attempt in range(attempts):
        try:
            action()
            return
        except Exception as error:  # Delta's concurrency errors come through py4j
            if "Concurrent" not in type(error).__name__ + str(error)[:500] or (
                attempt == attempts - 1
            ):
                raise
            time.sleep(0.2 * (attempt + 1))


def build_query(spark, settings: Settings | None = None, metrics=None, trigger: str | None = None):
    """Start the speed layer's streaming query and return it."""
    settings = settings or get_settings()
    for name in ("speed_view", "alerts", "late_rows"):
        create_table(spark, name, settings)
    checkpoint = checkpoint_dir(settings)
    writer = BatchWriter(settings, checkpoint, metrics)
    return (
        routed_rows(spark, settings)
        .writeStream.queryName(QUERY_NAME)
        .outputMode("append")
        .foreachBatch(writer)
        .option("checkpointLocation", str(checkpoint))
        .trigger(processingTime=trigger or settings.speed_trigger)
        .start()
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from prognos.core.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trigger", help="micro-batch interval (default: PROGNOS_SPEED_TRIGGER)")
    args = parser.parse_args(argv)
    settings = get_settings()
    spark = get_spark("prognos-speed", settings)
    metrics = None
    if settings.speed_metrics_port:
        from speed_layer.metrics import SpeedMetrics

        metrics = SpeedMetrics.start(spark, settings.speed_metrics_port)
    query = build_query(spark, settings, metrics, args.trigger)
    signal.signal(signal.SIGTERM, lambda *_: query.stop())
    query.awaitTermination()
    error = query.exception()
    if error is not None:
        print(f"error: speed layer query failed: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

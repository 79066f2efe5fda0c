"""The speed layer's streaming query: `spark-submit speed_layer/stream.py`.

Kafka readings -> per-machine state (validation, watermark, history; speed_layer.state)
-> foreachBatch: the machines touched are scored together (features and one champion call
per micro-batch, speed_layer.scorer), dead letters go to the dead-letter topic (reason
header), late rows to late_rows, alerts to the alerts topic and table, machine rows are
merged into speed_view. The Delta writes go through delta-rs from the driver (the rows are few;
a Spark MERGE costs seconds of jobs per micro-batch) and carry (query id, batch id) as a
Delta app transaction, so a batch replayed after a crash changes nothing; Kafka writes are
skipped for a batch the speed view already holds, and carry deterministic keys for
consumers to deduplicate.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from prognos.core import boundary, lake, logs
from prognos.core.events import EVENT_TIME_MIN
from prognos.core.scoring import champion_watcher
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import create_table, get_table
from speed_layer.scorer import AlertMemory, score_views

QUERY_NAME = "speed-layer"
CONCURRENT_RETRIES = 5
SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
STATS_PRECISION = timedelta(milliseconds=1)


def checkpoint_dir(settings: Settings) -> Path:
    return lake.checkpoint_path(settings, QUERY_NAME)


def machine_rows(spark, settings: Settings):
    """Kafka rows keyed by machine, with an event time for the watermark.

    The event time is taken from the JSON without full validation (the state function
    validates); a time beyond the future tolerance is ignored so it cannot push the
    watermark ahead, and one before the contract's range is ignored too (pandas, which the
    state function receives the rows in, cannot hold it).
    """
    from pyspark.sql import functions as F

    kafka = lake.kafka_stream(
        spark,
        settings,
        settings.topic_readings,
        max_offsets_per_trigger=settings.speed_max_offsets_per_trigger,
    )
    # try_: a malformed time is null (the state function dead-letters the event), not an error
    event_time = F.try_to_timestamp(
        F.get_json_object(F.col("value").cast("string"), "$.event_time")
    )
    horizon = F.current_timestamp() + F.expr(
        f"INTERVAL {int(settings.batch_future_tolerance_s)} SECONDS"
    )
    return kafka.select(
        # a key of invalid UTF-8 would break the Arrow transfer to the state function
        F.coalesce(F.make_valid_utf8(F.col("key").cast("string")), F.lit("")).alias("machine_key"),
        "value",
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.when((event_time <= horizon) & (event_time >= F.lit(EVENT_TIME_MIN)), event_time).alias(
            "event_time"
        ),
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
        self.memory = AlertMemory(checkpoint)
        self._app_id: str | None = None
        self._kafka = None
        self._tables = lake.TableFollower(settings)

    @property
    def app_id(self) -> str:
        """The query id (kept in the checkpoint): stable across restarts."""
        if self._app_id is None:
            metadata = json.loads((self.checkpoint / "metadata").read_text())
            self._app_id = f"prognos-speed-{metadata['id']}"
        return self._app_id

    def __call__(self, batch_df, batch_id: int) -> None:
        started = time.monotonic()
        phases = PhaseClock()
        # The state output is small (one row per machine touched, plus bad/late records):
        # collect it once instead of recomputing it for every write. Always collected, also
        # for a batch already written: Spark requires the state stores of every batch to
        # commit, which needs the whole DataFrame processed.
        frame = batch_df.toPandas()
        phases.lap("state")
        if self._already_written(batch_id):
            return
        phases.lap("check")
        kinds = {kind: frame[frame["kind"] == kind] for kind in ("dead", "late", "view")}
        champion = champion_watcher(self.settings).current()
        kinds["view"] = score_views(kinds["view"], champion, self.settings)
        kinds["alert"] = self.memory.alerts(batch_id, kinds["view"], self.settings)
        counts = {kind: len(rows) for kind, rows in kinds.items()}
        phases.lap("score")
        if len(kinds["dead"]):
            self._send_dead_letters(kinds["dead"])
            phases.lap("dead")
        if len(kinds["late"]):
            self._write_late(kinds["late"], batch_id)
            phases.lap("late")
        if len(kinds["alert"]):
            self._write_alerts(kinds["alert"], batch_id)
            phases.lap("alerts")
        self.memory.save(batch_id)
        max_event_time = None
        if len(kinds["view"]):
            max_event_time = kinds["view"]["event_time"].max()
            self._merge_views(kinds["view"], batch_id)
            phases.lap("merge")
        if self.metrics is not None:
            self.metrics.batch_written(
                counts, max_event_time, time.monotonic() - started, phases.spent
            )
        self._log_lineage(batch_id, counts)

    def _log_lineage(self, batch_id: int, counts: dict) -> None:
        """One lineage record per micro-batch: the tables it wrote, at their new versions."""
        written = {"view": "speed_view", "alert": "alerts", "late": "late_rows"}
        tables = [table for kind, table in written.items() if counts.get(kind)]
        source = {f"kafka:{self.settings.topic_readings}": None}
        # the kept handles were brought up to date by this batch's writes: no log reads
        outputs = {table: self._tables.kept(table).version() for table in tables}
        run_id = f"{self.app_id}:{batch_id}"
        logs.lineage("speed", run_id, source, outputs, self.settings, **counts)

    def _already_written(self, batch_id: int) -> bool:
        """True when the speed view (written last) already holds this batch."""
        view = self._tables.latest("speed_view")
        done = None if view is None else view.transaction_version(self.app_id)
        return done is not None and done >= batch_id

    def _producer(self):
        if self._kafka is None:
            from kafka import KafkaProducer

            self._kafka = KafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all", retries=5
            )
        return self._kafka

    def _send_dead_letters(self, dead) -> None:
        """Each bad record, unchanged, with its reason and source coordinates as headers;
        keyed by its coordinates so a resend after a crash is recognisable."""
        producer = self._producer()
        for row in dead.itertuples(index=False):
            source = f"{self.settings.topic_readings}:{row.kafka_partition}:{row.kafka_offset}"
            producer.send(
                self.settings.topic_dead_letter,
                key=source.encode(),
                value=row.value,
                headers=[("reason", str(row.reason).encode()), ("source", source.encode())],
            )
        producer.flush(60)

    def _write_late(self, late, batch_id: int) -> None:
        from deltalake import write_deltalake

        rows = late.assign(recorded_at=pd.Timestamp.now(tz="UTC"))
        app_id = f"{self.app_id}-late"

        def append(table) -> None:
            write_deltalake(
                table,
                _arrow(rows, "late_rows"),
                mode="append",
                commit_properties=_txn(app_id, batch_id),
            )

        _retrying(lambda: self._once("late_rows", app_id, batch_id, append))

    def _write_alerts(self, alerts, batch_id: int) -> None:
        rows = alerts.assign(raised_at=pd.Timestamp.now(tz="UTC"))
        columns = get_table("alerts").column_names
        producer = self._producer()
        for record in rows[columns].to_dict("records"):
            message = json.dumps(record, default=str, sort_keys=True).encode()
            producer.send(
                self.settings.topic_alerts, key=record["alert_id"].encode(), value=message
            )
        producer.flush(60)
        app_id = f"{self.app_id}-alerts"

        source = _arrow(rows, "alerts")
        condition = alerts_merge_condition(source)

        def insert_new(table) -> None:
            (
                table.merge(
                    source,
                    condition,
                    source_alias="s",
                    target_alias="t",
                    commit_properties=_txn(app_id, batch_id),
                )
                .when_not_matched_insert_all()
                .execute()
            )

        _retrying(lambda: self._once("alerts", app_id, batch_id, insert_new))

    def _once(self, table_name: str, app_id: str, batch_id: int, write) -> None:
        """Run a delta-rs write unless the table's app transaction already holds the batch."""
        table = self._tables.latest(table_name)
        done = table.transaction_version(app_id)
        if done is None or done < batch_id:
            write(table)

    def _merge_views(self, views, batch_id: int) -> None:
        """Merge machine rows into speed_view (`merge_view_rows`) with (app id, batch id) as
        a Delta app transaction, which `_already_written` checks."""
        commit = _txn(self.app_id, batch_id)

        def merge() -> None:
            # the boundary is re-read on a retry: a conflict means the expiry just ran
            covered = boundary.followed_manifest_offsets(self.settings)
            source = self._view_rows(views, batch_id, covered)
            merge_view_rows(self._tables.latest("speed_view"), source, commit)

        _retrying(merge)

    @staticmethod
    def _view_rows(views, batch_id: int, covered: dict[int, int]):
        """The speed_view rows (Arrow) of a batch's view records, offsets the boundary
        covers removed."""
        pending = [
            boundary.uncovered_array(offsets, partition, covered)
            for offsets, partition in zip(
                views["pending_offsets"], views["kafka_partition"], strict=True
            )
        ]
        rows = views.assign(
            last_cycle=views["cycle"],
            last_event_time=views["event_time"],
            pending_offsets=pending,
            readings_count=[len(p) for p in pending],
            batch_id=batch_id,
            updated_at=pd.Timestamp.now(tz="UTC"),
            sensors=views["sensors_json"].map(_json_map),
            features=views["features_json"].map(_json_map),
        )
        return _arrow(rows, "speed_view")


def alerts_merge_condition(source) -> str:
    """The alerts MERGE's match: the alert id, within the event times of the source rows.

    An alert id names (machine, cycle, level), so a copy of an alert carries its reading's
    event time: matching only target rows in the source's event time range gives delta-rs
    a predicate on the target's file statistics, and the MERGE reads the files of recent
    alerts instead of a table that grows forever. (Statistics written by Spark keep
    milliseconds: the range is widened by one.)"""
    import pyarrow.compute as pc

    times = source.column("event_time")
    if times.null_count or len(times) == 0:
        return "t.alert_id = s.alert_id"
    low = pc.min(times).as_py() - STATS_PRECISION
    high = pc.max(times).as_py() + STATS_PRECISION
    return (
        f"t.alert_id = s.alert_id AND t.event_time >= '{low.isoformat()}' "
        f"AND t.event_time <= '{high.isoformat()}'"
    )


def merge_view_rows(table, source, commit_properties=None) -> None:
    """MERGE a micro-batch's speed_view rows (Arrow) into the table (delta-rs): a machine
    with readings beyond the boundary gets its latest state, and their offsets are appended
    to its pending offsets (the batch expiry drops covered ones), so a micro-batch carries
    only its own offsets, not every reading since the last batch run."""
    columns = {c: f"s.`{c}`" for c in get_table("speed_view").column_names}
    accumulated = columns | {
        "pending_offsets": "array_concat(coalesce(t.pending_offsets, []), s.pending_offsets)",
        "readings_count": "coalesce(t.readings_count, 0) + s.readings_count",
    }
    has_new = "cardinality(s.pending_offsets) > 0"
    (
        table.merge(
            source,
            "t.machine_id = s.machine_id",
            source_alias="s",
            target_alias="t",
            commit_properties=commit_properties,
        )
        .when_matched_update(accumulated, has_new)
        .when_not_matched_insert(columns, has_new)
        .execute()
    )


class PhaseClock:
    """Seconds spent per named phase, each lap measured from the previous one."""

    def __init__(self):
        self.spent: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.spent[phase] = self.spent.get(phase, 0.0) + now - self._last
        self._last = now


def _json_map(text):
    return None if text is None or (isinstance(text, float) and pd.isna(text)) else json.loads(text)


def _plain_records(rows, table_name: str) -> list[dict]:
    """A pandas frame's rows as plain Python records of a catalog table's columns."""
    spec = get_table(table_name)
    return [
        {c.name: _plain(record[c.name], c.type) for c in spec.columns}
        for record in rows.to_dict("records")
    ]


def _arrow(rows, table_name: str):
    """An Arrow table of a catalog table's columns from a pandas frame."""
    import pyarrow as pa

    schema = get_table(table_name).arrow_schema
    return pa.Table.from_pylist(_plain_records(rows, table_name), schema=schema)


def _txn(app_id: str, batch_id: int):
    """delta-rs commit properties recording (app id, batch id) as a Delta app transaction."""
    from deltalake import CommitProperties, Transaction

    return CommitProperties(app_transactions=[Transaction(app_id, batch_id)])


def _plain(value, type_name: str):
    """A pandas/numpy value as the Python value Spark expects for the column type."""
    if value is None or (
        not isinstance(value, list | dict | bytes | bytearray | np.ndarray) and pd.isna(value)
    ):
        return None
    if type_name in ("int", "long"):
        return int(value)
    if type_name == "double":
        return float(value)
    if type_name == "timestamp":
        return pd.Timestamp(value).to_pydatetime()
    if type_name == "array<long>":
        return np.asarray(value, dtype=np.int64)  # Arrow takes the array whole
    if type_name == "binary":
        return bytes(value)
    return value


def _retrying(action, attempts: int = CONCURRENT_RETRIES) -> None:
    """Run a Delta write, retrying when a concurrent writer (the batch expiry) conflicts."""
    for attempt in range(attempts):
        try:
            action()
            return
        except Exception as error:  # Delta's concurrency errors come through py4j
            if not _is_conflict(error) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _is_conflict(error: Exception) -> bool:
    """A lost commit race: Delta Spark's Concurrent* errors, delta-rs' CommitFailedError."""
    name = type(error).__name__
    return "Concurrent" in name + str(error)[:500] or name == "CommitFailedError"


def build_query(spark, settings: Settings | None = None, metrics=None, trigger: str | None = None):
    """Start the speed layer's streaming query and return it.

    trigger: a micro-batch interval (default: settings.speed_trigger), or "availableNow"
    to process what the topic holds and stop (a catch-up or reference run). Sets the
    session's shuffle partitions to settings.speed_state_partitions.
    """
    settings = settings or get_settings()
    for name in ("speed_view", "alerts", "late_rows"):
        create_table(spark, name, settings)
    checkpoint = checkpoint_dir(settings)
    writer = BatchWriter(settings, checkpoint, metrics)
    trigger = trigger or settings.speed_trigger
    writer = (
        routed_rows(spark, settings)
        .writeStream.queryName(QUERY_NAME)
        .outputMode("append")
        .foreachBatch(writer)
        .option("checkpointLocation", str(checkpoint))
        .trigger(
            **({"availableNow": True} if trigger == "availableNow" else {"processingTime": trigger})
        )
    )
    # Read when the first batch is planned (asynchronously), then fixed by the checkpoint:
    # so set on the session, not restored.
    spark.conf.set(SHUFFLE_PARTITIONS, str(settings.speed_state_partitions))
    query = writer.start()
    if metrics is not None:
        metrics.follow(query)
    return query


def main(argv: list[str] | None = None) -> int:
    import argparse

    from prognos.core.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trigger",
        help="micro-batch interval (default: PROGNOS_SPEED_TRIGGER), or availableNow: "
        "process what the topic holds, then stop",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    spark = get_spark("prognos-speed", settings)
    metrics = None
    if settings.speed_metrics_port:
        from speed_layer.metrics import SpeedMetrics

        metrics = SpeedMetrics.start(settings.speed_metrics_port)
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

"""Exactly-once contracts of the lakehouse, as small reusable functions.

- `kafka_stream` + `to_bronze` + `append_stream_to_delta`: Kafka -> Delta streaming append;
  the Delta sink records (query id, batch id) in the table's log, so a batch replayed after
  a crash is skipped, and the checkpoint keeps the Kafka offsets.
- `idempotent_merge` / `idempotent_append` for ``foreachBatch``: the write carries Delta's
  ``txnAppId``/``txnVersion`` (app id, batch id), so a replayed batch id changes nothing.
- `publish` / `read_published`: batch views are written as new versions, then one manifest
  row naming each view's version is appended last; readers read the newest manifest row
  and each view AT that version, so they see the old set or the new set, never a mix.
- `compact`, `vacuum` (with a retention floor), `cleanup_checkpoints`: maintenance.
- `read_table_arrow`: the JVM-free read path (delta-rs) used by the serving layer.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prognos.core.errors import BrokerUnavailableError, PrognosError
from prognos.core.settings import Settings
from prognos.core.tables import (
    TableLocationError,
    TableSpec,
    _check_location,
    check_schema,
    create_table,
    get_table,
    is_delta_table,
    table_path,
)

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"
# VACUUM lists files with this many tasks (Spark's default, 10000, is slow on small tables).
LISTING_PARALLELISM_CONF = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
BROKER_ERROR_MARKERS = (
    "TimeoutException",
    "Timed out waiting for a node assignment",
    "Failed to construct kafka",
    "No resolvable bootstrap urls",
)


class StreamFailedError(PrognosError):
    """A streaming query stopped with an error, or did not finish in time."""


# --- Kafka -> Delta ---------------------------------------------------------------------


def kafka_stream(
    spark,
    settings: Settings,
    topic: str,
    starting_offsets: str = "earliest",
    max_offsets_per_trigger: int | None = None,
    **options: str,
):
    """A streaming DataFrame over Spark's Kafka source (key, value, topic, partition, ...).

    failOnDataLoss stays on: an offset that vanished (retention, topic recreated) fails the
    query loudly rather than skipping events. Client timeouts come from settings so an
    unreachable broker fails the query instead of retrying for minutes; so does the
    consumers' fetch wait (see Settings.kafka_fetch_max_wait_ms).
    """
    timeout_ms = str(settings.kafka_client_timeout_ms)
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets)
        .option("failOnDataLoss", "true")
        .option("kafka.request.timeout.ms", timeout_ms)
        .option("kafka.default.api.timeout.ms", timeout_ms)
        .option("kafka.fetch.max.wait.ms", str(settings.kafka_fetch_max_wait_ms))
        .option("fetchOffset.numRetries", "2")
        .option("fetchOffset.retryIntervalMs", "500")
    )
    if max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(max_offsets_per_trigger))
    for key, value in options.items():
        reader = reader.option(key, value)
    return reader.load()


def to_bronze(kafka_df):
    """Map Kafka source rows to the bronze table's columns."""
    from pyspark.sql import functions as F

    return kafka_df.select(
        "key",
        "value",
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.current_timestamp().alias("ingest_time"),
        F.to_date(F.current_timestamp()).alias("ingest_date"),
    )


def checkpoint_path(settings: Settings, query_name: str) -> Path:
    """Checkpoint directory of a named streaming query under settings.checkpoints."""
    return settings.checkpoints / query_name


def _trigger_kwargs(trigger: str) -> dict:
    if trigger == "availableNow":
        return {"availableNow": True}
    if trigger.startswith("processingTime="):
        return {"processingTime": trigger.split("=", 1)[1]}
    raise ValueError(
        f"trigger must be 'availableNow' or 'processingTime=<interval>', got {trigger!r}"
    )


def append_stream_to_delta(
    df,
    table: str | TableSpec,
    settings: Settings,
    checkpoint: Path | None = None,
    trigger: str = "availableNow",
    query_name: str | None = None,
):
    """Start a streaming append of df into a catalog table; return the StreamingQuery.

    The table is created first (catalog schema and properties) and df must match it.
    """
    spec = get_table(table)
    check_schema(df, spec)
    create_table(df.sparkSession, spec, settings)
    checkpoint = checkpoint or checkpoint_path(settings, query_name or f"{spec.name}-append")
    writer = (
        df.writeStream.format("delta")
        .outputMode("append")
        .option("checkpointLocation", str(checkpoint))
        .trigger(**_trigger_kwargs(trigger))
    )
    if query_name:
        writer = writer.queryName(query_name)
    return writer.start(str(table_path(spec, settings)))


def await_query(query, settings: Settings | None = None, timeout_s: float = 600.0) -> None:
    """Wait for a (availableNow) query to end; raise a clear error if it failed or hung.

    A failure caused by an unreachable broker becomes BrokerUnavailableError.
    """
    from pyspark.errors import StreamingQueryException

    try:
        finished = query.awaitTermination(timeout_s)
    except StreamingQueryException as error:
        raise _query_error(query, settings, str(error)) from None
    if not finished:
        query.stop()
        raise StreamFailedError(
            f"streaming query {query.name or query.id} did not finish "
            f"within {timeout_s:.0f} s and was stopped"
        )
    error = query.exception()
    if error is not None:
        raise _query_error(query, settings, str(error))


def _query_error(query, settings: Settings | None, message: str) -> PrognosError:
    name = query.name or query.id
    if any(marker in message for marker in BROKER_ERROR_MARKERS):
        servers = settings.kafka_bootstrap_servers if settings else "the configured brokers"
        return BrokerUnavailableError(
            f"Kafka broker at {servers} unreachable: streaming query {name} failed "
            f"({_first_line(message)})"
        )
    return StreamFailedError(f"streaming query {name} failed: {_first_line(message)}")


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "no message"
    return line[:300]


# --- idempotent foreachBatch writes -----------------------------------------------------


def _with_txn(spark, app_id: str, version: int, action) -> None:
    """Run action with Delta's idempotent-write confs set, then unset them."""
    spark.conf.set(TXN_APP_ID_CONF, app_id)
    spark.conf.set(TXN_VERSION_CONF, str(version))
    try:
        action()
    finally:
        spark.conf.unset(TXN_APP_ID_CONF)
        spark.conf.unset(TXN_VERSION_CONF)


def merge_condition_for(keys: Iterable[str]) -> str:
    return " AND ".join(f"t.`{key}` = s.`{key}`" for key in keys)


def idempotent_merge(
    batch_df,
    batch_id: int,
    table: str | TableSpec,
    settings: Settings,
    app_id: str,
    keys: Iterable[str] | None = None,
    merge_condition: str | None = None,
    update: bool = True,
) -> None:
    """Upsert a micro-batch into a table exactly once per (app_id, batch_id).

    Matching rows (on the table's keys, or merge_condition over aliases t/s) are updated
    (or kept when update=False), new rows inserted. Delta records (app_id, batch_id) in the
    same commit, so a replayed batch id is skipped: it changes nothing.
    """
    from delta.tables import DeltaTable

    spec = get_table(table)
    spark = batch_df.sparkSession
    check_schema(batch_df, spec)
    create_table(spark, spec, settings)
    condition = merge_condition or merge_condition_for(keys or spec.keys)
    target = DeltaTable.forPath(spark, str(table_path(spec, settings)))

    def run_merge() -> None:
        merge = target.alias("t").merge(batch_df.alias("s"), condition)
        if update:
            merge = merge.whenMatchedUpdateAll()
        merge.whenNotMatchedInsertAll().execute()

    _with_txn(spark, app_id, batch_id, run_merge)


def idempotent_append(
    batch_df, batch_id: int, table: str | TableSpec, settings: Settings, app_id: str
) -> None:
    """Append a micro-batch exactly once per (app_id, batch_id) (txnAppId/txnVersion)."""
    spec = get_table(table)
    check_schema(batch_df, spec)
    create_table(batch_df.sparkSession, spec, settings)
    (
        batch_df.write.format("delta")
        .mode("append")
        .option("txnAppId", app_id)
        .option("txnVersion", str(batch_id))
        .save(str(table_path(spec, settings)))
    )


def write_table(
    df,
    table: str | TableSpec,
    settings: Settings,
    mode: str = "append",
    allow_evolution: bool = False,
    user_metadata: str | None = None,
    options: Mapping[str, str] | None = None,
) -> int:
    """Batch write (append/overwrite) with schema enforcement; return the new version.
    `options` go to the writer (e.g. Parquet settings of this write)."""
    spec = get_table(table)
    check_schema(df, spec, allow_evolution=allow_evolution)
    create_table(df.sparkSession, spec, settings)
    writer = df.write.format("delta").mode(mode)
    if allow_evolution:
        writer = writer.option("mergeSchema", "true")
    if user_metadata:
        writer = writer.option("userMetadata", user_metadata)
    for key, value in (options or {}).items():
        writer = writer.option(key, value)
    writer.save(str(table_path(spec, settings)))
    return latest_version(df.sparkSession, spec, settings)


# --- reading, versions, time travel -----------------------------------------------------


def _require_delta(spec: TableSpec, path: Path) -> None:
    if not is_delta_table(path):
        what = "does not exist" if not path.exists() else "holds no Delta log (_delta_log)"
        raise TableLocationError(f"table {spec.name!r}: {path} {what}")


def read_table(
    spark,
    table: str | TableSpec,
    settings: Settings,
    version: int | None = None,
    timestamp: str | datetime | None = None,
):
    """A table through Spark, at its latest version, a version, or a timestamp."""
    spec = get_table(table)
    path = table_path(spec, settings)
    _require_delta(spec, path)
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    elif timestamp is not None:
        if isinstance(timestamp, datetime):
            timestamp = timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        reader = reader.option("timestampAsOf", timestamp)
    return reader.load(str(path))


def latest_version(spark, table: str | TableSpec, settings: Settings) -> int:
    from delta.tables import DeltaTable

    path = table_path(get_table(table), settings)
    return int(DeltaTable.forPath(spark, str(path)).history(1).collect()[0]["version"])


class TableFollower:
    """Kept delta-rs handles of one lake's catalog tables, for a long-running process.

    `latest` brings a kept handle up to date from a listing of the new log entries; opening
    a table afresh replays its log from the last checkpoint (tens of ms). A table removed
    or re-created at the same path is not noticed: delta-rs keeps the handle at its old
    version and raises nothing.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._handles: dict = {}

    def latest(self, name: str):
        """The table's kept handle at its newest version; None while it has no commit."""
        handle = self._handles.get(name)
        if handle is not None:
            handle.update_incremental()
            return handle
        path = table_path(name, self.settings)
        if not is_delta_table(path):
            return None
        from deltalake import DeltaTable

        handle = self._handles[name] = DeltaTable(str(path))
        return handle

    def kept(self, name: str):
        """The kept handle as it is (the version last seen or written); None if not kept."""
        return self._handles.get(name)


def read_table_arrow(table: str | TableSpec, settings: Settings, version: int | None = None):
    """A table read through delta-rs (no JVM) into a pyarrow.Table."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    spec = get_table(table)
    path = table_path(spec, settings)
    _require_delta(spec, path)
    try:
        delta = DeltaTable(str(path), version=version)
    except TableNotFoundError as error:
        raise TableLocationError(f"table {spec.name!r}: {path}: {error}") from None
    return delta.to_pyarrow_table()


def table_version_arrow(table: str | TableSpec, settings: Settings) -> int:
    """Latest version of a table, through delta-rs."""
    from deltalake import DeltaTable

    spec = get_table(table)
    path = table_path(spec, settings)
    _require_delta(spec, path)
    return DeltaTable(str(path)).version()


def replace_rows_arrow(
    table: str | TableSpec, settings: Settings, rows, where: Mapping[str, str]
) -> int:
    """JVM-free write (delta-rs): atomically replace the rows matching `where` (column ->
    string value) with `rows` (a pyarrow.Table in the table's schema); create the table
    with the catalog's properties when missing. Returns the new version."""
    from deltalake import DeltaTable, write_deltalake

    spec = get_table(table)
    path = table_path(spec, settings)
    _check_location(spec, path)
    rows = rows.select(spec.column_names).cast(spec.arrow_schema)
    if not is_delta_table(path):
        path.mkdir(parents=True, exist_ok=True)
        write_deltalake(
            str(path),
            rows.schema.empty_table(),
            mode="append",
            partition_by=list(spec.partition_by) or None,
            description=spec.description,
            configuration=dict(spec.properties),
        )
    quoted = {column: str(value).replace("'", "''") for column, value in where.items()}
    predicate = " AND ".join(f"{column} = '{value}'" for column, value in quoted.items())
    write_deltalake(str(path), rows, mode="overwrite", predicate=predicate)
    return DeltaTable(str(path)).version()


# --- atomic publication -----------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """One consistent set of batch views: the manifest row and each view at its version."""

    manifest: dict
    tables: dict  # name -> DataFrame (Spark) or pyarrow.Table (delta-rs)


def _version_written_by(spark, spec: TableSpec, settings: Settings, marker: str) -> int:
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, str(table_path(spec, settings))).history(20)
    for row in history.select("version", "userMetadata").collect():
        if row["userMetadata"] == marker:
            return int(row["version"])
    raise PrognosError(f"publication {marker}: no commit found in table {spec.name!r}")


def publish(spark, settings: Settings, tables: Mapping[str, object], manifest: Mapping) -> dict:
    """Overwrite each view with its DataFrame, then append the manifest row naming the
    version of each; return the manifest row written.

    manifest gives run_id and the boundary (partition_offsets, max_event_time,
    rows_covered, details); table_versions and published_at are filled in here.
    """
    run_id = str(manifest.get("run_id") or uuid.uuid4())
    marker = f"prognos-publish:{run_id}:{uuid.uuid4().hex[:8]}"
    versions = {}
    for name, df in tables.items():
        spec = get_table(name)
        if spec.name == "batch_manifest":
            raise ValueError("the manifest is written by publish itself")
        write_table(df, spec, settings, mode="overwrite", user_metadata=marker)
        versions[spec.name] = _version_written_by(spark, spec, settings, marker)
    row = _manifest_row(run_id, versions, manifest)
    manifest_df = spark.createDataFrame([row], schema=get_table("batch_manifest").spark_schema)
    write_table(manifest_df, "batch_manifest", settings, mode="append", user_metadata=marker)
    return row


def _manifest_row(run_id: str, versions: dict, manifest: Mapping) -> dict:
    allowed = set(get_table("batch_manifest").column_names) - {"table_versions", "published_at"}
    unknown = set(manifest) - allowed
    if unknown:
        raise ValueError(f"unknown manifest fields: {', '.join(sorted(unknown))}")
    details = manifest.get("details")
    return {
        "run_id": run_id,
        "published_at": datetime.now(UTC),
        "table_versions": versions,
        "partition_offsets": {
            int(k): int(v) for k, v in (manifest.get("partition_offsets") or {}).items()
        },
        "max_event_time": manifest.get("max_event_time"),
        "rows_covered": manifest.get("rows_covered"),
        "details": details if details is None or isinstance(details, str) else json.dumps(details),
    }


def _latest_manifest(rows: list[dict]) -> dict | None:
    if not rows:
        return None
    return max(rows, key=lambda row: (row["published_at"], row["run_id"]))


def read_published(spark, settings: Settings) -> Published | None:
    """The newest publication through Spark: manifest row + each view at its version."""
    manifest_table = table_path("batch_manifest", settings)
    if not is_delta_table(manifest_table):
        return None
    rows = [
        row.asDict(recursive=True)
        for row in read_table(spark, "batch_manifest", settings).collect()
    ]
    manifest = _latest_manifest(rows)
    if manifest is None:
        return None
    views = {
        name: read_table(spark, name, settings, version=version)
        for name, version in manifest["table_versions"].items()
    }
    return Published(manifest, views)


def read_published_arrow(settings: Settings) -> Published | None:
    """The newest publication through delta-rs (no JVM), as pyarrow tables."""
    if not is_delta_table(table_path("batch_manifest", settings)):
        return None
    manifest = _latest_manifest(read_table_arrow("batch_manifest", settings).to_pylist())
    if manifest is None:
        return None
    manifest["table_versions"] = dict(manifest["table_versions"])
    manifest["partition_offsets"] = dict(manifest["partition_offsets"] or [])
    views = {
        name: read_table_arrow(name, settings, version=version)
        for name, version in manifest["table_versions"].items()
    }
    return Published(manifest, views)


# --- maintenance ------------------------------------------------------------------------


def file_count(table: str | TableSpec, settings: Settings) -> int:
    """Number of data files in the table's latest version (delta-rs)."""
    from deltalake import DeltaTable

    return len(DeltaTable(str(table_path(get_table(table), settings))).file_uris())


def compact(spark, table: str | TableSpec, settings: Settings) -> dict:
    """OPTIMIZE (bin-packing compaction); return Delta's metrics as a dict."""
    from delta.tables import DeltaTable

    spec = get_table(table)
    path = table_path(spec, settings)
    _require_delta(spec, path)
    result = DeltaTable.forPath(spark, str(path)).optimize().executeCompaction()
    metrics = result.collect()[0]["metrics"]
    return metrics.asDict(recursive=True) if metrics is not None else {}


def vacuum(
    spark,
    table: str | TableSpec,
    settings: Settings,
    retention_hours: float | None = None,
    allow_below_floor: bool = False,
) -> None:
    """VACUUM files no version within retention_hours needs (default: the floor).

    Retention below settings.lake_vacuum_floor_hours is refused unless allow_below_floor
    (tests) says so: a shorter window can break time travel and concurrent readers.
    """
    from delta.tables import DeltaTable

    spec = get_table(table)
    path = table_path(spec, settings)
    _require_delta(spec, path)
    floor = settings.lake_vacuum_floor_hours
    hours = floor if retention_hours is None else retention_hours
    if hours < floor and not allow_below_floor:
        raise ValueError(
            f"vacuum retention {hours} h is below the floor of {floor} h "
            "(PROGNOS_LAKE_VACUUM_FLOOR_HOURS)"
        )
    confs = {LISTING_PARALLELISM_CONF: str(max(2, settings.spark_shuffle_partitions))}
    if hours < 168:  # Delta's own safety check; the floor above replaces it
        confs[RETENTION_CHECK_CONF] = "false"
    with _session_confs(spark, confs):
        DeltaTable.forPath(spark, str(path)).vacuum(hours)


@contextlib.contextmanager
def _session_confs(spark, confs: Mapping[str, str]):
    """Set session confs for the duration of a block, then restore them."""
    previous = {key: spark.conf.get(key, None) for key in confs}
    for key, value in confs.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


BATCH_FILE = re.compile(r"^\d+$")


def cleanup_checkpoints(root: Path, keep_latest: int = 10) -> list[Path]:
    """In every streaming checkpoint under root, delete offsets/commits log entries older
    than the newest keep_latest batches; return the removed files.

    A restart reads the newest batch and the one before it, so keep_latest is at least 2.
    """
    if keep_latest < 2:
        raise ValueError("keep_latest must be at least 2 (a restart reads the last two batches)")
    removed: list[Path] = []
    for offsets_dir in sorted(Path(root).rglob("offsets")):
        checkpoint = offsets_dir.parent
        if not (checkpoint / "metadata").exists():
            continue
        for log_name in ("offsets", "commits"):
            removed += _prune_batch_log(checkpoint / log_name, keep_latest)
    return removed


def _prune_batch_log(log_dir: Path, keep_latest: int) -> list[Path]:
    if not log_dir.is_dir():
        return []
    batches = sorted(int(p.name) for p in log_dir.iterdir() if BATCH_FILE.match(p.name))
    removed = []
    for batch in batches[:-keep_latest]:
        for path in (log_dir / str(batch), log_dir / f".{batch}.crc"):
            if path.exists():
                path.unlink()
                removed.append(path)
    return removed


def remove_checkpoint(settings: Settings, query_name: str) -> bool:
    """Delete a query's checkpoint (it restarts from its starting offsets)."""
    path = checkpoint_path(settings, query_name)
    if path.exists():
        shutil.rmtree(path)
        return True
    return False


def wait_for(condition, timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll condition() until true or timeout; True if it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())


# The public name of the idempotent-txn wrapper, for writes
# idempotent_merge does not cover (a MERGE that also deletes matched rows).
def with_idempotent_txn(spark, app_id: str, version: int, action) -> None:
    """Run action (a Delta write) with txnAppId/txnVersion set: a replay is skipped."""
    _with_txn(spark, app_id, version, action)

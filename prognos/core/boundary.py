"""The exact batch/speed boundary: the Kafka offsets the newest batch manifest covers.

A reading at (partition, offset) is covered by the batch views when offset is below the
manifest's next offset for that partition. The speed view keeps, per machine, the offsets
of its readings not yet covered (`pending_offsets`); `expire_speed_view` drops the covered
ones after a batch run and deletes rows with nothing left. Both the speed layer and the
batch DAG call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from prognos.core.lake import TableFollower, read_table_arrow
from prognos.core.settings import Settings
from prognos.core.tables import is_delta_table, table_path

_followers: dict[str, ManifestFollower] = {}


def _newest_offsets(rows: list[dict]) -> dict[int, int]:
    """Next offset per partition of the newest published manifest row ({} before any)."""
    rows = [row for row in rows if row.get("published_at") is not None]
    if not rows:
        return {}
    newest = max(rows, key=lambda row: (row["published_at"], row["run_id"]))
    return {int(k): int(v) for k, v in dict(newest.get("partition_offsets") or ()).items()}


def manifest_offsets(settings: Settings) -> dict[int, int]:
    """Next offset per Kafka partition of the newest published manifest ({} before any)."""
    if not is_delta_table(table_path("batch_manifest", settings)):
        return {}
    return _newest_offsets(read_table_arrow("batch_manifest", settings).to_pylist())


class ManifestFollower:
    """manifest_offsets of one lake for a long-running process: the manifest table's
    delta-rs handle is kept and brought up to date (a listing of new log entries), and its
    rows are read again only when its version moved."""

    def __init__(self, settings: Settings):
        self._tables = TableFollower(settings)
        self._version: int | None = None
        self._offsets: dict[int, int] = {}

    def offsets(self) -> dict[int, int]:
        table = self._tables.latest("batch_manifest")
        if table is None:
            return {}
        version = table.version()
        if version != self._version:
            self._offsets = _newest_offsets(table.to_pyarrow_table().to_pylist())
            self._version = version
        return self._offsets


def followed_manifest_offsets(settings: Settings) -> dict[int, int]:
    """The newest manifest's offsets now, through this process' follower of the lake."""
    key = str(settings.lake)
    if key not in _followers:
        _followers[key] = ManifestFollower(settings)
    return _followers[key].offsets()


def uncovered(offsets: Iterable[int], partition: int, boundary: Mapping[int, int]) -> list[int]:
    """The offsets of `partition` that the boundary does not cover, in order."""
    return uncovered_array(offsets, partition, boundary).tolist()


def uncovered_array(offsets, partition: int, boundary: Mapping[int, int]) -> np.ndarray:
    """`uncovered` as a sorted int64 array: a machine's pending offsets number every reading
    since the last batch run, so per-offset Python work grows with the time between runs."""
    values = np.asarray(offsets, dtype=np.int64)
    return np.sort(values[values >= boundary.get(int(partition), 0)])


def expire_speed_view(spark, settings: Settings, boundary: Mapping[int, int] | None = None):
    """Drop speed-view readings the newest manifest covers: rows with nothing left are
    deleted, the others keep only their uncovered offsets and count. Idempotent."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = table_path("speed_view", settings)
    boundary = manifest_offsets(settings) if boundary is None else dict(boundary)
    if not boundary or not is_delta_table(path):
        return {"expired": 0, "trimmed": 0}
    floor = F.coalesce(
        F.create_map(*[F.lit(x) for pair in boundary.items() for x in pair])[
            F.col("kafka_partition")
        ],
        F.lit(0).cast("long"),
    )
    left = F.filter("pending_offsets", lambda offset: offset >= floor)
    table = DeltaTable.forPath(spark, str(path))
    rows = table.toDF()
    expired = rows.where(F.size(left) == 0).count()
    trimmed = rows.where((F.size(left) > 0) & (F.size(left) < F.size("pending_offsets"))).count()
    if expired:
        table.delete(F.size(left) == 0)
    if trimmed:
        table.update(
            F.size(left) < F.size("pending_offsets"),
            {"pending_offsets": left, "readings_count": F.size(left).cast("long")},
        )
    return {"expired": expired, "trimmed": trimmed, "boundary": boundary}

"""The exact merge of the batch view and the speed view (the heart of the Lambda design).

The batch manifest records the next Kafka offset per partition its views cover. A speed
row lists the offsets of its machine's readings that were beyond the boundary when it was
written (`pending_offsets`); the merge filters them again against the manifest pinned by
the snapshot, so a speed row written before a batch run cannot count readings that run
now covers. Per machine: readings = batch count + uncovered speed readings; the state
(cycle, RUL, level, model) comes from speed only when its newest reading is uncovered and
beyond the batch's last cycle. No reading is counted twice or missed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prognos.core.alerting import ALERT_LEVELS
from prognos.core.boundary import uncovered

__all__ = [
    "ALERT_LEVELS",
    "Boundary",
    "batch_states",
    "latest_boundary",
    "merge_machine_states",
    "overlay_speed",
]


@dataclass(frozen=True)
class Boundary:
    """One batch manifest row: what the published batch views cover."""

    run_id: str
    published_at: datetime | None = None
    table_versions: Mapping[str, int] = field(default_factory=dict)
    partition_offsets: Mapping[int, int] = field(default_factory=dict)
    max_event_time: datetime | None = None

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "published_at": _iso(self.published_at),
            "table_versions": dict(self.table_versions),
            "partition_offsets": {str(k): v for k, v in self.partition_offsets.items()},
            "max_event_time": _iso(self.max_event_time),
        }


def latest_boundary(manifest_rows: Iterable[Mapping]) -> Boundary | None:
    """The most recently published manifest row, or None before the first publication."""
    rows = [r for r in manifest_rows if r.get("run_id") and r.get("published_at") is not None]
    if not rows:
        return None
    row = max(rows, key=lambda r: (r["published_at"], r["run_id"]))
    return Boundary(
        run_id=row["run_id"],
        published_at=row.get("published_at"),
        table_versions=dict(row.get("table_versions") or ()),
        partition_offsets={
            int(k): int(v) for k, v in dict(row.get("partition_offsets") or ()).items()
        },
        max_event_time=row.get("max_event_time"),
    )


def merge_machine_states(
    batch_rows: Iterable[Mapping],
    speed_rows: Iterable[Mapping],
    offsets: Mapping[int, int],
    level_of: Callable[[float | None], str],
) -> dict[str, dict]:
    """Merged state per machine id from batch rows and speed rows (one row per machine each).

    `offsets` is the pinned manifest's next offset per partition ({} before any batch).
    """
    return overlay_speed(batch_states(batch_rows, level_of), speed_rows, offsets, level_of)[0]


def batch_states(
    batch_rows: Iterable[Mapping], level_of: Callable[[float | None], str]
) -> dict[str, dict]:
    """The state of every machine the batch view holds."""
    return {
        row["machine_id"]: _state(row, "batch", row["last_cycle"], row["readings_count"], level_of)
        for row in batch_rows
    }


def overlay_speed(
    base: Mapping[str, dict],
    speed_rows: Iterable[Mapping],
    offsets: Mapping[int, int],
    level_of: Callable[[float | None], str],
) -> tuple[dict[str, dict], set[str]]:
    """`base` (batch states, never modified) with the speed rows merged in, and the ids
    whose state differs from `base`."""
    merged, changed = dict(base), set()
    for speed in speed_rows:
        pending = _uncovered_offsets(speed, offsets)
        if not pending:
            continue  # everything this row saw is covered by the batch views
        machine_id = speed["machine_id"]
        batch = merged.get(machine_id)
        batch_cycle = batch["batch_cycle"] if batch else None
        batch_count = batch["readings_count"] if batch else 0
        changed.add(machine_id)
        if batch is not None and not _beyond(speed.get("last_cycle"), batch_cycle):
            # late readings: counted, the state stays
            merged[machine_id] = {**batch, "readings_count": batch_count + len(pending)}
            continue
        merged[machine_id] = _state(
            speed, "speed", batch_cycle, batch_count + len(pending), level_of
        )
    return merged, changed


def _uncovered_offsets(speed: Mapping, offsets: Mapping[int, int]) -> list[int]:
    pending = speed.get("pending_offsets")
    if pending is None:  # a row without offsets: trust its count
        return list(range(int(speed.get("readings_count") or 0)))
    return uncovered(pending, int(speed.get("kafka_partition") or 0), offsets)


def _beyond(speed_cycle: int | None, batch_cycle: int | None) -> bool:
    if speed_cycle is None:
        return False
    return batch_cycle is None or speed_cycle > batch_cycle


def _state(
    row: Mapping,
    source: str,
    batch_cycle: int | None,
    readings: int | None,
    level_of: Callable[[float | None], str],
) -> dict:
    rul = row.get("predicted_rul")
    state = {
        "machine_id": row["machine_id"],
        "last_cycle": row.get("last_cycle"),
        "last_event_time": row.get("last_event_time"),
        "readings_count": int(readings or 0),
        "predicted_rul": rul,
        "alert_level": level_of(rul),
        "model_version": row.get("model_version"),
        "source": source,
        "batch_cycle": batch_cycle,
    }
    # optional columns (batch and speed views gained them over time): picked up when present
    sensors, features = _as_dict(row.get("sensors")), _as_dict(row.get("features"))
    health = row.get("health_index")
    state["health_index"] = features.get("health_index") if health is None else health
    if sensors:
        state["sensors"] = sensors
        state["sensors_cycle"] = row.get("last_cycle")
    if features:
        state["features"] = features
    return state


def _as_dict(value) -> dict:
    """A Delta map column as delta-rs returns it (a list of pairs), a dict, or nothing."""
    return dict(value) if value else {}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None

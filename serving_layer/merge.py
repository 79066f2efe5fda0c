"""The exact merge of the batch view and the speed view (the heart of the Lambda design).

The batch manifest says what the batch views cover. Per machine the batch row answers for
everything up to its `last_cycle`; a speed row holds the readings newer than the batch
boundary and wins only when it reaches beyond what batch covers for that machine. Its
readings are added to the batch count, so no event is counted twice or missed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

RED_MAX_RUL = 30.0  # fails within 30 cycles: act now
AMBER_MAX_RUL = 60.0
ALERT_LEVELS = ("red", "amber", "green", "unknown")


def alert_level(predicted_rul: float | None) -> str:
    if predicted_rul is None or math.isnan(predicted_rul):
        return "unknown"
    if predicted_rul <= RED_MAX_RUL:
        return "red"
    return "amber" if predicted_rul <= AMBER_MAX_RUL else "green"


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
    rows = [row for row in manifest_rows if row.get("run_id") is not None]
    if not rows:
        return None
    row = max(rows, key=lambda r: (r.get("published_at") is not None, r.get("published_at")))
    return Boundary(
        run_id=row["run_id"],
        published_at=row.get("published_at"),
        table_versions=dict(row.get("table_versions") or ()),
        partition_offsets=dict(row.get("partition_offsets") or ()),
        max_event_time=row.get("max_event_time"),
    )


def merge_machine_states(
    batch_rows: Iterable[Mapping], speed_rows: Iterable[Mapping]
) -> dict[str, dict]:
    """Merged state per machine id from batch rows and speed rows (one row per machine each)."""
    merged = {row["machine_id"]: _from_batch(row) for row in batch_rows}
    for speed in speed_rows:
        machine_id = speed["machine_id"]
        batch = merged.get(machine_id)
        if batch is None:
            merged[machine_id] = _from_speed(speed, batch_cycle=None, batch_count=0)
        elif _beyond(speed.get("last_cycle"), batch["batch_cycle"]):
            merged[machine_id] = _from_speed(speed, batch["batch_cycle"], batch["readings_count"])
    return merged


def _beyond(speed_cycle: int | None, batch_cycle: int | None) -> bool:
    if speed_cycle is None:
        return False
    return batch_cycle is None or speed_cycle > batch_cycle


def _from_batch(row: Mapping) -> dict:
    return _state(row, "batch", batch_cycle=row.get("last_cycle"), readings=row["readings_count"])


def _from_speed(row: Mapping, batch_cycle: int | None, batch_count: int) -> dict:
    readings = (batch_count or 0) + (row.get("readings_count") or 0)
    return _state(row, "speed", batch_cycle=batch_cycle, readings=readings)


def _state(row: Mapping, source: str, batch_cycle: int | None, readings: int | None) -> dict:
    rul = row.get("predicted_rul")
    return {
        "machine_id": row["machine_id"],
        "last_cycle": row.get("last_cycle"),
        "last_event_time": row.get("last_event_time"),
        "readings_count": int(readings or 0),
        "predicted_rul": rul,
        "alert_level": alert_level(rul),
        "model_version": row.get("model_version"),
        "source": source,
        "batch_cycle": batch_cycle,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None

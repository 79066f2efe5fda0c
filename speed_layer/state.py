"""Per-machine state of the speed layer: the function `applyInPandasWithState` runs.

Rows of one Kafka key (the machine id) arrive with their raw value and coordinates. Each
row is validated with the fleet's event contract, the rules silver applies too (invalid ->
a "dead" row with the reasons),
checked against the watermark (behind it -> a "late" row), and the others are merged by
cycle into a bounded history (out-of-order cycles land in place; a repeated cycle is kept
once). When the machine got new readings, one "view" row is emitted carrying the latest
cycle and the recent history the champion's features and window need (raw bytes). The
driver scores every machine of a micro-batch in one call (speed_layer.scorer) and routes
the rows by `kind`.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS
from prognos.core.events import judge_wire, parse_event_time
from prognos.core.registry import ALIASES_FILE, FilesystemRegistry, RegistryError
from prognos.core.scoring import ServingSpec
from prognos.core.settings import Settings

READING_COLUMNS = (*SETTING_COLUMNS, *SENSOR_COLUMNS)
WIDTH = len(READING_COLUMNS)

# Arrays are kept as raw int64/float64 bytes: pyspark 4.2 fails to read array types in a
# state schema ("KeyError: 'elementType'"). `pending` and `level` are unused (the
# speed view accumulates the pending offsets; the driver keeps the alert levels,
# speed_layer.scorer.AlertMemory); they stay so existing checkpoints load.
STATE_SCHEMA = (
    "partition int, cycles binary, times binary, offsets binary, "
    "readings binary, pending binary, level string"
)
# What the state function knows; the driver adds the scores and alert fields. Each column
# costs a pandas and an Arrow conversion per machine and micro-batch.
OUTPUT_SCHEMA = (
    "kind string, machine_id string, cycle int, event_time timestamp, "
    "kafka_partition int, kafka_offset long, value binary, reason string, "
    "watermark timestamp, pending_offsets array<long>, sensors_json string, "
    "history_cycles binary, history_readings binary"
)
OUTPUT_COLUMNS = [part.strip().split(" ")[0] for part in OUTPUT_SCHEMA.split(",")]


class History:
    """A machine's recent readings by cycle, and the offsets of those added in this batch."""

    def __init__(self, partition, cycles, times, offsets, readings):
        self.partition = partition
        values = np.asarray(readings, dtype=np.float64).reshape(-1, WIDTH)
        self.rows = {
            c: (t, o, values[i])
            for i, (c, t, o) in enumerate(
                zip(
                    np.asarray(cycles).tolist(),
                    np.asarray(times).tolist(),
                    np.asarray(offsets).tolist(),
                    strict=True,
                )
            )
        }
        self.added: list[int] = []

    @classmethod
    def empty(cls) -> History:
        return cls(None, [], [], [], [])

    @classmethod
    def from_state(cls, state) -> History:
        if not state.exists:
            return cls.empty()
        partition, cycles, times, offsets, readings, _pending, _level = state.get
        longs = [np.frombuffer(bytes(b), dtype=np.int64) for b in (cycles, times, offsets)]
        return cls(partition, *longs, np.frombuffer(bytes(readings), dtype=np.float64))

    def to_state(self) -> tuple:
        cycles = sorted(self.rows)
        readings = np.concatenate([self.rows[c][2] for c in cycles]).astype(np.float64)
        return (
            self.partition,
            np.asarray(cycles, dtype=np.int64).tobytes(),
            np.asarray([self.rows[c][0] for c in cycles], dtype=np.int64).tobytes(),
            np.asarray([self.rows[c][1] for c in cycles], dtype=np.int64).tobytes(),
            readings.tobytes(),
            b"",
            None,
        )

    def behind_window(self, cycle: int, capacity: int) -> bool:
        """True when the cycle is older than everything a full history keeps."""
        return len(self.rows) >= capacity and cycle < min(self.rows)

    def add(self, cycle: int, time_ms: int, offset: int, readings: np.ndarray) -> None:
        if cycle in self.rows:
            return  # a repeated cycle counts once, like silver's dedup
        self.rows[cycle] = (time_ms, offset, readings)
        self.added.append(offset)

    def trim(self, capacity: int) -> None:
        for cycle in sorted(self.rows)[:-capacity]:
            del self.rows[cycle]

    def frame(self, machine_id: str) -> pd.DataFrame:
        cycles = sorted(self.rows)
        values = np.vstack([self.rows[c][2] for c in cycles])
        columns = {
            "machine_id": np.full(len(cycles), machine_id, dtype=object),
            "cycle": np.asarray(cycles, dtype=np.int64),
        }
        columns.update(zip(READING_COLUMNS, values.T, strict=True))
        return pd.DataFrame(columns)


def make_state_function(settings: Settings):
    """The function for applyInPandasWithState (settings travel to the executors)."""

    def update(key, frames: Iterator[pd.DataFrame], state) -> Iterator[pd.DataFrame]:
        out = process_machine(key[0], list(frames), state, settings)
        if out:
            yield output_frame(out)

    return update


def output_frame(records: list[dict]) -> pd.DataFrame:
    """The state function's output records as one frame of OUTPUT_COLUMNS."""
    return pd.DataFrame({c: [r[c] for r in records] for c in OUTPUT_COLUMNS})


def process_machine(
    machine_key: str, frames: list[pd.DataFrame], state, settings: Settings
) -> list:
    """Route one micro-batch of a Kafka key's rows (the frames pyspark hands them over
    in); update the state; return output records."""
    watermark_ms = state.getCurrentWatermarkMs()
    history = History.from_state(state)
    needed = champion_history_needed(settings)
    capacity = max(settings.speed_history_cycles, needed)
    out: list[dict] = []
    fresh = False
    for row in _records(frames):
        event, time_ms, reason = _checked(row, machine_key, settings)
        if reason is not None:
            out.append(_dead(row, reason))
            continue
        if time_ms < watermark_ms or history.behind_window(event["cycle"], capacity):
            out.append(_late(row, event, watermark_ms))
            continue
        history.partition = row.kafka_partition
        readings = np.array(
            [event["settings"][c] for c in SETTING_COLUMNS]
            + [event["sensors"][c] for c in SENSOR_COLUMNS],
            dtype=np.float64,
        )
        history.add(event["cycle"], time_ms, row.kafka_offset, readings)
        fresh = True
    if fresh:
        history.trim(capacity)
        out.append(_view(machine_key, history, needed or capacity))
        state.update(history.to_state())
    return out


Record = namedtuple("Record", "machine_key value kafka_partition kafka_offset")


def _records(frames: list[pd.DataFrame]) -> list[Record]:
    """A key's input rows as plain records in Kafka offset order (no pandas per row)."""
    columns = {
        name: np.concatenate([frame[name].to_numpy() for frame in frames])
        for name in Record._fields
    }
    order = np.argsort(columns["kafka_offset"], kind="stable")
    return [
        Record(key, None if value is None else bytes(value), int(partition), int(offset))
        for key, value, partition, offset in zip(
            *(columns[name][order] for name in Record._fields), strict=True
        )
    ]


def _checked(row: Record, machine_key: str, settings: Settings):
    """(event, event time in ms, None) for a valid event, else (None, None, reason): the
    fleet's event contract, every rule silver's quality suite has (the reason names each
    broken rule, as quarantine rows do), and the Kafka key must be the machine id."""
    event, violations = judge_wire(row.value, settings, datetime.now(UTC).timestamp())
    if violations:
        return None, None, "; ".join(map(str, violations))
    if event["machine_id"] != machine_key:
        reason = f"Kafka key {machine_key!r} differs from machine_id {event['machine_id']!r}"
        return None, None, reason
    event_time = parse_event_time(event["event_time"]).timestamp()
    return event, int(event_time * 1000), None


def _base(row: Record) -> dict:
    return dict.fromkeys(OUTPUT_COLUMNS) | {
        "kafka_partition": row.kafka_partition,
        "kafka_offset": row.kafka_offset,
        "value": row.value,
    }


def _dead(row: Record, reason: str) -> dict:
    return _base(row) | {"kind": "dead", "reason": reason, "machine_id": row.machine_key}


def _late(row: Record, event: dict, watermark_ms: int) -> dict:
    return _base(row) | {
        "kind": "late",
        "machine_id": event["machine_id"],
        "cycle": int(event["cycle"]),
        "event_time": pd.Timestamp(parse_event_time(event["event_time"])),
        "watermark": pd.Timestamp(watermark_ms, unit="ms", tz="UTC"),
    }


def _view(machine_id: str, history: History, cycles: int) -> dict:
    """The machine's view record with its last `cycles` readings for the driver's scoring
    and the offsets of this batch's readings (the driver drops those the newest manifest
    covers; the speed view appends the rest to the machine's pending offsets)."""
    new_offsets = np.asarray(history.added, dtype=np.int64)
    kept = sorted(history.rows)[-cycles:]
    last_cycle = kept[-1]
    time_ms, offset, readings = history.rows[last_cycle]
    return dict.fromkeys(OUTPUT_COLUMNS) | {
        "kind": "view",
        "machine_id": machine_id,
        "cycle": int(last_cycle),
        "event_time": pd.Timestamp(time_ms, unit="ms", tz="UTC"),
        "kafka_partition": history.partition,
        "kafka_offset": int(new_offsets[-1]) if len(new_offsets) else int(offset),
        "pending_offsets": new_offsets,
        "sensors_json": json.dumps(dict(zip(READING_COLUMNS, map(float, readings), strict=True))),
        "history_cycles": np.asarray(kept, dtype=np.int64).tobytes(),
        "history_readings": np.concatenate([history.rows[c][2] for c in kept])
        .astype(np.float64)
        .tobytes(),
    }


def decode_history(cycles: bytes, readings: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A view record's history: cycles (n,) and readings (n, WIDTH, READING_COLUMNS order)."""
    return (
        np.frombuffer(cycles, dtype=np.int64),
        np.frombuffer(readings, dtype=np.float64).reshape(-1, WIDTH),
    )


_specs: dict[tuple[str, str], tuple[tuple | None, int]] = {}


def champion_history_needed(settings: Settings) -> int:
    """Cycles the champion's features and window need (0 without a champion), from the
    registry's metadata only (no model load); re-read when the alias file changes."""
    registry = FilesystemRegistry(settings.registry)
    key = (str(settings.registry), settings.serving_model)
    try:
        stat = os.stat(registry.model_dir(settings.serving_model) / ALIASES_FILE)
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except (FileNotFoundError, RegistryError):
        stamp = None
    cached = _specs.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    needed = 0
    try:
        version = registry.aliases(settings.serving_model).get("champion") if stamp else None
        if version is not None:
            metadata = registry.metadata(settings.serving_model, int(version))
            needed = ServingSpec.from_metadata(metadata).history_needed
    except RegistryError:
        needed = 0
    _specs[key] = (stamp, needed)
    return needed

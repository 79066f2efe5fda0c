"""Per-machine state of the speed layer: the function `applyInPandasWithState` runs.

Rows of one Kafka key (the machine id) arrive with their raw value and coordinates. Each
row is validated with the shared event contract (invalid -> a "dead" row with the reason),
checked against the watermark (behind it -> a "late" row), and the others are merged by
cycle into a bounded history (out-of-order cycles land in place; a repeated cycle is kept
once). When the machine got new readings, features come from the shared feature code, the
champion scores the latest window, and one "view" row is emitted, plus an "alert" row
when the alert level rises. The driver routes the rows by `kind`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from prognos.core import alerting, boundary
from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS
from prognos.core.events import event_reasons, parse_event_time
from prognos.core.features import compute_features
from prognos.core.scoring import Champion, champion_watcher, model_window
from prognos.core.settings import Settings

READING_COLUMNS = (*SETTING_COLUMNS, *SENSOR_COLUMNS)
WIDTH = len(READING_COLUMNS)

# Arrays are kept as raw int64/float64 bytes: pyspark 4.2 fails to read array types in a
# state schema ("KeyError: 'elementType'").
STATE_SCHEMA = (
    "partition int, cycles binary, times binary, offsets binary, "
    "readings binary, pending binary, level string"
)
OUTPUT_SCHEMA = (
    "kind string, machine_id string, cycle int, event_time timestamp, "
    "kafka_partition int, kafka_offset long, value binary, reason string, "
    "watermark timestamp, readings_count long, pending_offsets array<long>, "
    "predicted_rul double, alert_level string, previous_level string, model_version string, "
    "sensors_json string, features_json string, alert_id string, threshold double"
)
OUTPUT_COLUMNS = [part.strip().split(" ")[0] for part in OUTPUT_SCHEMA.split(",")]


class History:
    """A machine's recent readings by cycle plus the offsets beyond the batch boundary."""

    def __init__(self, partition, cycles, times, offsets, readings, pending, level):
        self.partition = partition
        self.rows = {
            int(c): (int(t), int(o), np.asarray(readings[i * WIDTH : (i + 1) * WIDTH]))
            for i, (c, t, o) in enumerate(zip(cycles, times, offsets, strict=True))
        }
        self.pending = [int(o) for o in pending]
        self.level = level

    @classmethod
    def empty(cls) -> History:
        return cls(None, [], [], [], [], [], None)

    @classmethod
    def from_state(cls, state) -> History:
        if not state.exists:
            return cls.empty()
        partition, cycles, times, offsets, readings, pending, level = state.get
        longs = [np.frombuffer(bytes(b), dtype=np.int64) for b in (cycles, times, offsets)]
        floats = np.frombuffer(bytes(readings), dtype=np.float64)
        return cls(partition, *longs, floats, np.frombuffer(bytes(pending), np.int64), level)

    def to_state(self) -> tuple:
        cycles = sorted(self.rows)
        readings = np.concatenate([self.rows[c][2] for c in cycles]).astype(np.float64)
        return (
            self.partition,
            np.asarray(cycles, dtype=np.int64).tobytes(),
            np.asarray([self.rows[c][0] for c in cycles], dtype=np.int64).tobytes(),
            np.asarray([self.rows[c][1] for c in cycles], dtype=np.int64).tobytes(),
            readings.tobytes(),
            np.asarray(self.pending, dtype=np.int64).tobytes(),
            self.level,
        )

    def behind_window(self, cycle: int, capacity: int) -> bool:
        """True when the cycle is older than everything a full history keeps."""
        return len(self.rows) >= capacity and cycle < min(self.rows)

    def add(self, cycle: int, time_ms: int, offset: int, readings: np.ndarray) -> None:
        if cycle in self.rows:
            return  # a repeated cycle counts once, like silver's dedup
        self.rows[cycle] = (time_ms, offset, readings)
        self.pending.append(offset)

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
        rows = pd.concat(list(frames), ignore_index=True)
        out = process_machine(key[0], rows, state, settings)
        if out:
            yield pd.DataFrame(out, columns=OUTPUT_COLUMNS)

    return update


def process_machine(machine_key: str, rows: pd.DataFrame, state, settings: Settings) -> list:
    """Route one micro-batch of a Kafka key's rows; update the state; return output rows."""
    watermark_ms = state.getCurrentWatermarkMs()
    history = History.from_state(state)
    champion = champion_watcher(settings).current()
    capacity = max(settings.speed_history_cycles, champion.spec.history_needed if champion else 0)
    out: list[dict] = []
    fresh = False
    for row in rows.sort_values("kafka_offset").itertuples(index=False):
        event, reason = _checked(row, machine_key, settings)
        if reason is not None:
            out.append(_dead(row, reason))
            continue
        time_ms = int(parse_event_time(event["event_time"]).timestamp() * 1000)
        if time_ms < watermark_ms or history.behind_window(event["cycle"], capacity):
            out.append(_late(row, event, watermark_ms))
            continue
        history.partition = int(row.kafka_partition)
        readings = np.array(
            [event["settings"][c] for c in SETTING_COLUMNS]
            + [event["sensors"][c] for c in SENSOR_COLUMNS],
            dtype=np.float64,
        )
        history.add(event["cycle"], time_ms, int(row.kafka_offset), readings)
        fresh = True
    if fresh:
        history.trim(capacity)
        history.pending = boundary.uncovered(
            history.pending, history.partition, boundary.cached_manifest_offsets(settings)
        )
        out.extend(_scored(machine_key, history, champion, settings))
        state.update(history.to_state())
    return out


def _checked(row, machine_key: str, settings: Settings) -> tuple[dict | None, str | None]:
    raw = None if row.value is None else bytes(row.value)
    reasons = event_reasons(raw)
    if reasons:
        return None, "; ".join(reasons)
    event = json.loads(raw)
    if event["machine_id"] != machine_key:
        return None, f"Kafka key {machine_key!r} differs from machine_id {event['machine_id']!r}"
    event_time = parse_event_time(event["event_time"])
    limit = datetime.now(UTC).timestamp() + settings.batch_future_tolerance_s
    if event_time.timestamp() > limit:
        return None, f"event_time {event['event_time']} is in the future"
    return event, None


def _base(row) -> dict:
    return dict.fromkeys(OUTPUT_COLUMNS) | {
        "kafka_partition": int(row.kafka_partition),
        "kafka_offset": int(row.kafka_offset),
        "value": None if row.value is None else bytes(row.value),
    }


def _dead(row, reason: str) -> dict:
    return _base(row) | {"kind": "dead", "reason": reason, "machine_id": row.machine_key}


def _late(row, event: dict, watermark_ms: int) -> dict:
    return _base(row) | {
        "kind": "late",
        "machine_id": event["machine_id"],
        "cycle": int(event["cycle"]),
        "event_time": pd.Timestamp(parse_event_time(event["event_time"])),
        "watermark": pd.Timestamp(watermark_ms, unit="ms", tz="UTC"),
    }


def _scored(machine_id: str, history: History, champion: Champion | None, settings) -> list:
    last_cycle = max(history.rows)
    time_ms, offset, readings = history.rows[last_cycle]
    features, rul = None, None
    if champion is not None:
        frame = compute_features(
            history.frame(machine_id), champion.spec.condition_model, champion.spec.feature_config
        )
        window = model_window(frame, champion.spec.input_columns, champion.spec.window)
        rul = champion.predict_rul(window)
        names = [c for c in frame.columns if c not in ("machine_id", "cycle")]
        last = frame[names].iloc[-1:].to_numpy(dtype=np.float64)[0]
        features = dict(zip(names, map(float, last), strict=True))
    level = alerting.alert_level(rul, settings)
    view = dict.fromkeys(OUTPUT_COLUMNS) | {
        "kind": "view",
        "machine_id": machine_id,
        "cycle": int(last_cycle),
        "event_time": pd.Timestamp(time_ms, unit="ms", tz="UTC"),
        "kafka_partition": history.partition,
        "kafka_offset": max(history.pending) if history.pending else int(offset),
        "readings_count": len(history.pending),
        "pending_offsets": list(history.pending),
        "predicted_rul": rul,
        "alert_level": level,
        "model_version": champion.version if champion else None,
        "sensors_json": json.dumps(dict(zip(READING_COLUMNS, map(float, readings), strict=True))),
        "features_json": json.dumps(features) if features is not None else None,
    }
    out = [view]
    if alerting.rises(history.level, level):
        out.append(
            view
            | {
                "kind": "alert",
                "previous_level": history.level,
                "alert_id": alerting.alert_id(machine_id, last_cycle, level),
                "threshold": alerting.threshold_of(level, settings),
            }
        )
    if level != "unknown":
        history.level = level
    return out

"""One consistent, in-memory snapshot of the merged views, swapped atomically.

A snapshot pins a version of every table it uses: the speed view's version is taken
FIRST, then the manifest's; the batch views are read at the versions the manifest
recorded. A speed view older than the manifest only lacks the newest readings, while a
manifest older than the speed view could miss readings the speed layer already dropped,
so this order never loses an event. The refresher compares Delta versions (cheap: the
log only) and rebuilds only when one changed; requests never read from disk.
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prognos.core.errors import InvalidQueryError
from serving_layer.merge import ALERT_LEVELS, Boundary, batch_states, latest_boundary, overlay_speed

SORTS = ("rul", "-rul", "alert_level", "-alert_level", "machine_id", "-machine_id")
LEVEL_RANK = {level: rank for rank, level in enumerate(ALERT_LEVELS)}
SERIES_EXCLUDED = {
    "machine_id",
    "source",
    "schema_version",
    "kafka_partition",
    "kafka_offset",
    "ingest_time",
}


class CursorError(InvalidQueryError, ValueError):
    """A pagination cursor that this server did not issue (or for another sort)."""


@dataclass(frozen=True)
class Snapshot:
    versions: dict[str, int | None]
    boundary: Boundary | None
    machines: dict[str, dict]
    orders: dict[str, list[tuple]]  # sort -> ascending keys, each ending with the machine id
    alerts: list[dict]
    history: pa.Table  # silver rows sorted by machine and cycle
    history_slices: dict[str, tuple[int, int]]
    built_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # machine id -> its encoded answer, filled on first request (the snapshot never changes)
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def loaded(self) -> bool:
        return self.versions.get("batch_manifest") is not None or bool(self.machines)

    @functools.cached_property
    def as_of_json(self) -> dict:
        """What the snapshot pins, JSON-ready (computed once per snapshot)."""
        return {
            "built_at": self.built_at.isoformat(),
            "versions": dict(self.versions),
            "boundary": self.boundary.to_dict() if self.boundary else None,
        }

    def as_of(self) -> dict:
        return dict(self.as_of_json)

    def machine_json(self, machine_id: str, true_rul: Callable) -> bytes | None:
        """The JSON answer for one machine (its merged state, true RUL and `as_of`), encoded
        once per snapshot; None for an unknown machine."""
        body = self.encoded.get(machine_id)
        if body is None:
            state = self.machines.get(machine_id)
            if state is None:
                return None
            truth = true_rul(machine_id, state.get("last_cycle"))
            body = encode_json({**state, "true_rul": truth, "as_of": self.as_of_json})
            self.encoded[machine_id] = body
        return body


def encode_json(payload) -> bytes:
    """Compact UTF-8 JSON, as Starlette's JSONResponse renders it (no NaN: see json_ready)."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def empty_snapshot() -> Snapshot:
    return Snapshot({}, None, {}, {s: [] for s in SORTS}, [], pa.table({}), {})


# --- building -----------------------------------------------------------------------


def current_versions(views) -> dict[str, int | None]:
    """Versions to pin, in the order that never loses an event (speed view first)."""
    versions = {"speed_view": views.version("speed_view")}
    versions["batch_manifest"] = views.version("batch_manifest")
    versions["silver"] = views.version("silver")
    versions["alerts"] = views.version("alerts")
    return versions


class PinnedCache:
    """What was derived from a table at a version; the newest version per table is kept, so
    a speed-view change does not re-read the batch views, silver or alerts."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int | None, object]] = {}

    def get(self, name: str, version: int | None, derive: Callable[[], object]):
        entry = self._entries.get(name)
        if entry is not None and entry[0] == version:
            return entry[1]
        value = derive()
        self._entries[name] = (version, value)
        return value


def build_snapshot(
    views,
    versions: dict[str, int | None],
    level_of: Callable[[float | None], str],
    cache: PinnedCache | None = None,
) -> Snapshot:
    cache = cache or PinnedCache()
    versions = dict(versions)
    boundary = cache.get(
        "batch_manifest",
        versions["batch_manifest"],
        lambda: _boundary(views, versions["batch_manifest"]),
    )
    history, slices = cache.get(
        "silver",
        versions["silver"],
        lambda: _index_history(_read_pinned(views, "silver", versions)),
    )
    base: dict[str, dict] = {}
    if boundary is not None and "machine_state" in boundary.table_versions:
        versions["machine_state"] = boundary.table_versions["machine_state"]
        # served-ready batch states, kept while neither the batch view nor silver changes:
        # a speed-view change only re-merges the machines its rows name
        base = cache.get(
            "batch_states",
            (versions["machine_state"], versions["silver"]),
            lambda: _ready(
                batch_states(
                    views.read("machine_state", versions["machine_state"]).to_pylist(), level_of
                ),
                history,
                slices,
            ),
        )
    speed_rows = _read_pinned(views, "speed_view", versions).to_pylist()
    offsets = boundary.partition_offsets if boundary is not None else {}
    machines, changed = overlay_speed(base, speed_rows, offsets, level_of)
    machines.update(_ready({m: machines[m] for m in changed}, history, slices))
    alerts = cache.get("alerts", versions["alerts"], lambda: _sorted_alerts(views, versions))
    return Snapshot(versions, boundary, machines, _orders(machines), alerts, history, slices)


def _ready(states: dict[str, dict], history: pa.Table, slices: dict) -> dict[str, dict]:
    """States as served: latest sensors attached, JSON-ready values (new dicts)."""
    _attach_latest_sensors(states, history, slices)
    return {machine_id: json_ready(state) for machine_id, state in states.items()}


def _boundary(views, version: int | None) -> Boundary | None:
    if version is None:
        return None
    return latest_boundary(views.read("batch_manifest", version).to_pylist())


def _sorted_alerts(views, versions: dict) -> list[dict]:
    alerts = _read_pinned(views, "alerts", versions).to_pylist()
    alerts.sort(key=lambda a: (a.get("raised_at") is None, a.get("raised_at")))
    return alerts


def json_ready(value):
    """Datetimes as ISO strings, non-finite floats as None: states are served as they are.
    (It runs over every value of every state per snapshot: plain values are passed over
    without a call.)"""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):  # floats inline: a sensors map holds dozens of them
        return {
            k: (v if type(v) in _PLAIN else json_ready(v) if type(v) is not float else _finite(v))
            for k, v in value.items()
        }
    if isinstance(value, datetime):
        return value.isoformat()
    return value


_PLAIN = frozenset({str, int, bool, type(None)})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _read_pinned(views, name: str, versions: dict) -> pa.Table:
    if versions.get(name) is None:
        return views.read(name, None).slice(0, 0)
    return views.read(name, versions[name])


def _index_history(silver: pa.Table) -> tuple[pa.Table, dict[str, tuple[int, int]]]:
    if silver.num_rows == 0:
        return silver, {}
    order = pc.sort_indices(silver, [("machine_id", "ascending"), ("cycle", "ascending")])
    silver = silver.take(order)
    ids = np.asarray(silver.column("machine_id").to_numpy(zero_copy_only=False))
    unique, starts = np.unique(ids, return_index=True)
    ends = [*starts[1:], len(ids)]
    return silver, {str(m): (int(s), int(e)) for m, s, e in zip(unique, starts, ends, strict=True)}


def _attach_latest_sensors(machines: dict, history: pa.Table, slices: dict) -> None:
    columns = [c for c in history.column_names if c.startswith(("sensor_", "setting_"))]
    for machine_id, state in machines.items():
        span = slices.get(machine_id)
        if "sensors" in state:  # the view row carried its latest readings
            continue
        if span is None:
            state["sensors"], state["sensors_cycle"] = {}, None
            continue
        last = history.slice(span[1] - 1, 1).to_pylist()[0]
        state["sensors"] = {c: last[c] for c in columns}
        state["sensors_cycle"] = last.get("cycle")


def _rul_key(state: dict) -> float:
    rul = state.get("predicted_rul")
    return math.inf if rul is None or math.isnan(rul) else float(rul)


def _orders(machines: dict[str, dict]) -> dict[str, list[tuple]]:
    states = machines.values()
    by_rul = sorted((_rul_key(s), s["machine_id"]) for s in states)
    by_level = sorted((LEVEL_RANK[s["alert_level"]], _rul_key(s), s["machine_id"]) for s in states)
    by_id = sorted((s["machine_id"],) for s in states)
    return {
        "rul": by_rul,
        "-rul": by_rul,
        "alert_level": by_level,
        "-alert_level": by_level,
        "machine_id": by_id,
        "-machine_id": by_id,
    }


# --- queries ------------------------------------------------------------------------


def encode_cursor(sort: str, key: tuple) -> str:
    raw = json.dumps({"s": sort, "k": [None if k == math.inf else k for k in key]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(sort: str, cursor: str) -> tuple:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        key = tuple(math.inf if k is None else k for k in payload["k"])
        ok = payload["s"] == sort and key and isinstance(key[-1], str)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CursorError("invalid cursor: pass the next_cursor of a previous page, same sort")
    return key


def query_fleet(
    snapshot: Snapshot,
    *,
    sort: str = "rul",
    alert_level: str | None = None,
    min_rul: float | None = None,
    max_rul: float | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[dict], str | None]:
    """A page of machines in sort order after `cursor`, and the cursor of the next page."""
    keys = snapshot.orders[sort]
    descending = sort.startswith("-")
    candidates = _after_cursor(keys, decode_cursor(sort, cursor) if cursor else None, descending)
    page: list[dict] = []
    last_key = None
    for key in candidates:
        state = snapshot.machines[key[-1]]
        if not _matches(state, alert_level, min_rul, max_rul):
            continue
        if len(page) == limit:
            return page, encode_cursor(sort, last_key)
        page.append(state)
        last_key = key
    return page, None


def _after_cursor(keys: list[tuple], cursor: tuple | None, descending: bool):
    if not descending:
        start = 0 if cursor is None else bisect.bisect_right(keys, cursor)
        return iter(keys[start:])
    end = len(keys) if cursor is None else bisect.bisect_left(keys, cursor)
    return reversed(keys[:end])


def _matches(state: dict, level: str | None, min_rul: float | None, max_rul: float | None) -> bool:
    if level is not None and state["alert_level"] != level:
        return False
    rul = state.get("predicted_rul")
    if (min_rul is not None or max_rul is not None) and rul is None:
        return False
    if min_rul is not None and rul < min_rul:
        return False
    return max_rul is None or rul <= max_rul


def machine_history(
    snapshot: Snapshot, machine_id: str, start: datetime | None, end: datetime | None
) -> list[dict]:
    span = snapshot.history_slices.get(machine_id)
    if span is None:
        return []
    rows = snapshot.history.slice(span[0], span[1] - span[0])
    rows = rows.select([c for c in rows.column_names if c not in SERIES_EXCLUDED]).to_pylist()
    return [r for r in rows if _within(r.get("event_time"), start, end)]


def _within(value: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    if value is None:
        return start is None and end is None
    return (start is None or value >= start) and (end is None or value <= end)


def alerts_since(snapshot: Snapshot, since: datetime | None, limit: int) -> list[dict]:
    rows = snapshot.alerts
    if since is not None:
        rows = [a for a in rows if a.get("raised_at") is not None and a["raised_at"] >= since]
    return rows[-limit:]


def fleet_summary(snapshot: Snapshot) -> dict:
    states = list(snapshot.machines.values())
    ruls = [s["predicted_rul"] for s in states if s.get("predicted_rul") is not None]
    by_level = {level: 0 for level in ALERT_LEVELS}
    for state in states:
        by_level[state["alert_level"]] += 1
    return {
        "machines": len(states),
        "readings": sum(s["readings_count"] for s in states),
        "by_alert_level": by_level,
        "from_speed": sum(1 for s in states if s["source"] == "speed"),
        "min_predicted_rul": min(ruls) if ruls else None,
        "mean_predicted_rul": sum(ruls) / len(ruls) if ruls else None,
        "as_of": snapshot.as_of(),
    }


# --- the store ----------------------------------------------------------------------


class SnapshotStore:
    """Holds the current snapshot; `refresh()` swaps in a new one when a version changed."""

    def __init__(
        self,
        views,
        level_of: Callable[[float | None], str],
        on_swap: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.views = views
        self.level_of = level_of
        self.on_swap = on_swap
        self._snapshot = empty_snapshot()
        self._cache = PinnedCache()
        self.refreshed = False
        self.last_build_s = 0.0

    @property
    def current(self) -> Snapshot:
        return self._snapshot  # one attribute read: a request sees one whole snapshot

    def refresh(self) -> bool:
        """Rebuild when a table version changed; True when a new snapshot was swapped in."""
        versions = current_versions(self.views)
        pinned = {k: v for k, v in self._snapshot.versions.items() if k in versions}
        if self.refreshed and pinned == versions:
            return False
        started = time.perf_counter()
        snapshot = build_snapshot(self.views, versions, self.level_of, self._cache)
        self.last_build_s = time.perf_counter() - started
        self._snapshot = snapshot
        self.refreshed = True
        if self.on_swap is not None:
            self.on_swap(snapshot)
        return True

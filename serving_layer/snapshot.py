"""One consistent, in-memory snapshot of the merged views, swapped atomically.

A snapshot pins a version of every table it uses: the speed view's version is taken
FIRST, then the manifest's; the batch views are read at the versions the manifest
recorded. A speed view older than the manifest only lacks the newest readings, while a
manifest older than the speed view could miss readings the speed layer already dropped,
so this order never loses an event. The refresher compares Delta versions (cheap: the
log only) and rebuilds only when one changed.

A snapshot holds views only, so its memory grows with machines and speed rows, never with
history: the batch views, the merged state per machine (latest sensors from the view
rows), and the pinned versions of the tables that grow forever. Those (the history view,
alerts) are read on demand at the pinned version, pruned by their Delta file statistics:
one machine's bounded time range (`machine_history`), one page of alerts by time
(`alerts_page`). Every other request is answered from memory.
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
from datetime import UTC, datetime, timedelta

from prognos.core.errors import InvalidQueryError
from serving_layer.merge import ALERT_LEVELS, Boundary, batch_states, latest_boundary, overlay_speed
from serving_layer.views import history_predicate, time_filter

SORTS = ("rul", "-rul", "alert_level", "-alert_level", "machine_id", "-machine_id")
LEVEL_RANK = {level: rank for rank, level in enumerate(ALERT_LEVELS)}
HISTORY_MAX_SPAN = timedelta(days=7)  # a history read stays a few row groups
HISTORY_MAX_LIMIT = 10_000
ALERTS_FIRST_WINDOW = timedelta(hours=1)  # an alerts page reads windows from here, doubling


class CursorError(InvalidQueryError, ValueError):
    """A pagination cursor that this server did not issue (or for another sort)."""


@dataclass(frozen=True)
class Snapshot:
    versions: dict[str, int | None]
    boundary: Boundary | None
    machines: dict[str, dict]
    orders: dict[str, list[tuple]]  # sort -> ascending keys, each ending with the machine id
    alerts_span: tuple[datetime, datetime] | None = None  # raised_at range of the alerts
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
    return Snapshot({}, None, {}, {s: [] for s in SORTS})


# --- building -----------------------------------------------------------------------


def current_versions(views) -> dict[str, int | None]:
    """Versions to pin, in the order that never loses an event (speed view first)."""
    versions = {"speed_view": views.version("speed_view")}
    versions["batch_manifest"] = views.version("batch_manifest")
    versions["alerts"] = views.version("alerts")
    return versions


class PinnedCache:
    """What was derived from a table at a version; the newest version per table is kept, so
    a speed-view change does not re-read the batch views or the alerts' statistics."""

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
    base: dict[str, dict] = {}
    if boundary is not None:
        for view in ("machine_state", "machine_history"):
            if view in boundary.table_versions:
                versions[view] = boundary.table_versions[view]
    if "machine_state" in versions:
        # served-ready batch states, kept while the batch view does not change: a
        # speed-view change only re-merges the machines its rows name
        base = cache.get(
            "batch_states",
            versions["machine_state"],
            lambda: _ready(
                batch_states(
                    views.read("machine_state", versions["machine_state"]).to_pylist(), level_of
                )
            ),
        )
    speed_rows = _read_pinned(views, "speed_view", versions).to_pylist()
    offsets = boundary.partition_offsets if boundary is not None else {}
    machines, changed = overlay_speed(base, speed_rows, offsets, level_of)
    machines.update(_ready({m: machines[m] for m in changed}))
    span = cache.get(
        "alerts", versions["alerts"], lambda: views.span("alerts", versions["alerts"], "raised_at")
    )
    return Snapshot(versions, boundary, machines, _orders(machines), span)


def _ready(states: dict[str, dict]) -> dict[str, dict]:
    """States as served: JSON-ready values (new dicts); the latest sensors are the view
    row's (batch view, or speed view when its reading is newer), none without one."""
    ready = {}
    for machine_id, state in states.items():
        if "sensors" not in state:
            state = {**state, "sensors": {}, "sensors_cycle": None}
        ready[machine_id] = json_ready(state)
    return ready


def _boundary(views, version: int | None) -> Boundary | None:
    if version is None:
        return None
    return latest_boundary(views.read("batch_manifest", version).to_pylist())


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


def _read_pinned(views, name: str, versions: dict):
    if versions.get(name) is None:
        return views.read(name, None).slice(0, 0)
    return views.read(name, versions[name])


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


class HistoryRangeError(ValueError):
    """A history range the server will not read (its span beyond HISTORY_MAX_SPAN)."""


def history_window(
    state: dict, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime] | None:
    """The range a history query reads: both bounds as given, or the missing one
    HISTORY_MAX_SPAN away; without bounds, the span up to the machine's last reading
    (None when it has none). A range wider than HISTORY_MAX_SPAN is refused."""
    if start is None and end is None:
        end = _as_datetime(state.get("last_event_time"))
        if end is None:
            return None
    if start is None:
        start = end - HISTORY_MAX_SPAN
    if end is None:
        end = start + HISTORY_MAX_SPAN
    if end - start > HISTORY_MAX_SPAN:
        raise HistoryRangeError(
            f"the range 'from'-'to' spans {end - start}; at most {HISTORY_MAX_SPAN} per "
            "query (page with 'from')"
        )
    return start, end


def _as_datetime(value) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def machine_history(
    views, snapshot: Snapshot, machine_id: str, window: tuple[datetime, datetime], limit: int
) -> tuple[list[dict], datetime | None]:
    """One machine's readings in `window` (inclusive) from the history view the snapshot
    pins, in event time order: the first `limit`, and the event time to continue from
    (None when none is left)."""
    rows = views.rows(
        "machine_history",
        snapshot.versions.get("machine_history"),
        history_predicate(machine_id, *window),
    ).to_pylist()
    rows.sort(key=lambda r: (r["event_time"], r["cycle"]))
    rest = rows[limit:]
    for row in rows[:limit]:
        del row["machine_id"]
    return rows[:limit], rest[0]["event_time"] if rest else None


def encode_alert_cursor(alert: dict) -> str:
    return encode_cursor("alerts", (alert["raised_at"].isoformat(), alert["alert_id"]))


def decode_alert_cursor(cursor: str) -> tuple[datetime, str]:
    raised_at, alert_id = decode_cursor("alerts", cursor)
    try:
        return datetime.fromisoformat(raised_at), alert_id
    except (TypeError, ValueError):
        raise CursorError("invalid cursor: pass the next_cursor of a previous page") from None


def alerts_page(
    views, snapshot: Snapshot, since: datetime | None, limit: int, cursor: str | None = None
) -> tuple[list[dict], str | None]:
    """A page of alerts in (raised_at, alert_id) order at the pinned alerts version, and
    the cursor of the next page (None at the end).

    With `cursor` or `since`: the first `limit` alerts after the cursor (or raised at or
    after `since`). With neither: the newest `limit` (the live feed). The table is read
    in time windows from the page's start, each twice as long as the one before, until
    the page is full: one page reads the files of its time range, never the whole table.
    Alerts are appended with raised_at in commit order, so paging never loses or repeats
    one, also while new alerts arrive.
    """
    span = snapshot.alerts_span
    if span is None:
        if cursor is not None:
            decode_alert_cursor(cursor)
        return [], None
    if cursor is None and since is None:
        return _newest_alerts(views, snapshot, span, limit), None
    after = decode_alert_cursor(cursor) if cursor is not None else None
    start = after[0] if after is not None else since
    found: list[dict] = []
    width = ALERTS_FIRST_WINDOW
    start = max(start, span[0])
    while start <= span[1] and len(found) <= limit:
        rows = _alerts_between(views, snapshot, start, start + width)
        found += [a for a in rows if after is None or (a["raised_at"], a["alert_id"]) > after]
        start, width = start + width, width * 2
    page = found[:limit]
    return page, encode_alert_cursor(page[-1]) if len(found) > limit else None


def _newest_alerts(views, snapshot: Snapshot, span: tuple, limit: int) -> list[dict]:
    found: list[dict] = []
    end, width = span[1], ALERTS_FIRST_WINDOW
    while end > span[0] and len(found) < limit:
        found = _alerts_between(views, snapshot, end - width, end) + found
        end, width = end - width, width * 2
    return found[-limit:]


def _alerts_between(views, snapshot: Snapshot, start: datetime, end: datetime) -> list[dict]:
    """Alerts raised in [start, end), in (raised_at, alert_id) order."""
    where = time_filter("raised_at", start, end, end_inclusive=False)
    rows = views.rows("alerts", snapshot.versions.get("alerts"), where).to_pylist()
    rows.sort(key=lambda a: (a["raised_at"], a["alert_id"]))
    return rows


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

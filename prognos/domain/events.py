"""The sensor-event contract of a fleet and its single validator.

On the wire an event is a UTF-8 JSON object, keyed in Kafka by its machine id::

    {"schema_version": 1, "machine_id": "FD001-test-0007", "cycle": 12,
     "event_time": "2026-01-01T00:12:00Z", "settings": {"setting_1": ..., ...},
     "sensors": {"sensor_1": ..., ..., "sensor_21": ...}, "source": "replay"}

The settings and sensors, their valid ranges and whether each is required come from the
fleet spec. `EventContract(fleet).rules()` are the contract as data: named checks, each
of one column of the event's flat record (`flatten`). The speed layer evaluates them here,
in Python (`violations`, `wire_violations`); silver's Great Expectations suite is generated
from the same rules (prognos.core.quality) and run over the same flat records. So both
accept the same events and name the same rules, which is what quarantine rows,
validation results and dead letters record: "valid_json", "required:cycle",
"type:cycle", "range:sensor_9", "event_time_not_future", ...

A NaN reading counts as a missing one (required readings reject it, optional ones
accept it as absent). A reading outside its range, or not finite, breaks `range:<name>`.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from prognos.domain.fleet import FleetSpec

SCHEMA_VERSION = 1
MAX_CYCLE = 2**31 - 1  # silver stores the cycle as a 32-bit int
# Times outside this range are invalid (pandas and the speed state hold nanosecond times)
EVENT_TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
EVENT_TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)
FIELDS = ("schema_version", "machine_id", "cycle", "event_time", "settings", "sensors", "source")
SCALAR_FIELDS = ("machine_id", "cycle", "event_time", "schema_version", "source")
SOURCE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
# Without a fleet's ranges a reading must still be a finite double.
FINITE = (-sys.float_info.max, sys.float_info.max)

# Columns of the flat record besides the raw fields and readings.
PARSE_ERROR = "_parse_error"
EVENT_EPOCH = "_event_time_epoch"
UNKNOWN_FIELDS = "_unknown_fields"
TYPE_FAULT = "__type_fault"
FORMAT_FAULT = "__format_fault"
NUMBER = "__num"


@dataclass(frozen=True)
class Event:
    machine_id: str
    cycle: int
    event_time: datetime
    settings: dict[str, float]
    sensors: dict[str, float]
    source: str
    schema_version: int = field(default=SCHEMA_VERSION)

    @property
    def key(self) -> bytes:
        """The Kafka message key."""
        return self.machine_id.encode()

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "machine_id": self.machine_id,
            "cycle": self.cycle,
            "event_time": format_event_time(self.event_time),
            "settings": dict(self.settings),
            "sensors": dict(self.sensors),
            "source": self.source,
        }


def format_event_time(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z suffix and millisecond precision; ValueError when naive."""
    if moment.tzinfo is None:
        raise ValueError("event_time must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_event_time(text: str) -> datetime:
    """Parse an ISO-8601 time with a timezone; ValueError when naive or malformed."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no timezone")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Rule:
    """One named check of one column of the flat record: null, not_null, between
    (nulls pass; `strict_high` excludes `high`) or in_set (nulls pass)."""

    name: str
    column: str
    kind: Literal["null", "not_null", "between", "in_set"]
    low: float | None = None
    high: float | None = None
    strict_high: bool = False
    allowed: tuple = ()

    def holds(self, value) -> bool:
        if self.kind == "null":
            return value is None
        if self.kind == "not_null":
            return value is not None
        if value is None:
            return True
        if self.kind == "in_set":
            return value in self.allowed
        if self.low is not None and value < self.low:
            return False
        if self.high is None:
            return True
        return value < self.high if self.strict_high else value <= self.high


@dataclass(frozen=True)
class Violation:
    """A broken rule: `rule` is what tables and dead letters record, `detail` says why."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def decode(raw: bytes | str | None) -> tuple[object, str | None]:
    """(decoded JSON value, None), or (None, why it is not JSON): UTF-8 only."""
    if raw is None:
        return None, "empty message"
    try:
        text = (
            bytes(raw).decode("utf-8") if isinstance(raw, bytes | bytearray | memoryview) else raw
        )
        return json.loads(text), None
    except (TypeError, ValueError, RecursionError) as error:  # incl. bad UTF-8, many digits
        return None, f"not valid JSON: {str(error)[:120]}"


class EventContract:
    """The event rules of one fleet (its readings, their ranges, its machine id pattern)."""

    def __init__(self, fleet: FleetSpec, ranges: dict[str, tuple[float, float]] | None = None):
        self.fleet = fleet
        self.setting_names = fleet.setting_names
        self.sensor_names = fleet.sensor_names
        self.reading_names = (*self.setting_names, *self.sensor_names)
        self.ranges = dict(fleet.ranges if ranges is None else ranges)
        self.required_readings = tuple(r.name for r in fleet.readings if r.required)
        self.machine_id_pattern = fleet.machines.pattern
        self._group_of = {
            **dict.fromkeys(self.setting_names, "settings"),
            **dict.fromkeys(self.sensor_names, "sensors"),
        }
        self._rules = {True: self._build_rules(self.ranges), False: self._build_rules({})}
        self._bounds = {True: self._group_bounds(self.ranges), False: self._group_bounds({})}

    def with_ranges(self, ranges: dict[str, tuple[float, float]]) -> EventContract:
        """The same contract with other valid ranges (readings not named keep FINITE)."""
        return EventContract(self.fleet, ranges)

    @property
    def columns(self) -> list[str]:
        """Every column of the flat record, in a fixed order."""
        typed = ("machine_id", "cycle", "event_time", "schema_version", "source")
        return [
            PARSE_ERROR,
            *SCALAR_FIELDS,
            *self.reading_names,
            *(f"{name}{TYPE_FAULT}" for name in (*typed, *self.reading_names)),
            "cycle" + NUMBER,
            "schema_version" + NUMBER,
            *(f"{name}{NUMBER}" for name in self.reading_names),
            EVENT_EPOCH,
            UNKNOWN_FIELDS,
            "machine_id" + FORMAT_FAULT,
            "source" + FORMAT_FAULT,
        ]

    # ------------------------------------------------------------------ the rules

    def rules(
        self, now_epoch: float | None = None, future_tolerance_s: float = 0.0, ranges: bool = True
    ) -> list[Rule]:
        """The contract as data. `ranges=False` is the wire shape alone (readings need only
        be finite); `now_epoch` adds event_time_not_future (up to the tolerance ahead)."""
        rules = list(self._rules[ranges])
        if now_epoch is not None:
            latest = now_epoch + future_tolerance_s
            rules.append(Rule("event_time_not_future", EVENT_EPOCH, "between", high=latest))
        return rules

    def _build_rules(self, ranges: dict) -> tuple[Rule, ...]:
        rules = [Rule("valid_json", PARSE_ERROR, "null")]
        rules += [
            Rule(f"required:{name}", name, "not_null")
            for name in (*SCALAR_FIELDS, *self.required_readings)
        ]
        rules += [
            Rule(f"type:{name}", f"{name}{TYPE_FAULT}", "null")
            for name in ("machine_id", "cycle", "schema_version", "source", "event_time")
        ]
        rules += [
            Rule(f"type:{name}", f"{name}{TYPE_FAULT}", "null") for name in self.reading_names
        ]
        rules += [
            Rule(f"range:{name}", f"{name}{NUMBER}", "between", *ranges.get(name, FINITE))
            for name in self.reading_names
        ]
        rules += [
            Rule("known_fields", UNKNOWN_FIELDS, "null"),
            Rule("machine_id_format", "machine_id" + FORMAT_FAULT, "null"),
            Rule("source_format", "source" + FORMAT_FAULT, "null"),
            Rule("cycle_positive", "cycle" + NUMBER, "between", low=1),
            Rule("cycle_in_range", "cycle" + NUMBER, "between", high=MAX_CYCLE),
            Rule(
                "schema_version_known",
                "schema_version" + NUMBER,
                "in_set",
                allowed=(SCHEMA_VERSION,),
            ),
            Rule(
                "event_time_in_range",
                EVENT_EPOCH,
                "between",
                EVENT_TIME_MIN.timestamp(),
                EVENT_TIME_MAX.timestamp(),
                strict_high=True,
            ),
        ]
        return tuple(rules)

    # ------------------------------------------------------------------ validating

    def violations(
        self,
        obj,
        *,
        now_epoch: float | None = None,
        future_tolerance_s: float = 0.0,
        ranges: bool = True,
    ) -> list[Violation]:
        """Every rule a decoded JSON value breaks; empty when it is a valid event."""
        latest = None if now_epoch is None else now_epoch + future_tolerance_s
        if self.plainly_valid(obj, ranges, latest):
            return []
        flat = self.flatten(obj)
        rules = self.rules(now_epoch, future_tolerance_s, ranges)
        return self.broken(flat, rules, obj)

    def wire_violations(self, raw: bytes | str | None, **options) -> tuple[object, list[Violation]]:
        """(decoded value, its violations) of raw wire bytes; the value is None if not JSON."""
        obj, error = decode(raw)
        if error is not None:
            return None, [Violation("valid_json", error)]
        return obj, self.violations(obj, **options)

    def broken(self, flat: dict, rules: list[Rule], obj=None) -> list[Violation]:
        """The rules a flat record breaks; a record that is no JSON object breaks only
        valid_json (its fields do not exist)."""
        if flat[PARSE_ERROR] is not None:
            return [Violation("valid_json", flat[PARSE_ERROR])]
        return [
            Violation(rule.name, self._detail(rule, flat, obj))
            for rule in rules
            if not rule.holds(flat[rule.column])
        ]

    # ------------------------------------------------------------------ the flat record

    def flat_record(self, raw: bytes | str | None) -> dict:
        """The flat record of raw wire bytes (see `flatten`)."""
        obj, error = decode(raw)
        if error is not None:
            return dict.fromkeys(self.columns) | {PARSE_ERROR: error}
        return self.flatten(obj)

    def flatten(self, obj) -> dict:
        """One flat dict per event: raw field and reading values (None when absent, null
        or NaN), a type fault text per field (None when the type is right), numeric copies
        of well-typed numbers (None otherwise), the event time in epoch seconds, the unknown
        fields and the format faults. Every rule checks one of these columns."""
        flat = dict.fromkeys(self.columns)
        if not isinstance(obj, dict):
            flat[PARSE_ERROR] = f"event must be a JSON object, got {type(obj).__name__}"
            return flat
        for name in SCALAR_FIELDS:
            flat[name] = _present(obj.get(name))
        groups = {group: _group(obj, group) for group in ("settings", "sensors")}
        for name in self.reading_names:
            flat[name] = _present(groups[self._group_of[name]].get(name))
        unknown = self._unknown_fields(obj, groups)
        flat[UNKNOWN_FIELDS] = "; ".join(unknown) if unknown else None
        self._type_faults(flat)
        self._typed_copies(flat)
        return flat

    def _unknown_fields(self, obj: dict, groups: dict) -> list[str]:
        unknown = [f"unknown field {name[:60]}" for name in obj if name not in FIELDS]
        for group, values in groups.items():
            declared = self.setting_names if group == "settings" else self.sensor_names
            unknown += [f"{group}.{key[:60]} unknown" for key in values if key not in declared]
        return unknown

    def _type_faults(self, flat: dict) -> None:
        checks = {
            "machine_id": (_is_text, "machine_id must be a string"),
            "cycle": (_is_int, "cycle must be an integer"),
            "schema_version": (_is_int, f"schema_version must be {SCHEMA_VERSION}"),
            "source": (_is_text, "source must be a string"),
            "event_time": (_is_text, "event_time must be an ISO-8601 string"),
        }
        for name in self.reading_names:
            checks[name] = (_is_number, f"{self._group_of[name]}.{name} must be a number")
        for name, (check, expected) in checks.items():
            value = flat[name]
            if value is not None and not check(value):
                flat[f"{name}{TYPE_FAULT}"] = f"{expected}, got {_shown(value)}"
        time = flat["event_time"]
        if _is_text(time) and _epoch(time) is None:
            flat["event_time" + TYPE_FAULT] = (
                f"event_time must be ISO-8601 with a timezone, got {_shown(time)}"
            )

    def _typed_copies(self, flat: dict) -> None:
        for name in ("cycle", "schema_version", *self.reading_names):
            if flat[name] is not None and flat[f"{name}{TYPE_FAULT}"] is None:
                flat[f"{name}{NUMBER}"] = _as_float(flat[name])
        if flat["event_time"] is not None and flat["event_time" + TYPE_FAULT] is None:
            flat[EVENT_EPOCH] = _epoch(flat["event_time"])
        machine_id, source = flat["machine_id"], flat["source"]
        if _is_text(machine_id) and not self.machine_id_pattern.fullmatch(machine_id):
            flat["machine_id" + FORMAT_FAULT] = (
                f"machine_id must be a full match of {self.machine_id_pattern.pattern}, "
                f"got {_shown(machine_id)}"
            )
        if _is_text(source) and not SOURCE_PATTERN.fullmatch(source):
            flat["source" + FORMAT_FAULT] = (
                f"source must be 1-64 chars of [A-Za-z0-9._:/-], got {_shown(source)}"
            )

    # ------------------------------------------------------------------ details

    def _detail(self, rule: Rule, flat: dict, obj) -> str:
        """What a broken rule says about this event (for people; tables keep rule names)."""
        family, _, name = rule.name.partition(":")
        if rule.kind == "null":
            return str(flat[rule.column])
        if family == "required":
            return self._missing(name, obj)
        if family == "range":
            return self._out_of_range(name, rule, obj)
        raw = {
            "cycle_positive": ("cycle", "cycle must be > 0"),
            "cycle_in_range": ("cycle", f"cycle must be <= {MAX_CYCLE}"),
            "schema_version_known": ("schema_version", f"schema_version must be {SCHEMA_VERSION}"),
            "event_time_in_range": (
                "event_time",
                f"event_time must be between {EVENT_TIME_MIN.year} and {EVENT_TIME_MAX.year}",
            ),
            "event_time_not_future": ("event_time", "event_time must not be in the future"),
        }
        column, text = raw[rule.name]
        return f"{text}, got {_shown(flat[column])}"

    def _missing(self, name: str, obj) -> str:
        if name not in self._group_of:
            return f"missing field {name}" if name not in obj else f"{name} is null"
        group = self._group_of[name]
        names = self.setting_names if group == "settings" else self.sensor_names
        if group not in obj:
            return f"missing field {group}"
        if not isinstance(obj[group], dict):
            return f"{group} must be an object with {names[0]}..{names[-1]}"
        if name not in obj[group]:
            return f"{group}.{name} missing"
        if obj[group][name] is None:
            return f"{group}.{name} is null"
        return f"{group}.{name} must be finite, got nan (a missing reading)"

    def _out_of_range(self, name: str, rule: Rule, obj) -> str:
        path = f"{self._group_of[name]}.{name}"
        value = obj[self._group_of[name]][name]
        if (rule.low, rule.high) == FINITE or not _finite(value):
            return f"{path} must be finite, got {_shown(value)}"
        return f"{path} must be within [{rule.low}, {rule.high}], got {_shown(value)}"

    # ------------------------------------------------------------------ the fast path

    def plainly_valid(self, obj, ranges: bool = True, latest_epoch: float | None = None) -> bool:
        """True only if every rule holds, for the common case of a complete event of floats;
        False sends the event through the rules, which name what is wrong."""
        try:
            return (
                type(obj) is dict
                and obj.keys() == _FIELD_SET
                and type(obj["schema_version"]) is int
                and obj["schema_version"] == SCHEMA_VERSION
                and type(obj["cycle"]) is int
                and 0 < obj["cycle"] <= MAX_CYCLE
                and type(obj["machine_id"]) is str
                and self.machine_id_pattern.fullmatch(obj["machine_id"]) is not None
                and type(obj["source"]) is str
                and SOURCE_PATTERN.fullmatch(obj["source"]) is not None
                and type(obj["event_time"]) is str
                and _time_in_range(obj["event_time"], latest_epoch)
                and all(
                    _plain_readings(obj[group], bounds)
                    for group, bounds in self._bounds[ranges].items()
                )
            )
        except TypeError:  # e.g. an unhashable value somewhere: let the rules say
            return False

    def _group_bounds(self, ranges: dict) -> dict[str, dict[str, tuple[float, float]]]:
        return {
            "settings": {name: ranges.get(name, FINITE) for name in self.setting_names},
            "sensors": {name: ranges.get(name, FINITE) for name in self.sensor_names},
        }


_FIELD_SET = frozenset(FIELDS)


def _plain_readings(value, bounds: dict[str, tuple[float, float]]) -> bool:
    if type(value) is not dict or value.keys() != bounds.keys():
        return False
    for name, reading in value.items():
        low, high = bounds[name]
        if type(reading) is not float or not low <= reading <= high:  # NaN fails here too
            return False
    return True


def _time_in_range(text: str, latest_epoch: float | None) -> bool:
    epoch = _epoch(text)
    if epoch is None or not _MIN_EPOCH <= epoch < _MAX_EPOCH:
        return False
    return latest_epoch is None or epoch <= latest_epoch


_MIN_EPOCH, _MAX_EPOCH = EVENT_TIME_MIN.timestamp(), EVENT_TIME_MAX.timestamp()


@functools.lru_cache(maxsize=4096)
def _epoch(text: str) -> float | None:
    try:
        return parse_event_time(text).timestamp()
    except (ValueError, OverflowError):
        return None


def _group(obj: dict, group: str) -> dict:
    value = obj.get(group)
    return value if isinstance(value, dict) else {}


def _present(value):
    """None for an absent, null or NaN value (a NaN reading is a missing reading)."""
    return None if value is None or (type(value) is float and value != value) else value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value) -> bool:
    return isinstance(value, str)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond the double range: beyond every range
        return float("inf") if value > 0 else float("-inf")


def _finite(value) -> bool:
    number = _as_float(value)
    return number - number == 0


def _shown(value, limit: int = 60) -> str:
    """repr for a reason: bounded (a field may be huge), any int (even 10**5000) shown."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

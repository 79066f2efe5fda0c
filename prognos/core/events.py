"""The sensor-event contract: the one definition producers and consumers share.

On the wire an event is a UTF-8 JSON object, keyed in Kafka by its machine id::

    {"schema_version": 1, "machine_id": "FD001-test-0007", "cycle": 12,
     "event_time": "2026-01-01T00:12:00Z", "settings": {"setting_1": ..., ...},
     "sensors": {"sensor_1": ..., ..., "sensor_21": ...}, "source": "replay"}

`validate_event` is the single validation function (a list of reasons, empty when
valid); `event_reasons` applies it to raw bytes (usable as a Spark UDF), `parse_event`
raises EventValidationError, `event_spark_schema` is the same shape for Spark's from_json.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS
from prognos.core.errors import EventValidationError

SCHEMA_VERSION = 1
MAX_CYCLE = 2**31 - 1  # silver stores the cycle as a 32-bit int
# Times outside this range are invalid (pandas and the speed state hold nanosecond times)
EVENT_TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
EVENT_TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)
FIELDS = ("schema_version", "machine_id", "cycle", "event_time", "settings", "sensors", "source")
MACHINE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
SOURCE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


def machine_id_for(subset: str, split: str, unit: int, copy: int = 0) -> str:
    """Machine id of a C-MAPSS unit: FD001-test-0007; copy k of a scaled fleet adds -c0k."""
    base = f"{subset}-{split}-{unit:04d}"
    return base if copy == 0 else f"{base}-c{copy:02d}"


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
    """ISO-8601 in UTC with a Z suffix and millisecond precision."""
    if moment.tzinfo is None:
        raise EventValidationError("event_time must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_event_time(text: str) -> datetime:
    """Parse an ISO-8601 time with a timezone; ValueError when naive or malformed."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no timezone")
    return moment.astimezone(UTC)


def validate_event(obj) -> list[str]:
    """Every reason `obj` (a decoded JSON value) is not a valid event; empty when valid."""
    if _plainly_valid(obj):
        return []
    if not isinstance(obj, dict):
        return [f"event must be a JSON object, got {type(obj).__name__}"]
    reasons = [f"missing field {name}" for name in FIELDS if name not in obj]
    reasons += [f"unknown field {name[:60]}" for name in obj if name not in FIELDS]
    checks = {
        "schema_version": _check_schema_version,
        "machine_id": _check_machine_id,
        "cycle": _check_cycle,
        "event_time": _check_event_time,
        "settings": lambda value: _check_readings("settings", value, SETTING_COLUMNS),
        "sensors": lambda value: _check_readings("sensors", value, SENSOR_COLUMNS),
        "source": _check_source,
    }
    for name, check in checks.items():
        if name in obj:
            reasons += check(obj[name])
    return reasons


_FIELD_SET = frozenset(FIELDS)
_SETTING_SET = frozenset(SETTING_COLUMNS)
_SENSOR_SET = frozenset(SENSOR_COLUMNS)


def _plainly_valid(obj) -> bool:
    """Fast path for the common case: True only if every rule below holds; False sends
    the event through the detailed checks, which name the reasons."""
    try:
        return (
            type(obj) is dict
            and obj.keys() == _FIELD_SET
            and type(obj["schema_version"]) is int
            and obj["schema_version"] == SCHEMA_VERSION
            and type(obj["cycle"]) is int
            and 0 < obj["cycle"] <= MAX_CYCLE
            and type(obj["machine_id"]) is str
            and MACHINE_ID_PATTERN.fullmatch(obj["machine_id"]) is not None
            and type(obj["source"]) is str
            and SOURCE_PATTERN.fullmatch(obj["source"]) is not None
            and type(obj["event_time"]) is str
            and _valid_time(obj["event_time"])
            and _plain_readings(obj["settings"], _SETTING_SET)
            and _plain_readings(obj["sensors"], _SENSOR_SET)
        )
    except TypeError:  # e.g. an unhashable value somewhere: let the detailed checks say
        return False


def _plain_readings(value, expected: frozenset) -> bool:
    if type(value) is not dict or value.keys() != expected:
        return False
    numbers = value.values()
    return all(type(n) is float for n in numbers) and math.isfinite(sum(numbers))


@functools.lru_cache(maxsize=4096)
def _valid_time(text: str) -> bool:
    return _time_reason(text) is None


def _time_reason(text: str) -> str | None:
    try:
        moment = parse_event_time(text)
    except ValueError:
        return "ISO-8601 with a timezone"
    if not EVENT_TIME_MIN <= moment < EVENT_TIME_MAX:
        return f"between {EVENT_TIME_MIN.year} and {EVENT_TIME_MAX.year}"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_schema_version(value) -> list[str]:
    if value != SCHEMA_VERSION or not _is_int(value):
        return [f"schema_version must be {SCHEMA_VERSION}, got {_shown(value)}"]
    return []


def _check_machine_id(value) -> list[str]:
    if not isinstance(value, str) or not MACHINE_ID_PATTERN.fullmatch(value):
        return [f"machine_id must be 1-128 chars of [A-Za-z0-9._:-], got {_shown(value)}"]
    return []


def _check_cycle(value) -> list[str]:
    if not _is_int(value):
        return [f"cycle must be an integer, got {_shown(value)}"]
    if value <= 0:
        return [f"cycle must be > 0, got {_shown(value)}"]
    if value > MAX_CYCLE:
        return [f"cycle must be <= {MAX_CYCLE}, got {_shown(value)}"]
    return []


def _check_event_time(value) -> list[str]:
    if not isinstance(value, str):
        return [f"event_time must be an ISO-8601 string, got {_shown(value)}"]
    reason = _time_reason(value)
    return [] if reason is None else [f"event_time must be {reason}, got {_shown(value)}"]


def _check_readings(name: str, value, expected: tuple[str, ...]) -> list[str]:
    if not isinstance(value, dict):
        return [f"{name} must be an object with {expected[0]}..{expected[-1]}"]
    reasons = [f"{name}.{key} missing" for key in expected if key not in value]
    reasons += [f"{name}.{key[:60]} unknown" for key in value if key not in expected]
    for key in expected:
        reading = value.get(key)
        if key not in value:
            continue
        if isinstance(reading, bool) or not isinstance(reading, int | float):
            reasons.append(f"{name}.{key} must be a number, got {_shown(reading)}")
        elif not _finite(reading):
            reasons.append(f"{name}.{key} must be finite, got {_shown(reading)}")
    return reasons


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond the double range
        return False


def _shown(value, limit: int = 60) -> str:
    """repr for a reason: bounded (a field may be huge), any int (even 10**5000) shown."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_source(value) -> list[str]:
    if not isinstance(value, str) or not SOURCE_PATTERN.fullmatch(value):
        return [f"source must be 1-64 chars of [A-Za-z0-9._:/-], got {_shown(value)}"]
    return []


def event_reasons(raw: bytes | str | None) -> list[str]:
    """Reasons raw wire bytes are not a valid event (JSON errors included)."""
    if raw is None:
        return ["empty message"]
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as error:  # incl. bad UTF-8, too many digits
        return [f"not valid JSON: {str(error)[:120]}"]
    return validate_event(obj)


def event_from_dict(obj) -> Event:
    """An Event from a decoded JSON object; EventValidationError listing every reason."""
    reasons = validate_event(obj)
    if reasons:
        raise _invalid(reasons)
    return Event(
        machine_id=obj["machine_id"],
        cycle=obj["cycle"],
        event_time=parse_event_time(obj["event_time"]),
        settings={key: float(obj["settings"][key]) for key in SETTING_COLUMNS},
        sensors={key: float(obj["sensors"][key]) for key in SENSOR_COLUMNS},
        source=obj["source"],
        schema_version=obj["schema_version"],
    )


def parse_event(raw: bytes | str) -> Event:
    """Decode wire bytes; EventValidationError (with `.reasons`) when invalid."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as error:  # incl. bad UTF-8, too many digits
        raise _invalid([f"not valid JSON: {str(error)[:120]}"]) from None
    return event_from_dict(obj)


def encode_event(event: Event) -> bytes:
    """Wire bytes of a valid event; EventValidationError when it breaks the schema."""
    return encode_wire(event.to_dict())


def encode_wire(obj: dict) -> bytes:
    """Wire bytes of an event already in its JSON form (see Event.to_dict), validated."""
    reasons = validate_event(obj)
    if reasons:
        raise _invalid(reasons)
    return _dumps(obj).encode()


_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _invalid(reasons: list[str]) -> EventValidationError:
    error = EventValidationError("invalid event: " + "; ".join(reasons))
    error.reasons = reasons
    return error


def event_spark_schema():
    """The event as a pyspark StructType for from_json (event_time stays the wire string;
    parse it with to_timestamp and validate rows with `event_reasons`)."""
    from pyspark.sql.types import (
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    def readings(names):
        return StructType([StructField(name, DoubleType()) for name in names])

    return StructType(
        [
            StructField("schema_version", IntegerType()),
            StructField("machine_id", StringType()),
            StructField("cycle", LongType()),
            StructField("event_time", StringType()),
            StructField("settings", readings(SETTING_COLUMNS)),
            StructField("sensors", readings(SENSOR_COLUMNS)),
            StructField("source", StringType()),
        ]
    )

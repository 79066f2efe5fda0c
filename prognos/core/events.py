"""The sensor-event contract as producers and the layers use it.

The contract and its single validator are in prognos.domain.events, derived from the
fleet spec; this module binds them to the default fleet (setting `fleet_spec`), to
prognos's errors and to Spark's schema type.

Producers (`encode_event`, `encode_wire`) and `validate_event` / `event_reasons` /
`parse_event` check the wire shape: fields, types, formats, finite readings. The value
rules of the fleet (valid ranges, event time not in the future) are applied where events
are judged, by the same rules in the speed layer and in silver (`judge_wire`): a
reading outside its range is a valid message whose place is the dead-letter topic and
the quarantine table, not a producer error.
"""

from __future__ import annotations

import json
from datetime import datetime

from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS
from prognos.core.errors import EventValidationError
from prognos.core.fleet import default_contract
from prognos.domain import events as contract_rules
from prognos.domain.events import (
    EVENT_TIME_MAX,
    EVENT_TIME_MIN,
    FIELDS,
    MAX_CYCLE,
    SCHEMA_VERSION,
    SOURCE_PATTERN,
    Event,
    Violation,
    decode,
    parse_event_time,
)

__all__ = [
    "EVENT_TIME_MAX",
    "EVENT_TIME_MIN",
    "FIELDS",
    "MAX_CYCLE",
    "SCHEMA_VERSION",
    "SENSOR_COLUMNS",
    "SETTING_COLUMNS",
    "SOURCE_PATTERN",
    "Event",
    "Violation",
    "parse_event_time",
]


def machine_id_for(subset: str, split: str, unit: int, copy: int = 0) -> str:
    """Machine id of a C-MAPSS unit: FD001-test-0007; copy k of a scaled fleet adds -c0k."""
    base = f"{subset}-{split}-{unit:04d}"
    return base if copy == 0 else f"{base}-c{copy:02d}"


def format_event_time(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z suffix and millisecond precision."""
    try:
        return contract_rules.format_event_time(moment)
    except ValueError as error:
        raise EventValidationError(str(error)) from None


def judge_wire(raw: bytes | str | None, settings, now_epoch: float):
    """(decoded value, violations) of raw wire bytes under every rule of the settings'
    fleet, value rules included: what the speed layer applies to each Kafka record and
    silver's suite checks (events up to batch_future_tolerance_s ahead of now pass)."""
    return default_contract(settings).wire_violations(
        raw, now_epoch=now_epoch, future_tolerance_s=settings.batch_future_tolerance_s
    )


def validate_event(obj) -> list[str]:
    """Every reason `obj` (a decoded JSON value) breaks the wire shape; empty when valid."""
    violations = default_contract().violations(obj, ranges=False)
    return list(dict.fromkeys(v.detail for v in violations))


def _plainly_valid(obj) -> bool:
    """The validator's fast path for the wire shape (see EventContract.plainly_valid)."""
    return default_contract().plainly_valid(obj, ranges=False)


def event_reasons(raw: bytes | str | None) -> list[str]:
    """Reasons raw wire bytes are not a valid event (JSON errors included)."""
    obj, error = decode(raw)
    return [error] if error is not None else validate_event(obj)


def event_from_dict(obj) -> Event:
    """An Event from a decoded JSON object; EventValidationError listing every reason."""
    reasons = validate_event(obj)
    if reasons:
        raise _invalid(reasons)
    contract = default_contract()
    return Event(
        machine_id=obj["machine_id"],
        cycle=obj["cycle"],
        event_time=parse_event_time(obj["event_time"]),
        settings={key: float(obj["settings"][key]) for key in contract.setting_names},
        sensors={key: float(obj["sensors"][key]) for key in contract.sensor_names},
        source=obj["source"],
        schema_version=obj["schema_version"],
    )


def parse_event(raw: bytes | str) -> Event:
    """Decode wire bytes; EventValidationError (with `.reasons`) when invalid."""
    obj, error = decode(raw)
    if error is not None:
        raise _invalid([error])
    return event_from_dict(obj)


def encode_event(event: Event) -> bytes:
    """Wire bytes of a valid event; EventValidationError when it breaks the schema."""
    try:
        obj = event.to_dict()
    except ValueError as error:  # a naive event_time
        raise EventValidationError(str(error)) from None
    return encode_wire(obj)


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

    contract = default_contract()

    def readings(names):
        return StructType([StructField(name, DoubleType()) for name in names])

    return StructType(
        [
            StructField("schema_version", IntegerType()),
            StructField("machine_id", StringType()),
            StructField("cycle", LongType()),
            StructField("event_time", StringType()),
            StructField("settings", readings(contract.setting_names)),
            StructField("sensors", readings(contract.sensor_names)),
            StructField("source", StringType()),
        ]
    )

import json
import math
from datetime import UTC, datetime

import pytest

from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS
from prognos.core.errors import EventValidationError
from prognos.core.events import (
    FIELDS,
    SCHEMA_VERSION,
    Event,
    _plainly_valid,
    encode_event,
    event_reasons,
    event_spark_schema,
    machine_id_for,
    parse_event,
    validate_event,
)

pytestmark = pytest.mark.unit


def a_valid_event() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "machine_id": machine_id_for("FD001", "test", 7),
        "cycle": 12,
        "event_time": "2026-01-01T00:12:00.000Z",
        "settings": {name: 0.5 for name in SETTING_COLUMNS},
        "sensors": {name: 100.0 + i for i, name in enumerate(SENSOR_COLUMNS)},
        "source": "replay",
    }


def test_valid_event_round_trips():
    obj = a_valid_event()
    assert validate_event(obj) == []
    event = parse_event(json.dumps(obj).encode())
    assert event.machine_id == "FD001-test-0007"
    assert event.key == b"FD001-test-0007"
    assert event.event_time == datetime(2026, 1, 1, 0, 12, tzinfo=UTC)
    assert json.loads(encode_event(event)) == obj


def test_machine_ids_of_scaled_copies_differ():
    assert machine_id_for("FD001", "test", 7, copy=2) == "FD001-test-0007-c02"


def _broken(**changes) -> dict:
    obj = a_valid_event()
    for name, value in changes.items():
        if value is ...:
            del obj[name]
        else:
            obj[name] = value
    return obj


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        *[(_broken(**{name: ...}), f"missing field {name}") for name in FIELDS],
        (_broken(extra=1), "unknown field extra"),
        (_broken(schema_version=2), "schema_version must be 1"),
        (_broken(schema_version=True), "schema_version must be 1"),
        (_broken(machine_id=""), "machine_id must be"),
        (_broken(machine_id="has space"), "machine_id must be"),
        (_broken(machine_id=7), "machine_id must be"),
        (_broken(machine_id="FD001-test-0001\n"), "machine_id must be"),
        (_broken(cycle=0), "cycle must be > 0"),
        (_broken(cycle=-3), "cycle must be > 0"),
        (_broken(cycle=1.5), "cycle must be an integer"),
        (_broken(cycle="3"), "cycle must be an integer"),
        (_broken(event_time="yesterday"), "event_time must be ISO-8601"),
        (_broken(event_time="2026-01-01T00:00:00"), "with a timezone"),
        (_broken(event_time=1700000000), "event_time must be an ISO-8601 string"),
        (_broken(settings=[0.1, 0.2, 0.3]), "settings must be an object"),
        (_broken(settings={"setting_1": 0.1, "setting_2": 0.2}), "settings.setting_3 missing"),
        (_broken(sensors={**a_valid_event()["sensors"], "sensor_22": 1.0}), "sensor_22 unknown"),
        (_broken(sensors={**a_valid_event()["sensors"], "sensor_4": "hot"}), "must be a number"),
        (_broken(sensors={**a_valid_event()["sensors"], "sensor_4": True}), "must be a number"),
        (_broken(sensors={**a_valid_event()["sensors"], "sensor_4": math.nan}), "must be finite"),
        (_broken(sensors={**a_valid_event()["sensors"], "sensor_4": math.inf}), "must be finite"),
        (_broken(source=""), "source must be"),
        (_broken(source=["replay"]), "source must be"),
    ],
)
def test_each_rule_reports_its_reason(obj, reason):
    reasons = validate_event(obj)
    assert any(reason in r for r in reasons), reasons
    assert not _plainly_valid(obj)  # the fast path never lets a broken event through


def test_fast_path_accepts_a_valid_event_and_agrees_on_integers():
    assert _plainly_valid(a_valid_event())
    with_int = _broken(sensors={**a_valid_event()["sensors"], "sensor_4": 7})
    assert not _plainly_valid(with_int)
    assert validate_event(with_int) == []


def test_every_reason_is_reported_at_once():
    reasons = validate_event(_broken(cycle=0, source=..., machine_id=""))
    assert len(reasons) == 3


def test_parse_event_raises_with_reasons():
    raw = json.dumps(_broken(cycle=0)).encode()
    with pytest.raises(EventValidationError, match="cycle must be > 0") as error:
        parse_event(raw)
    assert error.value.reasons == ["cycle must be > 0, got 0"]


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b""])
def test_garbage_bytes_are_rejected(raw):
    with pytest.raises(EventValidationError, match="not valid JSON"):
        parse_event(raw)
    assert event_reasons(raw)


def test_nan_on_the_wire_is_rejected():
    raw = json.dumps(_broken(sensors={**a_valid_event()["sensors"], "sensor_2": math.nan}))
    assert "NaN" in raw
    assert any("finite" in r for r in event_reasons(raw.encode()))


def test_encode_refuses_an_invalid_event():
    event = parse_event(json.dumps(a_valid_event()))
    broken = Event(**{**event.__dict__, "cycle": 0})
    with pytest.raises(EventValidationError, match="cycle"):
        encode_event(broken)


def test_spark_schema_has_the_same_fields():
    schema = event_spark_schema()
    assert tuple(field.name for field in schema.fields) == FIELDS
    assert [f.name for f in schema["sensors"].dataType.fields] == list(SENSOR_COLUMNS)
    assert [f.name for f in schema["settings"].dataType.fields] == list(SETTING_COLUMNS)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (json.dumps(_broken(cycle=2**31)), "cycle must be <= 2147483647"),
        (json.dumps(_broken(cycle=10**4000)), "cycle must be <= 2147483647, got an integer"),
        (
            json.dumps(_broken(sensors={**a_valid_event()["sensors"], "sensor_3": 10**400})),
            "sensors.sensor_3 must be finite, got an integer",
        ),
        (json.dumps(_broken(event_time="1000-01-01T00:00:00Z")), "between 1900 and 2200"),
        (json.dumps(_broken(event_time="9999-01-01T00:00:00Z")), "between 1900 and 2200"),
        (json.dumps(_broken(schema_version=10**100)), "got an integer of 333 bits"),
        ("[" * 100_000, "not valid JSON"),
        ("1" * 5000, "not valid JSON"),
    ],
)
def test_hostile_payloads_get_reasons_not_exceptions(raw, reason):
    reasons = event_reasons(raw.encode())
    assert any(reason in r for r in reasons), reasons
    assert all(len(r) < 200 for r in reasons)
    with pytest.raises(EventValidationError):
        parse_event(raw)

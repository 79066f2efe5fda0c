"""The domain's event contract: rules named as silver records them, value rules from the
fleet spec, a fast path that never lets a broken event through."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from prognos.core.settings import PROJECT_ROOT
from prognos.domain.events import EventContract, Rule
from prognos.domain.fleet import load_fleet

pytestmark = pytest.mark.unit

FLEET = load_fleet(PROJECT_ROOT / "fleets" / "cmapss.toml")
CONTRACT = EventContract(FLEET)
NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()


def event(**changes) -> dict:
    middle = {name: (low + high) / 2 for name, (low, high) in FLEET.ranges.items()}
    obj = {
        "schema_version": 1,
        "machine_id": "FD001-test-0007",
        "cycle": 12,
        "event_time": "2026-01-01T00:12:00.000Z",
        "settings": {name: middle[name] for name in FLEET.setting_names},
        "sensors": {name: middle[name] for name in FLEET.sensor_names},
        "source": "replay",
    }
    for name, value in changes.items():
        group = "sensors" if name.startswith("sensor_") else "settings"
        if name.startswith(("sensor_", "setting_")):
            obj[group] = {**obj[group], name: value}
        elif value is ...:
            del obj[name]
        else:
            obj[name] = value
    return obj


def rules_of(obj, **options) -> list[str]:
    return [v.rule for v in CONTRACT.violations(obj, now_epoch=NOW, **options)]


LOW, HIGH = FLEET.ranges["sensor_9"]
CASES = {
    "valid": (event(), []),
    "at the bounds": (event(sensor_9=LOW, setting_3=FLEET.ranges["setting_3"][1]), []),
    "just above": (event(sensor_9=math.nextafter(HIGH, math.inf)), ["range:sensor_9"]),
    "just below": (event(sensor_9=math.nextafter(LOW, -math.inf)), ["range:sensor_9"]),
    "an int in range": (event(sensor_9=int(LOW) + 1), []),
    "infinite": (event(sensor_9=math.inf), ["range:sensor_9"]),
    "nan is missing": (event(sensor_9=math.nan), ["required:sensor_9"]),
    "null reading": (event(sensor_9=None), ["required:sensor_9"]),
    "text reading": (event(sensor_9="hot"), ["type:sensor_9"]),
    "bool reading": (event(sensor_9=True), ["type:sensor_9"]),
    "no settings": (event(settings=...), [f"required:setting_{i}" for i in (1, 2, 3)]),
    "unknown field": (event(colour="red"), ["known_fields"]),
    "unknown sensor": (event(sensor_22=1.0), ["known_fields"]),
    "float cycle": (event(cycle=-1.5), ["type:cycle"]),
    "null cycle": (event(cycle=None), ["required:cycle"]),
    "huge cycle": (event(cycle=10**4000), ["cycle_in_range"]),
    "future": (event(event_time="2027-01-01T00:00:00Z"), ["event_time_not_future"]),
    "far future": (
        event(event_time="9999-01-01T00:00:00Z"),
        ["event_time_in_range", "event_time_not_future"],
    ),
    "no source": (event(source=...), ["required:source"]),
    "bad source": (event(source="a b"), ["source_format"]),
    "version 2": (event(schema_version=2), ["schema_version_known"]),
    "version as text": (event(schema_version="1"), ["type:schema_version"]),
    "not an object": ([1, 2], ["valid_json"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_case_breaks_exactly_its_rules(case):
    obj, expected = CASES[case]
    assert sorted(rules_of(obj)) == sorted(expected)


def test_the_fast_path_accepts_complete_events_of_floats_within_range():
    assert CONTRACT.plainly_valid(CASES["valid"][0], True, NOW)
    assert CONTRACT.plainly_valid(CASES["at the bounds"][0], True, NOW)


@pytest.mark.parametrize("case", [name for name, (_, rules) in CASES.items() if rules])
def test_the_fast_path_never_accepts_a_broken_event(case):
    assert not CONTRACT.plainly_valid(CASES[case][0], True, NOW)


def test_the_wire_shape_alone_accepts_out_of_range_readings_but_not_infinite_ones():
    assert rules_of(event(sensor_9=HIGH * 2), ranges=False) == []
    assert rules_of(event(sensor_9=math.inf), ranges=False) == ["range:sensor_9"]


def test_wire_bytes_that_are_not_utf8_json_break_valid_json_only():
    for raw in (None, b"", b"{", b"\xff", "[" * 100_000, json.dumps(event()).encode("utf-16")):
        obj, violations = CONTRACT.wire_violations(raw, now_epoch=NOW)
        assert obj is None and [v.rule for v in violations] == ["valid_json"], raw[:10]


def test_details_say_what_is_wrong_for_people():
    violations = CONTRACT.violations(event(sensor_9=HIGH * 2, cycle=0), now_epoch=NOW)
    text = "; ".join(map(str, violations))
    assert f"range:sensor_9: sensors.sensor_9 must be within [{LOW}, {HIGH}]" in text
    assert "cycle_positive: cycle must be > 0, got 0" in text


def test_optional_readings_may_be_absent_but_not_out_of_range():
    spec = FLEET.model_copy(
        update={"sensors": (FLEET.sensors[0].model_copy(update={"required": False}),)}
    )
    contract = EventContract(spec)
    obj = event()
    obj["sensors"] = {}
    assert contract.violations(obj) == []
    obj["sensors"] = {"sensor_1": math.nan}  # NaN: absent
    assert contract.violations(obj) == []
    obj["sensors"] = {"sensor_1": 1e9}
    assert [v.rule for v in contract.violations(obj)] == ["range:sensor_1"]


def test_every_rule_checks_a_column_of_the_flat_record():
    columns = set(CONTRACT.columns)
    rules = CONTRACT.rules(now_epoch=NOW)
    assert all(isinstance(rule, Rule) and rule.column in columns for rule in rules)
    assert len({rule.name for rule in rules}) == len(rules)
    assert {f"range:{name}" for name in FLEET.ranges} <= {rule.name for rule in rules}

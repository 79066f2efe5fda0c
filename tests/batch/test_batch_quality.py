"""The event quality suite (Great Expectations on pandas): every failed rule per row."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from prognos.core import quality

pytestmark = pytest.mark.unit

NOW = time.time()


def event(**changes) -> str:
    payload = {
        "machine_id": "FD001-train-0007",
        "cycle": 3,
        "event_time": "2026-01-01T00:00:00+00:00",
        "schema_version": 1,
        "source": "test",
        "settings": {name: 0.0 for name in quality.SETTING_FIELDS},
        "sensors": {name: 500.0 for name in quality.SENSOR_FIELDS},
    }
    for name, value in changes.items():
        group = "sensors" if name.startswith("sensor_") else None
        if group:
            payload[group][name] = value
        elif value is None:
            payload.pop(name)
        else:
            payload[name] = value
    return json.dumps(payload)


@pytest.fixture(scope="module")
def rules():
    ranges = {name: (-1e4, 1e4) for name in quality.NUMERIC_FIELDS}
    ranges["sensor_2"] = (0.0, 1000.0)
    return quality.build_rules(ranges, NOW, future_tolerance_s=300)


CASES = {
    "valid": (event(), []),
    "malformed_json": ("{machine_id: 7", ["valid_json"]),
    "not_an_object": ("[1, 2]", ["valid_json"]),
    "wrong_type_cycle": (event(cycle="three"), ["type:cycle"]),
    "wrong_type_sensor": (event(sensor_4="hot"), ["type:sensor_4"]),
    "missing_cycle": (event(cycle=None), ["required:cycle"]),
    "out_of_range": (event(sensor_2=1e7), ["range:sensor_2"]),
    "cycle_zero": (event(cycle=0), ["cycle_positive"]),
    "future": (event(event_time="2099-01-01T00:00:00+00:00"), ["event_time_not_future"]),
    "bad_time": (event(event_time="yesterday"), ["type:event_time"]),
    "unknown_version": (event(schema_version=9), ["schema_version_known"]),
    "numeric_machine_id": (event(machine_id=7), ["type:machine_id"]),
    "bad_machine_id": (event(machine_id="no spaces!"), ["machine_id_format"]),
    "two_faults": (event(cycle=-1, sensor_2=-5.0), ["range:sensor_2", "cycle_positive"]),
    "cycle_beyond_int32": (event(cycle=2**31), ["cycle_in_range"]),
    "int_beyond_double": (event(sensor_4=10**400), ["range:sensor_4"]),
    "ancient_time": (event(event_time="1000-01-01T00:00:00+00:00"), ["event_time_in_range"]),
    "deep_nesting": ("[" * 100_000, ["valid_json"]),
    "too_many_digits": ("1" * 5000, ["valid_json"]),
    "source_not_text": (event(source=True), ["type:source"]),
    "bool_cycle": (event(cycle=False), ["type:cycle"]),
    "bool_sensor": (event(sensor_4=True), ["type:sensor_4"]),
    "bool_version": (event(schema_version=True), ["type:schema_version"]),
}


def test_each_bad_input_fails_with_its_rules(rules):
    names = list(CASES)
    frame = quality.flatten_payloads(pd.Series([CASES[name][0] for name in names]))
    outcome = quality.validate_events(frame, rules)
    for name, failed in zip(names, outcome.failed_rules, strict=True):
        assert sorted(failed) == sorted(CASES[name][1]), name


def test_summary_counts_each_rule(rules):
    payloads = [event(), event(cycle=0), event(cycle=0, sensor_2=-1.0), "nope"]
    outcome = quality.validate_events(quality.flatten_payloads(pd.Series(payloads)), rules)
    summary = outcome.summary.set_index("rule")
    assert summary.loc["cycle_positive", "unexpected_count"] == 2
    assert summary.loc["valid_json", "unexpected_count"] == 1
    assert not summary.loc["range:sensor_2", "passed"]
    assert summary.loc["required:machine_id", "passed"]
    assert (summary["element_count"] == 4).all()


def test_empty_frame_has_a_passing_summary(rules):
    outcome = quality.validate_events(quality.flatten_payloads(pd.Series([], dtype=object)), rules)
    assert outcome.failed_rules == []
    assert outcome.summary["passed"].all()


def test_ranges_learned_from_training_data_cover_it():
    from prognos.core.data import load_cmapss

    ranges = quality.learned_ranges()
    train = load_cmapss("FD002", "train")
    for name in quality.NUMERIC_FIELDS:
        low, high = ranges[name]
        assert low < train[name].min() and train[name].max() < high, name
    assert ranges["sensor_2"][1] < 1000  # physical, not unbounded

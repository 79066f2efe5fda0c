"""The speed layer and silver accept and reject exactly the same events, for the same reasons.

The same generated records (valid FD001 events; readings at, just beyond and far beyond the
fleet spec's ranges; every mutation of tests/functional/fuzz_events.py: wrong types,
missing and extra fields, NaN/inf, huge numbers, bad cycles and times, invalid UTF-8, not
JSON, ...) go through both paths:

- the speed layer's: the domain validator as speed_layer.state calls it for each Kafka
  record (`judge_wire`), and the reason `_checked` gives the dead-letter topic;
- silver's real one: a bronze Delta table -> `silver.run` (Spark, the Great Expectations
  suite generated from the same contract) -> silver and quarantine.

Per record, the rules each path names are compared. A later copy of a (machine_id, cycle)
is a stateful rule of silver (`duplicate:machine_id,cycle`), not of the event: such a
record counts as accepted. Examples are derandomized: the same records on every run.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from prognos.core import lake
from prognos.core.events import judge_wire
from prognos.core.fleet import default_contract
from prognos.core.replay import fleet_frame, fleet_wire_events
from spark_jobs import silver
from speed_layer.state import Record, _checked
from tests.conftest import make_settings
from tests.functional.fuzz_events import bad_event, draw, out_of_range

MACHINES = 2
CYCLES = 40
BAD_EVENTS = 220
RANGE_EVENTS = 40
TOPIC = "parity"


def valid_events(start: datetime) -> list[dict]:
    fleet = fleet_frame("FD001", "test", machines=MACHINES)
    return list(fleet_wire_events(fleet[fleet["cycle"] <= CYCLES], start, 60.0, "parity"))


def hand_written(event: dict) -> list[bytes]:
    """Cases the generators reach rarely: NaN, null and absent readings, null fields,
    integers beyond 64 bits and containers (which pandas cannot hash)."""
    sensors = event["sensors"]
    cases = [
        {**event, "sensors": {**sensors, "sensor_4": math.nan}},
        {**event, "sensors": {**sensors, "sensor_4": None}},
        {**event, "sensors": {k: v for k, v in sensors.items() if k != "sensor_4"}},
        {**event, "cycle": None},
        {**event, "cycle": math.nan},
        {**event, "settings": None},
        {**event, "schema_version": 1.0},
        {**event, "machine_id": "FD001-test-0001\n"},
        {**event, "event_time": "2026-01-01T00:00:00"},
        {**event, "cycle": 10**400, "sensors": {**sensors, "sensor_4": -(10**400)}},
        {**event, "cycle": [2**70], "sensors": {**sensors, "sensor_4": {"a": 2**70}}},
    ]
    return [json.dumps(case).encode() for case in cases] + [b"", b"\xef\xbb\xbf{}"]


def records(start: datetime) -> list[bytes]:
    events = valid_events(start)
    bad = [value for _, _, value in draw(bad_event(events), BAD_EVENTS)]
    ranged = draw(out_of_range(events[3]), RANGE_EVENTS)
    return [json.dumps(e).encode() for e in events] + bad + ranged + hand_written(events[5])


def write_bronze(spark, settings, values: list[bytes]) -> None:
    from prognos.core.tables import get_table

    now = datetime.now(UTC)
    rows = [
        (_key(value), value, TOPIC, 0, offset, now, now, now.date())
        for offset, value in enumerate(values)
    ]
    frame = spark.createDataFrame(rows, schema=get_table("bronze").spark_schema)
    lake.write_table(frame, "bronze", settings)


def _key(value: bytes) -> bytes | None:
    try:
        return json.loads(value)["machine_id"].encode()
    except Exception:  # the key does not matter to silver; any bytes will do
        return None


def silver_rules(settings) -> dict[int, list[str]]:
    """Per bronze offset, the rules silver's suite said the record breaks ([] if accepted)."""
    judged = {row["kafka_offset"]: [] for row in _rows("silver", settings)}
    for row in _rows("quarantine", settings):
        reasons = [] if row["reasons"] == [silver.DUPLICATE] else list(row["reasons"])
        judged[row["kafka_offset"]] = reasons
    return judged


def _rows(table: str, settings) -> list[dict]:
    return lake.read_table_arrow(table, settings).to_pylist()


def speed_rules(value: bytes, settings) -> list[str]:
    _, violations = judge_wire(value, settings, time.time())
    return [v.rule for v in violations]


@pytest.fixture(scope="module")
def judged(spark, tmp_path_factory):
    """(records, settings, silver's rules per offset) after one silver run over them."""
    settings = make_settings(tmp_path_factory.mktemp("parity"), batch_max_failure_share=1.0)
    values = records(datetime.now(UTC).replace(microsecond=0) - timedelta(days=2))
    write_bronze(spark, settings, values)
    silver.run(spark, settings, run_id="parity")
    return values, settings, silver_rules(settings)


def test_both_paths_accept_the_same_events_with_the_same_reasons(judged):
    values, settings, batch = judged
    assert sorted(batch) == list(range(len(values)))  # silver judged every record once
    differences = [
        (offset, values[offset][:200], sorted(batch[offset]), sorted(speed))
        for offset in range(len(values))
        if sorted(batch[offset]) != sorted(speed := speed_rules(values[offset], settings))
    ]
    assert not differences, differences[:5]


def test_the_records_exercise_every_family_of_rules(judged):
    _, _, batch = judged
    accepted = sum(not rules for rules in batch.values())
    families = Counter(rule.partition(":")[0] for rules in batch.values() for rule in rules)
    assert accepted >= MACHINES * CYCLES
    for family in ("valid_json", "required", "type", "range", "known_fields", "cycle_positive"):
        assert families[family] > 0, families
    assert families["event_time_not_future"] > 0 and families["schema_version_known"] > 0
    ranged = Counter(r for rules in batch.values() for r in rules if r.startswith("range:"))
    assert len(ranged) >= 5, ranged  # ranges of several readings, not one


def test_the_speed_layer_dead_letters_exactly_those_with_their_rule_names(judged):
    values, settings, batch = judged
    for offset, value in enumerate(values):
        key = _key(value)
        machine = key.decode() if key else "none"
        event, _, reason = _checked(Record(machine, value, 0, offset), machine, settings)
        if key is None or not batch[offset]:
            continue  # no machine id to key by: the speed layer rejects it for its key too
        assert (event is None) == bool(batch[offset]), (offset, value[:200], reason)
        assert all(rule in reason for rule in batch[offset]), (reason, batch[offset])
    assert sum(1 for rules in batch.values() if not rules) > 0


def test_silver_persists_a_result_for_every_rule_of_the_contract(judged):
    _, settings, _ = judged
    results = [r for r in _rows("validation_results", settings) if r["run_id"] == "parity"]
    names = {rule.name for rule in default_contract(settings).rules(now_epoch=0.0)}
    assert {r["rule"] for r in results} == names | {silver.DUPLICATE}

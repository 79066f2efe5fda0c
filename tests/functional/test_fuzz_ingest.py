"""Fuzzing the ingestion path: hypothesis-generated bad events mixed into a valid FD001
stream go through Kafka, bronze -> silver and the speed layer without a crash, and every
event ends in exactly one place.

Accounting, per Kafka record (identified by its (partition, offset) on the fresh topic):

- Batch side: bronze holds every record exactly once; each record is then in exactly one
  of silver (valid, first of its (machine_id, cycle)) or quarantine (failed rules, or a
  later copy of a kept (machine_id, cycle): reason `duplicate:machine_id,cycle`, counted
  explicitly and each naming a key silver holds). silver + quarantine = all, disjoint.
- Speed side: each record is in exactly one of dead letter (the dead-letter topic, keyed
  by its coordinates), late rows (`late_rows`), accepted (an offset in some machine's
  `speed_view.pending_offsets`), or absorbed as a repeated cycle - a contract-valid record
  whose (machine_id, cycle) an accepted record holds (counted explicitly: the speed layer
  keeps a cycle once and writes no row for the copy).
- Every record the event contract rejects is a dead letter and in quarantine (silver's
  suite is generated from the contract's rules: tests/functional/test_validation_parity.py
  compares the reasons); every valid FD001 event is accepted and in silver. A payload
  above the broker's message limit never enters the topic: the producer gets
  MessageSizeTooLargeError.

Two speed runs (availableNow): the second one's events are behind the watermark the first
established (late rows). Examples are derandomized: the same events on every run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from prognos.core import lake
from prognos.core.events import event_reasons
from prognos.core.replay import fleet_frame, fleet_wire_events
from spark_jobs import bronze_ingest, silver
from tests.conftest import fresh_topic_settings
from tests.functional.fuzz_events import bad_event, draw

MACHINES = 3
CYCLES = 20
BAD_EVENTS = 120
REPEATS = 6  # valid copies of already sent cycles, verbatim or with other readings
LATE = 4  # valid new cycles stamped a day before the first wave
pytestmark = pytest.mark.slow


@pytest.fixture
def fuzz_settings(broker_settings, tmp_path):
    return fresh_topic_settings(
        broker_settings,
        tmp_path,
        batch_max_failure_share=1.0,  # the gate would stop silver: half the stream is bad
        serving_model="rul_fuzz",  # no champion: the speed layer routes without scoring
    )


def valid_events(start: datetime) -> list[dict]:
    fleet = fleet_frame("FD001", "test", machines=MACHINES)
    fleet = fleet[fleet["cycle"] <= CYCLES]
    return list(fleet_wire_events(fleet, start, 60.0, "fuzz"))


def contract_checked(example) -> None:
    """The property on every generated example: validation never raises."""
    _, _, value = example
    assert isinstance(event_reasons(value), list)


def first_wave(start: datetime) -> tuple[list, set]:
    """(messages, the valid FD001 messages among them)."""
    events = valid_events(start)
    bad = draw(bad_event(events), BAD_EVENTS, check=contract_checked)
    messages = [(e["machine_id"].encode(), json.dumps(e).encode()) for e in events]
    base = set(messages)
    for index, (_, key, value) in enumerate(bad):  # spread through the valid stream
        messages.insert((index * 7) % len(messages), (key, value))
    for index in range(REPEATS):
        event = events[index * 5]
        copy = event if index % 2 else {**event, "sensors": events[index * 5 + 1]["sensors"]}
        messages.append((event["machine_id"].encode(), json.dumps(copy).encode()))
    return messages, base


def late_wave(start: datetime) -> list[tuple[bytes, bytes]]:
    fleet = fleet_frame("FD001", "test", machines=1)
    fleet = fleet[fleet["cycle"].between(CYCLES + 1, CYCLES + LATE)]
    late = fleet_wire_events(fleet, start - timedelta(days=1), 60.0, "fuzz")
    return [(e["machine_id"].encode(), json.dumps(e).encode()) for e in late]


def produce(settings, messages) -> dict[tuple[int, int], tuple[bytes | None, bytes]]:
    """Send and wait for every acknowledgement: {(partition, offset): (key, value)}."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    try:
        futures = [
            (producer.send(settings.topic_readings, key=k, value=v), (k, v)) for k, v in messages
        ]
        producer.flush(60)
        placed = {}
        for future, message in futures:
            meta = future.get(timeout=30)
            placed[(meta.partition, meta.offset)] = message
        return placed
    finally:
        producer.close(5)


def broker_refuses_oversized(settings) -> bool:
    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError

    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        max_request_size=4 * 2**20,  # let it reach the broker
        retries=0,
    )
    try:
        future = producer.send(settings.topic_readings, key=b"big", value=b"x" * (3 * 2**19))
        producer.flush(30)
        future.get(timeout=30)
    except MessageSizeTooLargeError:
        return True
    finally:
        producer.close(5)
    return False


def run_speed(spark, settings) -> None:
    from speed_layer.stream import build_query

    previous = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        lake.await_query(build_query(spark, settings, trigger="availableNow"), settings, 600)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)


def dead_letters(settings) -> list[tuple[int, int]]:
    from tests.functional.kafka_helpers import read_all

    records = read_all(settings.kafka_bootstrap_servers, settings.topic_dead_letter, 10**6, 20)
    coordinates = []
    for record in records:
        topic, partition, offset = record.key.decode().rsplit(":", 2)
        assert topic == settings.topic_readings
        assert dict(record.headers)["reason"]
        coordinates.append((int(partition), int(offset)))
    return coordinates


def coordinates_of(settings, table: str, partition="kafka_partition", offset="kafka_offset"):
    rows = lake.read_table_arrow(table, settings).select([partition, offset]).to_pylist()
    return [(row[partition], row[offset]) for row in rows]


def accepted_offsets(settings) -> list[tuple[int, int]]:
    rows = lake.read_table_arrow("speed_view", settings).to_pylist()
    return [(r["kafka_partition"], o) for r in rows for o in r["pending_offsets"]]


def exactly_once(places: dict[str, list], everything: set) -> dict[str, set]:
    """Each place holds no record twice, no record is in two places, nothing else."""
    sets = {}
    for name, found in places.items():
        assert len(found) == len(set(found)), f"a record twice in {name}"
        sets[name] = set(found)
    names = list(sets)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not sets[first] & sets[second], f"records in both {first} and {second}"
    assert set().union(*sets.values()) <= everything
    return sets


def key_of(value: bytes) -> tuple[str, int]:
    event = json.loads(value)
    return event["machine_id"], event["cycle"]


def is_valid(message) -> bool:
    key, value = message
    return not event_reasons(value) and key == json.loads(value)["machine_id"].encode()


def test_bad_events_end_in_exactly_one_place(fuzz_settings, spark):
    settings = fuzz_settings
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    assert broker_refuses_oversized(settings)
    clock = Clock()
    messages, base_messages = first_wave(start)
    clock.lap("draw")
    sent = produce(settings, messages)
    run_speed(spark, settings)
    clock.lap("speed 1")
    late = produce(settings, late_wave(start))
    sent |= late
    run_speed(spark, settings)
    clock.lap("speed 2")
    bronze_ingest.ingest(spark, settings)
    clock.lap("bronze")
    totals = silver.run(spark, settings, run_id="fuzz")
    clock.lap("silver")
    everything = set(sent)
    invalid = {at for at, (_, value) in sent.items() if event_reasons(value)}
    base = {at for at, message in sent.items() if message in base_messages}

    # speed side: dead letter | late rows | accepted | absorbed repeated cycles
    speed = exactly_once(
        {
            "dead letter": dead_letters(settings),
            "late rows": coordinates_of(settings, "late_rows"),
            "accepted": accepted_offsets(settings),
        },
        everything,
    )
    absorbed = everything - set().union(*speed.values())
    held = {key_of(sent[at][1]) for at in speed["accepted"]}
    assert all(is_valid(sent[at]) and key_of(sent[at][1]) in held for at in absorbed)
    assert invalid <= speed["dead letter"]
    # a valid FD001 event is accepted, or a copy of its cycle was accepted before it
    assert base <= speed["accepted"] | absorbed
    assert {key_of(sent[at][1]) for at in base} <= held
    assert set(late) <= speed["late rows"]
    assert len(absorbed) >= REPEATS // 2  # verbatim copies at least

    # batch side: bronze has all; silver | quarantine (duplicates counted explicitly)
    bronze = coordinates_of(settings, "bronze", "partition", "offset")
    assert sorted(bronze) == sorted(everything)
    batch = exactly_once(
        {
            "silver": coordinates_of(settings, "silver"),
            "quarantine": coordinates_of(settings, "quarantine"),
        },
        everything,
    )
    assert batch["silver"] | batch["quarantine"] == everything
    quarantine = lake.read_table_arrow("quarantine", settings).to_pylist()
    duplicates = [q for q in quarantine if q["reasons"] == [silver.DUPLICATE]]
    silver_keys = Counter(
        (r["machine_id"], r["cycle"]) for r in lake.read_table_arrow("silver", settings).to_pylist()
    )
    assert max(silver_keys.values()) == 1
    assert all(key_of(q["value"]) in silver_keys for q in duplicates)
    assert invalid <= batch["quarantine"]
    duplicate_at = {(q["kafka_partition"], q["kafka_offset"]) for q in duplicates}
    assert base <= batch["silver"] | duplicate_at
    assert {key_of(sent[at][1]) for at in base} <= set(silver_keys)
    assert totals["rows"] == len(everything)
    assert totals["duplicates"] == len(duplicates) >= REPEATS
    print(
        f"fuzz: {len(everything)} records ({len(invalid)} contract-invalid); speed: "
        + ", ".join(f"{name} {len(found)}" for name, found in speed.items())
        + f", absorbed repeats {len(absorbed)}; batch: silver {len(batch['silver'])}, "
        f"quarantine {len(batch['quarantine'])} (duplicates {len(duplicates)}); {clock}"
    )


class Clock:
    def __init__(self):
        self.laps, self.last = {}, time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name], self.last = round(now - self.last, 1), now

    def __str__(self) -> str:
        return " ".join(f"{name} {seconds} s" for name, seconds in self.laps.items())

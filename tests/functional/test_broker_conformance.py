"""What prognos relies on from a Kafka broker, runnable against any broker:
set KAFKA_BOOTSTRAP_SERVERS to test an external one (the fixture then starts nothing)."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.functional.kafka_helpers import fresh_topic, read_all


@pytest.fixture
def servers(broker_settings) -> str:
    return broker_settings.kafka_bootstrap_servers


def produce(servers: str, topic: str, values, partition: int | None = None, timestamps=None):
    producer = KafkaProducer(bootstrap_servers=servers, acks="all", enable_idempotence=True)
    try:
        for index, value in enumerate(values):
            timestamp = timestamps[index] if timestamps else None
            producer.send(topic, value=value, partition=partition, timestamp_ms=timestamp)
        producer.flush()
    finally:
        producer.close()


def consumer(servers: str, **config) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False, **config
    )


def test_end_offsets_after_produce(servers):
    topic = fresh_topic(servers, partitions=2, prefix="conf-end")
    produce(servers, topic, [b"a"] * 5, partition=0)
    produce(servers, topic, [b"b"] * 3, partition=1)
    reader = consumer(servers)
    try:
        partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        assert reader.end_offsets(partitions) == {partitions[0]: 5, partitions[1]: 3}
        assert reader.beginning_offsets(partitions) == {partitions[0]: 0, partitions[1]: 0}
    finally:
        reader.close()


def poll_values(reader: KafkaConsumer, count: int, timeout_s: float = 30.0) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < count and time.monotonic() < deadline:
        for batch in reader.poll(timeout_ms=500, max_records=count - len(values)).values():
            values.extend(record.value for record in batch)
    return values


def test_consumer_group_commit_and_resume(servers):
    topic = fresh_topic(servers, prefix="conf-group")
    produce(servers, topic, [str(i).encode() for i in range(10)])
    group = f"group-{uuid.uuid4().hex[:8]}"

    first = consumer(servers, group_id=group)
    try:
        first.subscribe([topic])
        assert poll_values(first, 4) == [b"0", b"1", b"2", b"3"]
        first.commit()
    finally:
        first.close()

    second = consumer(servers, group_id=group)
    try:
        second.subscribe([topic])
        assert poll_values(second, 6) == [str(i).encode() for i in range(4, 10)]
        assert second.committed(TopicPartition(topic, 0)) == 4
    finally:
        second.close()


def test_read_committed_skips_an_aborted_transaction(servers):
    topic = fresh_topic(servers, prefix="conf-txn")
    producer = KafkaProducer(
        bootstrap_servers=servers, transactional_id=f"txn-{uuid.uuid4().hex[:8]}"
    )
    try:
        producer.init_transactions()
        for values, commit in (([b"c1", b"c2"], True), ([b"x1", b"x2"], False), ([b"c3"], True)):
            producer.begin_transaction()
            for value in values:
                producer.send(topic, value=value)
            producer.flush()
            producer.commit_transaction() if commit else producer.abort_transaction()
    finally:
        producer.close()

    committed = consumer(servers, isolation_level="read_committed")
    try:
        committed.assign([TopicPartition(topic, 0)])
        assert poll_values(committed, 3) == [b"c1", b"c2", b"c3"]
        assert poll_values(committed, 1, timeout_s=2) == []
    finally:
        committed.close()
    everything = read_all(servers, topic, 5)
    assert [r.value for r in everything] == [b"c1", b"c2", b"x1", b"x2", b"c3"]


def test_offsets_for_times(servers):
    topic = fresh_topic(servers, prefix="conf-time")
    base = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    produce(servers, topic, [b"t0", b"t1", b"t2"], timestamps=[base, base + 1000, base + 2000])
    reader = consumer(servers)
    try:
        partition = TopicPartition(topic, 0)
        found = reader.offsets_for_times({partition: base + 500})[partition]
        assert (found.offset, found.timestamp) == (1, base + 1000)
        assert reader.offsets_for_times({partition: base + 5000})[partition] is None
    finally:
        reader.close()

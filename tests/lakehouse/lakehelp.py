"""Helpers of the lakehouse tests: topics with data, offsets, Spark vs delta-rs."""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

from prognos.core.settings import PROJECT_ROOT

PROJECT_JARS = Path(os.environ.get("PROGNOS_JARS_DIR", PROJECT_ROOT / ".state" / "jars"))


def with_catalog_columns(df, table: str):
    """A Spark frame with the table's other catalog columns as typed nulls, in catalog order
    (tests that use a view table as a plain Delta table write only a few columns)."""
    from pyspark.sql import functions as F

    from prognos.core.tables import get_table

    fields = get_table(table).spark_schema.fields
    return df.select(
        *[
            F.col(f.name) if f.name in df.columns else F.lit(None).cast(f.dataType).alias(f.name)
            for f in fields
        ]
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def create_topic(settings, partitions: int = 6) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"lake-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def produce(settings, topic: str, count: int, partitions: int = 6, start: int = 0) -> None:
    """count small JSON records spread round-robin over the partitions."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        linger_ms=20,
        batch_size=256 * 1024,
        acks=1,
    )
    try:
        for number in range(start, start + count):
            machine = f"m-{number % 97:03d}"
            value = json.dumps({"machine_id": machine, "n": number}).encode()
            producer.send(topic, key=machine.encode(), value=value, partition=number % partitions)
        producer.flush(60)
    finally:
        producer.close()


def end_offsets(settings, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def expected_coordinates(offsets: dict[int, int]) -> set[tuple[int, int]]:
    return {(p, o) for p, end in offsets.items() for o in range(end)}


def _plain(value):
    """One comparable form for a value read by Spark or by delta-rs."""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo is None else value
        return moment.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, list) and value and isinstance(value[0], tuple):  # arrow map
        return tuple(sorted((k, _plain(v)) for k, v in value))
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if isinstance(value, date):
        return value
    return value


def spark_rows(df) -> list[tuple]:
    columns = df.columns
    return sorted((tuple(_plain(row[c]) for c in columns) for row in df.collect()), key=repr)


def arrow_rows(table, columns) -> list[tuple]:
    return sorted((tuple(_plain(row[c]) for c in columns) for row in table.to_pylist()), key=repr)


def assert_same_through_delta_rs(spark, table: str, settings, version: int | None = None):
    """The table read by Spark and by delta-rs (JVM-free path) has identical contents."""
    from prognos.core.lake import read_table, read_table_arrow

    spark_df = read_table(spark, table, settings, version=version)
    arrow = read_table_arrow(table, settings, version=version)
    assert arrow.column_names == spark_df.columns
    assert arrow_rows(arrow, spark_df.columns) == spark_rows(spark_df)
    return arrow.num_rows

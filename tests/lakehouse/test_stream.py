"""Kafka -> Delta streaming append: exactly once across restarts, a kill -9 of the driver,
checkpoint cleanup; an unreachable broker fails clearly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lakehelp import (
    assert_same_through_delta_rs,
    create_topic,
    end_offsets,
    expected_coordinates,
    free_port,
    produce,
)

from prognos.core import lake
from prognos.core.errors import BrokerUnavailableError
from prognos.core.settings import PROJECT_ROOT, load_settings, settings_env

RECORDS = 50_000
DRIVER = Path(__file__).with_name("stream_driver.py")


@pytest.fixture(scope="module")
def topic_50k(broker_settings):
    """A 6-partition topic holding 50k records (shared by the exactly-once tests)."""
    topic = create_topic(broker_settings, partitions=6)
    produce(broker_settings, topic, RECORDS, partitions=6)
    offsets = end_offsets(broker_settings, topic)
    assert sum(offsets.values()) == RECORDS
    return topic, offsets


def _bronze_coordinates(spark, settings) -> tuple[int, set[tuple[int, int]]]:
    bronze = lake.read_table(spark, "bronze", settings)
    rows = bronze.select("partition", "offset").collect()
    return len(rows), {(row["partition"], row["offset"]) for row in rows}


def _assert_exactly_once(spark, settings, topic, offsets) -> None:
    count, coordinates = _bronze_coordinates(spark, settings)
    assert count == sum(offsets.values())
    assert coordinates == expected_coordinates(offsets)
    topics = {row["topic"] for row in lake.read_table(spark, "bronze", settings).collect()}
    assert topics == {topic}


def _run_stream(spark, settings, topic, trigger, max_offsets=None):
    source = lake.kafka_stream(spark, settings, topic, max_offsets_per_trigger=max_offsets)
    return lake.append_stream_to_delta(
        lake.to_bronze(source), "bronze", settings, trigger=trigger, query_name="bronze-ingest"
    )


def test_exactly_once_across_graceful_stop_and_restart(spark, lake_settings, topic_50k):
    topic, offsets = topic_50k
    query = _run_stream(spark, lake_settings, topic, "processingTime=1 second", 8000)
    try:
        assert lake.wait_for(lambda: (query.lastProgress or {}).get("batchId", -1) >= 1, 300)
    finally:
        query.stop()
    stopped_at, _ = _bronze_coordinates(spark, lake_settings)
    assert 0 < stopped_at < RECORDS

    restarted = _run_stream(spark, lake_settings, topic, "availableNow")
    lake.await_query(restarted, lake_settings, timeout_s=600)
    _assert_exactly_once(spark, lake_settings, topic, offsets)

    # checkpoint cleanup keeps what a restart needs: another restart adds nothing
    with pytest.raises(ValueError, match="at least 2"):
        lake.cleanup_checkpoints(lake_settings.checkpoints, keep_latest=1)
    removed = lake.cleanup_checkpoints(lake_settings.checkpoints, keep_latest=2)
    assert removed and not any(path.exists() for path in removed)
    assert _batches(lake_settings, "offsets") == 2
    again = _run_stream(spark, lake_settings, topic, "availableNow")
    lake.await_query(again, lake_settings, timeout_s=600)
    _assert_exactly_once(spark, lake_settings, topic, offsets)
    assert_same_through_delta_rs(spark, "bronze", lake_settings)


def _start_driver(settings, topic: str, max_offsets: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), topic, str(max_offsets)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _batches(settings, log: str) -> int:
    directory = lake.checkpoint_path(settings, "bronze-ingest") / log
    return len(list(directory.glob("[0-9]*"))) if directory.is_dir() else 0


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def test_exactly_once_across_kill_9_of_the_driver_mid_batch(
    spark, lake_settings, topic_50k, tmp_path
):
    topic, offsets = topic_50k
    log = tmp_path / "driver.log"
    driver = _start_driver(lake_settings, topic, max_offsets=2000, log=log)
    try:
        # mid-batch: a batch's offsets are logged but its commit is not yet written
        in_flight = lake.wait_for(
            lambda: (
                _batches(lake_settings, "commits") >= 2
                and _batches(lake_settings, "offsets") > _batches(lake_settings, "commits")
            ),
            timeout_s=400,
            interval_s=0.05,
        )
        assert in_flight, log.read_text(errors="replace")[-3000:]
    finally:
        _kill_group(driver)
    killed_at, _ = _bronze_coordinates(spark, lake_settings)
    assert killed_at < RECORDS

    restarted = _start_driver(lake_settings, topic, max_offsets=0, log=log)
    try:
        restarted.wait(timeout=600)
    finally:
        _kill_group(restarted)
    assert restarted.returncode == 0, log.read_text(errors="replace")[-3000:]
    _assert_exactly_once(spark, lake_settings, topic, offsets)
    assert_same_through_delta_rs(spark, "bronze", lake_settings)


def test_unreachable_broker_fails_the_query_clearly(spark, tmp_path, lake_settings):
    settings = load_settings(
        state_dir=tmp_path / "nobroker",
        jars_dir=lake_settings.jars,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_client_timeout_ms=2000,
    )
    query = _run_stream(spark, settings, "sensor-readings", "availableNow")
    with pytest.raises(
        BrokerUnavailableError, match=r"Kafka broker at 127\.0\.0\.1:\d+ unreachable"
    ):
        lake.await_query(query, settings, timeout_s=180)
    assert not query.isActive

"""`prognos replay` against a real broker: complete, keyed, per-machine cycle order."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from prognos.core.data import load_cmapss
from prognos.core.events import parse_event
from prognos.core.replay import replay
from prognos.core.settings import load_settings
from tests.conftest import free_port
from tests.functional.kafka_helpers import fresh_topic, read_all


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prognos.cli.main", "replay", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def topic(broker_settings) -> str:
    return fresh_topic(broker_settings.kafka_bootstrap_servers, partitions=3, prefix="replay")


def test_three_test_machines_arrive_complete_keyed_and_in_cycle_order(
    broker_settings, broker_env, topic
):
    env = {**broker_env, "PROGNOS_TOPIC_READINGS": topic}
    result = cli(env, "--machines", "3", "--start", "2026-01-01T00:00:00Z", "--cycle-seconds", "10")
    assert result.returncode == 0, result.stderr
    expected = load_cmapss("FD001", "test")
    expected = expected[expected["machine_id"] <= 3]
    assert f"sent {len(expected)} events of 3 machines" in result.stdout
    assert "failed 0" in result.stdout

    records = read_all(broker_settings.kafka_bootstrap_servers, topic, len(expected))
    assert len(records) == len(expected)
    cycles = defaultdict(list)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = parse_event(record.value)
        assert record.key == event.machine_id.encode()
        assert event.event_time == start + timedelta(seconds=10 * event.cycle)
        cycles[event.machine_id].append(event.cycle)
    by_unit = expected.groupby("machine_id")["cycle"].apply(list)
    assert cycles == {f"FD001-test-{unit:04d}": by_unit[unit] for unit in (1, 2, 3)}


def test_sensor_values_are_the_dataset_values(broker_settings, topic):
    settings = broker_settings.model_copy(update={"topic_readings": topic})
    summary = replay("FD001", "train", machines=1, settings=settings)
    assert (summary.sent, summary.failed, summary.machines) == (192, 0, 1)
    records = read_all(settings.kafka_bootstrap_servers, topic, summary.sent)
    first = min((parse_event(r.value) for r in records), key=lambda e: e.cycle)
    row = load_cmapss("FD001", "train").iloc[0]
    assert first.cycle == 1
    assert first.sensors["sensor_2"] == row["sensor_2"]
    assert first.settings["setting_1"] == row["setting_1"]


def test_scaled_fleet_has_new_machine_ids(broker_settings, topic):
    settings = broker_settings.model_copy(update={"topic_readings": topic})
    summary = replay("FD001", "test", machines=2, scale=3, settings=settings)
    assert summary.failed == 0 and summary.machines == 6
    records = read_all(settings.kafka_bootstrap_servers, topic, summary.sent)
    keys = {r.key.decode() for r in records}
    assert len(records) == summary.sent
    assert {"FD001-test-0001", "FD001-test-0001-c01", "FD001-test-0002-c02"} <= keys


def test_unreachable_broker_fails_with_one_line(broker_env):
    env = {**broker_env, "PROGNOS_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    result = cli(env, "--machines", "3")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Kafka broker at 127.0.0.1:")
    assert "unreachable after 3 attempts" in lines[0]


def test_unknown_subset_fails_with_one_line(broker_env):
    result = cli(broker_env, "--subset", "FD007")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: unknown subset 'FD007': expected one of FD001, FD002, FD003, FD004"
    )


def test_damaged_data_file_fails_with_one_line(broker_env, tmp_path):
    data_dir = tmp_path / "cmapss"
    shutil.copytree(load_settings().data_dir, data_dir)
    damaged = data_dir / "test_FD001.txt.gz"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    result = cli({**broker_env, "PROGNOS_DATA_DIR": str(data_dir)}, "--machines", "3")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data file damaged:")


def test_event_failing_the_schema_fails_with_one_line(broker_env, topic):
    env = {**broker_env, "PROGNOS_TOPIC_READINGS": topic}
    result = cli(env, "--machines", "1", "--source", "bad source")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid event: source must be")


def test_undelivered_events_give_a_non_zero_exit(broker_settings, broker_env):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"replay-tiny-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker_settings.kafka_bootstrap_servers)
    try:  # the broker rejects every event: records may be at most 100 bytes here
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "100"})])
        admin.wait_for_topics([topic])
    finally:
        admin.close()
    result = cli({**broker_env, "PROGNOS_TOPIC_READINGS": topic}, "--machines", "1")
    assert result.returncode == 1
    assert "failed 31" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: 31 of 31 events could not be delivered (first error:")
    assert "MessageSizeTooLarge" in lines[0]

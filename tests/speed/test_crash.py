"""kill -9 of the spark-submitted speed layer mid-run, then restart: nothing lost or
duplicated in the speed view and alerts. Also drives `prognos speed start|status|stop`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prognos.core import lake
from prognos.core.settings import settings_env
from speed_layer import service
from tests.conftest import fresh_topic_settings
from tests.speed import support as S

UNITS = [1, 2, 3]
pytestmark = pytest.mark.slow


@pytest.fixture
def crash_settings(broker_settings, tmp_path):
    settings = fresh_topic_settings(
        broker_settings,
        tmp_path,
        speed_max_offsets_per_trigger=40,
        # Spark splits each batch's 40 records across partitions by their backlog, so one
        # partition's event times run ahead of the other's: a day-long watermark keeps this
        # test about crashes, not lateness.
        speed_watermark="1 day",
        spark_shuffle_partitions=2,
        serving_model="rul_test",
    )
    yield settings
    service.stop(settings, timeout_s=10)


def cli(settings, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run(
        [sys.executable, "-m", "prognos.cli.main", "speed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def topic_offsets(settings, topic: str) -> dict[bytes, list[tuple[int, int]]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    found: dict[bytes, list[tuple[int, int]]] = {}
    try:
        for message in consumer:
            found.setdefault(message.key, []).append((message.partition, message.offset))
    finally:
        consumer.close()
    return found


def view(settings):
    try:
        return lake.read_table_arrow("speed_view", settings).to_pandas().set_index("machine_id")
    except Exception:
        return None


def test_kill_9_mid_batch_then_restart_loses_and_duplicates_nothing(crash_settings):
    settings = crash_settings
    S.register_model(settings, offset=-50.0)  # every machine scores red: one alert each
    rows = S.fd001_test_rows(UNITS, settings)
    ordered = sorted((r["cycle"], u) for u in UNITS for r in rows[u])  # a live fleet's order
    S.send(
        settings,
        [
            (S.machine_name(u).encode(), S.event_bytes(S.machine_name(u), c, rows[u][c - 1]))
            for c, u in ordered
        ],
    )
    assert cli(settings, "status").returncode == 1
    started = cli(settings, "start")
    assert started.returncode == 0, started.stderr
    assert cli(settings, "status").returncode == 0
    S.wait_until(lambda: view(settings) is not None and len(view(settings)) > 0, timeout_s=600)
    service.kill(settings)  # SIGKILL of the whole process group, mid-run
    assert cli(settings, "status").returncode == 1
    assert cli(settings, "start").returncode == 0

    def complete():
        current = view(settings)
        if current is None or len(current) < len(UNITS):
            return None
        done = all(
            current.loc[S.machine_name(u), "last_cycle"] == rows[u][-1]["cycle"] for u in UNITS
        )
        return current if done else None

    final = S.wait_until(complete, timeout_s=600)
    stopped = cli(settings, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    sent = topic_offsets(settings, settings.topic_readings)
    for unit in UNITS:
        name = S.machine_name(unit)
        expected = sorted(offset for _, offset in sent[name.encode()])
        assert sorted(final.loc[name, "pending_offsets"]) == expected  # none lost, none twice
        assert final.loc[name, "readings_count"] == len(rows[unit])
    alerts = lake.read_table_arrow("alerts", settings).to_pandas()
    assert sorted(alerts["machine_id"]) == sorted(S.machine_name(u) for u in UNITS)
    assert alerts["alert_id"].is_unique
    assert set(topic_offsets(settings, settings.topic_alerts)) == {
        a.encode() for a in alerts["alert_id"]
    }

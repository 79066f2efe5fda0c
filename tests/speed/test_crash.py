"""kill -9 of the spark-submitted speed layer mid-run, then restart: the speed view and the
alerts equal those of a clean run over the same topic (own checkpoint, lake and alerts
topic; in-process, availableNow), so nothing was lost or duplicated. Also drives
`prognos speed start|status|stop`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prognos.core import lake, stack
from prognos.core.settings import load_settings, settings_env
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


def clean_run(spark, settings, state_dir):
    """The same events through an uninterrupted run: own state dir and alerts topic, the
    same topic, registry and micro-batch cap; availableNow, in this process."""
    from speed_layer.stream import build_query

    clean = load_settings(
        **{
            **settings.model_dump(),
            "state_dir": state_dir,
            "registry_root": settings.registry,
            "topic_alerts": f"{settings.topic_alerts}-clean",
            "topic_dead_letter": f"{settings.topic_dead_letter}-clean",
        }
    )
    stack.ensure_topics(clean)
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    try:
        lake.await_query(build_query(spark, clean, trigger="availableNow"), clean, 600)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    return clean


def rows_of(settings, table: str, ignored: set[str]) -> list[dict]:
    """A table's rows without the columns that record when or in which batch they came."""
    rows = lake.read_table_arrow(table, settings).to_pylist()
    kept = [{k: v for k, v in row.items() if k not in ignored} for row in rows]
    for row in kept:
        for name in ("sensors", "features"):
            if row.get(name) is not None:
                row[name] = dict(row[name])
    return sorted(kept, key=lambda row: (row["machine_id"], row.get("alert_id") or ""))


def test_kill_9_mid_batch_then_restart_equals_a_clean_run(crash_settings, spark, tmp_path):
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
    clean = clean_run(spark, settings, tmp_path / "clean")
    ignored = {"batch_id", "updated_at"}
    assert rows_of(settings, "speed_view", ignored) == rows_of(clean, "speed_view", ignored)
    alerts = rows_of(settings, "alerts", {"raised_at"})
    assert alerts == rows_of(clean, "alerts", {"raised_at"})
    assert sorted(a["machine_id"] for a in alerts) == sorted(S.machine_name(u) for u in UNITS)
    alert_ids = {a["alert_id"].encode() for a in alerts}
    assert len(alert_ids) == len(alerts)
    assert set(topic_offsets(settings, settings.topic_alerts)) == alert_ids
    assert set(topic_offsets(clean, clean.topic_alerts)) == alert_ids

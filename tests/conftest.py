"""Shared fixtures: settings in a temporary state dir, a real Kafka broker, Spark."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from prognos.core import stack
from prognos.core.settings import PROJECT_ROOT, Settings, load_settings, settings_env

PROJECT_JARS = Path(os.environ.get("PROGNOS_JARS_DIR", PROJECT_ROOT / ".state" / "jars"))


def pytest_configure(config) -> None:
    """A SIGTERM (CI time limit, `timeout`) ends the run like Ctrl-C, so fixture
    teardowns still stop the brokers and servers the tests started."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# Fixtures that start a JVM, a broker or a server, or train a model: a test marked `unit`
# (the fast tier, `make test-unit`) must not use one, directly or through another fixture.
HEAVY_FIXTURES = frozenset(
    {"spark", "broker_settings", "tiny_training", "server_url", "served", "served_cli"}
)


# The modules whose fixtures run a whole DAG (the critical path of `make test`): they go
# first, so that under `--dist loadfile` (collection order, see pyproject.toml) each starts
# at once on its own worker instead of after the modules that merely have more tests.
LONGEST_MODULES = ("tests/functional/test_run.py", "tests/batch/test_batch_e2e.py")


def longest_first(item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_MODULES.index(path) if path in LONGEST_MODULES else len(LONGEST_MODULES)


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=longest_first)  # stable: the order within each module is kept
    misplaced = [
        f"{item.nodeid} uses {', '.join(sorted(HEAVY_FIXTURES & set(item.fixturenames)))}"
        for item in items
        if item.get_closest_marker("unit") and HEAVY_FIXTURES & set(item.fixturenames)
    ]
    if misplaced:
        raise pytest.UsageError("unit tests must not start heavy parts:\n" + "\n".join(misplaced))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_settings(state_dir: Path, **overrides) -> Settings:
    """Settings for a test: everything under state_dir, the project's jars."""
    values = {"state_dir": state_dir, "jars_dir": PROJECT_JARS, "spark_master": "local[2]"}
    values.update(overrides)
    return load_settings(**values)


def fresh_topic_settings(broker_settings: Settings, state_dir: Path, **overrides) -> Settings:
    """Settings on the session broker with their own state dir and freshly created topics
    (2 readings partitions, 1 s speed trigger, no metrics port unless overridden)."""
    tag = uuid.uuid4().hex[:8]
    values = {
        "kafka_bootstrap_servers": broker_settings.kafka_bootstrap_servers,
        "kafka_external": True,
        "topic_readings": f"readings-{tag}",
        "topic_readings_partitions": 2,
        "topic_alerts": f"alerts-{tag}",
        "topic_dead_letter": f"dead-{tag}",
        "speed_trigger": "1 second",
        "speed_metrics_port": 0,
    }
    settings = make_settings(state_dir, **{**values, **overrides})
    stack.ensure_topics(settings)
    return settings


@pytest.fixture(scope="session")
def broker_settings(tmp_path_factory) -> Iterator[Settings]:
    """A real Kafka broker for the session: the embedded one on free ports, or the
    external broker named by KAFKA_BOOTSTRAP_SERVERS. Stopped also on failure."""
    state_dir = tmp_path_factory.mktemp("broker-state")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        settings = make_settings(state_dir)
        stack.up(settings)
        yield settings
        return
    settings = make_settings(
        state_dir,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
    )
    try:
        stack.up(settings)
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture
def broker_env(broker_settings) -> dict[str, str]:
    """Environment for child processes (CLI, spark-submit) using the test broker."""
    env = {**os.environ, **settings_env(broker_settings)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local[2] Spark session with Delta and the Kafka connector for the session."""
    from prognos.core.spark import get_spark

    settings = make_settings(tmp_path_factory.mktemp("spark-state"))
    session = get_spark("prognos-tests", settings)
    yield session
    session.stop()

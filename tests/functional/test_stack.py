"""`prognos up | status | down` as a user runs them: subprocesses with their own state dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from prognos.core import stack, supervisor
from prognos.core.catalog import topics
from tests.conftest import PROJECT_JARS, free_port, make_settings
from tests.functional.kafka_helpers import partition_counts


def cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prognos.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stack_env(state_dir, port: int, controller_port: int, external: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROGNOS_", "KAFKA_"))}
    env.update(
        PROGNOS_STATE_DIR=str(state_dir),
        PROGNOS_JARS_DIR=str(PROJECT_JARS),
        PROGNOS_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        PROGNOS_KAFKA_CONTROLLER_PORT=str(controller_port),
        PROGNOS_KAFKA_EXTERNAL=str(external).lower(),
    )
    return env


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def own_stack(tmp_path):
    """Env and settings for a broker of this test only; stopped also on failure."""
    port, controller_port = free_port(), free_port()
    settings = make_settings(
        tmp_path,
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        kafka_controller_port=controller_port,
        kafka_external=False,
    )
    try:
        yield stack_env(tmp_path, port, controller_port), settings
    finally:
        stack.down(settings)


def test_up_status_down_round_trip(own_stack):
    env, settings = own_stack
    pid_file = settings.run_dir / "kafka" / "broker.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(str(dead_pid()))  # a stale PID file left by a crash

    started = cli(env, "up")
    assert started.returncode == 0, started.stderr
    assert "healthy" in started.stdout
    pid = int(pid_file.read_text())
    assert supervisor.pid_alive(pid, stack.BROKER_MARKER)

    shown = cli(env, "status")
    assert shown.returncode == 0
    assert f"pid {pid}: healthy" in shown.stdout
    report = json.loads(cli(env, "status", "--json").stdout)["kafka"]
    assert report["managed"] and report["healthy"] and report["pid"] == pid

    counts = partition_counts(settings.kafka_bootstrap_servers)
    for topic in topics(settings).values():
        assert counts[topic.name] == topic.partitions

    again = cli(env, "up")
    assert again.returncode == 0 and int(pid_file.read_text()) == pid  # idempotent

    stopped = cli(env, "down")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not supervisor.pid_alive(pid, stack.BROKER_MARKER)
    assert not pid_file.exists()
    after = cli(env, "status")
    assert after.returncode == 1 and "not running" in after.stdout


def test_stale_pid_file_is_detected_and_removed(tmp_path):
    env = stack_env(tmp_path, free_port(), free_port())
    pid_file = tmp_path / "run" / "kafka" / "broker.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(str(dead_pid()))
    shown = cli(env, "status")
    assert shown.returncode == 1
    assert "stale PID file removed" in shown.stdout
    assert not pid_file.exists()
    assert "was not running" in cli(env, "down").stdout


def test_port_already_taken_is_reported(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = stack_env(tmp_path, port, free_port())
        result = cli(env, "up", "--timeout", "10")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: port 127.0.0.1:{port} is already taken by another process; "
        "stop it or set PROGNOS_KAFKA_BOOTSTRAP_SERVERS / PROGNOS_KAFKA_CONTROLLER_PORT"
    )
    assert not (tmp_path / "run" / "kafka" / "broker.pid").exists()


@pytest.mark.parametrize("variable", ["KAFKA_BOOTSTRAP_SERVERS", "PROGNOS_KAFKA_EXTERNAL"])
def test_external_broker_starts_nothing(tmp_path, broker_settings, variable):
    env = stack_env(tmp_path, free_port(), free_port())
    if variable == "KAFKA_BOOTSTRAP_SERVERS":
        del env["PROGNOS_KAFKA_BOOTSTRAP_SERVERS"], env["PROGNOS_KAFKA_EXTERNAL"]
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker_settings.kafka_bootstrap_servers
    else:
        env["PROGNOS_KAFKA_BOOTSTRAP_SERVERS"] = broker_settings.kafka_bootstrap_servers
        env["PROGNOS_KAFKA_EXTERNAL"] = "true"
    result = cli(env, "up")
    assert result.returncode == 0, result.stderr
    assert "(external)" in result.stdout
    assert not (tmp_path / "run").exists()
    assert json.loads(cli(env, "status", "--json").stdout)["kafka"]["managed"] is False
    assert "was not running" in cli(env, "down").stdout


def test_invalid_setting_is_one_line(tmp_path):
    env = stack_env(tmp_path, free_port(), free_port())
    env["PROGNOS_KAFKA_CONTROLLER_PORT"] = "not-a-port"
    result = cli(env, "status")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid setting: kafka_controller_port")
    assert "not-a-port" in lines[0]

"""`prognos run --until-complete` (the main job of `make run`) on the test broker, kept small:
3 machines per fleet, one training epoch. One full run is checked by several tests; a second
run on the same state dir hits an impossible timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from prognos.cli import services
from prognos.core.registry import FilesystemRegistry
from tests.conftest import PROJECT_JARS, free_port

# a whole run (Airflow DAG with five spark-submits, training, the speed layer) takes minutes
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def run_env(broker_settings, state_dir: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROGNOS_", "KAFKA_"))}
    env.update(
        PROGNOS_STATE_DIR=str(state_dir),
        PROGNOS_JARS_DIR=str(PROJECT_JARS),
        PROGNOS_KAFKA_BOOTSTRAP_SERVERS=broker_settings.kafka_bootstrap_servers,
        PROGNOS_KAFKA_EXTERNAL="true",
        PROGNOS_TOPIC_READINGS=f"run-readings-{tag}",
        PROGNOS_TOPIC_READINGS_PARTITIONS="2",
        PROGNOS_TOPIC_ALERTS=f"run-alerts-{tag}",
        PROGNOS_TOPIC_DEAD_LETTER=f"run-dead-{tag}",
        PROGNOS_SPARK_MASTER="local[2]",
        PROGNOS_API_PORT=str(free_port()),
        PROGNOS_GRPC_PORT=str(free_port()),
        PROGNOS_AIRFLOW_PORT=str(free_port()),
        PROGNOS_SPEED_METRICS_PORT="0",
        PROGNOS_SPEED_TRIGGER="1 second",
        PROGNOS_RUN_MACHINES="3",
        PROGNOS_RUN_TRAIN_EPOCHS="1",
        PROGNOS_RUN_REPLAY_RATE="200",
    )
    return env


def prognos_run(env: dict, *args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prognos.cli.main", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def started_pids(state_dir: Path) -> list[int]:
    """Every PID the runs recorded (foreground steps and background services)."""
    record = state_dir / "run" / "started.pids"
    return [int(line.split()[0]) for line in record.read_text().splitlines()]


def assert_nothing_left(state_dir: Path) -> None:
    """No recorded PID and no other process of this state dir runs (a recorded PID reused
    by an unrelated process has another environment)."""
    left = services.processes_of_state_dir(state_dir)
    assert not [pid for pid in started_pids(state_dir) if pid in left], left
    assert not left
    assert not (state_dir / "run" / "serve" / "serve.pid").exists()
    assert not (state_dir / "run" / "speed" / "speed.pid").exists()
    assert not (state_dir / "run" / "run" / "run.pid").exists()


def stop_leftovers(state_dir: Path) -> None:
    """Test clean-up only: whatever a failed run left behind."""
    for pid in services.processes_of_state_dir(state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def completed(broker_settings, tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("run-state")
    env = run_env(broker_settings, state_dir)
    try:
        result = prognos_run(env, "--until-complete", "--timeout", "2700")
        yield {"result": result, "env": env, "state_dir": state_dir}
    finally:
        stop_leftovers(state_dir)


def test_run_until_complete_serves_the_live_fleet_and_reports_its_rmse(completed):
    result = completed["result"]
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
    out = result.stdout
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "sent 658 events of 3 machines" in out  # FD001 train machines 1-3 as history
    assert "batch views published by" in out
    assert "shortened training: at most 1 epochs" in out
    assert "rul_fd001 version 1 registered as champion" in out
    assert "dashboard: http://127.0.0.1:" in out
    assert "first merged answers after" in out
    assert "final RMSE of served predictions vs true RUL:" in out
    assert "over 3 machines at their last cycle" in out
    assert "run: stopped serving API, speed layer" in out
    assert out.strip().splitlines()[-1].startswith("run: complete in")


def test_the_champion_is_registered(completed):
    registry = FilesystemRegistry(completed["state_dir"] / "models")
    assert registry.aliases("rul_fd001")["champion"] == 1


def test_no_process_the_run_started_is_left(completed):
    state_dir = completed["state_dir"]
    assert len(started_pids(state_dir)) >= 4  # airflow, train, speed, serve
    assert_nothing_left(state_dir)


def test_an_impossible_timeout_fails_clearly_and_stops_everything(completed):
    """A second run on the same state dir cannot finish in 20 s: it fails with one line and
    leaves nothing running (the deadline stops a step's whole process group)."""
    result = prognos_run(completed["env"], "--until-complete", "--timeout", "20")
    assert result.returncode == 1
    assert "error: run did not complete within 20 s (step: " in result.stderr
    assert_nothing_left(completed["state_dir"])


def test_a_taken_api_port_is_refused_before_anything_starts(completed, tmp_path):
    env = {**completed["env"], "PROGNOS_STATE_DIR": str(tmp_path)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["PROGNOS_API_PORT"] = str(taken.getsockname()[1])
        result = prognos_run(env, "--until-complete", timeout=120)
    assert result.returncode == 1
    assert "(PROGNOS_API_PORT) is taken by another process" in result.stderr
    assert not (tmp_path / "run" / "started.pids").exists()

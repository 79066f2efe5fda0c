"""`prognos down` ends a running `prognos run`; `prognos up --airflow` starts Airflow on
localhost and `prognos down` stops it. Each on a state dir of its own, apart from the full
run's module, so that `--dist loadfile` can run them on the other worker."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.functional.test_run import assert_nothing_left, run_env, stop_leftovers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_prognos_down_stops_a_running_run_and_what_it_started(broker_settings, tmp_path):
    """`prognos run` without --until-complete runs until stopped: `prognos down` from another
    shell ends it (SIGTERM by its PID file) while its Airflow step runs; nothing is left."""
    env = run_env(broker_settings, tmp_path)
    record = tmp_path / "run" / "started.pids"
    with subprocess.Popen(
        [sys.executable, "-m", "prognos.cli.main", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as running:
        try:
            while "batch_layer" not in (record.read_text() if record.exists() else ""):
                assert running.poll() is None, running.communicate()
                time.sleep(0.5)
            down = subprocess.run(
                [sys.executable, "-m", "prognos.cli.main", "down"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            out, err = running.communicate(timeout=300)
        finally:
            running.kill()
            stop_leftovers(tmp_path)
    assert down.returncode == 0, down.stderr
    assert "prognos run: stopped" in down.stdout
    assert running.returncode == 130, (out[-2000:], err[-2000:])
    assert "run: interrupted" in err
    assert_nothing_left(tmp_path)


def test_up_airflow_starts_standalone_on_localhost_and_down_stops_it(broker_settings, tmp_path):
    env = run_env(broker_settings, tmp_path)
    port = env["PROGNOS_AIRFLOW_PORT"]
    cli = [sys.executable, "-m", "prognos.cli.main"]
    try:
        up = subprocess.run([*cli, "up", "--airflow"], env=env, capture_output=True, text=True)
        assert up.returncode == 0, up.stderr[-2000:]
        assert f"at http://127.0.0.1:{port} (login: admin" in up.stdout
        health = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=10).json()
        assert health["scheduler"]["status"] == "healthy"
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True)
        assert "airflow: stopped" in down.stdout
        assert_nothing_left(tmp_path)
    finally:
        stop_leftovers(tmp_path)

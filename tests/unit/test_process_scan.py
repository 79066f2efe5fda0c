"""`services.processes_of_state_dir` finds only the processes of one state dir."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prognos.cli import services

pytestmark = pytest.mark.unit

SLEEPER = "import time; time.sleep(60)  # prognos-scan-test"


def start_sleeper(state_dir) -> subprocess.Popen:
    env = {**os.environ, "PROGNOS_STATE_DIR": str(state_dir)}
    return subprocess.Popen([sys.executable, "-c", SLEEPER], env=env)


def test_finds_processes_by_state_dir_and_command(tmp_path):
    mine, other = start_sleeper(tmp_path / "mine"), start_sleeper(tmp_path / "other")
    try:
        assert services.processes_of_state_dir(tmp_path / "mine") == [mine.pid]
        assert services.processes_of_state_dir(tmp_path / "mine", b"prognos-scan-test") == [
            mine.pid
        ]
        assert services.processes_of_state_dir(tmp_path / "mine", b"spark_jobs/silver.py") == []
        assert services.processes_of_state_dir(tmp_path / "nobody") == []
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()
    assert services.processes_of_state_dir(tmp_path / "mine") == []

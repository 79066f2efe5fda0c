"""The same job on local[2] and on a standalone master + worker started from the pyspark
installation gives identical results (jars and project code reach the executors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyspark
import pytest
from lakehelp import PROJECT_JARS, free_port

from prognos.core import lake
from prognos.core.settings import PROJECT_ROOT, load_settings, settings_env

JOB = Path(__file__).with_name("cluster_job.py")
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def _daemon(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(
            [str(SPARK_CLASS), *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as answer:
            state = json.load(answer)
    except OSError:
        return 0
    return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


@pytest.fixture
def standalone_master(tmp_path):
    """A Spark standalone master and one worker (2 cores, 1g) bound to 127.0.0.1."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
    port, ui_port = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master = _daemon(
        ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(ui_port)],
        tmp_path / "master.log", env,
    )  # fmt: skip
    worker = None
    try:
        worker = _daemon(
            ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
             "--port", str(free_port()), "--webui-port", str(free_port()), "--cores", "2",
             "--memory", "1g", "--work-dir", str(tmp_path / "work"), master_url],
            tmp_path / "worker.log", env,
        )  # fmt: skip
        ready = lake.wait_for(lambda: _alive_workers(ui_port) == 1, timeout_s=180, interval_s=1)
        logs = (tmp_path / "master.log").read_text(errors="replace")[-2000:]
        assert ready, f"worker did not register with {master_url}: {logs}"
        yield master_url
    finally:
        if worker is not None:
            _stop(worker)
        _stop(master)


def _run_job(tmp_path: Path, master: str, name: str) -> dict:
    settings = load_settings(state_dir=tmp_path / name, jars_dir=PROJECT_JARS, spark_master=master)
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("SPARK_MASTER", None)
    result = subprocess.run(
        [sys.executable, str(JOB)], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, (result.stdout + result.stderr)[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_same_job_gives_identical_results_locally_and_on_a_standalone_cluster(
    tmp_path, standalone_master
):
    on_cluster = _run_job(tmp_path, standalone_master, "cluster")
    local = _run_job(tmp_path, "local[2]", "local")
    assert on_cluster["executors"] >= 2  # the driver plus the worker's executor
    assert len(local["rows"]) == 25
    assert on_cluster["rows"] == local["rows"]

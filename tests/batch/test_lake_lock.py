"""The jobs of one lake never run concurrently: every job that reads or writes the lake
(the spark jobs of batch_layer and lake_maintenance, the drift job, retrain's
build_dataset) holds the lake's lock, whichever DAG or shell started it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime

import pytest

from prognos.core.airflow_env import airflow_env
from prognos.core.errors import LakeBusyError
from prognos.core.locks import (
    exclusive,
    holder_of,
    lake_lock,
    lake_lock_history,
    lake_lock_path,
)
from prognos.core.settings import PROJECT_ROOT
from tests.conftest import make_settings

# one lake job per DAG that has lake steps; none reaches Spark or TensorFlow while waiting
LAKE_ENTRY_POINTS = {
    "lake_maintenance": [sys.executable, "spark_jobs/maintenance.py", "--step", "checkpoints"],
    "batch_layer": [sys.executable, "spark_jobs/gold.py"],
    "drift": [sys.executable, "-m", "models.drift"],
    "retrain": [sys.executable, "-m", "models.retrain", "build_dataset"],
}


def job_env(settings, **overrides) -> dict[str, str]:
    """The environment Airflow gives a task of these settings (airflow_env), plus overrides."""
    base = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return {**airflow_env(settings, base=base), **overrides}


def start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    try:
        return [(p.wait(timeout=timeout), *p.communicate()) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_a_job_waits_for_the_holder_then_names_it_in_a_one_line_error(tmp_path):
    settings = make_settings(tmp_path)
    env = job_env(settings, PROGNOS_LAKE_LOCK_TIMEOUT_S="1.5")
    with lake_lock(settings, "views manual__holder") as held:
        assert holder_of(lake_lock_path(settings))["pid"] == os.getpid()
        jobs = {
            dag: start([*command, "--run-id", f"waiting-{dag}"], env)
            for dag, command in LAKE_ENTRY_POINTS.items()
        }
        results = dict(zip(jobs, finish(list(jobs.values()), timeout=300), strict=True))
    for dag, (code, stdout, stderr) in results.items():
        assert code != 0, dag
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, (dag, stderr[-2000:])
        assert f"waiting-{dag}" in errors[0] and "is held by views manual__holder" in errors[0]
        assert f"pid {held['pid']}" in errors[0] and "gave up after 1.5 s" in errors[0]
        assert "lake_lock" not in stdout
    assert holder_of(lake_lock_path(settings)) is None  # released: no holder is named
    assert [line["holder"] for line in lake_lock_history(settings)] == [held["holder"]] * 2


def test_the_lock_is_free_again_when_its_holder_is_killed(tmp_path):
    settings = make_settings(tmp_path)
    path = lake_lock_path(settings)
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from prognos.core.locks import exclusive\n"
        "with exclusive(Path(sys.argv[1]), 'killed job', 5):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = start([sys.executable, "-c", code, str(path)], {**os.environ})
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(LakeBusyError, match="is held by killed job"),
            exclusive(path, "impatient", 0.2, LakeBusyError),
        ):
            pass
    finally:
        holder.kill()
        holder.communicate()
    with lake_lock(settings, "after the kill", timeout_s=5) as record:
        assert holder_of(path) == record


def test_two_spark_jobs_of_different_dags_started_together_run_one_after_the_other(tmp_path):
    """`spark-submit` of batch_layer's expire_speed and lake_maintenance's compact on one
    lake at the same moment: both processes run at once, their lake work does not."""
    settings = make_settings(tmp_path)
    env = job_env(settings)
    jobs = [
        ["spark-submit", "spark_jobs/expire_speed.py", "--run-id", "batch-run"],
        ["spark-submit", "spark_jobs/maintenance.py", "--step", "compact", "--run-id", "maint"],
    ]
    started = time.time()
    results = finish([start(command, env) for command in jobs], timeout=900)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    history = lake_lock_history(settings)
    assert [line["event"] for line in history] == ["acquired", "released"] * 2
    first, second = history[0:2], history[2:4]
    assert first[0]["holder"] == first[1]["holder"] != second[0]["holder"]
    assert {line["holder"] for line in history} == {
        "expire_speed batch-run",
        "maintenance compact maint",
    }
    assert _at(first[1]) <= _at(second[0])  # no overlap
    asked = _at(second[0]) - second[0]["waited_s"]
    assert started <= asked < _at(first[1]), "the second job did not ask while the first ran"
    assert holder_of(lake_lock_path(settings)) is None


def _at(record: dict) -> float:
    return datetime.fromisoformat(record["at"]).timestamp()

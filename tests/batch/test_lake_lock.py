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

LAKE_DAGS = ("batch_layer", "lake_maintenance", "drift", "retrain")
# the tasks of those DAGs that touch neither gold nor any other lake table
NOT_LAKE_TASKS = {
    "drift": {"emit_drift_event"},
    "retrain": {"train", "evaluate", "register", "bless"},
}
TEMPLATES = {"{{ run_id }}": "waiting-{task}", "{{ logical_date.isoformat() }}": "2026-11-20"}


@pytest.fixture(scope="module")
def lake_tasks(tmp_path_factory) -> dict[str, list[str]]:
    """The command of every lake task of the lake DAGs, as Airflow runs it (spark-submit's
    application under this Python; the bash command), by "dag.task"."""
    env = airflow_env(make_settings(tmp_path_factory.mktemp("airflow-state")))
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        from airflow.dag_processing.dagbag import DagBag

        dagbag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    commands = {}
    for dag_id in LAKE_DAGS:
        for task in dagbag.dags[dag_id].tasks:
            if task.task_id not in NOT_LAKE_TASKS.get(dag_id, set()):
                commands[f"{dag_id}.{task.task_id}"] = task_command(task)
    return commands


def task_command(task) -> list[str]:
    def render(text: str) -> str:
        for template, value in TEMPLATES.items():
            text = text.replace(template, value.format(task=task.task_id))
        return text

    if hasattr(task, "application"):
        return [sys.executable, task.application, *map(render, task.application_args)]
    return ["bash", "-c", render(task.bash_command)]


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
        outputs = [process.communicate(timeout=timeout) for process in processes]
        return [(p.returncode, *output) for p, output in zip(processes, outputs, strict=True)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_every_lake_task_waits_for_the_holder_then_names_it_in_one_line(lake_tasks, tmp_path):
    """Each lake task of the four DAGs, started while another job holds the lake, waits and
    then fails with one line naming the holder (none reaches Spark or TensorFlow)."""
    assert len(lake_tasks) == 10 and "retrain.build_dataset" in lake_tasks
    settings = make_settings(tmp_path)
    env = job_env(settings, PROGNOS_LAKE_LOCK_TIMEOUT_S="1.5")
    with lake_lock(settings, "views manual__holder") as held:
        assert holder_of(lake_lock_path(settings))["pid"] == os.getpid()
        jobs = {name: start(command, env) for name, command in lake_tasks.items()}
        results = dict(zip(jobs, finish(list(jobs.values()), timeout=300), strict=True))
    for name, (code, _, stderr) in results.items():
        assert code != 0, name
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, (name, stderr[-2000:])
        waiting = f"waiting-{name.split('.')[1]}"
        assert waiting in errors[0] and "is held by views manual__holder" in errors[0]
        assert f"pid {held['pid']}" in errors[0] and "gave up after 1.5 s" in errors[0]
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

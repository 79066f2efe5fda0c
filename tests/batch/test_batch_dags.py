"""DAG integrity: the DagBag loads without errors; ids, tasks, order, schedules, retries."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from prognos.core.airflow_env import GOLD_ASSET, VIEWS_ASSET, airflow_env
from prognos.core.settings import PROJECT_ROOT
from tests.conftest import make_settings

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    env = airflow_env(make_settings(tmp_path_factory.mktemp("airflow-state")))
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        from airflow.dag_processing.dagbag import DagBag

        yield DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"batch_layer", "lake_maintenance"} <= set(dagbag.dag_ids)


def test_batch_layer_tasks_in_order(dagbag):
    dag = dagbag.dags["batch_layer"]
    order = ["ingest_bronze", "silver", "gold", "views", "expire_speed_view"]
    assert set(dag.task_ids) == set(order)
    for upstream, downstream in itertools.pairwise(order):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert str(dag.schedule) == "@hourly" or "hour" in str(dag.timetable.summary).lower()
    assert dag.max_active_runs == 1


def test_tasks_retry_with_backoff_and_have_docs(dagbag):
    for dag_id in ("batch_layer", "lake_maintenance"):
        for task in dagbag.dags[dag_id].tasks:
            assert task.retries == 2, task.task_id
            assert task.retry_exponential_backoff, task.task_id
            assert task.doc_md, task.task_id
            assert task.application.endswith(".py")
            assert os.path.exists(task.application)


def test_assets_for_gold_and_views(dagbag):
    dag = dagbag.dags["batch_layer"]
    assert [a.uri for a in dag.get_task("gold").outlets] == [GOLD_ASSET]
    assert [a.uri for a in dag.get_task("views").outlets] == [VIEWS_ASSET]


def test_lake_maintenance_is_daily(dagbag):
    dag = dagbag.dags["lake_maintenance"]
    assert "daily" in str(dag.schedule) or "day" in str(dag.timetable.summary).lower()
    assert dag.get_task("vacuum").upstream_task_ids == {"compact"}
    assert dag.get_task("checkpoints").upstream_task_ids == {"vacuum"}


def test_dag_files_import_nothing_heavy():
    code = (
        "import sys, runpy\n"
        f"runpy.run_path({str(PROJECT_ROOT / 'dags' / 'batch_layer.py')!r})\n"
        "heavy = [m for m in ('pyspark', 'tensorflow', 'great_expectations', 'pandas')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1:] in ([], [""]), result.stdout

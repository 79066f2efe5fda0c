"""The drift and retrain DAGs: structure, and the chain under `airflow dags test`.

Shifting a sensor in recent gold makes `airflow dags test drift` emit the drift Asset
(queued for retrain); an unshifted window emits nothing; `airflow dags test retrain`
then trains a tiny model on gold and registers and blesses it.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess

import pandas as pd
import pytest
from model_helpers import gold_rows, register_reference_champion, write_gold

from prognos.core.airflow_env import DRIFT_ASSET, GOLD_ASSET, airflow_env, ensure_airflow_db
from prognos.core.registry import FilesystemRegistry
from prognos.core.settings import PROJECT_ROOT
from tests.conftest import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

LOGICAL_DATE = "2026-11-20T00:00:00+00:00"
RETRAIN_STEPS = ["build_dataset", "train", "evaluate", "register", "bless"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Settings for a tiny retrain on gold, an Airflow home with the DAGs serialized, and
    a registry whose (constant, poor) champion stores the FD001 training reference."""
    settings = make_settings(
        tmp_path_factory.mktemp("model-dags"),
        retrain_epochs=1,
        retrain_machines=6,
        retrain_source="gold",
        dag_retries=0,
    )
    register_reference_champion(FilesystemRegistry(settings.registry))
    # unpaused, so a drift Asset event queues a retrain run (the scheduler would start it)
    env = {**airflow_env(settings), "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"}
    ensure_airflow_db(settings, env)
    airflow(env, "dags", "reserialize")
    return settings, env


def airflow(env, *args) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["airflow", *args], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=900
    )
    assert result.returncode == 0, (args, result.stdout[-6000:], result.stderr[-6000:])
    return result


def drift_events(settings) -> list[tuple[str, str]]:
    """(source dag, extra) of every drift Asset event in Airflow's database."""
    with sqlite3.connect(settings.state_dir / "airflow" / "airflow.db") as db:
        return db.execute(
            "SELECT e.source_dag_id, e.extra FROM asset_event e JOIN asset a "
            "ON a.id = e.asset_id WHERE a.uri = ?",
            (DRIFT_ASSET,),
        ).fetchall()


def queued_for(settings) -> list[str]:
    with sqlite3.connect(settings.state_dir / "airflow" / "airflow.db") as db:
        return [row[0] for row in db.execute("SELECT target_dag_id FROM asset_dag_run_queue")]


def test_unshifted_gold_emits_no_drift_event(chain):
    settings, env = chain
    write_gold(settings, gold_rows(range(1, 21)))
    airflow(env, "dags", "test", "drift", LOGICAL_DATE)
    assert drift_events(settings) == []
    assert "retrain" not in queued_for(settings)


def test_shifted_gold_emits_drift_and_retrain_registers_a_champion(chain):
    settings, env = chain
    write_gold(settings, pd.concat([gold_rows(range(1, 21), shift_sigma=2.0)]))
    airflow(env, "dags", "test", "drift", "2026-11-21T00:00:00+00:00")
    events = drift_events(settings)
    assert len(events) == 1 and "sensor_4_z" in events[0][1]
    assert "retrain" in queued_for(settings)  # the Asset schedules the retrain DAG

    airflow(env, "dags", "test", "retrain", LOGICAL_DATE)
    registry = FilesystemRegistry(settings.registry)
    assert registry.versions("rul_fd001") == [1, 2]
    assert registry.champion("rul_fd001") == 2  # beats the constant champion
    metadata = registry.metadata("rul_fd001", 2)
    assert metadata["training_data"]["source"] == "gold"
    assert metadata["training_data"]["table_versions"]["gold_features"] >= 0
    assert "sensor_4_z" in metadata["drift_reference"]["features"]
    assert metadata["metrics"]["test"]["rmse"] > 0  # 1 epoch on shifted data: no sanity bar
    assert (registry.version_dir("rul_fd001", 2) / "model_card.md").is_file()


def test_dags_parse_with_their_schedules(chain):
    """In-process DagBag last: parsing in this process first made `dags test` miss the DAG."""
    from airflow.dag_processing.dagbag import DagBag

    _, env = chain
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        dagbag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    assert {"drift", "retrain"} <= set(dagbag.dag_ids), dagbag.import_errors
    retrain = dagbag.dags["retrain"]
    for upstream, downstream in itertools.pairwise(RETRAIN_STEPS):
        assert retrain.get_task(downstream).upstream_task_ids == {upstream}
    assert DRIFT_ASSET in str(retrain.timetable.asset_condition)
    assert retrain.schedule.timetable.expression == "0 0 * * 0"  # @weekly
    drift = dagbag.dags["drift"]
    assert GOLD_ASSET in str(drift.timetable.asset_condition)
    assert [a.uri for a in drift.get_task("emit_drift_event").outlets] == [DRIFT_ASSET]

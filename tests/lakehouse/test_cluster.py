"""The batch layer (gold and views over a small silver table) on a local Spark standalone
cluster (a master and two workers started by prognos.core.cluster, i.e.
infra/spark-cluster.sh) gives the same tables as local[2]: the Delta jars and the job code
(shipped as a zip) reach the executors. Also: the lineage records the jobs log, and the
cluster's refusals without starting a JVM."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cluster_job
import pytest
from lakehelp import PROJECT_JARS, free_port

from prognos.core import cluster, lake, logs
from prognos.core.settings import PROJECT_ROOT, load_settings, settings_env

JOB = Path(__file__).with_name("cluster_job.py")


def cluster_settings(state_dir: Path, **overrides):
    values = {
        "state_dir": state_dir,
        "jars_dir": PROJECT_JARS,
        "spark_cluster_port": free_port(),
        "spark_cluster_ui_port": free_port(),
        "spark_master": "local[2]",
    }
    return load_settings(**{**values, **overrides})


@pytest.fixture
def local_cluster(tmp_path):
    """Master + two workers on 127.0.0.1; stopped (exactly their PIDs) also on failure."""
    settings = cluster_settings(tmp_path / "cluster")
    try:
        started = cluster.up(settings)
        yield settings, started
    finally:
        cluster.down(settings)


def _run_driver(settings) -> dict:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(JOB.parent)}
    env.pop("SPARK_MASTER", None)
    result = subprocess.run(
        [sys.executable, str(JOB)], env=env, capture_output=True, text=True, timeout=900
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, (result.stdout + result.stderr)[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_batch_layer_on_a_two_worker_cluster_equals_local(tmp_path, local_cluster, spark):
    settings, started = local_cluster
    assert started.alive_workers == 2 and set(started.pids) == {"master", "worker-1", "worker-2"}
    on_cluster = _run_driver(
        settings.model_copy(update={"spark_master": cluster.master_url(settings)})
    )
    local_settings = cluster_settings(tmp_path / "local")
    local = json.loads(json.dumps(cluster_job.run_batch(spark, local_settings), default=str))

    assert on_cluster["executors"] == 3  # the driver and one executor per worker
    assert all(".zip" in path for path in on_cluster["executor_code"])  # shipped code
    assert len(local["gold_features"]) == len(cluster_job.silver_frame())
    assert len(local["machine_state"]) == 3
    for name in cluster_job.COMPARED:
        assert on_cluster["tables"][name] == local[name], name
    assert_lineage_matches_the_tables(local_settings)

    cluster.down(settings)
    assert cluster.status(settings).running is False
    assert not any(cluster.cluster_dir(settings).glob("*.pid"))


def assert_lineage_matches_the_tables(settings) -> None:
    """Each job's lineage record names the Delta versions it read and wrote."""
    current = logs.versions(settings, "silver", "gold_features", "batch_manifest")
    (gold,) = logs.read_records(settings, job="gold", event="lineage")
    assert gold["run_id"] == cluster_job.RUN_ID
    assert gold["inputs"] == {"silver": current["silver"]}
    assert gold["outputs"] == {"gold_features": current["gold_features"]}
    (views,) = logs.read_records(settings, job="views", event="lineage")
    assert views["inputs"]["silver"] == current["silver"]
    assert views["inputs"]["gold_features"] == current["gold_features"]
    published = lake.read_published_arrow(settings)
    assert (
        views["outputs"]["machine_state"] == published.manifest["table_versions"]["machine_state"]
    )
    assert views["outputs"]["batch_manifest"] == current["batch_manifest"]
    assert views["interval"] == cluster_job.INTERVAL


def test_up_refuses_a_taken_master_port_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = cluster_settings(tmp_path, spark_cluster_port=taken.getsockname()[1])
        with pytest.raises(cluster.ClusterError, match="already taken"):
            cluster.up(settings)
    assert cluster.recorded_pids(settings) == {}


def test_status_removes_a_stale_pid_file(tmp_path):
    settings = cluster_settings(tmp_path)
    cluster.cluster_dir(settings).mkdir(parents=True)
    stale = cluster.cluster_dir(settings) / "master.pid"
    stale.write_text(str(os.getpid()))  # alive, but not a Spark master
    found = cluster.status(settings)
    assert (found.running, found.detail, stale.exists()) == (False, "not running", False)
    assert cluster.down(settings) == []


def test_the_shell_script_runs_the_module(tmp_path):
    env = {**os.environ, **settings_env(cluster_settings(tmp_path))}
    script = PROJECT_ROOT / "infra" / "spark-cluster.sh"
    result = subprocess.run([script, "status"], env=env, capture_output=True, text=True)
    assert result.returncode == 3 and "not running" in result.stdout
    wrong = subprocess.run([script, "start"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr

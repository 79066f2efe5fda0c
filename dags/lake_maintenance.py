"""lake_maintenance: compact small files, vacuum with a retention window, prune
old streaming checkpoint entries; each task logs what it removed (JSON line). Each job
holds the lake's lock (prognos.core.locks): it waits for a batch_layer, drift or retrain
job of the same lake to finish."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

from prognos.core.airflow_env import SPARK_CONN_ID, default_task_args
from prognos.core.settings import PROJECT_ROOT, get_settings


def maintenance_step(step: str, doc: str) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=step,
        application=str(PROJECT_ROOT / "spark_jobs" / "maintenance.py"),
        application_args=["--step", step, "--run-id", "{{ run_id }}"],
        conn_id=SPARK_CONN_ID,
        name=f"prognos-maintenance-{step}",
        doc_md=doc,
    )


with DAG(
    dag_id="lake_maintenance",
    description="Compaction, vacuum and checkpoint cleanup of the Delta lake.",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_task_args(get_settings()),
    tags=["prognos", "maintenance"],
    doc_md=__doc__,
) as dag:
    compact = maintenance_step("compact", "OPTIMIZE every pipeline table.")
    vacuum = maintenance_step("vacuum", "VACUUM with the retention floor.")
    checkpoints = maintenance_step("checkpoints", "Prune old checkpoint log entries.")
    compact >> vacuum >> checkpoints

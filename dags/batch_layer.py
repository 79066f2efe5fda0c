"""batch_layer: Kafka -> bronze -> silver (GE gate) -> gold -> batch views + manifest.

Thin wiring: each task is a spark-submit of a job in spark_jobs/ (the logic lives there).
Every task is idempotent by run id / logical date, so retries and backfills are safe.
Each job holds the lake's lock while it runs (prognos.core.locks), so the jobs of one lake
never run concurrently, across this DAG, lake_maintenance, drift and retrain; still run a
backfill with --max-active-runs 1, so that its runs go one after the other, not job by job.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset

from prognos.core.airflow_env import GOLD_ASSET, SPARK_CONN_ID, VIEWS_ASSET, default_task_args
from prognos.core.settings import PROJECT_ROOT, get_settings

JOB_ARGS = ["--run-id", "{{ run_id }}", "--logical-date", "{{ logical_date.isoformat() }}"]


def spark_job(task_id: str, job: str, doc: str, **kwargs) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(PROJECT_ROOT / "spark_jobs" / f"{job}.py"),
        application_args=JOB_ARGS,
        conn_id=SPARK_CONN_ID,
        name=f"prognos-{job}",
        doc_md=doc,
        **kwargs,
    )


with DAG(
    dag_id="batch_layer",
    description="Recompute the batch views from the immutable master dataset.",
    schedule=get_settings().batch_schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_task_args(get_settings()),
    tags=["prognos", "batch"],
    doc_md=__doc__,
) as dag:
    ingest = spark_job(
        "ingest_bronze",
        "bronze_ingest",
        "Kafka -> bronze (availableNow, exactly once via checkpoint + Delta sink).",
    )
    silver = spark_job(
        "silver",
        "silver",
        "Parse + validate (Great Expectations) new bronze rows; bad rows and duplicates to "
        "quarantine; MERGE the rest into silver. Fails (the gate) when the failure share "
        "exceeds PROGNOS_BATCH_MAX_FAILURE_SHARE, after writing the quarantine.",
    )
    gold = spark_job(
        "gold",
        "gold",
        "Recompute gold_features from silver with the shared feature code.",
        outlets=[Asset(GOLD_ASSET)],
    )
    views = spark_job(
        "views",
        "views",
        "Build machine_state (latest state, health features, RUL of the registry's champion "
        "and its alert level) and fleet_summary; publish them with the manifest atomically.",
        outlets=[Asset(VIEWS_ASSET)],
    )
    expire = spark_job(
        "expire_speed_view",
        "expire_speed",
        "Delete speed-view rows the new manifest covers (no-op when there is none).",
    )
    ingest >> silver >> gold >> views >> expire

"""retrain: build dataset -> train -> evaluate -> register -> bless (champion or challenger).

Runs weekly (PROGNOS_RETRAIN_SCHEDULE), when the drift DAG emits the drift Asset, and,
with PROGNOS_RETRAIN_ON_GOLD, whenever the batch layer updates gold. Each task runs one
step of models.retrain in its own process; the steps hand over through a run directory.
build_dataset, which reads gold, holds the lake's lock like every lake job.
The serving and speed layers watch the registry and pick up a new champion themselves.
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable

from prognos.core.airflow_env import DRIFT_ASSET, GOLD_ASSET, default_task_args
from prognos.core.settings import PROJECT_ROOT, get_settings

PYTHON = shlex.quote(sys.executable)
STEPS = {
    "build_dataset": "Feature frames of the training machines (gold or C-MAPSS) and test "
    "engines, point-in-time windows later; fails clearly on empty or too-short data.",
    "train": "Fit the LSTM with early stopping on held-out training machines.",
    "evaluate": "RMSE, PHM08 score, MAE, fails-within-H on the test engines' last cycle.",
    "register": "Export the SavedModel, card and metadata (with the drift reference) as a "
    "new registry version, atomically.",
    "bless": "Champion if it beats the champion's validation RMSE by the margin, else challenger.",
}

settings = get_settings()
assets = Asset(DRIFT_ASSET) | Asset(GOLD_ASSET) if settings.retrain_on_gold else Asset(DRIFT_ASSET)

with DAG(
    dag_id="retrain",
    description="Retrain the serving model and bless it against the champion.",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(settings.retrain_schedule, timezone="UTC"),
        assets=assets,
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_task_args(settings),
    tags=["prognos", "models"],
    doc_md=__doc__,
) as dag:
    previous = None
    for step, doc in STEPS.items():
        current = BashOperator(
            task_id=step,
            bash_command=f"{PYTHON} -m models.retrain {step} --run-id '{{{{ run_id }}}}'",
            cwd=str(PROJECT_ROOT),
            doc_md=doc,
        )
        if previous is not None:
            previous >> current
        previous = current

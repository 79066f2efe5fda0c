"""drift: after each gold update, compare recent gold with the champion's training data.

measure_drift runs the drift job (models.drift: PSI and KS per feature over the recent
window, rows appended to the drift_report table), holding the lake's lock like every
lake job (prognos.core.locks). emit_drift_event emits the drift Asset,
which triggers the retrain DAG, only when the job found drift; otherwise it is skipped.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset, task
from airflow.sdk.exceptions import AirflowSkipException

from prognos.core.airflow_env import DRIFT_ASSET, GOLD_ASSET, default_task_args
from prognos.core.settings import PROJECT_ROOT, get_settings

PYTHON = shlex.quote(sys.executable)

with DAG(
    dag_id="drift",
    description="Feature drift of recent gold against the champion's training reference.",
    schedule=[Asset(GOLD_ASSET)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_task_args(get_settings()),
    tags=["prognos", "models"],
    doc_md=__doc__,
) as dag:
    measure = BashOperator(
        task_id="measure_drift",
        bash_command=f"{PYTHON} -m models.drift --run-id '{{{{ run_id }}}}'",
        cwd=str(PROJECT_ROOT),
        doc_md="PSI/KS per feature of the recent gold window vs the champion's reference; "
        "writes drift_report; the last output line (JSON) is the XCom.",
    )

    @task(outlets=[Asset(DRIFT_ASSET)], doc_md="Emit the drift Asset when drift was found.")
    def emit_drift_event(summary: str, outlet_events=None) -> dict:
        result = json.loads(summary)
        if not result["drift"]:
            raise AirflowSkipException(f"no drift: {result['reason']}")
        outlet_events[Asset(DRIFT_ASSET)].extra = {
            "model": result["model"],
            "version": result["version"],
            "features": result["drifted_features"],
            "drift_run_id": result["run_id"],
        }
        return result

    emit_drift_event(measure.output)

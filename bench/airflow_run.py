"""Print one DAG run of an Airflow home as JSON, read through Airflow's models: its run
id and state, and per task its tries (try_number), state, start and end, plus the earlier
tries kept in the task-instance history.

Run it in the Airflow environment (prognos.core.airflow_env.airflow_env):
    python bench/airflow_run.py <dag_id> <logical date ISO>
"""

from __future__ import annotations

import json
import sys
from datetime import datetime


def describe(dag_id: str, logical_date: datetime) -> dict:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date)
            .order_by(DagRun.id.desc())
        ).first()
        if run is None:
            return {"run_id": None, "state": "missing", "tasks": {}}
        earlier = session.scalars(
            select(TaskInstanceHistory).where(
                TaskInstanceHistory.dag_id == dag_id, TaskInstanceHistory.run_id == run.run_id
            )
        ).all()
        tasks = {ti.task_id: {**_times(ti), "earlier": []} for ti in run.task_instances}
        for past in sorted(earlier, key=lambda h: h.try_number):
            tasks.setdefault(past.task_id, {"earlier": []})["earlier"].append(_times(past))
        return {"run_id": run.run_id, "state": str(run.state), "tasks": tasks}


def _times(ti) -> dict:
    return {
        "try_number": ti.try_number,
        "state": str(ti.state),
        "start": ti.start_date.isoformat() if ti.start_date else None,
        "end": ti.end_date.isoformat() if ti.end_date else None,
    }


if __name__ == "__main__":
    print(json.dumps(describe(sys.argv[1], datetime.fromisoformat(sys.argv[2]))))

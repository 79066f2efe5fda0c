"""Airflow's environment for prognos: home under the state dir, the project's DAGs,
SQLite, no examples, a Spark connection from settings; `airflow db migrate` once.

Nothing here imports Airflow: the CLI and tests prepare the environment of a child
`airflow` process with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from prognos.core.errors import PrognosError
from prognos.core.settings import PROJECT_ROOT, Settings, settings_env

SPARK_CONN_ID = "prognos_spark"
# Assets the batch_layer DAG emits (the retrain DAG listens to GOLD_ASSET).
GOLD_ASSET = "prognos://lake/gold_features"
VIEWS_ASSET = "prognos://lake/batch_views"
# Emitted by the drift DAG when recent gold drifted from the champion's training data.
DRIFT_ASSET = "prognos://models/feature_drift"


def default_task_args(settings: Settings, **overrides) -> dict:
    """default_args of every prognos DAG: owner and retries with exponential backoff."""
    args = {
        "owner": "prognos",
        "retries": settings.dag_retries,
        "retry_delay": timedelta(seconds=settings.dag_retry_delay_s),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=settings.dag_max_retry_delay_s),
    }
    args.update(overrides)
    return args


def airflow_home(settings: Settings) -> Path:
    return settings.state_dir / "airflow"


# Airflow's SQLite metadata DB has one writer at a time: the standalone scheduler and a CLI
# command (e.g. `airflow backfill create`) wait this many seconds for the lock instead of
# sqlite3's default 5 s ("database is locked" on a loaded machine).
SQLITE_CONNECT_ARGS = {"timeout": 60}


def airflow_env(settings: Settings, base: dict | None = None) -> dict[str, str]:
    """Environment for an `airflow` child process (and the spark-submit it runs)."""
    home = airflow_home(settings)
    env = dict(os.environ if base is None else base)
    env.update(settings_env(settings))
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": (
                "prognos.core.airflow_env.SQLITE_CONNECT_ARGS"
            ),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                f"http://127.0.0.1:{settings.airflow_port}/execution/"
            ),
            "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            # the default 5 s fails the first task of a run on a busy 2-core box (the API
            # server's first answer over SQLite took longer), which costs a retry
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            # `airflow standalone` starts its scheduler beside its API server, and the API
            # server takes ~30 s to listen on a busy 2-core machine: with the default 5
            # attempts (~6 s) the first task fails on "connection refused" and waits for
            # its retry; 10 attempts (random exponential waits up to 90 s) outlast the start
            "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "10",
            f"AIRFLOW_CONN_{SPARK_CONN_ID.upper()}": json.dumps(
                {"conn_type": "spark", "host": settings.spark_master}
            ),
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def ensure_airflow_db(settings: Settings, env: dict | None = None) -> Path:
    """Run `airflow db migrate` once for this Airflow home; return the home."""
    home = airflow_home(settings)
    stamp = home / ".migrated"
    if stamp.exists():
        return home
    home.mkdir(parents=True, exist_ok=True)
    env = env or airflow_env(settings)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PrognosError(f"airflow db migrate failed in {home}: {tail[0]}")
    stamp.write_text("ok\n")
    return home

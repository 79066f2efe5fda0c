"""`prognos batch <job> [args]`: run a batch-layer Spark job through spark-submit;
`prognos batch airflow-init` prepares Airflow's home and database for the DAGs and
`prognos batch airflow <args>` runs the airflow command in that environment."""

from __future__ import annotations

import subprocess
import sys

import click

from prognos.core.settings import PROJECT_ROOT, get_settings

JOBS = ("bronze_ingest", "silver", "gold", "views", "expire_speed", "maintenance")


@click.command(
    "batch",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("job", type=click.Choice([*JOBS, "airflow-init", "airflow"]))
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED)
def batch_command(job: str, job_args: tuple[str, ...]) -> None:
    """Run a batch job (spark-submit spark_jobs/<job>.py JOB_ARGS...); exit with its code."""
    from prognos.core.airflow_env import airflow_env, ensure_airflow_db

    settings = get_settings()
    env = airflow_env(settings)
    if job == "airflow-init":
        click.echo(f"airflow home: {ensure_airflow_db(settings, env)}")
        return
    if job == "airflow":
        ensure_airflow_db(settings, env)
        sys.exit(subprocess.run(["airflow", *job_args], env=env).returncode)
    application = PROJECT_ROOT / "spark_jobs" / f"{job}.py"
    command = ["spark-submit", "--master", settings.spark_master, str(application), *job_args]
    sys.exit(subprocess.run(command, env=env).returncode)


commands = [batch_command]

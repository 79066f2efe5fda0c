"""`prognos run`: the main job of `make run` (steps in prognos.cli.mainjob)."""

from __future__ import annotations

import sys

import click

from prognos.core.settings import get_settings


@click.command("run")
@click.option(
    "--until-complete",
    is_flag=True,
    help="Exit once the live fleet is fully replayed and served, printing the final RMSE.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="With --until-complete: seconds the whole run may take before it fails.",
)
def run_command(until_complete: bool, timeout: float) -> None:
    """Run the whole pipeline: stack, history, batch layer (Airflow), champion, speed layer,
    serving API and the live test fleet. Ctrl-C or `prognos down` stops what it started."""
    from prognos.cli.mainjob import Job, run_job

    job = Job(
        get_settings(),
        click.echo,
        timeout_s=timeout if until_complete else None,
        until_complete=until_complete,
    )
    click.echo("prognos run: Ctrl-C or `prognos down` stops everything it starts")
    try:
        run_job(job)
    except KeyboardInterrupt:
        click.echo("run: interrupted", err=True)
        sys.exit(130)
    first = f"{job.first_answers_s:.0f} s" if job.first_answers_s is not None else "none"
    click.echo(f"run: complete in {job.elapsed():.0f} s (first merged answers after {first})")


commands = [run_command]

"""Entry point of the `prognos` console script."""

from __future__ import annotations

import json
import sys

import click

from prognos.core.errors import PrognosError
from prognos.core.settings import SettingsError, get_settings


class PrognosGroup(click.Group):
    """Turns the project's own errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (PrognosError, SettingsError) as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)


@click.group(cls=PrognosGroup)
def cli() -> None:
    """prognos: predictive maintenance on Kafka, Spark, Delta Lake, Airflow and TensorFlow."""


@cli.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the broker.")
@click.option("--airflow", is_flag=True, help="Also start Airflow standalone (UI on 127.0.0.1).")
def up(timeout: float, airflow: bool) -> None:
    """Start the embedded stack (a single-node Kafka broker) and create the topics."""
    from prognos.core import stack

    click.echo(_format_status(stack.up(get_settings(), timeout_s=timeout)))
    if airflow:
        from prognos.cli.services import start_airflow

        click.echo(start_airflow(get_settings()))


@cli.command()
def down() -> None:
    """Stop the embedded stack's processes (only those this project started)."""
    from prognos.cli.services import stop_all
    from prognos.core import stack

    for line in stop_all(get_settings()):
        click.echo(line)
    stopped = stack.down(get_settings())
    click.echo("kafka: stopped" if stopped else "kafka: was not running")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Show what runs where and whether it is healthy (exit 1 when unhealthy)."""
    from prognos.core import stack

    broker = stack.status(get_settings())
    click.echo(json.dumps(stack.status_dict(get_settings())) if as_json else _format_status(broker))
    if not broker.healthy:
        sys.exit(1)


def _format_status(broker) -> str:
    owner = "embedded" if broker.managed else "external"
    pid = f" pid {broker.pid}" if broker.pid else ""
    return f"kafka ({owner}) {broker.bootstrap_servers}{pid}: {broker.detail}"


@cli.command("spark-defaults")
def spark_defaults() -> None:
    """Write pyspark's conf/spark-defaults.conf so plain spark-submit gets prognos' config."""
    from pathlib import Path

    import pyspark

    from prognos.core.spark import write_spark_defaults

    target = Path(pyspark.__file__).parent / "conf" / "spark-defaults.conf"
    click.echo(write_spark_defaults(target, get_settings()))


def _register_subcommands() -> None:
    from prognos.cli import commands

    for command in commands.all_commands():
        cli.add_command(command)


_register_subcommands()

if __name__ == "__main__":
    cli()

"""Entry point of the `prognos` console script."""

from __future__ import annotations

import json
import sys

import click

from prognos.core.errors import PrognosError
from prognos.core.settings import get_settings


class PrognosGroup(click.Group):
    """Turns the project's own errors (settings errors too) into one line on stderr,
    `error: <message>`, and the error class's exit code; no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PrognosError as error:
            click.echo(f"error: {error.one_line()}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=PrognosGroup)
def cli() -> None:
    """prognos: predictive maintenance on Kafka, Spark, Delta Lake, Airflow and TensorFlow."""


@cli.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the broker.")
@click.option("--airflow", is_flag=True, help="Also start Airflow standalone (UI on 127.0.0.1).")
@click.option(
    "--kafka-cluster",
    type=click.IntRange(1, 9),
    default=None,
    help="Start a KRaft cluster of N nodes instead of one broker (topics replicated "
    "min(N, 3) times); default: the kafka_cluster_size setting.",
)
def up(timeout: float, airflow: bool, kafka_cluster: int | None) -> None:
    """Start the embedded stack (a Kafka broker or cluster) and create the topics."""
    from prognos.core import stack
    from prognos.core.settings import load_settings

    settings = get_settings()
    if kafka_cluster is not None:
        settings = load_settings(kafka_cluster_size=kafka_cluster)
    click.echo(_format_status(stack.up(settings, timeout_s=timeout)))
    _echo_nodes(settings)
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
    stopped = stack.down(_stack_settings())
    click.echo("kafka: stopped" if stopped else "kafka: was not running")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Show what runs where and whether it is healthy (exit 1 when unhealthy)."""
    from prognos.core import stack

    settings = _stack_settings()
    broker = stack.status(settings)
    click.echo(json.dumps(stack.status_dict(settings)) if as_json else _format_status(broker))
    if not as_json:
        _echo_nodes(settings)
    if not broker.healthy:
        sys.exit(1)


def _stack_settings():
    """The settings, or those of the Kafka cluster `up --kafka-cluster N` started."""
    from prognos.core import kafka_cluster

    return kafka_cluster.recorded(get_settings())


def _echo_nodes(settings) -> None:
    """One line per node of an embedded Kafka cluster."""
    if settings.kafka_cluster_size == 1 or settings.kafka_is_external:
        return
    from prognos.core import kafka_cluster

    for node in kafka_cluster.status(settings):
        state = "healthy" if node.healthy else "running" if node.running else "not running"
        pid = f" pid {node.pid}" if node.pid else ""
        leads = f", leads {node.leader_of} readings partition(s)"
        click.echo(f"  kafka node {node.node_id} {node.address}{pid}: {state}{leads}")


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

"""`prognos speed start | stop | status`: the speed layer's streaming job."""

from __future__ import annotations

import sys

import click

from prognos.core.settings import get_settings


@click.group()
def speed() -> None:
    """The speed layer (Structured Streaming job, run by spark-submit)."""


@speed.command()
@click.option("--trigger", default=None, help="Micro-batch interval, e.g. '2 seconds'.")
def start(trigger: str | None) -> None:
    """Start the speed layer in the background (PID file under the run dir)."""
    from speed_layer import service

    state = service.start(get_settings(), trigger)
    click.echo(f"speed layer: {state.detail} (log: {state.log})")


@speed.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds before SIGKILL.")
def stop(timeout: float) -> None:
    """Stop the speed layer started by `prognos speed start` (SIGTERM, then SIGKILL)."""
    from speed_layer import service

    stopped = service.stop(get_settings(), timeout)
    click.echo("speed layer: stopped" if stopped else "speed layer: was not running")


@speed.command()
def status() -> None:
    """Show whether the speed layer runs (exit 1 when it does not)."""
    from speed_layer import service

    state = service.status(get_settings())
    click.echo(f"speed layer: {state.detail} (log: {state.log})")
    if not state.running:
        sys.exit(1)


commands = [speed]

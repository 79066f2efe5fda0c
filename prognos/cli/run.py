"""`prognos run`: the main job of `make run`, a short list of steps over the layers."""

from __future__ import annotations

import click

from prognos.core.settings import Settings, get_settings


def start_stack(settings: Settings) -> str:
    from prognos.core import stack

    broker = stack.up(settings)
    return f"kafka {broker.bootstrap_servers}: {broker.detail}"


def replay_live_fleet(settings: Settings) -> str:
    from prognos.core.replay import ReplayDeliveryError, replay

    summary = replay(subset="FD001", split="test", settings=settings)
    if summary.failed:
        raise ReplayDeliveryError(f"{summary.failed} events not delivered: {summary.first_error}")
    return summary.line()


# Each step takes the settings and returns one line for the summary.
STEPS = (
    ("stack up", start_stack),
    ("replay FD001 test fleet", replay_live_fleet),
)


@click.command("run")
def run_command() -> None:
    """Run the pipeline end to end on the configured stack and print a summary."""
    settings = get_settings()
    for title, step in STEPS:
        click.echo(f"== {title}")
        click.echo(step(settings))
    click.echo("run: done")


commands = [run_command]

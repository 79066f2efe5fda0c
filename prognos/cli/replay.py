"""`prognos replay`: publish C-MAPSS as a live fleet of sensor events."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from prognos.core.data import SPLITS, SUBSETS
from prognos.core.settings import get_settings


class IsoTime(click.ParamType):
    name = "ISO_TIME"

    def convert(self, value, param, ctx):
        from prognos.core.events import parse_event_time

        if isinstance(value, datetime):
            return value
        try:
            return parse_event_time(value.replace(" ", "T"))
        except ValueError:
            self.fail(f"expected ISO-8601 with a timezone (2026-01-01T00:00:00Z), got {value!r}")


@click.command("replay")
@click.option("--subset", default="FD001", show_default=True, help=f"One of {', '.join(SUBSETS)}.")
@click.option("--split", default="test", show_default=True, help=f"One of {', '.join(SPLITS)}.")
@click.option("--machines", type=int, help="Replay only the first N machines.")
@click.option("--rate", type=float, help="Send at most this many events/s (default: no limit).")
@click.option(
    "--cycle-seconds", default=60.0, show_default=True, help="Event-time seconds per cycle."
)
@click.option(
    "--start", type=IsoTime(), help="Event time of cycle 0 (default: last cycle at now, UTC)."
)
@click.option("--scale", default=1, show_default=True, help="Multiply the fleet K times.")
@click.option("--source", default="replay", show_default=True, help="Event source name.")
def replay_command(subset, split, machines, rate, cycle_seconds, start, scale, source) -> None:
    """Publish a C-MAPSS subset/split to the readings topic, keyed by machine id."""
    from prognos.core.replay import ReplayDeliveryError, replay

    summary = replay(
        subset=subset,
        split=split,
        machines=machines,
        rate=rate,
        cycle_seconds=cycle_seconds,
        start=start,
        scale=scale,
        source=source,
        settings=get_settings(),
        progress=sys.stderr.isatty(),
    )
    click.echo(summary.line())
    if summary.failed:
        raise ReplayDeliveryError(
            f"{summary.failed} of {summary.sent + summary.failed} events could not be "
            f"delivered (first error: {summary.first_error})"
        )


commands = [replay_command]

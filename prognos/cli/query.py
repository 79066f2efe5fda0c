"""`prognos query machine|fleet`: ask the running serving layer over HTTP."""

from __future__ import annotations

import json

import click

from prognos.core.settings import get_settings

ALERT_LEVELS = ("red", "amber", "green", "unknown")


def _client(ctx: click.Context):
    from serving_layer.client import ServingClient
    from serving_layer.server import base_url

    settings = get_settings()
    verify = str(settings.api_tls_cert) if settings.api_tls_cert else True
    return ServingClient(ctx.obj["url"] or base_url(settings), ctx.obj["key"], verify=verify)


@click.group()
@click.option("--url", default=None, help="Serving API base URL (default: from settings).")
@click.option(
    "--key", envvar="PROGNOS_API_KEY", default=None, help="API key (or env PROGNOS_API_KEY)."
)
@click.pass_context
def query(ctx: click.Context, url: str | None, key: str | None) -> None:
    """Query the merged views of the running serving layer."""
    ctx.obj = {"url": url, "key": key}


@query.command()
@click.argument("machine_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def machine(ctx: click.Context, machine_id: str, as_json: bool) -> None:
    """The merged state and predicted RUL of one machine."""
    from serving_layer.client import format_machine

    state = _client(ctx).machine(machine_id)
    click.echo(json.dumps(state, indent=2) if as_json else format_machine(state))


@query.command()
@click.option("--alert-level", type=click.Choice(ALERT_LEVELS), default=None)
@click.option("--max-rul", type=float, default=None, help="Only machines with RUL <= this.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def fleet(
    ctx: click.Context,
    alert_level: str | None,
    max_rul: float | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """The fleet ordered by predicted RUL (lowest first)."""
    from serving_layer.client import format_table

    machines = _client(ctx).fleet(alert_level=alert_level, max_rul=max_rul, limit=limit)
    click.echo(json.dumps(machines, indent=2) if as_json else format_table(machines))


commands = [query]

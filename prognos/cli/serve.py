"""`prognos serve`: the serving layer's HTTP API (+ dashboard) and gRPC PredictionService."""

from __future__ import annotations

import click

from prognos.core.settings import get_settings


@click.command()
def serve() -> None:
    """Serve the merged views, predictions and the dashboard (HTTP) and gRPC predict."""
    from serving_layer.server import serve as run

    run(get_settings())


commands = [serve]

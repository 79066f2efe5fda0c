"""`prognos train` and `prognos models list | show | promote | rollback`."""

from __future__ import annotations

import json

import click

from prognos.core.data import SUBSETS
from prognos.core.settings import get_settings


def _registry():
    from prognos.core.registry import FilesystemRegistry

    return FilesystemRegistry(get_settings().registry)


@click.command()
@click.option("--subset", type=click.Choice(SUBSETS), default="FD001", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), help="Max epochs (early stopping applies).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--machines", type=click.IntRange(min=2), help="Use only the first N machines.")
@click.option(
    "--margin",
    type=float,
    default=0.0,
    show_default=True,
    help="Validation RMSE a candidate must gain to replace the champion.",
)
def train(subset: str, epochs: int | None, seed: int, machines: int | None, margin: float) -> None:
    """Train a subset's LSTM, evaluate on test engines, register and bless it."""
    from models.train import train_subset

    result = train_subset(
        subset, epochs, seed, _registry(), machines, margin=margin, progress=click.echo
    )
    test = result.metrics["test"]
    click.echo(
        f"{result.model} version {result.version}: {result.decision.alias}; "
        f"test RMSE {test['rmse']:.2f}, score {test['score']:.0f}"
    )


@click.group()
def models() -> None:
    """Model registry: versions, aliases, promotion and rollback."""


@models.command("list")
@click.argument("model", required=False)
def list_versions(model: str | None) -> None:
    """List models, or one model's versions with their aliases and figures."""
    registry = _registry()
    for name in [model] if model else registry.models():
        aliases = registry.aliases(name)
        click.echo(
            f"{name}: champion={aliases.get('champion')} challenger={aliases.get('challenger')}"
        )
        for version in registry.versions(name):
            metadata = registry.metadata(name, version)
            metrics = metadata.get("metrics", {})
            validation = metrics.get("validation", {}).get("rmse", float("nan"))
            test = metrics.get("test", {}).get("rmse", float("nan"))
            tags = [alias for alias in ("champion", "challenger") if aliases.get(alias) == version]
            click.echo(
                f"  {version:>4}  val_rmse={validation:.2f}  test_rmse={test:.2f}"
                f"  {metadata.get('created_at', '')}  {' '.join(tags)}"
            )


@models.command()
@click.argument("model")
@click.argument("ref", default="champion")
def show(model: str, ref: str) -> None:
    """Print a version's metadata (REF: a version number, champion or challenger)."""
    registry = _registry()
    version = registry.resolve(model, ref)
    metadata = registry.metadata(model, version)
    metadata.pop("history", None)
    click.echo(json.dumps(metadata, indent=2))


@models.command()
@click.argument("model")
@click.argument("version", type=int)
def promote(model: str, version: int) -> None:
    """Make VERSION the champion (the previous one is kept for rollback)."""
    _registry().promote(model, version)
    click.echo(f"{model}: champion is now version {version}")


@models.command()
@click.argument("model")
def rollback(model: str) -> None:
    """Restore the previous champion."""
    version = _registry().rollback(model)
    click.echo(f"{model}: rolled back, champion is now version {version}")


@models.command()
@click.option("--model", help="Default: PROGNOS_SERVING_MODEL.")
@click.option("--run-id", default=None, help="Report rows are keyed by it (default: now).")
def drift(model: str | None, run_id: str | None) -> None:
    """Compare recent gold with the champion's training reference (PSI/KS per feature)."""
    from datetime import UTC, datetime

    from models.drift import measure_drift

    run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}"
    result = measure_drift(get_settings(), run_id, model=model)
    for feature in result.features:
        flag = "  DRIFT" if feature.drifted else ""
        click.echo(f"  {feature.feature:<24} psi {feature.psi:7.3f}  ks {feature.ks:5.3f}{flag}")
    click.echo(json.dumps(result.summary()))


commands = [train, models]

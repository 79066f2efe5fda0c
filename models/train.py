"""Train, evaluate, register and bless one subset's model (`python -m models.train`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.card import write_card
from models.config import TrainConfig
from models.dataset import (
    FeatureFrames,
    check_trainable,
    make_windows,
    split_machines,
    training_frame,
)
from models.drift import REFERENCE_KEY, feature_reference
from models.metrics import evaluate, rmse
from models.network import (
    average_models,
    build_model,
    export_saved_model,
    make_deterministic,
    predict,
)
from prognos.core import logs
from prognos.core.data import SUBSETS, UnknownDatasetError
from prognos.core.features import FEATURE_VERSION
from prognos.core.registry import (
    BlessDecision,
    FilesystemRegistry,
    ModelRegistry,
    validation_metric,
)
from prognos.core.settings import get_settings


@dataclass
class TrainResult:
    model: str
    version: int | None
    metrics: dict
    decision: BlessDecision | None
    epochs_run: int
    keras_model: object = None  # the trained Keras model (not stored; for checks)
    test_windows: object = None


def model_name(subset: str) -> str:
    return f"rul_{subset.lower()}"


def subset_of_model(name: str) -> str:
    """The subset a model name trains on (rul_fd001 -> FD001)."""
    subset = name.removeprefix("rul_").upper()
    if not name.startswith("rul_") or subset not in SUBSETS:
        raise UnknownDatasetError(f"model name {name!r} names no subset: expected rul_fd00N")
    return subset


def train_subset(
    subset: str,
    epochs: int | None = None,
    seed: int = 42,
    registry: ModelRegistry | None = None,
    machines: int | None = None,
    config: TrainConfig | None = None,
    source: str = "cmapss",
    margin: float = 0.0,
    progress: Callable[[str], None] = print,
) -> TrainResult:
    """Build the dataset, train, evaluate on test engines, register and bless."""
    overrides = {"seed": seed, "machines": machines}
    if epochs is not None:
        overrides["epochs"] = epochs
    config = (config or TrainConfig.for_subset(subset)).with_(**overrides)
    frames = training_frame(subset, config.feature, source=source, machines=config.machines)
    return train_frames(frames, config, registry, margin, progress)


def train_frames(
    frames: FeatureFrames,
    config: TrainConfig,
    registry: ModelRegistry | None = None,
    margin: float = 0.0,
    progress: Callable[[str], None] = print,
) -> TrainResult:
    """Train on prepared feature frames; evaluate, register and bless."""
    make_deterministic(config.seed)
    check_trainable(frames.train, config.window)
    if registry is not None:
        check_champion(registry, model_name(frames.subset))
    model, history, validation, windows = fit(frames.train, config, progress)
    metrics, test = evaluate_model(model, frames, config, validation, len(windows[1]))
    if "member_validation_rmse" in history:
        metrics["validation"]["members"] = history["member_validation_rmse"]
    progress(
        f"{frames.subset}: validation RMSE {validation:.2f}, "
        f"test RMSE {metrics['test']['rmse']:.2f}, score {metrics['test']['score']:.0f}"
    )
    name = model_name(frames.subset)
    epochs_run = len(history["loss"])
    if registry is None:
        return TrainResult(name, None, metrics, None, epochs_run, model, test)
    metadata = version_metadata(frames, config, metrics, history)
    version = register_model(registry, name, model, config, metadata)
    decision = registry.bless(name, version, margin)
    progress(f"registered {name} version {version}: {decision.alias} ({decision.reason})")
    inputs = frames.source.get("table_versions", {})
    logs.lineage("train", f"train__{name}__v{version}", inputs, {f"model:{name}": version})
    return TrainResult(name, version, metrics, decision, epochs_run, model, test)


def check_champion(registry: ModelRegistry, name: str) -> None:
    """Fail before training when the current champion cannot be compared with (its version
    directory is damaged): blessing would fail after the new version was written."""
    champion = registry.aliases(name).get("champion")
    if champion is not None:
        validation_metric(registry.metadata(name, champion))
        registry.load(name, champion)


def evaluate_model(model, frames: FeatureFrames, config: TrainConfig, validation_rmse, count):
    """Validation figures and the test engines' last-cycle figures; and the test windows."""
    test = make_windows(frames.test, config.input_columns, config.window, last_only=True)
    test_out = predict(model, test.x)
    metrics = {
        "validation": {"rmse": float(validation_rmse), "windows": int(count)},
        "test": evaluate(
            test_out["rul"],
            test_out["fail_prob"],
            np.minimum(test.rul_true, config.feature.rul_cap),
            config.feature.horizon,
        ),
    }
    # Headline figures compare with the truth under the same piecewise-linear cap as the
    # training target (the usual protocol); the uncapped RMSE is recorded beside them.
    metrics["test"]["rmse_uncapped"] = rmse(test_out["rul"], test.rul_true)
    return metrics, test


def version_metadata(frames: FeatureFrames, config: TrainConfig, metrics, history) -> dict:
    """What a registry version records: parameters, figures, lineage, drift reference."""
    return {
        "params": config.to_dict(),
        "metrics": metrics,
        "feature_version": FEATURE_VERSION,
        "training_data": frames.source,
        "condition_model": json.loads(frames.condition_model.to_json()),
        "serving": {
            "input": "window",
            "window": config.window,
            "input_columns": list(config.input_columns),
            "outputs": ["rul", "fail_prob"],
        },
        REFERENCE_KEY: feature_reference(frames.train, config.input_columns),
        "history": history,
    }


def register_model(registry: ModelRegistry, name: str, model, config, metadata) -> int:
    """Export the SavedModel and its card into a new registry version (atomic)."""

    def write(directory: Path) -> None:
        export_saved_model(model, directory, config.window, len(config.input_columns))
        write_card(directory, {**metadata, "model": name})

    return registry.register(name, write, metadata)


def fit(train_frame, config: TrainConfig, progress: Callable[[str], None]):
    """Train with early stopping on validation machines; returns model and figures.

    With `config.ensemble` > 1, members with seeds seed, seed+1, ... are trained on the
    same split and the returned model averages their outputs.
    """
    train_rows, validation_rows = split_machines(train_frame, config.validation_share, config.seed)
    train = make_windows(
        train_rows, config.input_columns, config.window, stride=config.train_stride
    )
    validation = make_windows(validation_rows, config.input_columns, config.window)
    members, history = [], {}
    for index in range(config.ensemble):
        if index:
            make_deterministic(config.seed + index)
        member, member_history = fit_member(train, validation, config, index, progress)
        members.append(member)
        history = history or member_history
        history.setdefault("member_epochs", []).append(len(member_history["loss"]))
    model = members[0] if len(members) == 1 else average_models(members)
    validation_rmse = rmse(predict(model, validation.x)["rul"], validation.rul)
    if len(members) > 1:
        history["member_validation_rmse"] = [
            rmse(predict(member, validation.x)["rul"], validation.rul) for member in members
        ]
    return model, history, validation_rmse, (train, validation)


def fit_member(train, validation, config: TrainConfig, index: int, progress):
    import keras

    name = "prognos_lstm" if index == 0 else f"prognos_lstm_{index}"
    model = build_model(config.window, len(config.input_columns), config, name)
    started = time.monotonic()
    member = f"member {index + 1}/{config.ensemble} " if config.ensemble > 1 else ""

    def report(epoch, logs):
        progress(
            f"{member}epoch {epoch + 1}/{config.epochs} loss {logs['loss']:.4f} "
            f"rmse {logs.get('rul_rmse', float('nan')):.2f} "
            f"val_rmse {logs.get('val_rul_rmse', float('nan')):.2f} "
            f"({time.monotonic() - started:.0f} s)"
        )

    result = model.fit(
        train.x,
        {"rul": train.rul, "fail_prob": train.fails},
        validation_data=(validation.x, {"rul": validation.rul, "fail_prob": validation.fails}),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_rul_rmse",
                mode="min",
                patience=config.patience,
                restore_best_weights=True,
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_rul_rmse", mode="min", factor=0.5, patience=config.lr_patience
            ),
            keras.callbacks.LambdaCallback(on_epoch_end=report),
        ],
    )
    return model, {key: [float(v) for v in values] for key, values in result.history.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one C-MAPSS subset's RUL model.")
    parser.add_argument("--subset", default="FD001")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--machines", type=int)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--registry", type=Path, help="default: the settings' registry root")
    args = parser.parse_args(argv)
    registry = FilesystemRegistry(args.registry or get_settings().registry)
    result = train_subset(
        args.subset, args.epochs, args.seed, registry, args.machines, margin=args.margin
    )
    print(json.dumps({"model": result.model, "version": result.version, **result.metrics["test"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

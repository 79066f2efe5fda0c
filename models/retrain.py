"""The retrain DAG's steps, one process each: `python -m models.retrain STEP --run-id R`.

build_dataset -> train -> evaluate -> register -> bless. Steps hand over through a run
directory (<state_dir>/retrain/<run id>): the feature frames (Parquet), the trained Keras
model, its figures. Each step prints one JSON line (the task's XCom). The model retrained
is the settings' `serving_model` (rul_fd00N names its subset); training rows come from
`retrain_source`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

from models.config import TrainConfig
from models.dataset import FeatureFrames, check_trainable, training_frame
from prognos.core.errors import PrognosError
from prognos.core.features import FAILS_WITHIN_H, RUL_TARGET, ConditionModel
from prognos.core.locks import lake_lock
from prognos.core.registry import FilesystemRegistry
from prognos.core.settings import Settings, get_settings

STEPS = ("build_dataset", "train", "evaluate", "register", "bless")
# the steps that read the lake (gold) hold its lock, like every job of the lake
LAKE_STEPS = ("build_dataset",)
MODEL_FILE = "model.keras"


class RetrainError(PrognosError):
    """A retrain step cannot run (missing output of an earlier step)."""


def run_dir(settings: Settings, run_id: str) -> Path:
    return settings.state_dir / "retrain" / re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


def retrain_config(settings: Settings) -> TrainConfig:
    from models.train import subset_of_model

    config = TrainConfig.for_subset(subset_of_model(settings.serving_model))
    changes = {"seed": settings.retrain_seed, "machines": settings.retrain_machines}
    if settings.retrain_epochs is not None:
        changes["epochs"] = settings.retrain_epochs
    return config.with_(**changes)


# ---------------------------------------------------------------- hand-over files


def _write_json(directory: Path, name: str, data: dict) -> None:
    (directory / name).write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


def _read_json(directory: Path, name: str, step: str) -> dict:
    path = directory / name
    if not path.is_file():
        raise RetrainError(f"{path} is missing: run the {step!r} step of this run first")
    return json.loads(path.read_text())


def save_frames(frames: FeatureFrames, config: TrainConfig, directory: Path) -> None:
    keep = ["machine_id", "cycle", *config.input_columns, "rul", RUL_TARGET, FAILS_WITHIN_H]
    frames.train[keep].to_parquet(directory / "train.parquet", index=False)
    frames.test[keep].to_parquet(directory / "test.parquet", index=False)
    _write_json(
        directory,
        "dataset.json",
        {
            "subset": frames.subset,
            "source": frames.source,
            "condition_model": json.loads(frames.condition_model.to_json()),
        },
    )


def load_frames(directory: Path) -> FeatureFrames:
    dataset = _read_json(directory, "dataset.json", "build_dataset")
    return FeatureFrames(
        dataset["subset"],
        pd.read_parquet(directory / "train.parquet"),
        pd.read_parquet(directory / "test.parquet"),
        ConditionModel.from_json(dataset["condition_model"]),
        dataset["source"],
    )


# ---------------------------------------------------------------- the steps


def build_dataset(settings: Settings, run_id: str) -> dict:
    from models.train import check_champion, model_name

    config = retrain_config(settings)
    check_champion(FilesystemRegistry(settings.registry), model_name(config.subset))
    frames = training_frame(
        config.subset, config.feature, settings.retrain_source, config.machines, settings
    )
    check_trainable(frames.train, config.window)
    directory = run_dir(settings, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    save_frames(frames, config, directory)
    machines = frames.train["machine_id"].nunique()
    return {"rows": len(frames.train), "machines": int(machines), "source": frames.source}


def train(settings: Settings, run_id: str) -> dict:
    from models.network import make_deterministic
    from models.train import fit

    config, directory = retrain_config(settings), run_dir(settings, run_id)
    frames = load_frames(directory)
    make_deterministic(config.seed)
    check_trainable(frames.train, config.window)
    model, history, validation, windows = fit(frames.train, config, print)
    model.save(directory / MODEL_FILE)
    figures = {"validation_rmse": validation, "validation_windows": len(windows[1])}
    _write_json(directory, "training.json", {**figures, "history": history})
    return {**figures, "epochs_run": len(history["loss"])}


def evaluate(settings: Settings, run_id: str) -> dict:
    from models.train import evaluate_model

    config, directory = retrain_config(settings), run_dir(settings, run_id)
    training = _read_json(directory, "training.json", "train")
    metrics, _ = evaluate_model(
        _load_model(directory),
        load_frames(directory),
        config,
        training["validation_rmse"],
        training["validation_windows"],
    )
    _write_json(directory, "metrics.json", metrics)
    return {"validation_rmse": metrics["validation"]["rmse"], **metrics["test"]}


def register(settings: Settings, run_id: str) -> dict:
    from models.train import model_name, register_model, version_metadata

    config, directory = retrain_config(settings), run_dir(settings, run_id)
    frames = load_frames(directory)
    metrics = _read_json(directory, "metrics.json", "evaluate")
    history = _read_json(directory, "training.json", "train")["history"]
    metadata = version_metadata(frames, config, metrics, history)
    metadata["retrain_run_id"] = run_id
    name = model_name(config.subset)
    registry = FilesystemRegistry(settings.registry)
    version = register_model(registry, name, _load_model(directory), config, metadata)
    _write_json(directory, "registered.json", {"model": name, "version": version})
    return {"model": name, "version": version}


def bless(settings: Settings, run_id: str) -> dict:
    """Champion if the candidate beats the champion by the margin, else challenger."""
    registered = _read_json(run_dir(settings, run_id), "registered.json", "register")
    registry = FilesystemRegistry(settings.registry)
    decision = registry.bless(registered["model"], registered["version"], settings.bless_margin)
    return {"model": registered["model"], **decision.__dict__}


def _load_model(directory: Path):
    import keras

    path = directory / MODEL_FILE
    if not path.is_file():
        raise RetrainError(f"{path} is missing: run the 'train' step of this run first")
    return keras.models.load_model(path, compile=False)


def run_step(step: str, settings: Settings, run_id: str) -> dict:
    steps = {
        "build_dataset": build_dataset,
        "train": train,
        "evaluate": evaluate,
        "register": register,
        "bless": bless,
    }
    if step not in steps:
        raise RetrainError(f"unknown retrain step {step!r}: expected one of {STEPS}")
    if step in LAKE_STEPS:
        with lake_lock(settings, f"retrain {step} {run_id}"):
            return steps[step](settings, run_id)
    return steps[step](settings, run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    try:
        result = run_step(args.step, get_settings(), args.run_id)
    except PrognosError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

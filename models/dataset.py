"""Training sets: feature frames -> point-in-time windows, split by machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prognos.core.data import load_cmapss
from prognos.core.errors import PrognosError
from prognos.core.features import (
    FAILS_WITHIN_H,
    RUL_TARGET,
    ConditionModel,
    FeatureConfig,
    add_labels,
    compute_features_for_frame,
    feature_columns,
    fit_condition_model,
)
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import is_delta_table, table_path


class DatasetError(PrognosError):
    """The training data cannot make a usable dataset (empty, too short, bad split)."""


@dataclass
class FeatureFrames:
    """Labelled feature frames of one subset and the condition model that made them."""

    subset: str
    train: pd.DataFrame
    test: pd.DataFrame
    condition_model: ConditionModel
    source: dict  # lineage: what the rows came from (Delta versions for gold)


@dataclass
class Windows:
    x: np.ndarray  # (n, window, features) float32
    rul: np.ndarray  # (n,) capped RUL
    fails: np.ndarray  # (n,) 0/1
    rul_true: np.ndarray  # (n,) uncapped RUL (the evaluation truth)
    machines: np.ndarray  # (n,) machine id of each window

    def __len__(self) -> int:
        return len(self.x)


def training_frame(
    subset: str,
    config: FeatureConfig,
    source: str = "cmapss",
    machines: int | None = None,
    settings: Settings | None = None,
) -> FeatureFrames:
    """Labelled features for training and test machines.

    `source` "cmapss" computes training features from the vendored training files; "gold"
    takes the rows of the subset's run-to-failure (training) machines from the gold table.
    Test engines always come from the vendored test files (final evaluation only).
    """
    if source == "gold":
        return gold_training_frame(subset, config, machines, settings)
    if source != "cmapss":
        raise DatasetError(f"unknown training source {source!r}: expected 'gold' or 'cmapss'")
    raw_train = load_cmapss(subset, "train", settings)
    raw_test = load_cmapss(subset, "test", settings)
    if machines is not None:
        raw_train = raw_train[raw_train["machine_id"].isin(_first(raw_train, machines))]
        raw_test = raw_test[raw_test["machine_id"].isin(_first(raw_test, machines))]
    condition_model = fit_condition_model(load_cmapss(subset, "train", settings), config)
    train = add_labels(compute_features_for_frame(raw_train, condition_model, config), config)
    test = add_labels(compute_features_for_frame(raw_test, condition_model, config), config)
    lineage = {
        "source": "cmapss",
        "subset": subset,
        "machines": machines,
        "rows": {"train": len(raw_train), "test": len(raw_test)},
        "files": _file_sums(subset, settings),
    }
    return FeatureFrames(subset, train, test, condition_model, lineage)


def gold_training_frame(
    subset: str,
    config: FeatureConfig,
    machines: int | None = None,
    settings: Settings | None = None,
) -> FeatureFrames:
    """Training rows from gold: the subset's training machines, which ran to failure, so
    RUL at a cycle is the machine's last cycle minus that cycle."""
    settings = settings or get_settings()
    gold, version = _read_gold(settings, ["machine_id", "cycle", *feature_columns(config)])
    prefix = f"{subset}-train-"
    train = gold[gold["machine_id"].astype(str).str.startswith(prefix)]
    if train.empty:
        raise DatasetError(
            f"gold_features (version {version}) holds no run-to-failure machines of {subset} "
            f"(ids {prefix}*): replay the training engines, or set PROGNOS_RETRAIN_SOURCE=cmapss"
        )
    if machines is not None:
        train = train[train["machine_id"].isin(_first(train, machines))]
    train = train.sort_values(["machine_id", "cycle"], ignore_index=True)
    train["rul"] = train.groupby("machine_id")["cycle"].transform("max") - train["cycle"]
    condition_model = fit_condition_model(load_cmapss(subset, "train", settings), config)
    raw_test = load_cmapss(subset, "test", settings)
    if machines is not None:
        raw_test = raw_test[raw_test["machine_id"].isin(_first(raw_test, machines))]
    test = add_labels(compute_features_for_frame(raw_test, condition_model, config), config)
    lineage = {
        "source": "gold",
        "subset": subset,
        "machines": machines,
        "table_versions": {"gold_features": version},
        "rows": {"train": len(train), "test": len(raw_test)},
        "files": _file_sums(subset, settings),
    }
    return FeatureFrames(subset, add_labels(train, config), test, condition_model, lineage)


def _read_gold(settings: Settings, columns: list[str]) -> tuple[pd.DataFrame, int]:
    from deltalake import DeltaTable

    path = table_path("gold_features", settings)
    if not is_delta_table(path):
        raise DatasetError(
            f"no gold_features table at {path}: run the batch layer, "
            "or set PROGNOS_RETRAIN_SOURCE=cmapss"
        )
    table = DeltaTable(str(path))
    absent = [name for name in columns if name not in table.schema().to_arrow().names]
    if absent:
        raise DatasetError(f"gold_features lacks feature columns: {', '.join(absent[:5])}")
    return table.to_pyarrow_table(columns=columns).to_pandas(), table.version()


def _file_sums(subset: str, settings: Settings | None) -> dict[str, str]:
    """sha256 of the vendored files the rows came from (the data's version)."""
    sums = Path((settings or get_settings()).data_dir) / "SHA256SUMS"
    if not sums.is_file():
        return {}
    found = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if subset in name:
            found[name.strip()] = digest
    return found


def _first(frame: pd.DataFrame, count: int) -> list:
    return sorted(frame["machine_id"].unique())[:count]


def split_machines(
    frame: pd.DataFrame, validation_share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split training rows by machine (a machine is wholly in train or in validation)."""
    machines = np.array(sorted(frame["machine_id"].unique()))
    if len(machines) < 2:
        raise DatasetError(f"need at least 2 training machines to split, got {len(machines)}")
    shuffled = np.random.default_rng(seed).permutation(machines)
    count = min(len(machines) - 1, max(1, round(len(machines) * validation_share)))
    held_out = set(shuffled[:count].tolist())
    is_validation = frame["machine_id"].isin(held_out)
    return frame[~is_validation], frame[is_validation]


def make_windows(
    frame: pd.DataFrame, columns, window: int, last_only: bool = False, stride: int = 1
) -> Windows:
    """Every window ending at each cycle >= `window` (or only each machine's last cycle).

    With `stride` k, windows end every k-th cycle counted back from each machine's last,
    which is always kept. A machine shorter than `window` is padded with its first row,
    so test engines with short histories still get a prediction.
    """
    if stride < 1:
        raise DatasetError(f"window stride must be >= 1, got {stride}")
    missing = [c for c in [*columns, "rul", RUL_TARGET, FAILS_WITHIN_H] if c not in frame.columns]
    if missing:
        raise DatasetError(f"feature frame lacks columns: {', '.join(missing)}")
    xs, ruls, fails, truths, machines = [], [], [], [], []
    for machine, group in frame.groupby("machine_id", sort=True):
        group = group.sort_values("cycle")
        values = group[list(columns)].to_numpy(dtype=np.float32)
        if len(values) < window:
            values = np.vstack([np.repeat(values[:1], window - len(values), axis=0), values])
            group = pd.concat([group.iloc[:1]] * (window - len(group)) + [group])
        ends = [len(values)] if last_only else range(len(values), window - 1, -stride)[::-1]
        for end in ends:
            xs.append(values[end - window : end])
        chosen = group.iloc[[end - 1 for end in ends]]
        ruls.append(chosen[RUL_TARGET].to_numpy(dtype=np.float32))
        fails.append(chosen[FAILS_WITHIN_H].to_numpy(dtype=np.float32))
        truths.append(chosen["rul"].to_numpy(dtype=np.float32))
        machines.append(np.full(len(chosen), machine))
    if not xs:
        raise DatasetError("no windows: the dataset is empty")
    return Windows(
        np.stack(xs).astype(np.float32),
        np.concatenate(ruls),
        np.concatenate(fails),
        np.concatenate(truths),
        np.concatenate(machines),
    )


def check_trainable(frame: pd.DataFrame, window: int) -> None:
    """Clear errors for data no model can be trained on."""
    if frame.empty:
        raise DatasetError("the training dataset is empty")
    lengths = frame.groupby("machine_id")["cycle"].count()
    if int(lengths.max()) < window:
        raise DatasetError(
            f"the training dataset is too short: the longest machine has {int(lengths.max())} "
            f"cycles, a window needs {window}"
        )

"""The one feature definition: gold (Spark, batch) and the speed layer both call it.

Pure pandas/numpy so Spark can run it per machine (applyInPandas / applyInPandasWithState).
Point-in-time correct: the row for cycle c uses only cycles <= c, and only the last
``min_history_length(config)`` of them, so a bounded per-machine buffer in the speed
layer yields bit-identical features to gold.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from prognos.core.errors import PrognosError

FEATURE_VERSION = "1.0.0"

SETTING_NAMES = ("setting_1", "setting_2", "setting_3")
# Sensors 1, 5, 6, 10, 16, 18, 19 are constant within an operating condition: dropped.
INFORMATIVE_SENSORS = tuple(
    f"sensor_{number}" for number in (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)
)
HEALTH = "health_index"
KEY_COLUMNS = ("machine_id", "cycle")
CONDITION = "condition"
RUL_TARGET = "rul_target"
FAILS_WITHIN_H = "fails_within_h"


class FeatureError(PrognosError):
    """Feature input is unusable (missing columns, no rows, bad condition model)."""


@dataclass(frozen=True)
class FeatureConfig:
    """What the features are: sensors used, rolling windows, label parameters."""

    windows: tuple[int, ...] = (5, 10, 30)
    sensors: tuple[str, ...] = INFORMATIVE_SENSORS
    rul_cap: int = 125
    horizon: int = 30

    def __post_init__(self):
        if not self.windows or min(self.windows) < 2:
            raise FeatureError(f"windows must be integers >= 2, got {self.windows}")
        if not self.sensors:
            raise FeatureError("at least one sensor is needed")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        return cls(
            windows=tuple(data["windows"]),
            sensors=tuple(data["sensors"]),
            rul_cap=int(data["rul_cap"]),
            horizon=int(data["horizon"]),
        )


def normalised_columns(config: FeatureConfig) -> list[str]:
    return [f"{sensor}_z" for sensor in config.sensors]


def feature_columns(config: FeatureConfig) -> list[str]:
    """All feature column names, in a fixed order (keys and labels excluded)."""
    columns = [*normalised_columns(config), HEALTH]
    for window in config.windows:
        for name in [*config.sensors, HEALTH]:
            columns += [f"{name}_mean_{window}", f"{name}_std_{window}", f"{name}_slope_{window}"]
    return columns


FEATURE_COLUMNS = feature_columns(FeatureConfig())


def min_history_length(config: FeatureConfig, model_window: int = 1) -> int:
    """Cycles per machine the speed layer must keep to score a window of `model_window` rows."""
    return max(config.windows) + max(1, model_window) - 1


# ---------------------------------------------------------------- condition model


@dataclass
class ConditionModel:
    """Operating-condition clusters (over the 3 settings) and per-condition sensor stats."""

    sensors: list[str]
    centroids: list[list[float]]  # k x 3, in raw setting units
    setting_scale: list[float]  # per setting divisor used for distances
    sensor_mean: list[list[float]]  # k x S
    sensor_std: list[list[float]]  # k x S
    health_signs: list[float]  # S; +1 when the z-score rises with wear
    feature_version: str = FEATURE_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def n_conditions(self) -> int:
        return len(self.centroids)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> ConditionModel:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        try:
            return cls(**data)
        except TypeError as error:
            raise FeatureError(f"not a condition model: {error}") from None

    def assign(self, settings: np.ndarray) -> np.ndarray:
        """Condition index of each row of an (n, 3) settings array (nearest centroid)."""
        scaled = settings / np.asarray(self.setting_scale)
        centres = np.asarray(self.centroids) / np.asarray(self.setting_scale)
        distances = ((scaled[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1)


def detect_conditions(frame: pd.DataFrame) -> int:
    """Number of distinct operating conditions: settings rounded to their natural grid."""
    rounded = pd.DataFrame(
        {
            "altitude": frame["setting_1"].round(0),
            "mach": frame["setting_2"].round(2),
            "tra": frame["setting_3"].round(0),
        }
    )
    return len(rounded.drop_duplicates())


def fit_condition_model(
    train_frame: pd.DataFrame,
    config: FeatureConfig | None = None,
    n_conditions: int | None = None,
    iterations: int = 50,
) -> ConditionModel:
    """Learn condition clusters (deterministic k-means) and per-condition sensor mean/std.

    `n_conditions` defaults to the count found by `detect_conditions` (6 on FD002/FD004,
    1 on FD001/FD003). Health signs come from the correlation with `rul` when present.
    """
    config = config or FeatureConfig()
    _require_columns(train_frame, [*SETTING_NAMES, *config.sensors])
    if train_frame.empty:
        raise FeatureError("cannot fit a condition model on an empty frame")
    settings = train_frame[list(SETTING_NAMES)].to_numpy(dtype=np.float64)
    k = n_conditions or detect_conditions(train_frame)
    scale = np.where(settings.std(axis=0) > 1e-9, settings.std(axis=0), 1.0)
    centroids = _kmeans(settings / scale, k, iterations) * scale
    model = ConditionModel(
        sensors=list(config.sensors),
        centroids=centroids.tolist(),
        setting_scale=scale.tolist(),
        sensor_mean=[],
        sensor_std=[],
        health_signs=[1.0] * len(config.sensors),
    )
    labels = model.assign(settings)
    values = train_frame[list(config.sensors)].to_numpy(dtype=np.float64)
    means, stds = [], []
    for index in range(k):
        rows = values[labels == index]
        means.append(rows.mean(axis=0))
        std = rows.std(axis=0)
        stds.append(np.where(std > 1e-8, std, 1.0))
    model.sensor_mean = np.asarray(means).tolist()
    model.sensor_std = np.asarray(stds).tolist()
    if "rul" in train_frame.columns:
        z = _normalise(values, labels, model)
        model.health_signs = _health_signs(z, train_frame["rul"].to_numpy(dtype=np.float64))
    return model


def _kmeans(points: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """Lloyd's k-means with farthest-point initialisation from the lexicographic minimum."""
    unique = np.unique(np.round(points, 6), axis=0)
    if len(unique) < k:
        raise FeatureError(f"{k} conditions requested but the settings take {len(unique)} values")
    centres = [unique[0]]
    for _ in range(1, k):
        distance = np.min([((unique - c) ** 2).sum(axis=1) for c in centres], axis=0)
        centres.append(unique[int(distance.argmax())])
    centres = np.asarray(centres, dtype=np.float64)
    for _ in range(iterations):
        labels = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        updated = np.array(
            [
                points[labels == i].mean(axis=0) if np.any(labels == i) else centres[i]
                for i in range(k)
            ]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres[np.lexsort(centres.T[::-1])]  # stable condition ids: sorted centroids


def _health_signs(z: np.ndarray, rul: np.ndarray) -> list[float]:
    signs = []
    for column in range(z.shape[1]):
        corr = np.corrcoef(z[:, column], rul)[0, 1] if z[:, column].std() > 0 else 0.0
        signs.append(-1.0 if corr > 0 else 1.0)  # rising with wear = falling with RUL
    return signs


def _normalise(values: np.ndarray, labels: np.ndarray, model: ConditionModel) -> np.ndarray:
    mean = np.asarray(model.sensor_mean)[labels]
    std = np.asarray(model.sensor_std)[labels]
    return (values - mean) / std


# ---------------------------------------------------------------- features


def compute_features(
    history: pd.DataFrame, condition_model: ConditionModel, config: FeatureConfig | None = None
) -> pd.DataFrame:
    """Feature rows for ONE machine's history (any order; sorted by cycle here).

    Returns machine_id, cycle, condition, the feature columns, and `rul` when present.
    """
    config = config or FeatureConfig()
    _check_model(condition_model, config)
    _require_columns(history, [*KEY_COLUMNS, *SETTING_NAMES, *config.sensors])
    history = history.sort_values("cycle", kind="stable")
    return _features_of_rows(history, None, condition_model, config)


def _rolling_stats(
    signals: np.ndarray, cycles: np.ndarray, window: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trailing-window mean, std (ddof 0) and least-squares slope per cycle.

    Each output row depends only on its own trailing window, computed the same way
    whatever precedes it, so truncated and full histories give identical values.
    `groups` (one id per row, rows of a group contiguous) stops a window at its group's
    first row: several machines in one call give exactly their one-by-one values.
    """
    n, width = signals.shape
    if n == 0:
        empty = np.zeros((0, width))
        return empty, empty, empty
    pad = np.full((window - 1, width), np.nan)
    padded = np.vstack([pad, signals])
    padded_x = np.concatenate([np.full(window - 1, np.nan), cycles])
    views = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # n, width, w
    xs = np.lib.stride_tricks.sliding_window_view(padded_x, window)  # n, w
    present = ~np.isnan(xs)
    if groups is not None:
        padded_groups = np.concatenate([np.full(window - 1, -1), groups])
        same = np.lib.stride_tricks.sliding_window_view(padded_groups, window) == groups[:, None]
        present &= same
    count = present.sum(axis=1)
    y = np.where(present[:, None, :], views, 0.0)
    mean = y.sum(axis=2) / count[:, None]
    deviation = np.where(present[:, None, :], views - mean[:, :, None], 0.0)
    std = np.sqrt((deviation**2).sum(axis=2) / count[:, None])
    x = np.where(present, xs, 0.0)
    x_mean = x.sum(axis=1) / count
    x_dev = np.where(present, xs - x_mean[:, None], 0.0)
    denominator = (x_dev**2).sum(axis=1)
    numerator = (deviation * x_dev[:, None, :]).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(denominator[:, None] > 0, numerator / denominator[:, None], 0.0)
    return mean, std, slope


def compute_features_for_frame(
    frame: pd.DataFrame, condition_model: ConditionModel, config: FeatureConfig | None = None
) -> pd.DataFrame:
    """`compute_features` over every machine of a frame (the pandas stand-in for gold)."""
    config = config or FeatureConfig()
    _require_columns(frame, [*KEY_COLUMNS])
    parts = [
        compute_features(group, condition_model, config)
        for _, group in frame.groupby("machine_id", sort=True)
    ]
    if not parts:
        raise FeatureError("no rows to compute features from")
    return pd.concat(parts, ignore_index=True)


# rows per vectorised chunk of compute_features_many (bounds its temporary arrays)
MANY_CHUNK_ROWS = 8192


def compute_features_many(
    frame: pd.DataFrame, condition_model: ConditionModel, config: FeatureConfig | None = None
) -> pd.DataFrame:
    """`compute_features` of every machine of a frame in a few vectorised calls, with the
    same values bit for bit; rows come back sorted by machine and cycle (the order of
    `frame.sort_values(["machine_id", "cycle"], kind="stable")`)."""
    config = config or FeatureConfig()
    _check_model(condition_model, config)
    _require_columns(frame, [*KEY_COLUMNS, *SETTING_NAMES, *config.sensors])
    frame = frame.sort_values(["machine_id", "cycle"], kind="stable")
    groups = pd.factorize(frame["machine_id"])[0]
    bounds = _chunk_bounds(groups, MANY_CHUNK_ROWS)
    parts = [
        _features_of_rows(frame.iloc[start:stop], groups[start:stop], condition_model, config)
        for start, stop in itertools.pairwise(bounds)
    ]
    if not parts:
        return compute_features(frame, condition_model, config)
    return pd.concat(parts, ignore_index=True)


def _chunk_bounds(groups: np.ndarray, rows: int) -> list[int]:
    """Row offsets cutting the frame into chunks of about `rows`, at group starts only."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if len(groups) else []
    bounds = [0]
    for start in starts:
        if start - bounds[-1] >= rows:
            bounds.append(int(start))
    if len(groups) > bounds[-1]:
        bounds.append(len(groups))
    return bounds


def _features_of_rows(
    history: pd.DataFrame, groups: np.ndarray | None, model: ConditionModel, config: FeatureConfig
) -> pd.DataFrame:
    """Feature rows of rows sorted by machine and cycle; `groups` tells machines apart
    (None: all rows are one machine's)."""
    settings = history[list(SETTING_NAMES)].to_numpy(dtype=np.float64)
    labels = model.assign(settings) if len(history) else np.zeros(0, dtype=int)
    values = history[list(config.sensors)].to_numpy(dtype=np.float64)
    z = _normalise(values, labels, model)
    health = (z * np.asarray(model.health_signs)).mean(axis=1, keepdims=True)
    cycles = history["cycle"].to_numpy(dtype=np.float64)
    columns: dict[str, np.ndarray] = {
        "machine_id": history["machine_id"].to_numpy(),
        "cycle": history["cycle"].to_numpy(),
        CONDITION: labels.astype(np.int32),
    }
    for index, name in enumerate(normalised_columns(config)):
        columns[name] = z[:, index]
    columns[HEALTH] = health[:, 0]
    signals = np.hstack([z, health])
    names = [*config.sensors, HEALTH]
    for window in config.windows:
        mean, std, slope = _rolling_stats(signals, cycles, window, groups)
        for index, name in enumerate(names):
            columns[f"{name}_mean_{window}"] = mean[:, index]
            columns[f"{name}_std_{window}"] = std[:, index]
            columns[f"{name}_slope_{window}"] = slope[:, index]
    if "rul" in history.columns:
        columns["rul"] = history["rul"].to_numpy()
    return pd.DataFrame(columns)


def add_labels(frame: pd.DataFrame, config: FeatureConfig | None = None) -> pd.DataFrame:
    """Add `rul_target` (RUL capped at rul_cap) and `fails_within_h` where `rul` is known."""
    config = config or FeatureConfig()
    labelled = frame.copy()
    if "rul" not in labelled.columns:
        labelled[RUL_TARGET] = np.nan
        labelled[FAILS_WITHIN_H] = np.nan
        return labelled
    rul = labelled["rul"].astype(np.float64)
    labelled[RUL_TARGET] = rul.clip(upper=config.rul_cap)
    labelled[FAILS_WITHIN_H] = np.where(rul.isna(), np.nan, (rul <= config.horizon).astype(float))
    return labelled


def _require_columns(frame: pd.DataFrame, columns) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise FeatureError(f"missing columns for features: {', '.join(missing)}")


def _check_model(model: ConditionModel, config: FeatureConfig) -> None:
    if list(model.sensors) != list(config.sensors):
        raise FeatureError("condition model was fitted on other sensors than the feature config")
    if model.feature_version.split(".")[0] != FEATURE_VERSION.split(".")[0]:
        raise FeatureError(
            f"condition model feature version {model.feature_version} "
            f"is incompatible with {FEATURE_VERSION}"
        )

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
    inputs = _input_arrays(history, config)
    return pd.DataFrame(_features_of_rows(inputs, slice(None), None, condition_model, config))


def _rolling_stats(
    signals: np.ndarray, cycles: np.ndarray, window: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trailing-window mean, std (ddof 0) and least-squares slope per cycle.

    Each output row depends only on its own trailing window, computed the same way
    whatever precedes it, so truncated and full histories give identical values: the sums
    run over the window's rows from the newest to the oldest with elementwise operations
    only (no reductions whose order could depend on the array's shape).
    `groups` (one id per row, rows of a group contiguous) stops a window at its group's
    first row: several machines in one call give exactly their one-by-one values.
    """
    n, width = signals.shape
    if n == 0:
        empty = np.zeros((0, width))
        return empty, empty, empty
    count = np.minimum(_positions_in_group(n, groups) + 1, window)
    padded = np.vstack([np.zeros((window - 1, width)), signals])
    padded_x = np.concatenate([np.zeros(window - 1), cycles])
    lagged = [  # (values, cycles) `lag` rows back, newest first; zeros before the first row
        (padded[window - 1 - lag : n + window - 1 - lag], padded_x[window - 1 - lag :][:n])
        for lag in range(window)
    ]
    mean, std, slope = _window_stats(lagged, np.full(n, float(window)))
    short = np.flatnonzero(count < window)  # windows cut by the group's (or frame's) start
    if len(short):
        short_count = count[short]
        keep = [lag < short_count for lag in range(window)]
        short_lagged = [
            (np.where(kept[:, None], values[short], 0.0), np.where(kept, x[short], 0.0))
            for kept, (values, x) in zip(keep, lagged, strict=True)
        ]
        stats = _window_stats(short_lagged, short_count.astype(np.float64), keep)
        mean[short], std[short], slope[short] = stats
    return mean, std, slope


def _positions_in_group(n: int, groups: np.ndarray | None) -> np.ndarray:
    """Index of each row within its group (the whole frame when `groups` is None)."""
    index = np.arange(n)
    if groups is None:
        return index
    starts = np.r_[True, groups[1:] != groups[:-1]]
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def _window_stats(lagged, count: np.ndarray, keep=None):
    """Mean, std and slope over `lagged` rows (newest first); `keep[lag]` masks the lags
    outside a short window (their values arrive as zeros)."""
    total = lagged[0][0].copy()
    total_x = lagged[0][1].copy()
    for values, x in lagged[1:]:
        total += values
        total_x += x
    mean = total / count[:, None]
    x_mean = total_x / count
    squares = np.zeros_like(mean)
    cross = np.zeros_like(mean)
    x_squares = np.zeros_like(x_mean)
    product = np.empty_like(mean)
    for lag, (values, x) in enumerate(lagged):
        deviation = values - mean
        x_dev = x - x_mean
        if keep is not None:
            deviation[~keep[lag]] = 0.0
            x_dev[~keep[lag]] = 0.0
        squares += np.multiply(deviation, deviation, out=product)
        cross += np.multiply(deviation, x_dev[:, None], out=product)
        x_squares += x_dev * x_dev
    std = np.sqrt(squares / count[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(x_squares[:, None] > 0, cross / x_squares[:, None], 0.0)
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
    inputs = _input_arrays(frame, config)
    parts = [
        _features_of_rows(inputs, slice(start, stop), groups[start:stop], condition_model, config)
        for start, stop in itertools.pairwise(bounds)
    ]
    if not parts:
        return compute_features(frame, condition_model, config)
    return pd.DataFrame({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})


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


def _input_arrays(frame: pd.DataFrame, config: FeatureConfig) -> dict[str, np.ndarray]:
    """The columns the features need, as numpy arrays (converted once per frame)."""
    arrays = {
        "machine_id": frame["machine_id"].to_numpy(),
        "cycle": frame["cycle"].to_numpy(),
        "settings": frame[list(SETTING_NAMES)].to_numpy(dtype=np.float64),
        "sensors": frame[list(config.sensors)].to_numpy(dtype=np.float64),
    }
    if "rul" in frame.columns:
        arrays["rul"] = frame["rul"].to_numpy()
    return arrays


def _features_of_rows(
    inputs: dict, rows: slice, groups: np.ndarray | None, model: ConditionModel, config
) -> dict[str, np.ndarray]:
    """Feature columns of `rows` of `inputs` (sorted by machine and cycle); `groups` tells
    machines apart (None: all rows are one machine's). Elementwise arithmetic only, so a
    row's values do not depend on the other rows of the call or on the arrays' layout."""
    settings = inputs["settings"][rows]
    labels = model.assign(settings) if len(settings) else np.zeros(0, dtype=int)
    z = _normalise(inputs["sensors"][rows], labels, model)
    health = np.zeros(len(z))
    for index, sign in enumerate(model.health_signs):
        health += sign * z[:, index]
    health /= z.shape[1]
    cycle = inputs["cycle"][rows]
    columns: dict[str, np.ndarray] = {
        "machine_id": inputs["machine_id"][rows],
        "cycle": cycle,
        CONDITION: labels.astype(np.int32),
    }
    for index, name in enumerate(normalised_columns(config)):
        columns[name] = z[:, index]
    columns[HEALTH] = health
    signals = np.hstack([z, health[:, None]])
    names = [*config.sensors, HEALTH]
    for window in config.windows:
        mean, std, slope = _rolling_stats(signals, cycle.astype(np.float64), window, groups)
        for index, name in enumerate(names):
            columns[f"{name}_mean_{window}"] = mean[:, index]
            columns[f"{name}_std_{window}"] = std[:, index]
            columns[f"{name}_slope_{window}"] = slope[:, index]
    if "rul" in inputs:
        columns["rul"] = inputs["rul"][rows]
    return columns


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

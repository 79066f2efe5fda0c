"""Scoring a machine's latest window with the registry's champion (batch and speed).

`model_window` builds the model input exactly as training does (the last `window` feature
rows; a shorter history is padded with its first row). `ChampionWatcher` keeps the
champion loaded and reloads it when the registry's alias file names another version, so a
promotion is picked up without a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prognos.core.features import (
    SETTING_NAMES,
    ConditionModel,
    FeatureConfig,
    compute_features,
    min_history_length,
)
from prognos.core.registry import ALIASES_FILE, FilesystemRegistry, LoadedModel, RegistryError
from prognos.core.settings import Settings


@dataclass(frozen=True)
class ServingSpec:
    """What a model version needs as input, from its registry metadata."""

    condition_model: ConditionModel
    feature_config: FeatureConfig
    window: int
    input_columns: tuple[str, ...]

    @classmethod
    def from_metadata(cls, metadata: dict) -> ServingSpec:
        serving = metadata["serving"]
        return cls(
            condition_model=ConditionModel.from_json(metadata["condition_model"]),
            feature_config=FeatureConfig.from_dict(metadata["params"]["feature"]),
            window=int(serving["window"]),
            input_columns=tuple(serving["input_columns"]),
        )

    @property
    def history_needed(self) -> int:
        return min_history_length(self.feature_config, self.window)


def model_window(features: pd.DataFrame, input_columns, window: int) -> np.ndarray:
    """Shape (1, window, F): the last `window` rows by cycle, padded with the first row."""
    ordered = features.sort_values("cycle", kind="stable")
    values = ordered[list(input_columns)].to_numpy(dtype=np.float32)
    if len(values) < window:
        values = np.vstack([np.repeat(values[:1], window - len(values), axis=0), values])
    return values[-window:][None, :, :]


@dataclass
class Champion:
    model: LoadedModel
    spec: ServingSpec

    @property
    def version(self) -> str:
        return str(self.model.version)

    def predict_rul(self, window: np.ndarray) -> float:
        return float(np.asarray(self.model.predict(window)["rul"]).reshape(-1)[0])

    def predict_ruls(self, windows: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Predicted RUL of each window of an (n, window, F) array, in batches."""
        parts = [
            np.asarray(self.model.predict(windows[start : start + batch_size])["rul"]).reshape(-1)
            for start in range(0, len(windows), batch_size)
        ]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


class ChampionWatcher:
    """The current champion of one model, reloaded when its alias file changes."""

    def __init__(self, registry_root, model: str):
        self.registry = FilesystemRegistry(registry_root)
        self.model = model
        self._stamp: tuple | None = None
        self._champion: Champion | None = None

    def _alias_stamp(self) -> tuple | None:
        try:
            stat = os.stat(self.registry.model_dir(self.model) / ALIASES_FILE)
        except (FileNotFoundError, RegistryError):
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def current(self) -> Champion | None:
        """The champion (None when there is none); a cheap stat when nothing changed."""
        stamp = self._alias_stamp()
        if stamp != self._stamp:
            self._champion = self._load()
            self._stamp = stamp
        return self._champion

    def _load(self) -> Champion | None:
        try:
            version = self.registry.aliases(self.model).get("champion")
            if version is None:
                return None
            if self._champion is not None and self._champion.model.version == int(version):
                return self._champion
            loaded = self.registry.load(self.model, int(version))
        except RegistryError:
            return None
        return Champion(loaded, ServingSpec.from_metadata(loaded.metadata))


def score_latest_windows(champion: Champion, histories: pd.DataFrame) -> dict[str, float]:
    """Predicted RUL per machine from a frame of machines' recent readings (machine_id,
    cycle, settings, sensors): each machine's latest window, built as the speed layer
    builds it (features over its last `history_needed` cycles), scored in batches."""
    spec = champion.spec
    machines, windows = [], []
    for machine_id, history in histories.groupby("machine_id", sort=True):
        recent = history.sort_values("cycle", kind="stable").tail(spec.history_needed)
        features = compute_features(recent, spec.condition_model, spec.feature_config)
        windows.append(model_window(features, spec.input_columns, spec.window)[0])
        machines.append(machine_id)
    if not windows:
        return {}
    ruls = champion.predict_ruls(np.stack(windows))
    return dict(zip(machines, map(float, ruls), strict=True))


def scoring_input_columns(spec: ServingSpec) -> list[str]:
    """Reading columns `score_latest_windows` needs besides machine_id and cycle."""
    return [*SETTING_NAMES, *spec.feature_config.sensors]


_watchers: dict[tuple[str, str], ChampionWatcher] = {}


def champion_watcher(settings: Settings, model: str | None = None) -> ChampionWatcher:
    """One watcher per (registry, model) per process."""
    key = (str(settings.registry), model or settings.serving_model)
    if key not in _watchers:
        _watchers[key] = ChampionWatcher(*key)
    return _watchers[key]

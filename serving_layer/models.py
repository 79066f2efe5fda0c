"""Loaded models for prediction: champion and challenger per model, watched in the registry.

Predictions without a version go to the champion; a configurable share of them is also
scored by the challenger in the background (shadow), and the absolute difference of each
output is recorded. The watcher reloads when the registry's aliases change, so a newly
promoted champion serves without a restart.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from prognos.core.registry import ModelRegistry, RegistryError, UnknownVersionError

log = logging.getLogger(__name__)
SIGNATURE = "serving_default"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelNotFoundError(LookupError):
    """No such model or version is servable."""


@dataclass
class Servable:
    """One loaded model version and its serving signature."""

    name: str
    version: int
    signature: object
    metadata: dict

    @property
    def input_specs(self) -> dict:
        return dict(self.signature.structured_input_signature[1])

    @property
    def output_specs(self) -> dict:
        return dict(self.signature.structured_outputs)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        tensors = {k: tf.constant(v, dtype=self.input_specs[k].dtype) for k, v in inputs.items()}
        return {k: v.numpy() for k, v in self.signature(**tensors).items()}


@dataclass
class ShadowStats:
    """Champion vs challenger on shadow-scored traffic: mean and max absolute difference."""

    challenger: int | None = None
    calls: int = 0
    rows: int = 0
    abs_diff_sum: dict = field(default_factory=dict)
    abs_diff_max: dict = field(default_factory=dict)

    def add(self, champion: dict, challenger: dict) -> dict[str, np.ndarray]:
        self.calls += 1
        rows = len(next(iter(champion.values())))
        self.rows += rows
        diffs = {}
        for name in champion.keys() & challenger.keys():
            diff = np.abs(np.asarray(champion[name], float) - np.asarray(challenger[name], float))
            diffs[name] = diff
            self.abs_diff_sum[name] = self.abs_diff_sum.get(name, 0.0) + float(diff.sum())
            self.abs_diff_max[name] = max(self.abs_diff_max.get(name, 0.0), float(diff.max()))
        return diffs

    def to_dict(self) -> dict:
        return {
            "challenger_version": self.challenger,
            "shadow_calls": self.calls,
            "shadow_rows": self.rows,
            "mean_abs_disagreement": {
                k: v / max(1, self.rows) for k, v in sorted(self.abs_diff_sum.items())
            },
            "max_abs_disagreement": dict(sorted(self.abs_diff_max.items())),
        }


class ModelServer:
    """Champion + challenger of every registry model, kept current by `refresh()`."""

    def __init__(self, registry: ModelRegistry, shadow_share: float, metrics=None, seed=None):
        self.registry = registry
        self.shadow_share = shadow_share
        self.metrics = metrics
        self._random = random.Random(seed)
        self._loaded: dict[tuple[str, int], Servable] = {}
        self._aliases: dict[str, dict] = {}
        self._shadow: dict[str, ShadowStats] = {}
        self._lock = threading.Lock()
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._shadow_busy = threading.Semaphore(4)

    # ------------------------------------------------------------ loading

    def refresh(self) -> bool:
        """Load champion/challenger versions whose aliases changed; True when any did."""
        changed = False
        for name in self.registry.models():
            aliases = self.registry.aliases(name)
            wanted = {a: aliases.get(a) for a in ("champion", "challenger")}
            if self._aliases.get(name) == wanted:
                continue
            for version in (v for v in wanted.values() if v is not None):
                self._servable(name, int(version))
            self._aliases[name] = wanted
            self._retire_unused(name)
            changed = True
            log.info("model %s: champion %s, challenger %s", name, *wanted.values())
        return changed

    def _servable(self, name: str, version: int) -> Servable:
        key = (name, version)
        with self._lock:
            found = self._loaded.get(key)
        if found is not None:
            return found
        loaded = self.registry.load(name, version)
        servable = Servable(name, version, loaded.signature, loaded.metadata)
        with self._lock:
            self._loaded[key] = servable
        return servable

    def _retire_unused(self, name: str) -> None:
        keep = {v for v in self._aliases.get(name, {}).values() if v is not None}
        with self._lock:
            for key in [k for k in self._loaded if k[0] == name and k[1] not in keep]:
                del self._loaded[key]

    @property
    def ready(self) -> bool:
        return any(a.get("champion") is not None for a in self._aliases.values())

    # ------------------------------------------------------------ serving

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a version, a label (champion/challenger), or the champion."""
        if not MODEL_NAME.match(name):
            raise ModelNotFoundError(f"Servable not found for request: model {name[:64]!r}")
        if version is None:
            version = self._aliases.get(name, {}).get(label or "champion")
            if version is None:
                what = f"label {label!r}" if label else "champion"
                raise ModelNotFoundError(f"Servable not found for request: model {name!r} {what}")
        try:
            return self._servable(name, int(version))
        except (UnknownVersionError, RegistryError):
            raise ModelNotFoundError(
                f"Servable not found for request: model {name!r} version {version}"
            ) from None

    def predict(self, name: str, inputs: dict, version: int | None = None) -> dict:
        servable = self.resolve(name, version)
        outputs = servable.predict(inputs)
        if self.metrics is not None:
            self.metrics.predictions.labels(name, str(servable.version)).inc()
        if version is None and self._random.random() < self.shadow_share:
            self._shadow_score(name, inputs, outputs)
        return outputs

    def _shadow_score(self, name: str, inputs: dict, champion_outputs: dict) -> None:
        challenger = self._aliases.get(name, {}).get("challenger")
        if challenger is None or not self._shadow_busy.acquire(blocking=False):
            return  # no challenger, or shadow scoring is behind: skip rather than queue
        future = self._shadow_pool.submit(self._compare, name, challenger, inputs, champion_outputs)
        future.add_done_callback(lambda _: self._shadow_busy.release())

    def _compare(self, name: str, version: int, inputs: dict, champion_outputs: dict) -> None:
        try:
            outputs = self._servable(name, version).predict(inputs)
        except Exception as error:  # shadow scoring never fails a request
            log.warning("shadow scoring %s v%s failed: %s", name, version, error)
            return
        with self._lock:
            stats = self._shadow.get(name)
            if stats is None or stats.challenger != version:
                stats = self._shadow[name] = ShadowStats(challenger=version)
            diffs = stats.add(champion_outputs, outputs)
        if self.metrics is not None:
            for output, diff in diffs.items():
                for value in np.ravel(diff):
                    self.metrics.shadow_disagreement.labels(name, output).observe(float(value))

    def wait_for_shadow(self) -> None:
        """Block until queued shadow scoring is done (for tests and shutdown)."""
        self._shadow_pool.submit(lambda: None).result()

    # ------------------------------------------------------------ describing

    def models(self) -> list[dict]:
        return [self.describe(name, brief=True) for name in self.registry.models()]

    def describe(self, name: str, brief: bool = False) -> dict:
        versions = self._versions(name)
        if not versions:
            raise ModelNotFoundError(f"unknown model {name[:64]!r}")
        aliases = self.registry.aliases(name)
        loaded = self._aliases.get(name, {})
        info = {
            "name": name,
            "champion": aliases.get("champion"),
            "challenger": aliases.get("challenger"),
            "loaded": loaded,
            "versions": versions,
        }
        if brief:
            return info
        with self._lock:
            shadow = self._shadow.get(name, ShadowStats(challenger=loaded.get("challenger")))
            info["shadow"] = shadow.to_dict()
        info["shadow"]["share"] = self.shadow_share
        info["champion_history"] = aliases.get("champion_history", [])
        info["version_details"] = [self._version_info(name, v) for v in versions]
        info["model_version_status"] = [  # TF Serving's GET /v1/models/{name} shape
            {
                "version": str(v),
                "state": "AVAILABLE" if v in loaded.values() else "END",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
        return info

    def _versions(self, name: str) -> list[int]:
        if not MODEL_NAME.match(name):  # never let a request name a path the registry opens
            return []
        try:
            return self.registry.versions(name)
        except (RegistryError, OSError):
            return []

    def _version_info(self, name: str, version: int) -> dict:
        metadata = self.registry.metadata(name, version)
        keep = ("created_at", "metrics", "code_revision", "training_data", "params", "lineage")
        return {"version": version, **{k: metadata[k] for k in keep if k in metadata}}

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)

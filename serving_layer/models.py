"""Loaded models for prediction: champion and challenger per model, watched in the registry.

Predictions without a version go to the champion; a configurable share of them is also
scored by the challenger in the background (shadow). For every shadow-scored row the
absolute difference of each output is recorded (disagreement) and, when the request named
the row's machine and cycle and the true RUL is known there (replayed C-MAPSS test
machines), the error of both models against the truth. The watcher reloads when the
registry's aliases change, so a newly promoted champion serves without a restart.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from prognos.core.errors import InvalidArgumentError, NotFoundError, PrognosError
from prognos.core.registry import ModelRegistry, RegistryError, UnknownVersionError

log = logging.getLogger(__name__)
SIGNATURE = "serving_default"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUL_OUTPUT = "rul"  # the output compared with the true RUL
ROLES = ("champion", "challenger")

MachineRef = tuple[str, int]  # (machine id, cycle) a predict row was made for
TrueRul = Callable[[str, int], "float | None"]


class ModelNotFoundError(NotFoundError, LookupError):
    """No such model, version or label is servable."""


@dataclass(frozen=True)
class VersionStatus:
    """One version's state as TF Serving's GetModelStatus reports it (ModelVersionStatus)."""

    version: int
    state: str  # a ModelVersionStatus.State name: AVAILABLE, LOADING or END
    error_code: str = "OK"  # a canonical code name, like TF Serving's StatusProto
    error_message: str = ""

    def to_dict(self) -> dict:
        """The JSON of TF Serving's REST model status (version as a string, like int64s)."""
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


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
class ErrorSums:
    """Running sums of (prediction - truth) for one model on shadow-scored rows."""

    rows: int = 0
    error_sum: float = 0.0
    abs_sum: float = 0.0
    squared_sum: float = 0.0

    def add(self, errors: np.ndarray) -> None:
        self.rows += len(errors)
        self.error_sum += float(errors.sum())
        self.abs_sum += float(np.abs(errors).sum())
        self.squared_sum += float((errors**2).sum())

    def to_dict(self) -> dict:
        if not self.rows:
            return {"rows": 0, "rmse": None, "mae": None, "bias": None}
        return {
            "rows": self.rows,
            "rmse": (self.squared_sum / self.rows) ** 0.5,
            "mae": self.abs_sum / self.rows,
            "bias": self.error_sum / self.rows,
        }


@dataclass
class ShadowStats:
    """Champion vs challenger on shadow-scored traffic: their disagreement per output, and
    the error of each against the true RUL on the rows where it is known."""

    champion: int | None = None
    challenger: int | None = None
    calls: int = 0
    rows: int = 0
    abs_diff_sum: dict = field(default_factory=dict)
    abs_diff_max: dict = field(default_factory=dict)
    vs_truth: dict = field(default_factory=lambda: {role: ErrorSums() for role in ROLES})

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

    def add_truth(self, errors: dict[str, np.ndarray]) -> None:
        for role, values in errors.items():
            self.vs_truth[role].add(values)

    def to_dict(self) -> dict:
        return {
            "champion_version": self.champion,
            "challenger_version": self.challenger,
            "shadow_calls": self.calls,
            "shadow_rows": self.rows,
            "mean_abs_disagreement": {
                k: v / max(1, self.rows) for k, v in sorted(self.abs_diff_sum.items())
            },
            "max_abs_disagreement": dict(sorted(self.abs_diff_max.items())),
            "error_vs_truth": {role: sums.to_dict() for role, sums in self.vs_truth.items()},
        }


def errors_vs_truth(
    outputs: dict[str, dict], machines: Sequence[MachineRef | None] | None, true_rul: TrueRul
) -> dict[str, np.ndarray]:
    """Per role: predicted minus true RUL on the rows whose truth is known ({} if none)."""
    if not machines or any(RUL_OUTPUT not in out for out in outputs.values()):
        return {}
    truths = [true_rul(*ref) if ref is not None else None for ref in machines]
    known = [i for i, truth in enumerate(truths) if truth is not None]
    if not known:
        return {}
    actual = np.asarray([truths[i] for i in known], float)
    return {
        role: np.asarray(out[RUL_OUTPUT], float).reshape(len(machines), -1)[known, 0] - actual
        for role, out in outputs.items()
    }


class ModelServer:
    """Champion + challenger of every registry model, kept current by `refresh()`."""

    def __init__(
        self,
        registry: ModelRegistry,
        shadow_share: float,
        metrics=None,
        seed=None,
        true_rul: TrueRul | None = None,
    ):
        self.registry = registry
        self.shadow_share = shadow_share
        self.metrics = metrics
        self.true_rul = true_rul or (lambda machine_id, cycle: None)
        self._random = random.Random(seed)
        self._loaded: dict[tuple[str, int], Servable] = {}
        self._loading: set[tuple[str, int]] = set()
        self._load_errors: dict[tuple[str, int], Exception] = {}  # the last failed load
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
            if found is None:
                self._loading.add(key)
        if found is not None:
            return found
        try:
            loaded = self.registry.load(name, version)
        except Exception as error:
            with self._lock:
                self._loading.discard(key)
                if not isinstance(error, UnknownVersionError):  # only versions that exist
                    self._load_errors[key] = error
            raise
        servable = Servable(name, version, loaded.signature, loaded.metadata)
        with self._lock:
            self._loading.discard(key)
            self._load_errors.pop(key, None)
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

    def predict(
        self,
        name: str,
        inputs: dict,
        version: int | None = None,
        machines: Sequence[MachineRef | None] | None = None,
    ) -> dict:
        """Outputs of `version` (default: the champion). `machines` names, per row, the
        machine and cycle the row is for (optional), so shadow scoring can use the truth."""
        servable = self.resolve(name, version)
        outputs = servable.predict(inputs)
        if self.metrics is not None:
            self.metrics.predictions.labels(name, str(servable.version)).inc()
        if version is None and self.shadow_share and self._random.random() < self.shadow_share:
            self._shadow_score(name, servable.version, inputs, outputs, machines)
        return outputs

    def _shadow_score(self, name, champion, inputs, champion_outputs, machines) -> None:
        challenger = self._aliases.get(name, {}).get("challenger")
        if challenger is None or not self._shadow_busy.acquire(blocking=False):
            return  # no challenger, or shadow scoring is behind: skip rather than queue
        versions = (champion, int(challenger))
        future = self._shadow_pool.submit(
            self._compare, name, versions, inputs, champion_outputs, machines
        )
        future.add_done_callback(lambda _: self._shadow_busy.release())

    def _compare(self, name, versions, inputs, champion_outputs, machines) -> None:
        try:
            outputs = self._servable(name, versions[1]).predict(inputs)
            errors = errors_vs_truth(
                {"champion": champion_outputs, "challenger": outputs}, machines, self.true_rul
            )
        except Exception as error:  # shadow scoring never fails a request
            log.warning("shadow scoring %s v%s failed: %s", name, versions[1], error)
            return
        with self._lock:
            stats = self._shadow.get(name)
            if stats is None or (stats.champion, stats.challenger) != versions:
                stats = self._shadow[name] = ShadowStats(*versions)
            diffs = stats.add(champion_outputs, outputs)
            stats.add_truth(errors)
            summary = stats.to_dict()["error_vs_truth"]
        if self.metrics is not None:
            self.metrics.shadow_scored(name, diffs, errors, summary)

    def wait_for_shadow(self) -> None:
        """Block until queued shadow scoring is done (for tests and shutdown)."""
        self._shadow_pool.submit(lambda: None).result()

    # ------------------------------------------------------------ status

    def version_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """TF Serving's GetModelStatus: every registry version of the model, or the one a
        version or label names. A version is AVAILABLE while loaded, LOADING while its
        SavedModel loads, else END (with the error of its last failed load, if any).
        Unloading only drops a reference, so UNLOADING is never seen; a version is not
        listed before its registry write completes, so START is never seen either."""
        if not name:
            raise InvalidArgumentError("Missing model name in request.")
        versions = self._versions(name)
        if not versions:
            raise ModelNotFoundError(f"Could not find any versions of model {name[:64]}")
        if label is not None:
            version = self._label_version(name, label)
        if version is not None:
            if version not in versions:
                raise ModelNotFoundError(f"Could not find version {version} of model {name}")
            versions = [version]
        return [self._status(name, v) for v in versions]

    def _label_version(self, name: str, label: str) -> int:
        if label not in ROLES:
            raise ModelNotFoundError(
                f"Could not find label {label[:64]!r} of model {name}: "
                f"the labels are {', '.join(ROLES)}"
            )
        version = self._aliases.get(name, {}).get(label)
        if version is None:
            raise ModelNotFoundError(f"Could not find label {label!r} of model {name}: unset")
        return int(version)

    def _status(self, name: str, version: int) -> VersionStatus:
        key = (name, version)
        with self._lock:
            if key in self._loading:
                return VersionStatus(version, "LOADING")
            if key in self._loaded:
                return VersionStatus(version, "AVAILABLE")
            error = self._load_errors.get(key)
        if error is None:
            return VersionStatus(version, "END")
        if isinstance(error, PrognosError):
            return VersionStatus(version, "END", error.grpc_code, error.one_line()[:500])
        return VersionStatus(version, "END", "UNKNOWN", type(error).__name__)  # never internals

    # ------------------------------------------------------------ describing

    def models(self) -> list[dict]:
        return [self.describe(name, brief=True) for name in self.registry.models()]

    def describe(self, name: str, brief: bool = False) -> dict:
        versions = self._versions(name)
        if not versions:
            raise ModelNotFoundError(f"Could not find any versions of model {name[:64]}")
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
            shadow = self._shadow.get(name) or ShadowStats(
                loaded.get("champion"), loaded.get("challenger")
            )
            info["shadow"] = shadow.to_dict()
        info["shadow"]["share"] = self.shadow_share
        info["champion_history"] = aliases.get("champion_history", [])
        info["version_details"] = [self._version_info(name, v) for v in versions]
        info["model_version_status"] = [  # TF Serving's GET /v1/models/{name} shape
            status.to_dict() for status in self.version_status(name)
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

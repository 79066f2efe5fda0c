"""Model registry: versioned SavedModels in TF Serving's layout, metadata and aliases.

Layout (a real ``tensorflow_model_server --model_base_path=<root>/<model>`` serves it)::

    <root>/<model>/<version>/saved_model.pb, variables/, metadata.json, COMPLETE
    <root>/<model>/aliases.json        champion / challenger, the champion history, and a
                                       version counter of alias changes
    <root>/<model>/aliases.lock        held across each read-modify-write of aliases.json
    <root>/<model>/.staging-*          in-progress writes (TF Serving ignores non-integers)

A version is written into a staging directory and renamed to its integer name in one
step, so readers never see a half-written version. An alias change (promote, challenger,
rollback) is a read-modify-write under the model's lock file, and aliases.json is replaced
atomically, so concurrent writers (the API's promote, the retrain DAG's bless) lose no
update; `expected_version` makes a change conditional on the aliases the caller read.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prognos.core.errors import AliasConflictError, FailedPreconditionError, NotFoundError
from prognos.core.locks import exclusive
from prognos.core.settings import PROJECT_ROOT

ALIASES = ("champion", "challenger")
COMPLETE_MARKER = "COMPLETE"
METADATA_FILE = "metadata.json"
ALIASES_FILE = "aliases.json"
ALIASES_LOCK_FILE = "aliases.lock"
# an alias change holds the lock for milliseconds; waiting longer means a writer hangs
ALIASES_LOCK_TIMEOUT_S = 30.0
BLESS_ATTEMPTS = 50
STAGING_PREFIX = ".staging-"
VALIDATION_METRIC = ("validation", "rmse")


class RegistryError(FailedPreconditionError):
    """A registry operation could not be done."""


class UnknownVersionError(NotFoundError, RegistryError):
    """The model or version does not exist in the registry."""


class NoChampionError(RegistryError):
    """The model has no champion yet."""


class CorruptVersionError(RegistryError):
    """A version directory is damaged (missing SavedModel or metadata)."""


@dataclass(frozen=True)
class BlessDecision:
    version: int
    alias: str  # "champion" or "challenger"
    candidate_metric: float
    champion_metric: float | None
    margin: float
    reason: str


@dataclass
class LoadedModel:
    """A registry version loaded for scoring: `predict(window)` -> {"rul", "fail_prob"}."""

    model: str
    version: int
    metadata: dict
    signature: Callable

    def predict(self, window) -> dict:
        import tensorflow as tf

        outputs = self.signature(window=tf.constant(window, dtype=tf.float32))
        return {name: value.numpy() for name, value in outputs.items()}


class ModelRegistry(abc.ABC):
    """What every registry backend offers; the contract test runs against each."""

    @abc.abstractmethod
    def register(self, model: str, write: Callable[[Path], None], metadata: dict) -> int:
        """Write a new version atomically; `write(directory)` puts the SavedModel there."""

    @abc.abstractmethod
    def versions(self, model: str) -> list[int]:
        """Complete versions, ascending."""

    @abc.abstractmethod
    def metadata(self, model: str, version: int) -> dict: ...

    @abc.abstractmethod
    def aliases(self, model: str) -> dict:
        """{"champion": int|None, "challenger": int|None, "champion_history": [...],
        "version": int (alias changes so far), "events": [...]}."""

    # Alias changes are atomic. With `expected_version`, the change is made only if the
    # aliases are still at that version, else AliasConflictError (re-read and retry).

    @abc.abstractmethod
    def promote(self, model: str, version: int, expected_version: int | None = None) -> None:
        """Make `version` the champion; the previous champion can be restored by rollback."""

    @abc.abstractmethod
    def set_challenger(
        self, model: str, version: int, expected_version: int | None = None
    ) -> None: ...

    @abc.abstractmethod
    def rollback(self, model: str, expected_version: int | None = None) -> int:
        """Restore the previous champion in one step; returns it."""

    @abc.abstractmethod
    def load(self, model: str, ref: int | str = "champion") -> LoadedModel: ...

    def models(self) -> list[str]:
        return []

    def resolve(self, model: str, ref: int | str) -> int:
        """A version number for an alias name or a version (int or digit string)."""
        if isinstance(ref, str) and not ref.isdigit():
            if ref not in ALIASES:
                raise UnknownVersionError(f"unknown alias {ref!r}: expected one of {ALIASES}")
            version = self.aliases(model).get(ref)
            if version is None:
                if ref == "champion":
                    raise NoChampionError(f"model {model!r} has no champion yet")
                raise UnknownVersionError(f"model {model!r} has no {ref}")
            return int(version)
        version = int(ref)
        if version not in self.versions(model):
            raise UnknownVersionError(f"model {model!r} has no version {version}")
        return version

    def champion(self, model: str) -> int:
        return self.resolve(model, "champion")

    def bless(self, model: str, version: int, margin: float = 0.0) -> BlessDecision:
        """Champion if `version` beats the champion's RMSE by `margin`, else challenger.
        The decision holds for the aliases it was made on: if they change before it is
        written (a promote meanwhile), it is made again on the new ones."""
        for _ in range(BLESS_ATTEMPTS):
            with contextlib.suppress(AliasConflictError):
                return self._bless_once(model, version, margin)
        raise AliasConflictError(
            f"could not bless {model} version {version}: its aliases changed during each "
            f"of {BLESS_ATTEMPTS} attempts"
        )

    def _bless_once(self, model: str, version: int, margin: float) -> BlessDecision:
        candidate = validation_metric(self.metadata(model, version))
        aliases = self.aliases(model)
        current, seen = aliases.get("champion"), aliases_version(aliases)
        if current is None:
            self.promote(model, version, expected_version=seen)
            return BlessDecision(version, "champion", candidate, None, margin, "no champion yet")
        incumbent = validation_metric(self.metadata(model, current))
        if candidate < incumbent - margin:
            self.promote(model, version, expected_version=seen)
            reason = f"validation RMSE {candidate:.3f} < {incumbent:.3f} - {margin}"
            return BlessDecision(version, "champion", candidate, incumbent, margin, reason)
        self.set_challenger(model, version, expected_version=seen)
        reason = f"validation RMSE {candidate:.3f} does not beat {incumbent:.3f} - {margin}"
        return BlessDecision(version, "challenger", candidate, incumbent, margin, reason)


def aliases_version(aliases: dict) -> int:
    """The number of alias changes so far (files written before the counter existed
    recorded one event per change)."""
    return int(aliases.get("version", len(aliases.get("events", []))))


def check_expected_version(model: str, aliases: dict, expected_version: int | None) -> None:
    current = aliases_version(aliases)
    if expected_version is not None and expected_version != current:
        raise AliasConflictError(
            f"the aliases of {model!r} are at version {current}, not the expected "
            f"{expected_version}: another writer changed them; re-read and retry"
        )


def validation_metric(metadata: dict) -> float:
    try:
        value = metadata["metrics"][VALIDATION_METRIC[0]][VALIDATION_METRIC[1]]
        return float(value)
    except (KeyError, TypeError, ValueError):
        raise RegistryError(
            f"version {metadata.get('version')} records no metrics.validation.rmse"
        ) from None


class FilesystemRegistry(ModelRegistry):
    """The registry on a local (or mounted) filesystem, in TF Serving's layout."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ---------------------------------------------------------- paths

    def model_dir(self, model: str) -> Path:
        if not model or "/" in model or model.startswith(".") or model.isdigit():
            raise RegistryError(f"invalid model name {model!r}")
        return self.root / model

    def version_dir(self, model: str, version: int) -> Path:
        return self.model_dir(model) / str(int(version))

    # ---------------------------------------------------------- reading

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, model: str) -> list[int]:
        directory = self.model_dir(model)
        if not directory.is_dir():
            return []
        found = [
            int(entry.name)
            for entry in directory.iterdir()
            if entry.name.isdigit() and int(entry.name) > 0
            if (entry / COMPLETE_MARKER).is_file()
        ]
        return sorted(found)

    def metadata(self, model: str, version: int) -> dict:
        directory = self._existing_version(model, version)
        try:
            return json.loads((directory / METADATA_FILE).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CorruptVersionError(
                f"{model} version {version}: unreadable {METADATA_FILE} ({error})"
            ) from None

    def aliases(self, model: str) -> dict:
        path = self.model_dir(model) / ALIASES_FILE
        if not path.is_file():
            aliases = {"champion": None, "challenger": None, "champion_history": [], "events": []}
        else:
            try:
                aliases = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise RegistryError(f"{path} is not valid JSON: {error}") from None
        return {**aliases, "version": aliases_version(aliases)}

    def load(self, model: str, ref: int | str = "champion") -> LoadedModel:
        version = self.resolve(model, ref)
        metadata = self.metadata(model, version)
        directory = self._check_saved_model(model, version)
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(directory))
            signature = loaded.signatures["serving_default"]
        except Exception as error:
            raise CorruptVersionError(
                f"{model} version {version}: SavedModel does not load ({type(error).__name__})"
            ) from None
        signature._prognos_keepalive = loaded  # the signature needs its module alive
        return LoadedModel(model, version, metadata, signature)

    # ---------------------------------------------------------- writing

    def register(self, model: str, write: Callable[[Path], None], metadata: dict) -> int:
        directory = self.model_dir(model)
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            write(staging)
            if not (staging / "saved_model.pb").is_file():
                raise RegistryError("the writer produced no saved_model.pb")
            return self._publish(model, staging, metadata)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _publish(self, model: str, staging: Path, metadata: dict) -> int:
        for _ in range(100):
            version = self._next_version(model)
            record = {
                **metadata,
                "model": model,
                "version": version,
                "created_at": datetime.now(UTC).isoformat(),
                "code_revision": metadata.get("code_revision") or code_revision(),
            }
            (staging / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
            (staging / COMPLETE_MARKER).write_text(record["created_at"] + "\n")
            _fsync_tree(staging)
            try:
                os.rename(staging, self.version_dir(model, version))
            except OSError:
                continue  # another writer took this number; try the next one
            _fsync_dir(self.model_dir(model))
            return version
        raise RegistryError(f"could not allocate a version for {model!r}")

    def _next_version(self, model: str) -> int:
        numbers = [int(p.name) for p in self.model_dir(model).iterdir() if p.name.isdigit()]
        return max(numbers, default=0) + 1

    def promote(self, model: str, version: int, expected_version: int | None = None) -> None:
        version = self.resolve(model, version)
        self._check_saved_model(model, version)
        with self._aliases_locked(model, expected_version) as aliases:
            previous = aliases.get("champion")
            if previous == version:
                return
            if previous is not None:
                aliases["champion_history"].append(previous)
            aliases["champion"] = version
            if aliases.get("challenger") == version:
                aliases["challenger"] = None
            self._write_aliases(model, aliases, "promote", version)

    def set_challenger(self, model: str, version: int, expected_version: int | None = None) -> None:
        version = self.resolve(model, version)
        self._check_saved_model(model, version)
        with self._aliases_locked(model, expected_version) as aliases:
            aliases["challenger"] = version
            self._write_aliases(model, aliases, "challenger", version)

    def rollback(self, model: str, expected_version: int | None = None) -> int:
        with self._aliases_locked(model, expected_version) as aliases:
            if aliases.get("champion") is None:
                raise NoChampionError(f"model {model!r} has no champion to roll back")
            if not aliases["champion_history"]:
                raise RegistryError(f"model {model!r} has no previous champion to roll back to")
            previous = aliases["champion_history"][-1]
            self._check_saved_model(model, previous)
            aliases["champion_history"].pop()
            aliases["champion"] = previous
            self._write_aliases(model, aliases, "rollback", previous)
            return previous

    @contextlib.contextmanager
    def _aliases_locked(self, model: str, expected_version: int | None):
        """The model's aliases, read under its lock, which is held until the block ends
        (so the write in the block is based on what no one else has changed)."""
        directory = self.model_dir(model)
        if not directory.is_dir():
            raise UnknownVersionError(f"model {model!r} has no versions")
        lock = directory / ALIASES_LOCK_FILE
        with exclusive(lock, f"alias change of {model}", ALIASES_LOCK_TIMEOUT_S, RegistryError):
            aliases = self.aliases(model)
            check_expected_version(model, aliases, expected_version)
            yield aliases

    def _write_aliases(self, model: str, aliases: dict, event: str, version: int) -> None:
        aliases.setdefault("events", []).append(
            {"event": event, "version": version, "at": datetime.now(UTC).isoformat()}
        )
        aliases["version"] = aliases_version(aliases) + 1
        path = self.model_dir(model) / ALIASES_FILE
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".aliases-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(aliases, stream, indent=2)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        _fsync_dir(path.parent)

    def clean_staging(self, model: str) -> list[str]:
        """Remove abandoned staging directories (from killed writers); returns their names."""
        directory = self.model_dir(model)
        removed = (
            [p.name for p in directory.glob(f"{STAGING_PREFIX}*")] if directory.is_dir() else []
        )
        for name in removed:
            shutil.rmtree(directory / name, ignore_errors=True)
        return removed

    # ---------------------------------------------------------- checks

    def _existing_version(self, model: str, version: int) -> Path:
        directory = self.version_dir(model, version)
        if not directory.is_dir():
            raise UnknownVersionError(f"model {model!r} has no version {version}")
        if not (directory / COMPLETE_MARKER).is_file():
            raise CorruptVersionError(f"{model} version {version} is incomplete (no marker)")
        return directory

    def _check_saved_model(self, model: str, version: int) -> Path:
        directory = self._existing_version(model, version)
        missing = [
            name
            for name in ("saved_model.pb", "variables", METADATA_FILE)
            if not (directory / name).exists()
        ]
        if missing:
            raise CorruptVersionError(
                f"{model} version {version} is corrupted: missing {', '.join(missing)}"
            )
        return directory


def code_revision() -> str:
    """The git commit of the code, or 'unknown' outside a git checkout."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision or "unknown"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError), open(path, "rb") as stream:
                os.fsync(stream.fileno())
    _fsync_dir(directory)

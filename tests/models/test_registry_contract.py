"""Contract of every ModelRegistry implementation (parametrised by `make_registry`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from model_helpers import metadata_with, write_constant_saved_model

from prognos.core.errors import AliasConflictError
from prognos.core.registry import (
    CorruptVersionError,
    NoChampionError,
    RegistryError,
    UnknownVersionError,
)
from prognos.core.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit

MODEL = "rul_test"


def register(registry, rmse: float, rul: float | None = None) -> int:
    return registry.register(
        MODEL, write_constant_saved_model(rul if rul is not None else rmse), metadata_with(rmse)
    )


def test_versions_are_consecutive_integers_in_tf_serving_layout(make_registry, tmp_path):
    registry = make_registry()
    assert [register(registry, 20.0), register(registry, 18.0)] == [1, 2]
    assert registry.versions(MODEL) == [1, 2]
    assert (tmp_path / "registry" / MODEL / "2" / "saved_model.pb").is_file()
    metadata = registry.metadata(MODEL, 2)
    assert metadata["version"] == 2 and metadata["created_at"] and metadata["code_revision"]


def test_load_gives_a_callable_signature(make_registry):
    registry = make_registry()
    version = register(registry, 12.0, rul=42.0)
    registry.promote(MODEL, version)
    loaded = registry.load(MODEL, "champion")
    outputs = loaded.predict(np.zeros((3, 4, 3), dtype=np.float32))
    assert loaded.version == version
    np.testing.assert_allclose(outputs["rul"], [42.0, 42.0, 42.0])
    assert outputs["fail_prob"].shape == (3,)


def test_first_blessed_becomes_champion_and_worse_stays_challenger(make_registry):
    registry = make_registry()
    first, worse = register(registry, 15.0), register(registry, 16.0)
    assert registry.bless(MODEL, first).alias == "champion"
    decision = registry.bless(MODEL, worse, margin=0.0)
    assert decision.alias == "challenger"
    aliases = registry.aliases(MODEL)
    assert aliases["champion"] == first and aliases["challenger"] == worse


def test_a_better_candidate_must_beat_the_margin(make_registry):
    registry = make_registry()
    registry.bless(MODEL, register(registry, 15.0))
    slightly_better = register(registry, 14.8)
    assert registry.bless(MODEL, slightly_better, margin=0.5).alias == "challenger"
    clearly_better = register(registry, 14.0)
    assert registry.bless(MODEL, clearly_better, margin=0.5).alias == "champion"
    assert registry.champion(MODEL) == clearly_better


def test_promote_and_rollback_survive_a_new_registry_object(make_registry):
    registry = make_registry()
    one, two, three = (register(registry, value) for value in (15.0, 14.0, 13.0))
    registry.promote(MODEL, one)
    registry.promote(MODEL, two)
    registry.promote(MODEL, three)
    restarted = make_registry()
    assert restarted.champion(MODEL) == three
    assert restarted.rollback(MODEL) == two
    assert make_registry().rollback(MODEL) == one
    assert make_registry().champion(MODEL) == one
    with pytest.raises(RegistryError, match="no previous champion"):
        make_registry().rollback(MODEL)


def test_missing_champion_is_a_clear_error(make_registry):
    registry = make_registry()
    register(registry, 15.0)
    with pytest.raises(NoChampionError, match="no champion"):
        registry.load(MODEL, "champion")
    with pytest.raises(NoChampionError):
        registry.rollback(MODEL)


def test_unknown_version_and_alias_are_clear_errors(make_registry):
    registry = make_registry()
    register(registry, 15.0)
    with pytest.raises(UnknownVersionError, match="no version 9"):
        registry.promote(MODEL, 9)
    with pytest.raises(UnknownVersionError, match="unknown alias"):
        registry.load(MODEL, "best")
    assert registry.aliases(MODEL)["champion"] is None


def test_corrupted_version_is_refused_and_aliases_unchanged(make_registry, tmp_path):
    registry = make_registry()
    good, damaged = register(registry, 15.0), register(registry, 10.0)
    registry.promote(MODEL, good)
    before = registry.aliases(MODEL)
    (tmp_path / "registry" / MODEL / str(damaged) / "saved_model.pb").unlink()
    with pytest.raises(CorruptVersionError, match=r"missing saved_model\.pb"):
        registry.promote(MODEL, damaged)
    with pytest.raises(CorruptVersionError):
        registry.load(MODEL, damaged)
    (tmp_path / "registry" / MODEL / str(good) / "metadata.json").write_text("{broken")
    with pytest.raises(CorruptVersionError, match=r"unreadable metadata\.json"):
        registry.metadata(MODEL, good)
    assert make_registry().aliases(MODEL) == before


def test_a_failing_writer_leaves_no_version(make_registry, tmp_path):
    registry = make_registry()

    def broken(directory):
        (directory / "saved_model.pb").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.register(MODEL, broken, metadata_with(1.0))
    assert registry.versions(MODEL) == []
    assert [p.name for p in (tmp_path / "registry" / MODEL).iterdir()] == []


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prognos.core.registry import FilesystemRegistry

    def write(directory):
        (directory / "saved_model.pb").write_bytes(b"half")
        Path(sys.argv[2]).write_text(str(directory))
        time.sleep(600)

    FilesystemRegistry(sys.argv[1]).register("rul_test", write, {"metrics": {}})
    """
)


def test_a_writer_killed_mid_write_leaves_no_listed_version(make_registry, tmp_path):
    registry = make_registry()
    if not hasattr(registry, "clean_staging"):
        pytest.skip("kill test drives the filesystem writer")
    register(registry, 15.0)
    ready = tmp_path / "ready"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path / "registry"), str(ready)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the writer never reached the middle of its write"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    restarted = make_registry()
    assert restarted.versions(MODEL) == [1]
    assert restarted.clean_staging(MODEL)  # the half-written staging directory
    assert register(restarted, 14.0) == 2
    assert json.loads((tmp_path / "registry" / MODEL / "2" / "metadata.json").read_text())


def test_invalid_model_names_are_refused(make_registry):
    with pytest.raises(RegistryError, match="invalid model name"):
        make_registry().versions("../escape")


def test_alias_changes_are_counted_and_a_stale_expected_version_is_refused(make_registry):
    registry = make_registry()
    one, two = register(registry, 15.0), register(registry, 14.0)
    assert registry.aliases(MODEL)["version"] == 0
    registry.promote(MODEL, one)
    registry.set_challenger(MODEL, two, expected_version=1)
    seen = registry.aliases(MODEL)
    assert seen["version"] == 2
    registry.promote(MODEL, two)  # another writer, after `seen` was read
    for stale_change in (
        lambda: registry.promote(MODEL, one, expected_version=seen["version"]),
        lambda: registry.set_challenger(MODEL, one, expected_version=seen["version"]),
        lambda: registry.rollback(MODEL, expected_version=seen["version"]),
    ):
        with pytest.raises(AliasConflictError, match="at version 3, not the expected 2"):
            stale_change()
    after = make_registry().aliases(MODEL)
    assert after["version"] == 3 and after["champion"] == two
    assert registry.rollback(MODEL, expected_version=3) == one
    assert make_registry().aliases(MODEL)["version"] == 4


RACING_WRITER = textwrap.dedent(
    """
    import sys, time
    from importlib import import_module
    from pathlib import Path

    module, _, name = sys.argv[1].partition(":")
    registry = getattr(import_module(module), name)(sys.argv[2])
    role, times, start = sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
    while not start.exists():
        time.sleep(0.005)
    for turn in range(times):
        if role == "promote":
            registry.promote("rul_test", 2 - turn % 2)  # 2, 1, 2, ...: each one a change
        else:
            assert registry.bless("rul_test", 3).alias == "challenger"
    """
)


def test_concurrent_promotes_and_blesses_lose_no_update(make_registry, tmp_path):
    """A promote (the API) and a bless (the retrain DAG) in two processes at once, many
    times: every change survives, in the events, the history and the version counter."""
    registry = make_registry()
    for rmse in (10.0, 11.0, 20.0):  # 3 never beats the champion: bless makes it challenger
        register(registry, rmse)
    registry.promote(MODEL, 1)
    times, start = 40, tmp_path / "start"
    implementation = f"{type(registry).__module__}:{type(registry).__qualname__}"
    arguments = [implementation, str(tmp_path / "registry")]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", RACING_WRITER, *arguments, role, str(times), str(start)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        for role in ("promote", "bless", "bless")
    ]
    try:
        start.touch()
        assert [writer.wait(timeout=300) for writer in writers] == [0, 0, 0]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    aliases = make_registry().aliases(MODEL)
    events = [event["event"] for event in aliases["events"]]
    assert events.count("promote") == 1 + times
    assert events.count("challenger") == 2 * times
    assert aliases["version"] == len(events) == 1 + 3 * times
    assert len(aliases["champion_history"]) == times
    assert (aliases["champion"], aliases["challenger"]) == (1, 3)

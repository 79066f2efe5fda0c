"""Tiny end-to-end training through the registry; export parity; bad datasets; CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from model_helpers import tiny_config

from models.dataset import DatasetError, FeatureFrames, make_windows, training_frame
from models.network import predict
from models.train import train_frames
from prognos.cli.main import cli
from prognos.core.registry import FilesystemRegistry, NoChampionError
from prognos.core.settings import get_settings


def test_tiny_model_trains_end_to_end_through_the_registry(tiny_training):
    registry, result = tiny_training
    assert result.version == 1 and result.decision.alias == "champion"
    assert result.metrics["test"]["rmse"] < 40  # sanity, not the target
    metadata = registry.metadata(result.model, result.version)
    assert metadata["feature_version"] and metadata["code_revision"]
    assert metadata["training_data"]["subset"] == "FD001"
    assert metadata["serving"]["input_columns"] == list(tiny_config().input_columns)
    assert metadata["condition_model"]["sensors"]
    for key in ("rmse", "mae", "score", "fails_within_30"):
        assert key in metadata["metrics"]["test"]
    version_dir = registry.version_dir(result.model, result.version)
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["published"] and "prognos" in (version_dir / "model_card.md").read_text()


def test_saved_model_predicts_like_the_keras_model(tiny_training):
    registry, result = tiny_training
    window = result.test_windows.x
    expected = predict(result.keras_model, window)
    loaded = tf.saved_model.load(str(registry.version_dir(result.model, result.version)))
    outputs = loaded.signatures["serving_default"](window=tf.constant(window))
    np.testing.assert_allclose(outputs["rul"].numpy(), expected["rul"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        outputs["fail_prob"].numpy(), expected["fail_prob"], atol=1e-5, rtol=1e-5
    )
    via_registry = registry.load(result.model, "champion").predict(window)
    np.testing.assert_allclose(via_registry["rul"], expected["rul"], atol=1e-5, rtol=1e-5)


def test_training_windows_are_point_in_time_and_split_by_machine():
    config = tiny_config()
    frames = training_frame("FD001", config.feature, machines=4)
    windows = make_windows(frames.train, config.input_columns, config.window)
    machine_one = frames.train[frames.train["machine_id"] == 1]
    first = machine_one.sort_values("cycle").iloc[: config.window]
    np.testing.assert_array_equal(windows.x[0], first[list(config.input_columns)].to_numpy("f4"))
    assert windows.rul[0] == min(125, first["rul"].iloc[-1])


def test_strided_windows_keep_each_machines_last_cycle(small_frames):
    config = tiny_config()
    every = make_windows(small_frames.train, config.input_columns, config.window)
    strided = make_windows(small_frames.train, config.input_columns, config.window, stride=3)
    for machine in np.unique(every.machines):
        all_ruls = every.rul[every.machines == machine]
        kept = strided.rul[strided.machines == machine]
        np.testing.assert_array_equal(kept, all_ruls[::-1][::3][::-1])
        assert kept[-1] == all_ruls[-1]
    with pytest.raises(DatasetError, match="stride"):
        make_windows(small_frames.train, config.input_columns, config.window, stride=0)


@pytest.fixture(scope="module")
def small_frames():
    return training_frame("FD001", tiny_config().feature, machines=4)


@pytest.mark.parametrize("rows", ["empty", "too_short"])
def test_empty_or_too_short_dataset_is_a_clear_error(small_frames, rows, tmp_path):
    registry = FilesystemRegistry(tmp_path / "registry")
    train = small_frames.train
    train = train.iloc[0:0] if rows == "empty" else train[train["cycle"] <= 10]
    frames = FeatureFrames("FD001", train, small_frames.test, small_frames.condition_model, {})
    message = "empty" if rows == "empty" else "too short"
    with pytest.raises(DatasetError, match=message):
        train_frames(frames, tiny_config(), registry)
    assert registry.models() == []


@pytest.fixture
def registry_env(tmp_path, monkeypatch):
    """The CLI reads process-wide (cached) settings: point them at a temp registry."""
    monkeypatch.setenv("PROGNOS_REGISTRY_ROOT", str(tmp_path / "registry"))
    get_settings.cache_clear()
    yield {"PROGNOS_REGISTRY_ROOT": str(tmp_path / "registry")}
    get_settings.cache_clear()


def test_cli_lists_shows_promotes_and_rolls_back(tmp_path, registry_env):
    from model_helpers import metadata_with, write_constant_saved_model

    registry = FilesystemRegistry(tmp_path / "registry")
    for rmse in (15.0, 14.0):
        registry.register("rul_fd001", write_constant_saved_model(rmse), metadata_with(rmse))
    env = registry_env
    runner = CliRunner()
    missing = runner.invoke(cli, ["models", "show", "rul_fd001"], env=env)
    assert missing.exit_code == 1 and "no champion" in missing.output
    promoted = runner.invoke(cli, ["models", "promote", "rul_fd001", "1"], env=env)
    assert promoted.exit_code == 0, promoted.output
    assert runner.invoke(cli, ["models", "promote", "rul_fd001", "2"], env=env).exit_code == 0
    listed = runner.invoke(cli, ["models", "list"], env=env)
    assert "champion=2" in listed.output
    rolled = runner.invoke(cli, ["models", "rollback", "rul_fd001"], env=env)
    assert rolled.exit_code == 0 and registry.champion("rul_fd001") == 1
    shown = runner.invoke(cli, ["models", "show", "rul_fd001", "champion"], env=env)
    assert json.loads(shown.output)["version"] == 1
    with pytest.raises(NoChampionError):
        FilesystemRegistry(tmp_path / "other").champion("rul_fd001")


def test_training_is_deterministic_given_a_seed(small_frames):
    config = tiny_config(epochs=1, seed=3)
    first = train_frames(small_frames, config, progress=lambda line: None)
    second = train_frames(small_frames, config, progress=lambda line: None)
    x = first.test_windows.x
    np.testing.assert_array_equal(
        predict(first.keras_model, x)["rul"], predict(second.keras_model, x)["rul"]
    )


def test_an_ensemble_averages_its_members(small_frames):
    import keras

    result = train_frames(small_frames, tiny_config(epochs=1, ensemble=2), progress=print)
    members = [layer for layer in result.keras_model.layers if isinstance(layer, keras.Model)]
    assert len(members) == 2
    x = result.test_windows.x
    expected = np.mean([predict(member, x)["rul"] for member in members], axis=0)
    np.testing.assert_allclose(predict(result.keras_model, x)["rul"], expected, atol=1e-4)
    assert result.metrics["validation"]["rmse"] > 0

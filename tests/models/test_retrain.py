"""Bad inputs of training and of the retrain steps: clear errors, registry unchanged."""

from __future__ import annotations

import pytest
from model_helpers import gold_rows, metadata_with, tiny_config, write_constant_saved_model
from model_helpers import write_gold as write_gold_table

from models import retrain
from models.dataset import DatasetError, training_frame
from models.train import train_frames
from prognos.core.registry import CorruptVersionError, FilesystemRegistry
from tests.conftest import make_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, retrain_source="gold", retrain_epochs=1, retrain_machines=4)


def registry_state(settings) -> tuple:
    registry = FilesystemRegistry(settings.registry)
    return tuple((m, tuple(registry.versions(m)), str(registry.aliases(m))) for m in ["rul_fd001"])


def test_no_gold_table_is_a_clear_error(settings):
    before = registry_state(settings)
    with pytest.raises(DatasetError, match=r"no gold_features table.*PROGNOS_RETRAIN_SOURCE"):
        retrain.build_dataset(settings, "run")
    assert registry_state(settings) == before


def test_gold_without_run_to_failure_machines_is_a_clear_error(settings):
    rows = gold_rows(range(1, 4))
    rows["machine_id"] = rows["machine_id"].str.replace("-train-", "-test-")
    write_gold_table(settings, rows)
    with pytest.raises(DatasetError, match="no run-to-failure machines of FD001"):
        retrain.build_dataset(settings, "run")


def test_too_short_gold_history_is_a_clear_error(settings):
    rows = gold_rows(range(1, 4))
    write_gold_table(settings, rows[rows["cycle"] <= 12])
    with pytest.raises(DatasetError, match="too short"):
        retrain.build_dataset(settings, "run")
    assert FilesystemRegistry(settings.registry).models() == []


def test_a_step_before_its_predecessor_is_a_clear_error(settings, capsys):
    with pytest.raises(retrain.RetrainError, match="run the 'build_dataset' step"):
        retrain.train(settings, "never-built")
    with pytest.raises(retrain.RetrainError, match="run the 'register' step"):
        retrain.bless(settings, "never-built")
    with pytest.raises(retrain.RetrainError, match="unknown retrain step"):
        retrain.run_step("deploy", settings, "r")


def test_a_corrupted_champion_stops_training_before_anything_is_written(tmp_path):
    registry = FilesystemRegistry(tmp_path / "registry")
    registry.register("rul_fd001", write_constant_saved_model(1.0), metadata_with(20.0))
    registry.promote("rul_fd001", 1)
    (registry.version_dir("rul_fd001", 1) / "saved_model.pb").unlink()
    before = (registry.versions("rul_fd001"), registry.aliases("rul_fd001"))
    frames = training_frame("FD001", tiny_config().feature, machines=3)
    with pytest.raises(CorruptVersionError, match=r"missing saved_model\.pb"):
        train_frames(frames, tiny_config(), registry)
    assert (registry.versions("rul_fd001"), registry.aliases("rul_fd001")) == before


def test_the_step_command_prints_one_line_errors(settings, monkeypatch, capsys):
    from prognos.core.settings import get_settings

    monkeypatch.setenv("PROGNOS_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("PROGNOS_RETRAIN_SOURCE", "gold")
    get_settings.cache_clear()
    try:
        assert retrain.main(["build_dataset", "--run-id", "r"]) == 1
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().err.startswith("error: no gold_features table")

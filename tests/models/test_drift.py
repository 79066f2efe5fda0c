"""Drift job: PSI/KS against the champion's training reference over the recent gold window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from model_helpers import gold_rows, register_reference_champion, write_gold

from models import drift
from prognos.core.registry import FilesystemRegistry, NoChampionError
from tests.conftest import make_settings

pytestmark = pytest.mark.unit

RECENT = range(1, 21)  # 20 machines in the window
OLD = range(21, 41)  # 20 machines three days back, outside the 24 h window


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Settings on a temp lake + registry whose champion stores the FD001 reference."""
    settings = make_settings(tmp_path_factory.mktemp("drift"))
    register_reference_champion(FilesystemRegistry(settings.registry))
    return settings


@pytest.fixture(scope="module")
def old_shifted():
    return gold_rows(OLD, shift_sigma=2.0, hours_ago=72)


def test_psi_and_ks_are_zero_on_the_reference_and_large_on_a_shift():
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000)
    discrete = rng.integers(380, 400, size=5000).astype(float)
    frame = pd.DataFrame({"x": values, "d": discrete})
    reference = drift.feature_reference(frame, ["x", "d"])["features"]
    assert drift.psi(reference["x"], values) == pytest.approx(0.0, abs=1e-9)
    assert drift.ks(reference["x"], values) < 0.02
    assert drift.ks(reference["d"], discrete) < 0.02  # step CDF: no false KS on integers
    assert drift.psi(reference["x"], values + 1.0) > 0.5
    assert drift.ks(reference["x"], values + 1.0) == pytest.approx(0.38, abs=0.03)


def test_an_unshifted_window_raises_no_drift(lake, old_shifted):
    write_gold(lake, pd.concat([gold_rows(RECENT), old_shifted], ignore_index=True))
    result = drift.measure_drift(lake, "unshifted")
    assert result.rows == len(gold_rows(RECENT))  # the old (shifted) rows are outside
    assert not result.drift and result.drifted_features == []
    report = drift.read_report(lake, "unshifted")
    assert len(report) == 2 * len(result.features)
    assert set(report["statistic"]) == {"psi", "ks"} and not report["drifted"].any()
    assert (report["model"] == "rul_fd001").all() and (report["rows"] == result.rows).all()


def test_a_shifted_sensor_raises_drift_for_that_feature(lake, old_shifted):
    write_gold(lake, pd.concat([gold_rows(RECENT, shift_sigma=2.0), old_shifted]))
    result = drift.measure_drift(lake, "shifted")
    assert result.drift
    assert "sensor_4_z" in result.drifted_features
    assert all(name.startswith("sensor_4_") for name in result.drifted_features)
    report = drift.read_report(lake, "shifted").set_index(["feature", "statistic"])
    assert report.loc[("sensor_4_z", "psi"), "drifted"]
    assert not report.loc[("sensor_9_z", "ks"), "drifted"]
    again = drift.measure_drift(lake, "shifted")  # a rerun replaces the run's rows
    assert again.drifted_features == result.drifted_features
    assert len(drift.read_report(lake, "shifted")) == len(report)


def test_too_few_rows_in_the_window_decide_nothing(tmp_path, old_shifted):
    settings = make_settings(tmp_path, drift_window_hours=0.5, drift_min_rows=1000)
    registry = FilesystemRegistry(settings.registry)
    registry.register("rul_fd001", *_champion_parts(settings))
    registry.promote("rul_fd001", 1)
    write_gold(settings, old_shifted)
    result = drift.measure_drift(settings, "quiet", registry)
    assert result.rows == 20 * 30  # 30 one-minute cycles of 20 machines
    assert not result.drift and "fewer than 1000" in result.reason


def test_bad_inputs_are_clear_errors(tmp_path):
    settings = make_settings(tmp_path)
    registry = FilesystemRegistry(settings.registry)
    with pytest.raises(NoChampionError, match="no champion"):
        drift.measure_drift(settings, "r", registry)
    from model_helpers import metadata_with, write_constant_saved_model

    registry.register("rul_fd001", write_constant_saved_model(1.0), metadata_with(1.0))
    registry.promote("rul_fd001", 1)
    with pytest.raises(drift.DriftError, match="stores no training reference"):
        drift.measure_drift(settings, "r", registry)
    registry.register("rul_fd001", *_champion_parts(settings))
    registry.promote("rul_fd001", 2)
    with pytest.raises(drift.DriftError, match="no gold_features table"):
        drift.measure_drift(settings, "r", registry)
    assert drift.main(["--run-id", "r", "--model", "rul_fd009"]) == 1


def _champion_parts(settings):
    """(writer, metadata) of a constant model with a small reference of 5 machines."""
    from model_helpers import metadata_with, write_constant_saved_model

    from models.config import TrainConfig

    config = TrainConfig.for_subset("FD001")
    rows = gold_rows(range(1, 6))
    reference = drift.feature_reference(rows, config.input_columns)
    metadata = {**metadata_with(1.0), "params": config.to_dict(), drift.REFERENCE_KEY: reference}
    return write_constant_saved_model(1.0), metadata


def test_cli_prints_each_feature_and_the_decision(lake, old_shifted, monkeypatch):
    import json

    from click.testing import CliRunner

    from prognos.cli.main import cli
    from prognos.core.settings import get_settings

    write_gold(lake, pd.concat([gold_rows(RECENT, shift_sigma=2.0), old_shifted]))
    monkeypatch.setenv("PROGNOS_STATE_DIR", str(lake.state_dir))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["models", "drift", "--run-id", "cli"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "sensor_4_z" in result.output and "DRIFT" in result.output
    assert json.loads(result.output.splitlines()[-1])["drift"] is True

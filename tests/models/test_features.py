"""The shared feature definition: point-in-time correctness, conditions, labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prognos.core import features as F
from prognos.core.data import load_cmapss

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fd001_train():
    return load_cmapss("FD001", "train")


@pytest.fixture(scope="module")
def fd001_model(fd001_train):
    return F.fit_condition_model(fd001_train)


def test_condition_clustering_finds_six_conditions_on_fd002():
    frame = load_cmapss("FD002", "train")
    model = F.fit_condition_model(frame)
    assert model.n_conditions == 6
    altitudes = sorted(round(centre[0]) for centre in model.centroids)
    assert altitudes == [0, 10, 20, 25, 35, 42]
    labels = model.assign(frame[list(F.SETTING_NAMES)].to_numpy())
    assert set(np.unique(labels)) == set(range(6))
    assert F.fit_condition_model(frame).to_json() == model.to_json()  # deterministic


def test_one_condition_on_fd001(fd001_model):
    assert fd001_model.n_conditions == 1


def test_features_at_cycle_c_use_only_cycles_up_to_c(fd001_train, fd001_model):
    machine = fd001_train[fd001_train["machine_id"] == 3]
    full = F.compute_features(machine, fd001_model)
    for cycle in (1, 2, 9, 30, 31, 77, int(machine["cycle"].max())):
        truncated = F.compute_features(machine[machine["cycle"] <= cycle], fd001_model)
        expected = full[full["cycle"] == cycle][F.FEATURE_COLUMNS].to_numpy()
        assert np.array_equal(truncated.iloc[[-1]][F.FEATURE_COLUMNS].to_numpy(), expected)


def test_bounded_history_gives_identical_features(fd001_train, fd001_model):
    """The speed layer keeps only min_history_length cycles: same vector as gold."""
    config = F.FeatureConfig()
    keep = F.min_history_length(config)
    machine = fd001_train[fd001_train["machine_id"] == 5]
    full = F.compute_features(machine, fd001_model)
    for cycle in (keep, keep + 1, 150):
        recent = machine[(machine["cycle"] <= cycle) & (machine["cycle"] > cycle - keep)]
        row = F.compute_features(recent, fd001_model).iloc[-1][F.FEATURE_COLUMNS]
        expected = full[full["cycle"] == cycle][F.FEATURE_COLUMNS].iloc[0]
        assert np.array_equal(row.to_numpy(float), expected.to_numpy(float))
    assert F.min_history_length(config, model_window=30) == max(config.windows) + 29


def test_condition_model_round_trips_through_json(fd001_model):
    again = F.ConditionModel.from_json(fd001_model.to_json())
    assert again == fd001_model


def test_feature_columns_follow_the_config():
    config = F.FeatureConfig(windows=(3, 7), sensors=("sensor_2", "sensor_3"))
    columns = F.feature_columns(config)
    assert "sensor_2_slope_7" in columns and "health_index_mean_3" in columns
    assert len(columns) == 3 + 2 * 3 * 3


def test_labels_cap_rul_and_flag_the_horizon():
    frame = pd.DataFrame({"rul": [200, 125, 31, 30, 0]})
    labelled = F.add_labels(frame, F.FeatureConfig())
    assert labelled[F.RUL_TARGET].tolist() == [125, 125, 31, 30, 0]
    assert labelled[F.FAILS_WITHIN_H].tolist() == [0, 0, 0, 1, 1]
    unknown = F.add_labels(pd.DataFrame({"cycle": [1]}))
    assert unknown[F.RUL_TARGET].isna().all()


def test_missing_columns_and_foreign_models_are_clear_errors(fd001_train, fd001_model):
    with pytest.raises(F.FeatureError, match=r"missing columns.*sensor_2"):
        F.compute_features(fd001_train.drop(columns=["sensor_2"]), fd001_model)
    with pytest.raises(F.FeatureError, match="other sensors"):
        F.compute_features(fd001_train, fd001_model, F.FeatureConfig(sensors=("sensor_2",)))
    with pytest.raises(F.FeatureError, match="empty"):
        F.fit_condition_model(fd001_train.iloc[0:0])
    with pytest.raises(F.FeatureError, match="not a condition model"):
        F.ConditionModel.from_json('{"wrong": 1}')

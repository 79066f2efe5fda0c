"""Gold labels and batch views in process, on a silver table written from a small fleet:
labels where the true RUL is known, machine_state scored by the registry's champion with
the speed layer's code, alert levels, fleet summary, no champion, an older view table."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from prognos.core import lake
from prognos.core.alerting import alert_level
from prognos.core.data import load_cmapss
from prognos.core.errors import SchemaMismatchError
from prognos.core.features import HEALTH, compute_features
from prognos.core.replay import fleet_frame
from prognos.core.scoring import ChampionWatcher, model_window
from prognos.core.tables import get_table
from serving_layer.views import history_predicate, read_rows
from spark_jobs import gold, silver, views
from tests.conftest import make_settings
from tests.speed import support as S

START = datetime(2026, 1, 1, tzinfo=UTC)
INTERVAL = "batch__2026-11-20T00:00:00+00:00"


def fleet() -> pd.DataFrame:
    """Two FD001 train engines, one scaled copy of them, one FD001 test engine."""
    train = fleet_frame("FD001", "train", machines=2, scale=2)
    test = fleet_frame("FD001", "test", machines=1)
    return pd.concat([train, test], ignore_index=True)


@pytest.fixture(scope="module")
def lake_settings(spark, tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("views-lake"), alert_red_rul=60)
    rows = silver.silver_frame_of_fleet(fleet(), START)
    frame = spark.createDataFrame(rows, schema=get_table("silver").spark_schema)
    lake.write_table(frame, "silver", settings, mode="overwrite")
    gold.build(spark, settings, "labels")
    return settings


def table(settings, name) -> pd.DataFrame:
    return lake.read_table_arrow(name, settings).to_pandas()


def test_gold_labels_where_the_true_rul_is_known(lake_settings):
    labelled = table(lake_settings, "gold_features").set_index(["machine_id", "cycle"])
    train = load_cmapss("FD001", "train")
    unit_1 = train[train.machine_id == 1].set_index("cycle")["rul"]
    got = labelled.loc["FD001-train-0001"].sort_index()
    np.testing.assert_array_equal(got["rul"].to_numpy(), unit_1.to_numpy())
    np.testing.assert_array_equal(got["rul_target"].to_numpy(), np.minimum(unit_1, 125))
    np.testing.assert_array_equal(got["fails_within_h"].to_numpy(), (unit_1 <= 30) * 1.0)
    test = load_cmapss("FD001", "test")
    expected = test[test.machine_id == 1].set_index("cycle")["rul"]  # from RUL_FD001
    got_test = labelled.loc["FD001-test-0001"].sort_index()
    np.testing.assert_array_equal(got_test["rul"].to_numpy(), expected.to_numpy())
    copies = labelled.loc["FD001-train-0001-c01"]
    assert copies[["rul", "rul_target", "fails_within_h"]].isna().all().all()


def test_views_without_a_champion_publish_null_predictions_and_warn(spark, lake_settings, caplog):
    with caplog.at_level(logging.WARNING, logger="prognos.views"):
        built = views.build(spark, lake_settings, INTERVAL, START)
    assert built["published"] and built["model_version"] is None
    assert "no champion" in caplog.text
    state = table(lake_settings, "machine_state")
    assert state["predicted_rul"].isna().all() and set(state["alert_level"]) == {"unknown"}
    assert state["health_index"].notna().all()
    summary = table(lake_settings, "fleet_summary").iloc[0]
    assert dict(summary["machines_by_level"])["unknown"] == len(state)
    assert summary["rul_p50"] is None or np.isnan(summary["rul_p50"])


def test_machine_state_scored_by_the_champion_like_the_speed_layer(spark, lake_settings):
    version = S.register_model(lake_settings, offset=60.0, scale=10.0)
    built = views.build(spark, lake_settings, INTERVAL, START)
    assert built["model_version"] == str(version)
    state = table(lake_settings, "machine_state").set_index("machine_id")
    champion = ChampionWatcher(lake_settings.registry, lake_settings.serving_model).current()
    history = silver_history(lake_settings, "FD001-train-0002")
    features = compute_features(
        history, champion.spec.condition_model, champion.spec.feature_config
    )  # the whole history, as the speed layer's state would hold it
    window = model_window(features, champion.spec.input_columns, champion.spec.window)
    expected = champion.predict_rul(window)
    row = state.loc["FD001-train-0002"]
    assert row["predicted_rul"] == pytest.approx(expected, rel=1e-5)
    assert row["model_version"] == str(version)
    assert row["alert_level"] == alert_level(expected, lake_settings)
    assert row["health_index"] == pytest.approx(features[HEALTH].iloc[-1])
    assert dict(row["features"])[f"{HEALTH}_mean_10"] == pytest.approx(
        features[f"{HEALTH}_mean_10"].iloc[-1]
    )
    assert dict(row["sensors"])["sensor_4"] == history["sensor_4"].iloc[-1]
    assert row["last_cycle"] == history["cycle"].max()
    assert state["predicted_rul"].notna().all()
    summary = table(lake_settings, "fleet_summary").iloc[0]
    levels = state["alert_level"].value_counts().to_dict()
    assert {k: v for k, v in dict(summary["machines_by_level"]).items() if v} == levels
    assert summary["rul_p50"] == pytest.approx(state["predicted_rul"].median())
    assert summary["max_predicted_rul"] == pytest.approx(state["predicted_rul"].max())


def test_history_view_holds_silver_in_files_of_machine_ranges(spark, lake_settings, monkeypatch):
    monkeypatch.setattr(views, "HISTORY_ROWS_PER_FILE", 300)
    built = views.build(spark, lake_settings, INTERVAL, START)
    version = built["manifest"]["table_versions"]["machine_history"]
    handle = DeltaTable(str(lake_settings.lake / "machine_history"), version=version)
    history = handle.to_pyarrow_table().to_pandas()
    columns = get_table("machine_history").column_names
    expected = table(lake_settings, "silver")[columns]
    key = ["machine_id", "event_time"]
    pd.testing.assert_frame_equal(
        history.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
    )
    files = [pq.read_table(uri).to_pandas() for uri in handle.file_uris()]
    assert len(files) == -(-len(history) // 300)
    ranges = sorted((tuple(f[key].iloc[0]), tuple(f[key].iloc[-1])) for f in files)
    for frame in files:  # each file sorted by machine and event time
        assert frame[key].equals(frame.sort_values(key)[key])
    for (_, last), (first, _) in itertools.pairwise(ranges):
        assert last < first  # files hold disjoint ranges of (machine, event time)
    machine = "FD001-train-0002"
    where = history_predicate(machine, None, None)
    assert len(handle.file_uris(file_pruning_predicate=where.sql)) < len(files)
    rows = read_rows(handle, where).to_pandas()
    assert len(rows) == (expected.machine_id == machine).sum()


def silver_history(settings, machine: str) -> pd.DataFrame:
    rows = table(settings, "silver")
    return rows[rows.machine_id == machine].sort_values("cycle").reset_index(drop=True)


def test_a_view_table_of_an_older_release_gets_the_new_columns(spark, tmp_path):
    from prognos.core import tables

    settings = make_settings(tmp_path)
    old = spark.createDataFrame(
        [("m-1", 3, START, 3, None, None, "old")],
        "machine_id string, last_cycle int, last_event_time timestamp, readings_count long, "
        "predicted_rul double, model_version string, run_id string",
    )  # machine_state before batch scoring
    old.write.format("delta").save(str(settings.lake / "machine_state"))
    tables.create_table(spark, "machine_state", settings)
    state = table(settings, "machine_state")
    assert list(state.columns) == get_table("machine_state").column_names
    assert state["run_id"].tolist() == ["old"] and state["alert_level"].isna().all()
    renamed = old.withColumnRenamed("run_id", "batch")  # not only added columns: refused
    renamed.write.format("delta").save(str(settings.lake / "fleet_summary"))
    with pytest.raises(SchemaMismatchError):
        tables.create_table(spark, "fleet_summary", settings)


def test_features_of_many_machines_at_once_equal_machine_by_machine(monkeypatch):
    """gold's vectorised path (several machines and chunks per call) = compute_features."""
    from prognos.core import features as F

    monkeypatch.setattr(F, "MANY_CHUNK_ROWS", 300)  # several chunks, cut at machine starts
    frame = fleet_frame("FD002", "train", machines=3, scale=2)
    frame = frame.rename(columns={"machine_id": "unit", "machine": "machine_id"})
    model = F.fit_condition_model(load_cmapss("FD002", "train"))
    one_by_one = [F.compute_features(g, model) for _, g in frame.groupby("machine_id")]
    expected = pd.concat(one_by_one, ignore_index=True)
    pd.testing.assert_frame_equal(F.compute_features_many(frame, model), expected)

"""Fast checks of the speed layer's pure parts: alert levels, boundary, windows, metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from prognos.core import alerting
from prognos.core.boundary import ManifestFollower, manifest_offsets, uncovered
from prognos.core.scoring import model_window
from speed_layer.metrics import SpeedMetrics, progress_since
from tests.conftest import make_settings
from tests.serving.serving_support import lake_settings, publish

pytestmark = pytest.mark.unit


def test_alert_levels_follow_the_configured_thresholds(tmp_path):
    settings = make_settings(tmp_path, alert_red_rul=10, alert_amber_rul=20)
    assert alerting.alert_level(5.0, settings) == "red"
    assert alerting.alert_level(10.0, settings) == "red"
    assert alerting.alert_level(15.0, settings) == "amber"
    assert alerting.alert_level(50.0, settings) == "green"
    assert alerting.alert_level(None, settings) == "unknown"
    assert alerting.alert_level(float("nan"), settings) == "unknown"


def test_an_alert_is_raised_only_when_the_level_rises():
    assert alerting.rises(None, "amber") and alerting.rises("green", "red")
    assert alerting.rises("amber", "red")
    assert not alerting.rises("red", "red") and not alerting.rises("red", "amber")
    assert not alerting.rises("amber", "green") and not alerting.rises(None, "green")
    assert alerting.alert_id("m", 3, "red") == alerting.alert_id("m", 3, "red")
    assert alerting.alert_id("m", 3, "red") != alerting.alert_id("m", 4, "red")


def test_boundary_keeps_only_offsets_the_manifest_does_not_cover():
    assert uncovered([5, 1, 9], 0, {0: 6}) == [9]
    assert uncovered([5, 1, 9], 1, {0: 6}) == [1, 5, 9]
    assert uncovered([5], 0, {0: 5}) == [5]  # the manifest's offset is the next one to read


def test_the_manifest_follower_sees_every_new_publication(tmp_path):
    settings = lake_settings(tmp_path)
    follower = ManifestFollower(settings)
    assert follower.offsets() == {}  # no manifest table yet
    publish(settings, "run-1", 0, {0: 5})
    assert follower.offsets() == {0: 5}
    publish(settings, "run-2", 1, {0: 9, 1: 3})
    assert follower.offsets() == {0: 9, 1: 3} == manifest_offsets(settings)


def test_model_window_pads_short_histories_with_their_first_row():
    frame = pd.DataFrame({"cycle": [2, 1, 3], "a": [20.0, 10.0, 30.0]})
    window = model_window(frame, ["a"], 5)
    assert window.shape == (1, 5, 1)
    assert window[0, :, 0].tolist() == [10.0, 10.0, 10.0, 20.0, 30.0]
    assert model_window(frame, ["a"], 2)[0, :, 0].tolist() == [20.0, 30.0]


def test_metrics_count_routed_records_and_lag():
    metrics = SpeedMetrics()
    newest = datetime.now(UTC) - timedelta(seconds=30)
    phases = {"state": 0.25, "merge": 0.125}
    metrics.batch_written({"dead": 2, "late": 1, "view": 3, "alert": 1}, newest, 0.5, phases)
    text = generate_latest(metrics.registry).decode()
    assert 'prognos_speed_records_total{kind="dead"} 2.0' in text
    assert 'prognos_speed_records_total{kind="late"} 1.0' in text
    assert 'prognos_speed_records_total{kind="alert"} 1.0' in text
    assert "prognos_speed_write_duration_seconds 0.5" in text
    assert 'prognos_speed_write_phase_seconds_total{phase="state"} 0.25' in text
    assert 'prognos_speed_write_phase_seconds_total{phase="merge"} 0.125' in text
    lag = float(
        next(x for x in text.splitlines() if x.startswith("prognos_speed_processing_lag")).split()[
            1
        ]
    )
    assert 29 <= lag < 600
    assert np.isfinite(lag)


def test_alert_memory_raises_on_rises_and_a_replayed_batch_starts_from_the_batch_before(
    tmp_path,
):
    from speed_layer.scorer import AlertMemory

    settings = make_settings(tmp_path)

    def scored(*levels):
        return pd.DataFrame(
            [{"machine_id": m, "cycle": c, "alert_level": lv} for m, c, lv in levels]
        )

    memory = AlertMemory(tmp_path / "checkpoint")
    first = memory.alerts(0, scored(("a", 1, "green"), ("b", 1, "red")), settings)
    assert first["machine_id"].tolist() == ["b"]
    memory.save(0)
    assert memory.alerts(1, scored(("b", 2, "red"), ("a", 2, "unknown")), settings).empty
    memory.save(1)  # nothing changed: no file
    rises = memory.alerts(2, scored(("a", 3, "amber"), ("b", 3, "green")), settings)
    assert rises[["machine_id", "previous_level"]].values.tolist() == [["a", "green"]]
    memory.save(2)
    # a restart replays batch 2 (its file was written, its view commit was not)
    restarted = AlertMemory(tmp_path / "checkpoint")
    again = restarted.alerts(2, scored(("a", 3, "amber"), ("b", 3, "green")), settings)
    assert again.to_dict("records") == rises.to_dict("records")
    restarted.save(2)
    later = AlertMemory(tmp_path / "checkpoint").alerts(3, scored(("b", 4, "red")), settings)
    assert later[["machine_id", "previous_level"]].values.tolist() == [["b", "green"]]


def test_progress_polling_counts_every_batch_once():
    batches = [SimpleNamespace(batchId=b) for b in range(6)]
    query = SimpleNamespace(lastProgress=None, recentProgress=[])
    assert progress_since(query, -1) == []
    query.lastProgress, query.recentProgress = batches[0], batches[:1]
    assert progress_since(query, -1) == batches[:1]
    assert progress_since(query, 0) == []  # polled again before the next batch ended
    query.lastProgress, query.recentProgress = batches[4], batches[2::-1] + batches[3:5]
    assert progress_since(query, 0) == batches[1:5]  # three ended between two polls


def test_view_merge_appends_each_batch_offsets_once_and_skips_machines_without_new_ones(
    tmp_path,
):
    import pyarrow as pa
    from deltalake import DeltaTable

    from prognos.core.tables import get_table
    from speed_layer.stream import merge_view_rows

    schema = get_table("speed_view").arrow_schema
    table = DeltaTable.create(str(tmp_path / "speed_view"), schema=schema)

    def batch(*rows):  # (machine, last cycle, new offsets)
        return pa.Table.from_pylist(
            [
                {"machine_id": m, "last_cycle": c, "pending_offsets": o, "readings_count": len(o)}
                for m, c, o in rows
            ],
            schema=schema,
        )

    merge_view_rows(table, batch(("m1", 1, [10, 11]), ("m2", 4, [])))
    merge_view_rows(table, batch(("m1", 3, [14]), ("m3", 7, [15])))
    merge_view_rows(table, batch(("m1", 9, []), ("m3", 8, [16, 17])))
    rows = {r["machine_id"]: r for r in DeltaTable(table.table_uri).to_pyarrow_table().to_pylist()}
    assert set(rows) == {"m1", "m3"}  # m2 had nothing beyond the boundary
    assert (rows["m1"]["last_cycle"], rows["m1"]["pending_offsets"]) == (3, [10, 11, 14])
    assert rows["m1"]["readings_count"] == 3
    assert (rows["m3"]["last_cycle"], rows["m3"]["pending_offsets"]) == (8, [15, 16, 17])
    assert rows["m3"]["readings_count"] == 3

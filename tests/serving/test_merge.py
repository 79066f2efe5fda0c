"""The exact merge: batch answers for what the manifest covers, speed for the rest."""

from __future__ import annotations

import pytest
from serving_support import (
    lake_settings,
    publish,
    silver_row,
    speed_row,
    state_row,
    with_sensors,
    write_rows,
)

from prognos.core.alerting import alert_level
from prognos.core.settings import load_settings
from serving_layer.merge import latest_boundary, merge_machine_states
from serving_layer.snapshot import (
    CursorError,
    SnapshotStore,
    alerts_page,
    fleet_summary,
    history_window,
    machine_history,
    query_fleet,
)
from serving_layer.views import DeltaViews

pytestmark = pytest.mark.unit


def levels(rul):
    return alert_level(rul, load_settings())


def test_speed_counts_only_readings_beyond_the_pinned_boundary():
    batch = [state_row("m1", 10, 10, 50.0), state_row("m2", 20, 20, 40.0)]
    offsets = {0: 100, 1: 50}
    speed = [
        {**speed_row("m1", 13, [100, 101, 102], 47.0), "model_version": "2"},  # uncovered: wins
        speed_row("m2", 20, [48, 49], 10.0, partition=1),  # covered by the batch run: ignored
        speed_row("m3", 4, [103, 104, 105, 106], 90.0),  # new machine, speed only
        speed_row("m4", 7, [98, 99, 100], 12.0),  # written before the boundary moved: 1 left
    ]
    merged = merge_machine_states(batch, speed, offsets, levels)
    assert merged["m1"]["source"] == "speed" and merged["m1"]["last_cycle"] == 13
    assert merged["m1"]["readings_count"] == 13 and merged["m1"]["batch_cycle"] == 10
    assert merged["m1"]["model_version"] == "2"
    assert merged["m2"]["source"] == "batch" and merged["m2"]["readings_count"] == 20
    assert (merged["m3"]["source"], merged["m3"]["readings_count"]) == ("speed", 4)
    assert merged["m3"]["batch_cycle"] is None
    assert merged["m4"]["readings_count"] == 1 and merged["m4"]["alert_level"] == "red"


def test_speed_row_not_beyond_batch_cycle_adds_count_but_not_state():
    batch = [state_row("m1", 10, 10, 50.0)]
    late = speed_row("m1", 9, [120], 5.0)  # a late reading of an older cycle
    merged = merge_machine_states(batch, [late], {0: 100}, levels)
    assert (merged["m1"]["source"], merged["m1"]["readings_count"]) == ("batch", 11)
    assert merged["m1"]["predicted_rul"] == 50.0


def test_before_any_batch_the_speed_view_answers_alone():
    merged = merge_machine_states([], [speed_row("m1", 3, [0, 1, 2], 40.0)], {}, levels)
    assert (merged["m1"]["source"], merged["m1"]["readings_count"]) == ("speed", 3)


def test_optional_view_columns_are_picked_up_and_unknown_ones_ignored():
    batch = {
        **state_row("m1", 10, 10, 50.0),
        "health_index": 0.4,
        "sensors": [("sensor_2", 642.1), ("setting_1", 0.0)],  # delta-rs reads maps as pairs
        "features": [("hi_mean_5", 0.38)],
        "alert_level": "green",
        "a_column_added_later": 1,
    }
    speed = {**speed_row("m2", 4, [0, 1], 20.0), "features": [("health_index", 0.9)]}
    merged = merge_machine_states([batch, state_row("m3", 2, 2, 9.0)], [speed], {}, levels)
    assert merged["m1"]["sensors"] == {"sensor_2": 642.1, "setting_1": 0.0}
    assert (merged["m1"]["sensors_cycle"], merged["m1"]["health_index"]) == (10, 0.4)
    assert merged["m1"]["features"] == {"hi_mean_5": 0.38}
    assert "a_column_added_later" not in merged["m1"]
    assert (merged["m2"]["source"], merged["m2"]["health_index"]) == ("speed", 0.9)
    assert merged["m3"]["health_index"] is None and "sensors" not in merged["m3"]


def test_latest_boundary_is_most_recent_publication():
    assert latest_boundary([]) is None
    rows = [
        {"run_id": "a", "published_at": 1, "table_versions": [("machine_state", 1)]},
        {
            "run_id": "b",
            "published_at": 2,
            "table_versions": {"machine_state": 3},
            "partition_offsets": [(0, 7)],
        },
    ]
    boundary = latest_boundary(rows)
    assert boundary.table_versions == {"machine_state": 3} and boundary.partition_offsets == {0: 7}


def test_snapshot_reads_batch_at_manifest_versions(tmp_path):
    settings = lake_settings(tmp_path)
    store = SnapshotStore(DeltaViews(settings), levels)
    assert store.refresh() and store.current.machines == {}  # empty lake: empty snapshot
    assert not store.refresh()

    # m1 in partition 0: cycle c at offset c - 1
    version = write_rows(settings, "machine_state", [state_row("m1", 10, 10, 50.0)])
    write_rows(settings, "speed_view", [speed_row("m1", 12, list(range(12)), 45.0)])
    assert store.refresh()
    # machine_state is not published yet: the speed row alone answers.
    assert store.current.machines["m1"]["readings_count"] == 12
    publish(settings, "run-1", version, {0: 10})
    assert store.refresh()
    state = store.current.machines["m1"]
    assert (state["source"], state["last_cycle"], state["readings_count"]) == ("speed", 12, 12)

    # An unpublished batch write is invisible until its manifest row lands.
    newer = write_rows(settings, "machine_state", [state_row("m1", 12, 12, 44.0)], "overwrite")
    store.refresh()
    assert store.current.machines["m1"]["readings_count"] == 12
    before = store.current
    publish(settings, "run-2", newer, {0: 12})
    store.refresh()
    # the speed row still lists offsets 0-11 (not yet expired): none is counted twice
    after = store.current.machines["m1"]
    assert (after["source"], after["readings_count"], after["predicted_rul"]) == ("batch", 12, 44.0)
    assert before.machines["m1"]["source"] == "speed"  # the old snapshot object is unchanged
    assert store.current.boundary.run_id == "run-2"
    assert store.current.versions["machine_state"] == newer


def _fleet_store(tmp_path, n=7):
    settings = lake_settings(tmp_path)
    rows = [
        state_row(f"m{i}", 10 + i, 10 + i, rul)
        for i, rul in enumerate([5.0, 25.0, 45.0, 70.0, 100.0, 15.0, 65.0][:n])
    ]
    rows[0] = with_sensors(rows[0])
    history = write_rows(settings, "machine_history", [silver_row("m0", c) for c in (1, 2, 3)])
    publish(settings, "r", write_rows(settings, "machine_state", rows), {0: 20}, history)
    write_rows(
        settings,
        "alerts",
        [
            {
                "alert_id": "a1",
                "machine_id": "m0",
                "cycle": 3,
                "predicted_rul": 5.0,
                "raised_at": silver_row("m0", 3)["event_time"],
            }
        ],
    )
    store = SnapshotStore(DeltaViews(settings), levels)
    store.refresh()
    return store.current, store.views


def test_fleet_pages_cover_every_machine_once(tmp_path):
    snapshot, _ = _fleet_store(tmp_path)
    for sort in ("rul", "-rul", "alert_level", "-alert_level", "machine_id", "-machine_id"):
        seen, cursor = [], None
        while True:
            page, cursor = query_fleet(snapshot, sort=sort, limit=2, cursor=cursor)
            seen += [s["machine_id"] for s in page]
            if cursor is None:
                break
        assert sorted(seen) == sorted(snapshot.machines), sort
    ruls = [s["predicted_rul"] for s in query_fleet(snapshot, sort="-rul", limit=10)[0]]
    assert ruls == sorted(ruls, reverse=True)
    red, _ = query_fleet(snapshot, alert_level="red")
    assert {s["machine_id"] for s in red} == {"m0", "m5"}
    ranged, _ = query_fleet(snapshot, min_rul=20, max_rul=70)
    assert [s["predicted_rul"] for s in ranged] == [25.0, 45.0, 65.0, 70.0]


def test_bad_cursor_is_rejected(tmp_path):
    snapshot, _ = _fleet_store(tmp_path)
    _, cursor = query_fleet(snapshot, sort="rul", limit=1)
    with pytest.raises(CursorError):
        query_fleet(snapshot, sort="-rul", cursor=cursor)
    with pytest.raises(CursorError):
        query_fleet(snapshot, cursor="not-a-cursor")


def test_history_alerts_and_summary(tmp_path):
    snapshot, views = _fleet_store(tmp_path)
    window = history_window({"last_event_time": silver_row("m0", 3)["event_time"]}, None, None)
    history, next_from = machine_history(views, snapshot, "m0", window, 10)
    assert [r["cycle"] for r in history] == [1, 2, 3] and "sensor_7" in history[0]
    assert next_from is None
    assert snapshot.machines["m0"]["sensors_cycle"] == 10  # the view row's latest readings
    assert snapshot.machines["m1"]["sensors"] == {}  # a view row without readings
    assert len(alerts_page(views, snapshot, None, 10)[0]) == 1
    summary = fleet_summary(snapshot)
    assert summary["machines"] == 7 and summary["by_alert_level"]["red"] == 2
    assert summary["as_of"]["boundary"]["run_id"] == "r"


class CountingViews(DeltaViews):
    """The real delta-rs reader, counting reads per table."""

    def __init__(self, settings):
        super().__init__(settings)
        self.reads: dict[str, int] = {}

    def read(self, name, version=None, columns=None):
        self.reads[name] = self.reads.get(name, 0) + 1
        return super().read(name, version, columns)


def test_a_speed_change_rereads_only_the_speed_view(tmp_path):
    settings = lake_settings(tmp_path)
    publish(
        settings, "r", write_rows(settings, "machine_state", [state_row("m1", 5, 5, 50.0)]), {0: 5}
    )
    views = CountingViews(settings)
    store = SnapshotStore(views, levels)
    store.refresh()
    before = dict(views.reads)
    write_rows(settings, "speed_view", [speed_row("m1", 6, [5], 44.0)])
    assert store.refresh()
    assert store.current.machines["m1"]["readings_count"] == 6
    changed = {name for name, count in views.reads.items() if count != before.get(name)}
    assert changed == {"speed_view"}


def test_views_follow_new_versions_and_read_pinned_ones(tmp_path):
    settings = lake_settings(tmp_path)
    views = DeltaViews(settings)
    assert views.version("silver") is None
    assert views.read("silver").num_rows == 0
    first = write_rows(settings, "silver", [silver_row("m1", 1)])
    assert views.version("silver") == first
    second = write_rows(settings, "silver", [silver_row("m1", 2), silver_row("m1", 3)])
    assert views.version("silver") == second  # the kept handle moved forward
    assert views.read("silver", first).num_rows == 1  # pinned: an older version
    assert views.read("silver", second).num_rows == 3
    assert views.read("silver").num_rows == 3

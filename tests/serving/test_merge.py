"""The exact merge: batch answers for what the manifest covers, speed for the rest."""

from __future__ import annotations

import pytest
from serving_support import lake_settings, publish, silver_row, state_row, write_rows

from serving_layer.merge import alert_level, latest_boundary, merge_machine_states
from serving_layer.snapshot import (
    CursorError,
    SnapshotStore,
    alerts_since,
    fleet_summary,
    machine_history,
    query_fleet,
)
from serving_layer.views import DeltaViews


def test_speed_row_wins_only_beyond_batch_cycle():
    batch = [state_row("m1", 10, 10, 50.0), state_row("m2", 20, 20, 40.0)]
    speed = [
        {**state_row("m1", 13, 3, 47.0), "model_version": "2"},  # beyond batch: wins
        state_row("m2", 20, 5, 10.0),  # not beyond what batch covers: ignored
        state_row("m3", 4, 4, 90.0),  # new machine, speed only
    ]
    merged = merge_machine_states(batch, speed)
    assert merged["m1"]["source"] == "speed" and merged["m1"]["last_cycle"] == 13
    assert merged["m1"]["readings_count"] == 13 and merged["m1"]["batch_cycle"] == 10
    assert merged["m1"]["model_version"] == "2"
    assert merged["m2"]["source"] == "batch" and merged["m2"]["readings_count"] == 20
    assert merged["m3"] == {
        **merged["m3"],
        "source": "speed",
        "readings_count": 4,
        "batch_cycle": None,
    }


def test_alert_levels():
    assert [alert_level(r) for r in (5.0, 30.0, 31.0, 60.0, 61.0, None, float("nan"))] == [
        "red",
        "red",
        "amber",
        "amber",
        "green",
        "unknown",
        "unknown",
    ]


def test_latest_boundary_is_most_recent_publication():
    assert latest_boundary([]) is None
    rows = [
        {"run_id": "a", "published_at": 1, "table_versions": [("machine_state", 1)]},
        {"run_id": "b", "published_at": 2, "table_versions": {"machine_state": 3}},
    ]
    assert latest_boundary(rows).table_versions == {"machine_state": 3}


def test_snapshot_reads_batch_at_manifest_versions(tmp_path):
    settings = lake_settings(tmp_path)
    views = DeltaViews(settings)
    store = SnapshotStore(views)
    assert store.refresh() and store.current.machines == {}  # empty lake: empty snapshot
    assert not store.refresh()

    version = write_rows(settings, "machine_state", [state_row("m1", 10, 10, 50.0)])
    write_rows(settings, "speed_view", [state_row("m1", 12, 2, 45.0)])
    assert store.refresh()
    # machine_state is not published yet: the speed row alone answers.
    assert store.current.machines["m1"]["readings_count"] == 2
    publish(settings, "run-1", version, 10)
    assert store.refresh()
    state = store.current.machines["m1"]
    assert (state["source"], state["last_cycle"], state["readings_count"]) == ("speed", 12, 12)

    # An unpublished batch write is invisible until its manifest row lands.
    newer = write_rows(settings, "machine_state", [state_row("m1", 12, 12, 44.0)], "overwrite")
    store.refresh()
    assert store.current.machines["m1"]["readings_count"] == 12
    before = store.current
    publish(settings, "run-2", newer, 12)
    store.refresh()
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
    publish(settings, "r", write_rows(settings, "machine_state", rows), 20)
    write_rows(settings, "silver", [silver_row("m0", c) for c in (1, 2, 3)])
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
    store = SnapshotStore(DeltaViews(settings))
    store.refresh()
    return store.current


def test_fleet_pages_cover_every_machine_once(tmp_path):
    snapshot = _fleet_store(tmp_path)
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
    assert {s["machine_id"] for s in red} == {"m0", "m1", "m5"}
    ranged, _ = query_fleet(snapshot, min_rul=20, max_rul=70)
    assert [s["predicted_rul"] for s in ranged] == [25.0, 45.0, 65.0, 70.0]


def test_bad_cursor_is_rejected(tmp_path):
    snapshot = _fleet_store(tmp_path)
    _, cursor = query_fleet(snapshot, sort="rul", limit=1)
    with pytest.raises(CursorError):
        query_fleet(snapshot, sort="-rul", cursor=cursor)
    with pytest.raises(CursorError):
        query_fleet(snapshot, cursor="not-a-cursor")


def test_history_alerts_and_summary(tmp_path):
    snapshot = _fleet_store(tmp_path)
    history = machine_history(snapshot, "m0", None, None)
    assert [r["cycle"] for r in history] == [1, 2, 3] and "sensor_7" in history[0]
    assert snapshot.machines["m0"]["sensors_cycle"] == 3
    assert len(alerts_since(snapshot, None, 10)) == 1
    summary = fleet_summary(snapshot)
    assert summary["machines"] == 7 and summary["by_alert_level"]["red"] == 3
    assert summary["as_of"]["boundary"]["run_id"] == "r"

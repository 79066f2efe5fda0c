"""The serving layer holds views, never the master dataset: over real HTTP, on a lake with
no silver table, machines answer from the views (latest sensors included), history reads
one machine's bounded range from the history view on demand, alerts are paged by time."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from serving_support import (
    KEYS,
    T0,
    RunningServer,
    at,
    free_port,
    key_settings,
    lake_settings,
    publish,
    readings_of,
    silver_row,
    speed_row,
    state_row,
    with_sensors,
    write_rows,
)

from prognos.core.tables import table_path
from serving_layer.app import create_app
from serving_layer.snapshot import HISTORY_MAX_LIMIT, HISTORY_MAX_SPAN

CYCLES = 120  # readings of m1, one a minute, written in 4 files
ALERTS = 130


def alert(number: int) -> dict:
    """Alerts raised 10 s apart, two at each time (ties are ordered by id)."""
    return {
        "alert_id": f"a{number:04d}",
        "machine_id": f"m{number % 3 + 1}",
        "cycle": number,
        "event_time": at(number),
        "predicted_rul": 10.0,
        "raised_at": T0 + timedelta(seconds=10 * (number // 2)),
    }


def seed(settings) -> None:
    history = None
    for part in range(4):
        cycles = range(part * 30 + 1, part * 30 + 31)
        history = write_rows(settings, "machine_history", [silver_row("m1", c) for c in cycles])
    states = [
        with_sensors(state_row("m1", CYCLES, CYCLES, 80.0)),
        with_sensors(state_row("m2", 10, 10, 50.0)),
    ]
    publish(settings, "run-1", write_rows(settings, "machine_state", states), {0: 200}, history)
    speed = {**speed_row("m2", 12, [200, 201], 40.0), "sensors": list(readings_of(12).items())}
    write_rows(settings, "speed_view", [speed])
    for start in range(0, ALERTS, 40):  # several files, each a time range
        write_rows(settings, "alerts", [alert(n) for n in range(start, min(ALERTS, start + 40))])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    settings = lake_settings(tmp_path_factory.mktemp("bounded"), api_keys=key_settings())
    seed(settings)
    app = create_app(settings, background=False)
    server = RunningServer(app, free_port()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client, app, settings
    finally:
        server.stop()


def get(client, path, **params):
    return client.get(path, params=params, headers={"X-API-Key": KEYS["reader"]})


def test_machines_answer_from_the_views_without_silver(served):
    client, app, settings = served
    assert not table_path("silver", settings).exists()
    batch = get(client, "/v1/machines/m1").json()
    assert (batch["source"], batch["sensors_cycle"]) == ("batch", CYCLES)
    assert batch["sensors"]["sensor_3"] == pytest.approx(readings_of(CYCLES)["sensor_3"])
    speed = get(client, "/v1/machines/m2").json()  # the speed view's newer reading
    assert (speed["source"], speed["sensors_cycle"]) == ("speed", 12)
    assert speed["sensors"]["sensor_3"] == pytest.approx(readings_of(12)["sensor_3"])
    assert "silver" not in app.state.snapshots.current.versions


def test_history_reads_a_bounded_range_in_pages(served):
    client, *_ = served
    ranged = get(client, "/v1/machines/m1/history", **{"from": at(28), "to": at(33)}).json()
    assert [r["cycle"] for r in ranged["readings"]] == [28, 29, 30, 31, 32, 33]
    assert ranged["next_from"] is None and "machine_id" not in ranged["readings"][0]
    assert ranged["readings"][0]["sensor_2"] == pytest.approx(readings_of(28)["sensor_2"])
    cycles, start = [], at(1)
    while start is not None:
        page = get(client, "/v1/machines/m1/history", **{"from": start, "limit": 25}).json()
        assert len(page["readings"]) <= 25
        cycles += [r["cycle"] for r in page["readings"]]
        start = page["next_from"]
    assert cycles == list(range(1, CYCLES + 1))  # none lost, none repeated
    latest = get(client, "/v1/machines/m1/history").json()  # the span up to the last reading
    assert latest["to"] == at(CYCLES).isoformat() and len(latest["readings"]) == CYCLES
    assert get(client, "/v1/machines/m2/history").json()["readings"] == []


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/v1/machines/nope/history", {}, 404, "unknown machine 'nope'"),
        ("/v1/machines/m1/history", {"from": at(5), "to": at(4)}, 422, "must not be after"),
        ("/v1/machines/m1/history", {"to": "2026-01-01T00:00:00"}, 422, "timezone"),
        (
            "/v1/machines/m1/history",
            {"from": at(0), "to": at(0) + HISTORY_MAX_SPAN + timedelta(seconds=1)},
            422,
            "at most 7 days",
        ),
        ("/v1/machines/m1/history", {"limit": HISTORY_MAX_LIMIT + 1}, 422, "limit"),
        ("/v1/machines/m1/history", {"limit": 0}, 422, "limit"),
        ("/v1/alerts", {"cursor": "garbage"}, 422, "invalid cursor"),
        ("/v1/alerts", {"limit": 1001}, 422, "limit"),
    ],
)
def test_bad_history_and_alert_queries_get_clear_errors(served, path, params, status, message):
    client, *_ = served
    response = get(client, path, **{k: str(v) for k, v in params.items()})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def walk_alerts(client, since, limit):
    seen, page = [], get(client, "/v1/alerts", since=since.isoformat(), limit=limit).json()
    while True:
        assert len(page["alerts"]) <= limit
        seen += [a["alert_id"] for a in page["alerts"]]
        if page["next_cursor"] is None:
            return seen
        page = get(client, "/v1/alerts", cursor=page["next_cursor"], limit=limit).json()


def test_alert_pages_lose_and_repeat_nothing(served):
    client, *_ = served
    everything = [alert(n)["alert_id"] for n in range(ALERTS)]
    assert walk_alerts(client, T0 - timedelta(days=30), 17) == everything
    later = T0 + timedelta(seconds=10 * 20)  # raised at or after: alerts 40 on
    assert walk_alerts(client, later, 50) == everything[40:]
    newest = get(client, "/v1/alerts", limit=20).json()
    assert [a["alert_id"] for a in newest["alerts"]] == everything[-20:]
    assert newest["next_cursor"] is None


def test_alerts_written_between_pages_are_not_lost(served):
    client, app, settings = served
    first = get(client, "/v1/alerts", since=T0.isoformat(), limit=ALERTS - 5).json()
    write_rows(settings, "alerts", [alert(n) for n in range(ALERTS, ALERTS + 7)])
    assert app.state.snapshots.refresh()  # the next page is read at the new version
    rest = get(client, "/v1/alerts", cursor=first["next_cursor"], limit=100).json()
    ids = [a["alert_id"] for a in first["alerts"] + rest["alerts"]]
    assert ids == [alert(n)["alert_id"] for n in range(ALERTS + 7)]

from datetime import UTC, datetime

import pytest

from prognos.core import replay as replay_module
from prognos.core.data import load_cmapss
from prognos.core.errors import PrognosError
from prognos.core.events import encode_event, parse_event
from prognos.core.replay import encoded_messages, fleet_events, fleet_frame, fleet_messages

pytestmark = pytest.mark.unit


def test_machines_report_round_robin_by_cycle():
    fleet = fleet_frame("FD001", "test", machines=3)
    assert (
        fleet["machine"].head(6).tolist()
        == [
            "FD001-test-0001",
            "FD001-test-0002",
            "FD001-test-0003",
        ]
        * 2
    )
    assert fleet["cycle"].head(6).tolist() == [1, 1, 1, 2, 2, 2]
    assert fleet["cycle"].is_monotonic_increasing


def test_scaled_copies_are_resampled_with_small_noise():
    original = fleet_frame("FD001", "train", machines=5)
    scaled = fleet_frame("FD001", "train", machines=5, scale=3)
    assert scaled["machine"].nunique() == 15
    lengths = scaled.groupby("machine")["cycle"].max()
    assert lengths["FD001-train-0001-c01"] != lengths["FD001-train-0001"]
    assert len(scaled) != 3 * len(original)
    for machine, trajectory in scaled.groupby("machine"):
        assert trajectory["cycle"].tolist() == list(range(1, len(trajectory) + 1)), machine
    sensor = "sensor_11"
    drift = abs(
        scaled.groupby("machine")[sensor].mean()["FD001-train-0001-c02"]
        - original.groupby("machine")[sensor].mean()["FD001-train-0001"]
    )
    assert drift < 0.1 * original[sensor].std() + 0.05


def test_scaling_is_reproducible():
    first = fleet_frame("FD001", "test", machines=2, scale=2, seed=7)
    second = fleet_frame("FD001", "test", machines=2, scale=2, seed=7)
    assert first.equals(second)


def test_every_replayed_event_passes_the_schema():
    fleet = fleet_frame("FD001", "test", machines=2, scale=2)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = list(fleet_events(fleet, start, 60.0, "replay"))
    assert len(events) == len(fleet)
    assert all(parse_event(encode_event(event)) == event for event in events)
    truth = load_cmapss("FD001", "test")
    assert events[0].sensors["sensor_3"] == truth.iloc[0]["sensor_3"]


def test_encoder_process_yields_the_inline_messages_in_order(monkeypatch):
    fleet = fleet_frame("FD001", "test", machines=4)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    inline = list(fleet_messages(fleet, start, 60.0, "replay"))
    monkeypatch.setattr(replay_module, "ENCODER_PROCESS_MIN_EVENTS", 1)
    monkeypatch.setattr(replay_module, "ENCODE_CHUNK_EVENTS", 97)
    assert list(encoded_messages(fleet, start, 60.0, "replay")) == inline


@pytest.mark.parametrize(("machines", "scale"), [(0, 1), (3, 0)])
def test_bad_fleet_sizes_are_rejected(machines, scale):
    with pytest.raises(PrognosError, match="must be >= 1"):
        fleet_frame("FD001", "test", machines=machines, scale=scale)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"rate": 0}, "--rate must be > 0"), ({"cycle_seconds": -1}, "--cycle-seconds must be > 0")],
)
def test_bad_pacing_is_rejected_before_connecting(options, message):
    from prognos.core.replay import replay
    from prognos.core.settings import load_settings

    unreachable = load_settings(kafka_bootstrap_servers="127.0.0.1:1")
    with pytest.raises(PrognosError, match=message):
        replay("FD001", "test", settings=unreachable, **options)

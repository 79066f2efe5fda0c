"""The speed layer end to end in-process: real broker, real Spark, real Delta, real TF.

One streaming query runs for the module; the tests feed it in order and check the speed
view, late rows, dead letters, alerts, promotion pick-up and expiry by the manifest.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from prognos.core import lake
from prognos.core.boundary import expire_speed_view
from prognos.core.data import load_cmapss
from prognos.core.features import fit_condition_model
from prognos.core.registry import FilesystemRegistry
from prognos.core.scoring import model_window
from tests.speed import support as S

UNITS = [1, 2, 3]
LATE_MACHINE = "FD001-test-0099"
NEW_MACHINE = "FD001-test-0050"


@pytest.fixture(scope="module")
def versions(speed_settings):
    """Champion v1 (RUL around 100: green) and v2 registered but not promoted (red)."""
    first = S.register_model(speed_settings, offset=100.0)
    second = S.register_model(speed_settings, offset=-50.0, promote=False)
    return first, second


@pytest.fixture(scope="module")
def metrics():
    """The speed layer's metrics (no HTTP port), fed by the query build_query starts."""
    from speed_layer.metrics import SpeedMetrics

    return SpeedMetrics()


@pytest.fixture(scope="module")
def query(spark, speed_settings, versions, metrics):
    from speed_layer.stream import build_query

    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "2")  # 2 cores: 2 state partitions
    running = build_query(spark, speed_settings, metrics=metrics)
    yield running
    running.stop()
    spark.conf.set("spark.sql.shuffle.partitions", previous)


@pytest.fixture(scope="module")
def replayed(speed_settings, query):
    """FD001 test machines 1-3 in cycle order plus one malformed message."""
    rows = S.fd001_test_rows(UNITS, speed_settings)
    longest = max(len(r) for r in rows.values())
    messages = []
    for index in range(longest):
        for unit in UNITS:
            if index < len(rows[unit]):
                row = rows[unit][index]
                name = S.machine_name(unit)
                messages.append((name.encode(), S.event_bytes(name, row["cycle"], row)))
    messages.append((b"FD001-test-0001", b'{"schema_version": 1, "cycle": "x"}'))
    S.send(speed_settings, messages)
    S.wait_until(lambda: _query_ok(query) and len(speed_view(speed_settings)) >= len(UNITS))
    return rows


def _query_ok(query) -> bool:
    if query.exception() is not None:
        raise AssertionError(f"query failed: {query.exception()}")
    return True


def speed_view(settings) -> pd.DataFrame:
    try:
        frame = lake.read_table_arrow("speed_view", settings).to_pandas()
    except Exception:
        return pd.DataFrame()
    return frame.set_index("machine_id", drop=False) if len(frame) else frame


def table(settings, name: str) -> pd.DataFrame:
    try:
        return lake.read_table_arrow(name, settings).to_pandas()
    except Exception:
        return pd.DataFrame()


def gold_features(settings, history: list[dict], machine_id: str) -> pd.DataFrame:
    """Gold's own applyInPandas function over the same readings (silver-like frame)."""
    from spark_jobs import gold

    # gold groups by machine, or (newer) by buckets of machines: one machine is a bucket
    compute = getattr(gold, "features_per_bucket", None) or gold.features_per_machine
    model = fit_condition_model(load_cmapss("FD001", "train", settings))
    frame = pd.DataFrame(history).assign(machine_id=machine_id)
    frame["event_time"] = pd.Timestamp("2026-01-01", tz="UTC")
    return compute({"FD001": model.to_json()})(frame)


def test_latest_cycle_of_each_machine_in_speed_view(speed_settings, replayed):
    view = S.wait_until(lambda: _complete(speed_view(speed_settings), replayed), timeout_s=180)
    for unit, rows in replayed.items():
        row = view.loc[S.machine_name(unit)]
        assert row["last_cycle"] == rows[-1]["cycle"]
        assert row["readings_count"] == len(rows)
        assert len(set(row["pending_offsets"])) == len(rows)
        assert row["model_version"] == "1"
        assert row["alert_level"] == "green"
        assert row["sensors"] and row["features"]


def _complete(view: pd.DataFrame, replayed) -> pd.DataFrame | None:
    if len(view) < len(replayed):
        return None
    done = all(
        view.loc[S.machine_name(u), "last_cycle"] == rows[-1]["cycle"]
        for u, rows in replayed.items()
    )
    return view if done else None


def test_speed_features_and_rul_equal_gold_for_the_same_cycle(speed_settings, replayed):
    unit = 2
    name = S.machine_name(unit)
    view = S.wait_until(lambda: _complete(speed_view(speed_settings), replayed))
    gold = gold_features(speed_settings, replayed[unit], name)
    last = gold.sort_values("cycle").iloc[-1]
    speed = dict(view.loc[name, "features"])
    feature_names = [c for c in gold.columns if c not in ("machine_id", "cycle", "event_time")]
    assert sorted(speed) == sorted(feature_names)
    assert np.array_equal(
        [speed[c] for c in feature_names], [float(last[c]) for c in feature_names]
    )
    champion = FilesystemRegistry(speed_settings.registry).load(speed_settings.serving_model, 1)
    serving = champion.metadata["serving"]
    window = model_window(gold, serving["input_columns"], serving["window"])
    batch_rul = float(champion.predict(window)["rul"][0])
    assert view.loc[name, "predicted_rul"] == pytest.approx(batch_rul, abs=1e-6)


def test_malformed_event_goes_to_the_dead_letter_topic_with_its_reason(speed_settings, replayed):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        speed_settings.topic_dead_letter,
        bootstrap_servers=speed_settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        messages = S.wait_until(lambda: list(consumer), timeout_s=60, interval_s=0)
    finally:
        consumer.close()
    assert len(messages) == 1
    headers = dict(messages[0].headers)
    assert b"cycle must be an integer" in headers["reason"]
    assert b"missing field machine_id" in headers["reason"]
    assert headers["source"].startswith(speed_settings.topic_readings.encode())
    assert messages[0].value == b'{"schema_version": 1, "cycle": "x"}'


def test_late_event_goes_to_late_rows_with_its_coordinates(speed_settings, replayed):
    row = replayed[1][0]
    late_at = S.START  # hours behind the watermark set by the replay
    S.send(speed_settings, [(LATE_MACHINE.encode(), S.event_bytes(LATE_MACHINE, 1, row, late_at))])
    late = S.wait_until(lambda: _nonempty(table(speed_settings, "late_rows")), timeout_s=300)
    assert late["machine_id"].tolist() == [LATE_MACHINE]
    record = late.iloc[0]
    assert record["kafka_offset"] >= 0 and record["kafka_partition"] in (0, 1)
    assert record["watermark"] > record["event_time"]
    assert LATE_MACHINE not in speed_view(speed_settings).index


def _nonempty(frame: pd.DataFrame):
    return frame if len(frame) else None


def test_unknown_machine_and_out_of_order_cycles(speed_settings, replayed):
    rows = S.fd001_test_rows([5], speed_settings)[5][:40]
    base = S.START + timedelta(minutes=int(replayed[3][-1]["cycle"]) - 2)

    def message(row):
        at = base + timedelta(seconds=int(row["cycle"]))
        return (NEW_MACHINE.encode(), S.event_bytes(NEW_MACHINE, row["cycle"], row, at))

    held_back = {20, 21, 22}
    S.send(speed_settings, [message(r) for r in rows if r["cycle"] not in held_back])
    S.wait_until(lambda: _has(speed_view(speed_settings), NEW_MACHINE, count=37))
    S.send(speed_settings, [message(r) for r in rows if r["cycle"] in held_back])
    view = S.wait_until(lambda: _has(speed_view(speed_settings), NEW_MACHINE, count=40))
    assert view.loc[NEW_MACHINE, "last_cycle"] == 40
    gold = gold_features(speed_settings, rows, NEW_MACHINE).sort_values("cycle").iloc[-1]
    speed = dict(view.loc[NEW_MACHINE, "features"])
    assert all(speed[c] == float(gold[c]) for c in speed)


def _has(view: pd.DataFrame, machine: str, count: int):
    if len(view) and machine in view.index and view.loc[machine, "readings_count"] == count:
        return view
    return None


def test_promotion_switches_scoring_within_few_batches_and_alerts_once(
    speed_settings, replayed, versions, query
):
    name = S.machine_name(1)
    registry = FilesystemRegistry(speed_settings.registry)
    registry.promote(speed_settings.serving_model, versions[1])
    row = replayed[1][-1]
    first_batch = query.lastProgress["batchId"]
    cycle = row["cycle"] + 1
    later = S.START + timedelta(hours=6)  # ahead of every event so far: not late

    def message(cycle_number: int):
        at = later + timedelta(minutes=cycle_number)
        return (name.encode(), S.event_bytes(name, cycle_number, row, at))

    S.send(speed_settings, [message(cycle)])
    view = S.wait_until(
        lambda: _version(speed_view(speed_settings), name, str(versions[1])), timeout_s=300
    )
    assert query.lastProgress["batchId"] - first_batch <= 5
    assert view.loc[name, "alert_level"] == "red"
    S.send(speed_settings, [message(cycle + 1)])
    S.wait_until(lambda: speed_view(speed_settings).loc[name, "last_cycle"] == cycle + 1)
    alerts = table(speed_settings, "alerts")
    mine = alerts[alerts.machine_id == name]
    assert len(mine) == 1
    alert = mine.iloc[0]
    assert (alert["alert_level"], alert["previous_level"]) == ("red", "green")
    assert alert["cycle"] == cycle and alert["model_version"] == str(versions[1])
    assert alert["predicted_rul"] <= speed_settings.alert_red_rul
    keys = _alert_keys(speed_settings)
    assert keys.count(alert["alert_id"].encode()) == 1


def _version(view: pd.DataFrame, machine: str, version: str):
    return view if len(view) and view.loc[machine, "model_version"] == version else None


def _alert_keys(settings) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic_alerts,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        return [message.key for message in consumer]
    finally:
        consumer.close()


def test_manifest_expires_covered_rows_and_trims_partial_ones(spark, speed_settings, replayed):
    view = speed_view(speed_settings)
    keep = S.machine_name(3)
    partition = int(view.loc[keep, "kafka_partition"])
    offsets = sorted(view.loc[keep, "pending_offsets"])
    floor = int(offsets[len(offsets) // 2])
    boundary = {0: 0, 1: 0}
    for machine, row in view.iterrows():
        other = int(row["kafka_partition"])
        if machine != keep and other != partition:
            boundary[other] = max(boundary[other], int(max(row["pending_offsets"])) + 1)
    boundary[partition] = floor
    result = expire_speed_view(spark, speed_settings, boundary)
    after = speed_view(speed_settings)
    assert after.loc[keep, "readings_count"] == len([o for o in offsets if o >= floor])
    assert result["trimmed"] >= 1
    for machine, row in view.iterrows():
        if int(row["kafka_partition"]) != partition:
            assert machine not in after.index
    assert result["boundary"] == boundary


def test_metrics_count_input_dead_letters_late_rows_and_alerts(metrics, query):
    from prometheus_client import generate_latest

    S.wait_until(lambda: metrics.input_rows._value.get() > 0, timeout_s=60)
    text = generate_latest(metrics.registry).decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['prognos_speed_records_total{kind="dead"}'] == 1
    assert values['prognos_speed_records_total{kind="late"}'] == 1
    assert values['prognos_speed_records_total{kind="alert"}'] == 1
    assert values["prognos_speed_input_rows_total"] >= 207
    assert values["prognos_speed_processing_lag_seconds"] > 0
    assert "prognos_speed_state_rows" in values
    assert values['prognos_speed_write_phase_seconds_total{phase="merge"}'] > 0
    assert values['prognos_speed_trigger_phase_seconds_total{phase="addBatch"}'] > 0
    assert values["prognos_speed_progress_batches_total"] >= values["prognos_speed_batches_total"]
    assert query.lastProgress["stateOperators"][0]["numShufflePartitions"] == 2

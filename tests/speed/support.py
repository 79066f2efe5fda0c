"""Helpers of the speed-layer tests: a small real SavedModel in the registry, events."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS, load_cmapss
from prognos.core.events import Event, encode_event
from prognos.core.features import HEALTH, FeatureConfig, fit_condition_model, normalised_columns
from prognos.core.registry import FilesystemRegistry

WINDOW = 30
START = datetime(2026, 1, 1, tzinfo=UTC)
CYCLE_SECONDS = 60


def input_columns(config: FeatureConfig) -> list[str]:
    smoothed = [f"{sensor}_mean_10" for sensor in config.sensors]
    return [*normalised_columns(config), *smoothed, HEALTH, f"{HEALTH}_mean_10"]


def write_linear_saved_model(offset: float, scale: float, features: int):
    """A real SavedModel: rul = offset + scale * mean of the window's last row."""

    def write(directory: Path) -> None:
        import tensorflow as tf

        class Linear(tf.Module):
            @tf.function(
                input_signature=[tf.TensorSpec([None, WINDOW, features], tf.float32, "window")]
            )
            def serve(self, window_tensor):
                last = tf.reduce_mean(window_tensor[:, -1, :], axis=1)
                return {"rul": offset + scale * last, "fail_prob": tf.sigmoid(-last)}

        module = Linear()
        tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})

    return write


def register_model(settings, offset: float, scale: float = 10.0, promote: bool = True) -> int:
    """Register a linear model with real serving metadata (FD001 condition model)."""
    config = FeatureConfig()
    condition = fit_condition_model(load_cmapss("FD001", "train", settings), config)
    columns = input_columns(config)
    metadata = {
        "params": {"feature": config.to_dict()},
        "metrics": {"validation": {"rmse": 20.0}},
        "condition_model": json.loads(condition.to_json()),
        "serving": {"input": "window", "window": WINDOW, "input_columns": columns},
    }
    registry = FilesystemRegistry(settings.registry)
    version = registry.register(
        settings.serving_model, write_linear_saved_model(offset, scale, len(columns)), metadata
    )
    if promote:
        registry.promote(settings.serving_model, version)
    return version


def event_bytes(machine_id: str, cycle: int, row: dict, at: datetime | None = None) -> bytes:
    return encode_event(
        Event(
            machine_id=machine_id,
            cycle=int(cycle),
            event_time=at or START + timedelta(seconds=CYCLE_SECONDS * int(cycle)),
            settings={c: float(row[c]) for c in SETTING_COLUMNS},
            sensors={c: float(row[c]) for c in SENSOR_COLUMNS},
            source="test",
        )
    )


def fd001_test_rows(units: list[int], settings) -> dict[int, list[dict]]:
    frame = load_cmapss("FD001", "test", settings)
    return {u: frame[frame.machine_id == u].to_dict("records") for u in units}


def machine_name(unit: int) -> str:
    return f"FD001-test-{unit:04d}"


def send(settings, messages: list[tuple[bytes | None, bytes | None]], partition=None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    try:
        for key, value in messages:
            producer.send(settings.topic_readings, key=key, value=value, partition=partition)
        producer.flush(30)
    finally:
        producer.close(5)


def wait_until(condition, timeout_s: float = 300.0, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value is not None if hasattr(value, "columns") else bool(value):
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")

"""Helpers of the serving tests: a tiny real lake written with delta-rs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
from deltalake import write_deltalake

from prognos.core.settings import load_settings
from prognos.core.tables import get_table, table_path

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(cycle: int) -> datetime:
    return T0 + timedelta(minutes=cycle)


def write_rows(settings, name: str, rows: list[dict], mode: str = "append") -> int:
    """Write rows to a catalog table with its schema; returns the new Delta version."""
    schema = get_table(name).arrow_schema
    full = [{c: row.get(c) for c in schema.names} for row in rows]
    path = table_path(name, settings)
    write_deltalake(str(path), pa.Table.from_pylist(full, schema=schema), mode=mode)
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


def silver_row(machine_id: str, cycle: int, base: float = 500.0) -> dict:
    row = {"machine_id": machine_id, "cycle": cycle, "event_time": at(cycle), "source": "test"}
    row.update(readings_of(cycle, base))
    return row


def readings_of(cycle: int, base: float = 500.0) -> dict:
    """The settings and sensors of a reading (a silver row's, a view row's map)."""
    readings = {f"setting_{i}": 0.1 * i for i in range(1, 4)}
    readings.update({f"sensor_{i}": base + i + cycle * 0.1 for i in range(1, 22)})
    return readings


def with_sensors(row: dict) -> dict:
    """A view row carrying its latest readings (as the batch and speed layers write it)."""
    return {**row, "sensors": list(readings_of(row["last_cycle"]).items())}


def state_row(machine_id: str, cycle: int, count: int, rul: float, version="1") -> dict:
    return {
        "machine_id": machine_id,
        "last_cycle": cycle,
        "last_event_time": at(cycle),
        "readings_count": count,
        "predicted_rul": rul,
        "model_version": version,
    }


def speed_row(
    machine_id: str, cycle: int, pending: list[int], rul: float, partition=0, version="1"
) -> dict:
    """A speed-view row whose readings sit at `pending` offsets of `partition`."""
    return {
        **state_row(machine_id, cycle, len(pending), rul, version),
        "kafka_partition": partition,
        "kafka_offset": max(pending, default=None),
        "pending_offsets": list(pending),
    }


def publish(
    settings,
    run_id: str,
    machine_state_version: int,
    offsets: dict[int, int],
    history_version: int | None = None,
) -> int:
    """Append a manifest row: machine_state (and machine_history) at its version covers
    offsets below `offsets`."""
    versions = [("machine_state", machine_state_version)]
    if history_version is not None:
        versions.append(("machine_history", history_version))
    return write_rows(
        settings,
        "batch_manifest",
        [
            {
                "run_id": run_id,
                "published_at": datetime.now(UTC),
                "table_versions": versions,
                "partition_offsets": list(offsets.items()),
                "max_event_time": at(40),
                "rows_covered": sum(offsets.values()),
            }
        ],
    )


def lake_settings(tmp_path, **overrides):
    return load_settings(state_dir=tmp_path / "state", **overrides)


def seed_lake(settings) -> None:
    rows = [
        with_sensors(state_row("FD001-test-0001", 31, 31, 10.0)),
        with_sensors(state_row("m2", 40, 40, 80.0)),
        with_sensors(state_row("m3", 10, 10, 50.0)),
    ]
    history = write_rows(
        settings,
        "machine_history",
        [silver_row(m, c) for m in ("FD001-test-0001", "m2") for c in range(1, 6)],
    )
    # partition 2 holds m3: offsets 0-9 are its cycles 1-10 (batch), 10-11 its cycles 11-12
    state = write_rows(settings, "machine_state", rows)
    publish(settings, "run-1", state, {2: 10}, history_version=history)
    write_rows(settings, "speed_view", [speed_row("m3", 12, [10, 11], 25.0, partition=2)])
    write_rows(
        settings,
        "alerts",
        [
            {
                "alert_id": "a1",
                "machine_id": "FD001-test-0001",
                "cycle": 31,
                "predicted_rul": 10.0,
                "threshold": 30.0,
                "raised_at": at(31),
            }
        ],
    )


# --- a tiny real SavedModel in the registry ---------------------------------------------

WINDOW, FEATURES = 4, 3
MODEL = "rul_lstm"
KEYS = {"reader": "reader-secret", "operator": "operator-secret", "admin": "admin-secret"}


def save_tiny_model(directory, scale: float) -> None:
    """A SavedModel with the project's signature: window[None,T,F] -> rul, fail_prob."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(
                tf.reshape(tf.range(WINDOW * FEATURES, dtype=tf.float32), [WINDOW, FEATURES])
                * scale
                / 10.0
            )

        @tf.function(
            input_signature=[tf.TensorSpec([None, WINDOW, FEATURES], tf.float32, name="window")]
        )
        def serve(self, window):
            rul = tf.reduce_sum(window * self.w, axis=[1, 2]) + 50.0
            return {"rul": rul, "fail_prob": tf.sigmoid(-rul / 10.0)}

    module = Tiny()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})


def tiny_registry(root, scales=(1.0, 1.5)):
    from prognos.core.registry import FilesystemRegistry

    registry = FilesystemRegistry(root)
    for scale in scales:
        registry.register(
            MODEL,
            lambda d, s=scale: save_tiny_model(d, s),
            {"metrics": {"validation": {"rmse": 10.0 * scale}}, "scale": scale},
        )
    registry.promote(MODEL, 1)
    if len(scales) > 1:
        registry.set_challenger(MODEL, 2)
    return registry


def key_settings() -> str:
    from serving_layer.auth import hash_key

    return ",".join(f"{hash_key(key)}:{role}:{role}-user" for role, key in KEYS.items())


# --- a real HTTP server in a thread -----------------------------------------------------


class RunningServer:
    """uvicorn serving `app` on 127.0.0.1:<port> in a thread; `stop()` ends it."""

    def __init__(self, app, port: int) -> None:
        import threading

        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> RunningServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

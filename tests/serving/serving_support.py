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
    row.update({f"sensor_{i}": base + i + cycle * 0.1 for i in range(1, 22)})
    row.update({f"setting_{i}": 0.1 * i for i in range(1, 4)})
    return row


def state_row(machine_id: str, cycle: int, count: int, rul: float, version="1") -> dict:
    return {
        "machine_id": machine_id,
        "last_cycle": cycle,
        "last_event_time": at(cycle),
        "readings_count": count,
        "predicted_rul": rul,
        "model_version": version,
    }


def publish(settings, run_id: str, machine_state_version: int, max_cycle: int) -> int:
    return write_rows(
        settings,
        "batch_manifest",
        [
            {
                "run_id": run_id,
                "published_at": datetime.now(UTC),
                "table_versions": [("machine_state", machine_state_version)],
                "partition_offsets": [(0, max_cycle)],
                "max_event_time": at(max_cycle),
                "rows_covered": max_cycle,
            }
        ],
    )


def lake_settings(tmp_path, **overrides):
    return load_settings(state_dir=tmp_path / "state", **overrides)

"""The speed layer's alerts MERGE reads only the files of the source's event times, not the
whole (ever growing) alerts table, and still inserts each alert id once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from prognos.core.tables import get_table
from speed_layer.stream import alerts_merge_condition

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 6  # one file of alerts per day


def alerts(day: int, numbers: range) -> pa.Table:
    rows = [
        {
            "alert_id": f"a{day}-{n}",
            "machine_id": f"m{n}",
            "cycle": n,
            "event_time": T0 + timedelta(days=day, minutes=n),
            "raised_at": T0 + timedelta(days=day, minutes=n, seconds=2),
        }
        for n in numbers
    ]
    schema = get_table("alerts").arrow_schema
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema)


def merge(path, source) -> dict:
    return (
        DeltaTable(str(path))
        .merge(source, alerts_merge_condition(source), source_alias="s", target_alias="t")
        .when_not_matched_insert_all()
        .execute()
    )


def test_the_alerts_merge_skips_files_outside_the_source_event_times(tmp_path):
    path = tmp_path / "alerts"
    for day in range(DAYS):
        write_deltalake(str(path), alerts(day, range(10)), mode="append")
    # the newest day again (a replayed micro-batch), plus two new alerts of that day
    replay = pa.concat_tables([alerts(DAYS - 1, range(5)), alerts(DAYS - 1, range(10, 12))])
    metrics = merge(path, replay)
    assert metrics["num_target_files_skipped_during_scan"] >= DAYS - 1
    assert metrics["num_target_files_scanned"] <= 1
    assert (metrics["num_target_rows_inserted"], metrics["num_source_rows"]) == (2, 7)
    ids = DeltaTable(str(path)).to_pyarrow_table(columns=["alert_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == DAYS * 10 + 2


def test_the_condition_bounds_by_event_time_and_matches_on_the_id():
    condition = alerts_merge_condition(alerts(0, range(3)))
    assert condition.startswith("t.alert_id = s.alert_id AND t.event_time >= '")
    # the bounds are widened by the statistics' millisecond precision
    assert "'2025-12-31T23:59:59.999000+00:00'" in condition
    assert "'2026-01-01T00:02:00.001000+00:00'" in condition
    no_time = alerts(0, range(1)).set_column(
        3, "event_time", pa.array([None], pa.timestamp("us", "UTC"))
    )
    assert alerts_merge_condition(no_time) == "t.alert_id = s.alert_id"

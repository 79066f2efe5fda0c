"""Spark parses the wire format with the event contract's own schema."""

from __future__ import annotations

from datetime import UTC, datetime

from prognos.core.events import encode_event, event_spark_schema
from prognos.core.replay import fleet_events, fleet_frame


def test_spark_from_json_reads_replayed_events(spark):
    from pyspark.sql import functions as F

    fleet = fleet_frame("FD001", "test", machines=2)
    events = list(fleet_events(fleet, datetime(2026, 1, 1, tzinfo=UTC), 60.0, "replay"))[:10]
    frame = spark.createDataFrame([(encode_event(e).decode(),) for e in events], "value string")
    parsed = frame.select(F.from_json("value", event_spark_schema()).alias("event")).collect()

    assert len(parsed) == len(events)
    for row, event in zip(parsed, events, strict=True):
        assert row.event.schema_version == event.schema_version
        assert row.event.machine_id == event.machine_id
        assert row.event.cycle == event.cycle
        assert row.event.source == event.source
        assert row.event.sensors.asDict() == event.sensors
        assert row.event.settings.asDict() == event.settings
        assert row.event.event_time == event.to_dict()["event_time"]

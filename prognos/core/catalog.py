"""Every Kafka topic of the pipeline in one place (tables: see prognos.core.tables)."""

from __future__ import annotations

from dataclasses import dataclass

from prognos.core.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str


def topics(settings: Settings) -> dict[str, TopicSpec]:
    """The pipeline's topics keyed by role (readings, alerts, dead_letter)."""
    return {
        "readings": TopicSpec(
            settings.topic_readings,
            settings.topic_readings_partitions,
            "sensor events, key = machine id, JSON",
        ),
        "alerts": TopicSpec(
            settings.topic_alerts, settings.topic_alerts_partitions, "maintenance alerts"
        ),
        "dead_letter": TopicSpec(
            settings.topic_dead_letter,
            settings.topic_dead_letter_partitions,
            "events failing the schema, reason in a header",
        ),
    }

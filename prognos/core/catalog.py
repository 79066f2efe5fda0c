"""Every Kafka topic of the pipeline in one place (tables: see prognos.core.tables)."""

from __future__ import annotations

from dataclasses import dataclass

from prognos.core.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str
    replication_factor: int = 1
    min_insync_replicas: int = 1

    @property
    def configs(self) -> dict[str, str]:
        """Topic configs prognos sets at creation (the broker's defaults otherwise)."""
        return {"min.insync.replicas": str(self.min_insync_replicas)}


def topics(settings: Settings) -> dict[str, TopicSpec]:
    """The pipeline's topics keyed by role (readings, alerts, dead_letter), replicated as
    the settings say (1 on the single broker, 3 with min.insync.replicas=2 on a cluster)."""
    copies = {
        "replication_factor": settings.topic_replication_factor,
        "min_insync_replicas": settings.topic_min_insync_replicas,
    }
    return {
        "readings": TopicSpec(
            settings.topic_readings,
            settings.topic_readings_partitions,
            "sensor events, key = machine id, JSON",
            **copies,
        ),
        "alerts": TopicSpec(
            settings.topic_alerts, settings.topic_alerts_partitions, "maintenance alerts", **copies
        ),
        "dead_letter": TopicSpec(
            settings.topic_dead_letter,
            settings.topic_dead_letter_partitions,
            "events failing the schema, reason in a header",
            **copies,
        ),
    }

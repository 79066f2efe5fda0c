"""Fixtures of the speed-layer tests: settings on the session broker with fresh topics."""

from __future__ import annotations

import uuid

import pytest

from prognos.core import stack
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def speed_settings(broker_settings, tmp_path_factory):
    """Settings for one test module: own state dir, own topics, no metrics port."""
    tag = uuid.uuid4().hex[:8]
    settings = make_settings(
        tmp_path_factory.mktemp("speed-state"),
        kafka_bootstrap_servers=broker_settings.kafka_bootstrap_servers,
        kafka_external=True,
        topic_readings=f"readings-{tag}",
        topic_readings_partitions=2,
        topic_alerts=f"alerts-{tag}",
        topic_dead_letter=f"dead-{tag}",
        speed_trigger="1 second",
        speed_metrics_port=0,
        serving_model="rul_test",
    )
    stack.ensure_topics(settings)
    return settings

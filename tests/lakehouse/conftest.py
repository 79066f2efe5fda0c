"""Fixtures of the lakehouse contract tests: a fresh lake per test on the test broker."""

from __future__ import annotations

import pytest

from prognos.core.settings import load_settings


@pytest.fixture
def lake_settings(broker_settings, tmp_path):
    """Settings on the test broker with a lake and checkpoints of this test only."""
    return load_settings(
        state_dir=tmp_path / "state",
        jars_dir=broker_settings.jars,
        spark_master="local[2]",
        kafka_bootstrap_servers=broker_settings.kafka_bootstrap_servers,
        kafka_controller_port=broker_settings.kafka_controller_port,
        kafka_client_timeout_ms=10000,
    )

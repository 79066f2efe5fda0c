"""Fixtures of the speed-layer tests: settings on the session broker with fresh topics."""

from __future__ import annotations

import pytest

from tests.conftest import fresh_topic_settings


@pytest.fixture(scope="module")
def speed_settings(broker_settings, tmp_path_factory):
    """Settings for one test module: own state dir, own topics, no metrics port."""
    return fresh_topic_settings(
        broker_settings, tmp_path_factory.mktemp("speed-state"), serving_model="rul_test"
    )

"""Fixtures shared by the serving tests that drive a real server from outside."""

from __future__ import annotations

import pytest
from serving_support import (
    RunningServer,
    free_port,
    key_settings,
    lake_settings,
    seed_lake,
    tiny_registry,
)

from serving_layer.app import create_app


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """Base URL of a real server (uvicorn thread) over the seeded lake and the tiny model
    pair, with the test API keys; one per test module."""
    settings = lake_settings(
        tmp_path_factory.mktemp("served"), api_keys=key_settings(), shadow_share=0.5
    )
    seed_lake(settings)
    tiny_registry(settings.registry)
    server = RunningServer(create_app(settings, background=False), free_port()).start()
    try:
        yield server.url
    finally:
        server.stop()

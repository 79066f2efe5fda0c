"""`prognos run` (the main job of `make run`) on the test broker."""

from __future__ import annotations

import subprocess
import sys
import uuid

from prognos.core.data import load_cmapss
from tests.functional.kafka_helpers import read_all


def test_run_brings_the_stack_up_and_replays_the_test_fleet(broker_settings, broker_env):
    topic = f"run-readings-{uuid.uuid4().hex[:8]}"  # created by the run's `stack up` step
    env = {**broker_env, "PROGNOS_TOPIC_READINGS": topic}
    result = subprocess.run(
        [sys.executable, "-m", "prognos.cli.main", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    expected = len(load_cmapss("FD001", "test"))
    assert f"sent {expected} events of 100 machines" in result.stdout
    assert result.stdout.strip().endswith("run: done")
    records = read_all(broker_settings.kafka_bootstrap_servers, topic, expected)
    assert len(records) == expected

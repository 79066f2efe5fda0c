"""Schemathesis (its CLI, in a subprocess) against the published OpenAPI spec: no 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serving_support import KEYS

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.parametrize("role", ["admin", "reader"])
def test_no_server_errors(server_url, role, tmp_path):
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{server_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--seed",
            "7",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
            "--no-shrink",
            "-H",
            f"X-API-Key: {KEYS[role]}",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

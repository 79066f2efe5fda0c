"""The CLI answers a PrognosError with one line `error: <message>` and the error's exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from prognos.cli.main import PrognosGroup
from prognos.core.errors import AliasConflictError, PrognosError
from prognos.core.registry import UnknownVersionError
from prognos.core.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit


def group_raising(error: Exception) -> click.Group:
    @click.group(cls=PrognosGroup)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise error

    return group


@pytest.mark.parametrize(
    ("error", "line", "exit_code"),
    [
        (UnknownVersionError("model 'x' has no version 9"), "model 'x' has no version 9", 1),
        (
            AliasConflictError("aliases of 'x' changed\nre-read them and retry"),
            "aliases of 'x' changed; re-read them and retry",
            75,
        ),
        (PrognosError(""), "PrognosError", 1),
    ],
)
def test_a_prognos_error_is_one_line_and_its_exit_code(error, line, exit_code):
    result = CliRunner().invoke(group_raising(error), ["fail"])
    assert result.exit_code == exit_code
    assert result.stderr == f"error: {line}\n"
    assert result.stdout == ""


def test_a_bug_is_not_dressed_up_as_a_user_error():
    result = CliRunner().invoke(group_raising(KeyError("bug")), ["fail"])
    assert isinstance(result.exception, KeyError)
    assert "error:" not in result.stderr


def test_an_invalid_setting_through_the_real_cli_is_one_line_without_traceback(tmp_path):
    env = {
        **os.environ,
        "PROGNOS_STATE_DIR": str(tmp_path),
        "PROGNOS_API_PORT": "not-a-port",
    }
    result = subprocess.run(
        [sys.executable, "-m", "prognos.cli.main", "status"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: invalid setting: api_port (PROGNOS_API_PORT) = 'not-a-port'")

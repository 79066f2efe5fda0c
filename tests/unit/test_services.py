"""The `prognos` command's background services and foreground steps, on real child
processes: PID files, the started.pids record, stop by PID, deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prognos.cli import services
from prognos.core import supervisor
from prognos.core.errors import PrognosError
from prognos.core.settings import settings_env
from tests.conftest import make_settings

MARKER = b"prognos-services-test"
SLEEPER = f"import time; time.sleep(60)  # {MARKER.decode()}"
SLEEPY = services.Service("sleepy", MARKER)
# Starts a child that leaves the group for a session of its own, as Airflow's task runners do.
ESCAPER = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)  # {MARKER.decode()}
"""


@pytest.fixture
def settings(tmp_path):
    settings = make_settings(tmp_path)
    yield settings
    supervisor.kill(SLEEPY.pid_file(settings))


def exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in "ZX"


def wait_for(condition, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


def first_line(log: Path) -> str:
    return wait_for(lambda: log.exists() and log.read_text().strip() and log.read_text().split()[0])


def test_service_start_status_stop(settings):
    command = [sys.executable, "-c", SLEEPER]
    pid = services.start_service(settings, SLEEPY, command, dict(os.environ))
    assert services.running_pid(settings, SLEEPY) == pid
    assert SLEEPY.pid_file(settings).read_text() == f"{pid}\n"
    assert f"{pid} sleepy\n" in (settings.run_dir / "started.pids").read_text()
    with pytest.raises(PrognosError, match=f"sleepy already running \\(pid {pid}\\)"):
        services.start_service(settings, SLEEPY, command, dict(os.environ))
    assert services.stop_service(settings, SLEEPY, grace_s=10)
    assert not exists(pid)
    assert services.running_pid(settings, SLEEPY) is None
    assert not services.stop_service(settings, SLEEPY)


def test_a_service_pid_file_naming_a_stranger_is_stale(settings):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        supervisor.write_pid(SLEEPY.pid_file(settings), stranger.pid)
        assert services.running_pid(settings, SLEEPY) is None
        assert not SLEEPY.pid_file(settings).exists()
        supervisor.write_pid(SLEEPY.pid_file(settings), stranger.pid)
        assert not services.stop_service(settings, SLEEPY, grace_s=1)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_service_also_ends_a_child_that_left_the_group(settings):
    pid = services.start_service(
        settings, SLEEPY, [sys.executable, "-c", ESCAPER], dict(os.environ)
    )
    child = int(first_line(SLEEPY.log(settings)))
    try:
        assert os.getpgid(child) != pid
        assert services.stop_service(settings, SLEEPY, grace_s=5)
        wait_for(lambda: not exists(child), 10)
    finally:
        if exists(child):
            os.kill(child, signal.SIGKILL)


def test_child_exited_sees_a_service_end(settings):
    command = [sys.executable, "-c", "import sys; sys.exit(3)  # prognos-services-test"]
    pid = services.start_service(settings, SLEEPY, command, dict(os.environ))
    wait_for(lambda: services.child_exited(pid))
    assert not services.alive(pid)


def test_a_step_runs_to_its_end_and_shows_its_lines(settings, tmp_path):
    shown: list[str] = []
    log = tmp_path / "steps" / "hello.log"
    command = [sys.executable, "-c", "print('hello'); print('I0101 native noise')"]
    services.run_step_child(settings, "hello", command, dict(os.environ), log, None, shown.append)
    assert shown == ["      | hello"]
    assert log.read_text().split("\n")[:2] == ["hello", "I0101 native noise"]


def test_a_failing_step_names_its_exit_code_and_log(settings, tmp_path):
    log = tmp_path / "fail.log"
    command = [sys.executable, "-c", "print('broken input'); raise SystemExit(4)"]
    with pytest.raises(services.ChildFailedError, match=r"(?s)fail failed \(exit 4\).*broken"):
        services.run_step_child(settings, "fail", command, dict(os.environ), log, None)


def test_a_step_past_its_deadline_is_stopped_with_its_group(settings, tmp_path):
    log = tmp_path / "slow.log"
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)"
    )
    began = time.monotonic()
    with pytest.raises(services.DeadlineExpiredError, match="slow was still running"):
        services.run_step_child(
            settings, "slow", [sys.executable, "-c", code], dict(os.environ), log, began + 3
        )
    child = int(log.read_text().split()[0])
    assert not exists(child)
    assert time.monotonic() - began < 30


def test_one_run_at_a_time_per_state_dir_and_stop_run(settings):
    code = (
        "import time\n"
        "from prognos.cli import services\n"
        "from prognos.core.settings import get_settings\n"
        "services.claim_run(get_settings())\n"
        "print('claimed', flush=True)\n"
        "time.sleep(60)"
    )
    env = {**os.environ, **settings_env(settings)}
    log = settings.state_dir / "run.out"
    with open(log, "wb") as output:
        run = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=output)
    try:
        assert first_line(log) == "claimed"
        assert services.running_pid(settings, services.RUN) == run.pid
        with pytest.raises(PrognosError, match=f"prognos run is already running \\(pid {run.pid}"):
            services.claim_run(settings)
        assert services.stop_run(settings, timeout_s=20)
        assert run.wait(timeout=10) == -signal.SIGTERM
        assert not services.RUN.pid_file(settings).exists()
    finally:
        run.kill()
        run.wait()

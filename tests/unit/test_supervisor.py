"""The supervisor's contract, on real child processes: start in an own process group, PID
file, liveness (zombies, stale and reused PIDs), stop with a grace period, then SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prognos.core import supervisor
from prognos.core.errors import PrognosError

MARKER = b"prognos-supervisor-test"
SLEEPER = f"import time; time.sleep(60)  # {MARKER.decode()}"
# Ignores SIGTERM, starts a child in its group that ignores it too, prints the child's PID.
STUBBORN = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}])
print(child.pid, flush=True)
time.sleep(60)  # {MARKER.decode()}
"""
# Starts a child that leaves the group for a session of its own, as Airflow's task runners do.
ESCAPER = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)  # {MARKER.decode()}
"""


def spec(tmp_path: Path, code: str = SLEEPER, **overrides) -> supervisor.ProcessSpec:
    values = {
        "name": "sleeper",
        "command": [sys.executable, "-c", code],
        "pid_file": tmp_path / "run" / "sleeper.pid",
        "log_file": tmp_path / "run" / "sleeper.log",
        "marker": MARKER,
    }
    return supervisor.ProcessSpec(**{**values, **overrides})


@pytest.fixture
def started(tmp_path):
    """Specs whose processes are SIGKILLed after the test, also on failure."""
    specs: list[supervisor.ProcessSpec] = []
    yield specs
    for each in specs:
        supervisor.kill(each.pid_file)


def exists(pid: int) -> bool:
    """Present in /proc and not a zombie, independent of the code under test."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in "ZX"


def first_word(log: Path, timeout_s: float = 20.0) -> str:
    """The first word the process printed to its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text.strip():
            return text.split()[0]
        time.sleep(0.05)
    raise AssertionError(f"nothing printed to {log}")


def printed_pid(log: Path) -> int:
    return int(first_word(log))


def test_start_writes_the_pid_file_and_leads_its_own_group(tmp_path, started):
    sleeper = spec(tmp_path)
    started.append(sleeper)
    pid = supervisor.start(sleeper)
    assert supervisor.read_pid(sleeper.pid_file) == pid
    assert sleeper.pid_file.read_text() == f"{pid}\n"
    assert os.getpgid(pid) == pid != os.getpgrp()
    assert supervisor.is_alive(sleeper.pid_file, MARKER)
    assert supervisor.is_alive(sleeper.pid_file)


def test_output_goes_to_the_log_with_env_and_cwd(tmp_path, started):
    code = "import os, sys; print(os.environ['PROGNOS_TEST_VALUE'], os.getcwd()); sys.exit(0)"
    printer = spec(tmp_path, code, env={**os.environ, "PROGNOS_TEST_VALUE": "42"}, cwd=tmp_path)
    started.append(printer)
    pid = supervisor.start(printer)
    assert supervisor._wait_until(lambda: supervisor.has_exited(pid), 20)
    assert printer.log_file.read_text().split() == ["42", str(tmp_path)]


def test_the_marker_may_be_in_the_environment(tmp_path, started):
    env = {**os.environ, "PROGNOS_TEST_TAG": "speed-of-lake-7"}
    tagged = spec(tmp_path, "import time; time.sleep(60)", env=env, marker=b"speed-of-lake-7")
    started.append(tagged)
    supervisor.start(tagged)
    assert supervisor.is_alive(tagged.pid_file, b"speed-of-lake-7")
    assert not supervisor.is_alive(tagged.pid_file, b"speed-of-lake-8")


def test_start_when_alive_raises(tmp_path, started):
    sleeper = spec(tmp_path)
    started.append(sleeper)
    pid = supervisor.start(sleeper)
    with pytest.raises(PrognosError, match=f"sleeper is already running \\(pid {pid}"):
        supervisor.start(sleeper)
    assert supervisor.read_pid(sleeper.pid_file) == pid


def test_start_of_a_missing_program_is_a_clear_error(tmp_path):
    missing = spec(tmp_path, command=[str(tmp_path / "no-such-program")])
    with pytest.raises(PrognosError, match=r"sleeper: cannot start .*no-such-program"):
        supervisor.start(missing)
    assert not missing.pid_file.exists()
    with pytest.raises(PrognosError, match="the command to start is empty"):
        supervisor.start(spec(tmp_path, command=[]))


def test_a_process_that_exited_is_dead_and_its_pid_file_removed(tmp_path, started):
    sleeper = spec(tmp_path)
    started.append(sleeper)
    pid = supervisor.start(sleeper)
    os.kill(pid, signal.SIGKILL)
    assert supervisor._wait_until(lambda: not supervisor.is_alive(sleeper.pid_file), 10)
    assert not sleeper.pid_file.exists()
    assert supervisor.start(sleeper) != pid  # a restart after the crash


def test_a_zombie_counts_as_dead(tmp_path):
    pid_file = tmp_path / "zombie.pid"
    process = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        pid_file.write_text(f"{process.pid}\n")
        assert supervisor.is_alive(pid_file, MARKER)
        os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.05)
        assert not supervisor.is_alive(pid_file)  # not reaped yet: still in /proc
        assert not pid_file.exists()
        assert not supervisor.stop(pid_file)
    finally:
        process.kill()
        process.wait()


def test_a_stale_pid_file_counts_as_dead_and_is_removed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file = tmp_path / "stale.pid"
    pid_file.write_text(f"{gone.pid}\n")
    assert not supervisor.is_alive(pid_file)
    assert not pid_file.exists()


@pytest.mark.parametrize("content", ["", "not a pid", "0", "-1", "1"])
def test_a_pid_file_without_a_usable_pid_is_removed(tmp_path, content):
    pid_file = tmp_path / "odd.pid"
    pid_file.write_text(content)
    assert supervisor.read_pid(pid_file) is None
    assert not supervisor.is_alive(pid_file)
    assert not pid_file.exists()
    assert not supervisor.stop(pid_file)


def test_a_pid_reused_by_a_process_without_the_marker_is_not_ours(tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "reused.pid"
        pid_file.write_text(f"{stranger.pid}\n")
        assert not supervisor.is_alive(pid_file, MARKER)
        assert not pid_file.exists()
        pid_file.write_text(f"{stranger.pid}\n")
        assert not supervisor.stop(pid_file, grace_s=1, marker=MARKER)
        supervisor.kill(pid_file, marker=MARKER)
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_ends_a_cooperative_process_within_the_grace(tmp_path, started):
    sleeper = spec(tmp_path)
    started.append(sleeper)
    pid = supervisor.start(sleeper)
    began = time.monotonic()
    assert supervisor.stop(sleeper.pid_file, grace_s=30, marker=MARKER)
    assert time.monotonic() - began < 25  # SIGTERM ended it: no wait for the grace
    assert not exists(pid)
    assert not sleeper.pid_file.exists()


def test_stop_sigkills_a_group_that_ignores_sigterm_after_the_grace(tmp_path, started):
    stubborn = spec(tmp_path, STUBBORN)
    started.append(stubborn)
    pid = supervisor.start(stubborn)
    child = printed_pid(stubborn.log_file)
    assert os.getpgid(child) == pid
    began = time.monotonic()
    assert supervisor.stop(stubborn.pid_file, grace_s=1.0, marker=MARKER)
    assert time.monotonic() - began >= 1.0
    assert not exists(pid) and not exists(child)
    assert not stubborn.pid_file.exists()


def test_stop_also_ends_a_child_that_left_the_group(tmp_path, started):
    escaper = spec(tmp_path, ESCAPER)
    started.append(escaper)
    pid = supervisor.start(escaper)
    child = printed_pid(escaper.log_file)
    assert os.getpgid(child) == child != pid
    try:
        assert supervisor.stop(escaper.pid_file, grace_s=5, marker=MARKER)
        assert supervisor._wait_until(lambda: not exists(child), 10)
    finally:
        if exists(child):
            os.kill(child, signal.SIGKILL)


def test_stop_with_another_signal(tmp_path, started):
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: (print('interrupted', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)"
    )
    interruptible = spec(tmp_path, code, marker=b"")
    started.append(interruptible)
    supervisor.start(interruptible)
    assert first_word(interruptible.log_file) == "ready"
    assert supervisor.stop(interruptible.pid_file, grace_s=20, sig=signal.SIGINT)
    assert interruptible.log_file.read_text().split() == ["ready", "interrupted"]


def test_stop_of_an_absent_pid_file_returns_false(tmp_path):
    assert not supervisor.stop(tmp_path / "never-started.pid")
    supervisor.kill(tmp_path / "never-started.pid")  # nothing to kill: no error


def test_kill_ends_the_group_at_once_and_leaves_the_pid_file(tmp_path, started):
    stubborn = spec(tmp_path, STUBBORN)
    started.append(stubborn)
    pid = supervisor.start(stubborn)
    child = printed_pid(stubborn.log_file)
    supervisor.kill(stubborn.pid_file)
    assert not exists(pid) and not exists(child)
    assert stubborn.pid_file.exists()  # as a crash leaves it
    assert not supervisor.is_alive(stubborn.pid_file)
    assert not stubborn.pid_file.exists()


def test_a_process_in_our_own_group_is_stopped_alone(tmp_path):
    """Signalling its group would signal this process too."""
    member = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        assert os.getpgid(member.pid) == os.getpgrp()
        pid_file = tmp_path / "member.pid"
        supervisor.write_pid(pid_file, member.pid)
        assert supervisor.stop(pid_file, grace_s=10, marker=MARKER)
        assert member.wait(timeout=10) == -signal.SIGTERM
    finally:
        member.kill()
        member.wait()


def test_find_processes_by_environment_entry_and_command(tmp_path):
    env = {**os.environ, "PROGNOS_STATE_DIR": str(tmp_path / "mine")}
    mine = subprocess.Popen([sys.executable, "-c", SLEEPER], env=env)
    try:
        entry = f"PROGNOS_STATE_DIR={tmp_path / 'mine'}".encode()
        assert supervisor.find_processes(entry) == [mine.pid]
        assert supervisor.find_processes(entry, MARKER) == [mine.pid]
        assert supervisor.find_processes(entry, b"another-command") == []
        assert supervisor.find_processes(entry[:-1]) == []  # the whole entry, not a prefix
    finally:
        mine.kill()
        mine.wait()

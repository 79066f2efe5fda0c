"""Start, watch and stop the project's long-running processes by PID file.

Every process starts in its own session, so it leads a process group of its own and a stop
reaches what it spawned (a JVM's children, spark-submit's Python workers, Spark executors).
A PID file alone proves nothing after a crash: the PID may be gone, a zombie, or reused by
an unrelated process. So a process counts as alive only while it exists, is not a zombie
and (when the caller names a marker) holds that marker in its command line or environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prognos.core.errors import PrognosError

KILL_WAIT_S = 10.0  # SIGKILL ends a process at once unless it is stuck in the kernel
EXEC_RETRIES = 5  # /proc shows an empty command line and environment while a process execs


@dataclass(frozen=True)
class ProcessSpec:
    """A background process: what to run, where its PID file and log live."""

    name: str  # "kafka-1", "speed", "serve", "spark-master", ...
    command: list[str]
    pid_file: Path
    log_file: Path
    env: dict[str, str] | None = None  # None: this process's environment
    cwd: Path | None = None
    marker: bytes = b""  # its command line or environment holds this, so a reused PID is not ours


# The children started here: their exit is seen through poll(), which also reaps them.
_children: dict[int, subprocess.Popen] = {}


def start(spec: ProcessSpec) -> int:
    """Start the process in its own session, stdout and stderr appended to its log; write
    its PID file and return the PID. Raises PrognosError when it is already alive."""
    if not spec.command:
        raise PrognosError(f"{spec.name}: the command to start is empty")
    with _start_lock(spec.pid_file):
        if is_alive(spec.pid_file, spec.marker):
            pid = read_pid(spec.pid_file)
            raise PrognosError(f"{spec.name} is already running (pid {pid}, {spec.pid_file})")
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_file, "ab") as log:
            try:
                process = subprocess.Popen(
                    spec.command,
                    cwd=spec.cwd,
                    env=spec.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as error:
                raise PrognosError(
                    f"{spec.name}: cannot start {spec.command[0]}: {error.strerror}"
                ) from None
        _children[process.pid] = process
        write_pid(spec.pid_file, process.pid)
    return process.pid


@contextlib.contextmanager
def _start_lock(pid_file: Path) -> Iterator[None]:
    """Two starts of one process at the same time: the second sees the first alive."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(pid_file.with_name(f".{pid_file.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_pid(pid_file: Path, pid: int) -> None:
    """Replace the PID file whole, so a reader never sees it half written."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    partial = pid_file.with_name(f".{pid_file.name}.{os.getpid()}.tmp")
    partial.write_text(f"{pid}\n")
    partial.replace(pid_file)


def read_pid(pid_file: Path) -> int | None:
    """The PID in the file; None when it is missing or does not hold a usable PID."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 else None  # 0 and -1 would signal our own group or every process


def is_alive(pid_file: Path, marker: bytes = b"") -> bool:
    """The PID file names a live process that is ours; a stale PID file is removed."""
    pid = read_pid(pid_file)
    if pid is not None and pid_alive(pid, marker):
        return True
    pid_file.unlink(missing_ok=True)
    return False


def pid_alive(pid: int, marker: bytes = b"") -> bool:
    """The process exists, is not a zombie and (marker given) holds the marker."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]  # reaped: from now on the PID may belong to anyone
        return False
    if _state(pid) in (None, "Z", "X"):
        return False
    return not marker or _holds(pid, marker)


def has_exited(pid: int) -> bool:
    """A process started here has ended (its exit is seen even before /proc shows it)."""
    return not pid_alive(pid)


def stop(
    pid_file: Path, grace_s: float = 30.0, sig: int = signal.SIGTERM, marker: bytes = b""
) -> bool:
    """Send `sig` to the process group of the PID file, SIGKILL the group after grace_s,
    remove the PID file; True if a live process was stopped."""
    pid = read_pid(pid_file)
    if pid is None or not is_alive(pid_file, marker):
        pid_file.unlink(missing_ok=True)
        return False
    stopped = stop_pid(pid, grace_s, sig, marker)
    pid_file.unlink(missing_ok=True)
    return stopped


def stop_pid(
    pid: int,
    grace_s: float = 30.0,
    sig: int = signal.SIGTERM,
    marker: bytes = b"",
    leftovers: bool = False,
) -> bool:
    """Send `sig` to the group led by `pid`, wait up to grace_s for the leader to end, then
    SIGKILL the group and whatever of the process tree left it (Airflow's task runners
    start sessions of their own); True if the process ran.
    leftovers: also SIGKILL the group when its leader has already ended (only for a child
    the caller still holds, whose PID cannot have been reused)."""
    if not pid_alive(pid, marker):
        if leftovers:
            _kill_group(pid)
        return False
    tree = descendants(pid)
    _signal(pid, sig)
    _wait_until(lambda: not pid_alive(pid), grace_s)
    _signal(pid, signal.SIGKILL)
    _kill_group(pid)
    for escaped in tree:
        if pid_alive(escaped):
            _signal_one(escaped, signal.SIGKILL)
    _wait_until(lambda: not pid_alive(pid), KILL_WAIT_S)
    return True


def kill(pid_file: Path, marker: bytes = b"") -> None:
    """SIGKILL the process group at once, as a crash would (the PID file stays behind)."""
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid, marker):
        return
    _signal(pid, signal.SIGKILL)
    _kill_group(pid)
    _wait_until(lambda: not pid_alive(pid), KILL_WAIT_S)


def descendants(pid: int) -> list[int]:
    """The PIDs below `pid` in the process tree (children first)."""
    children: dict[int, list[int]] = {}
    for child, fields in _all_stats():
        children.setdefault(int(fields[1]), []).append(child)
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    return [pid for pid, fields in _all_stats() if int(fields[2]) == pgid and fields[0] not in "ZX"]


def find_processes(environ_entry: bytes, command_marker: bytes = b"") -> list[int]:
    """Live processes whose environment holds exactly `environ_entry` (children inherit it)
    and whose command line contains `command_marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if command_marker in (entry / "cmdline").read_bytes() and environ_entry in (
                entry / "environ"
            ).read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def _state(pid: int) -> str | None:
    try:
        return _stat_fields(Path(f"/proc/{pid}/stat").read_text())[0]
    except (OSError, IndexError):
        return None


def _stat_fields(stat: str) -> list[str]:
    """The fields after the command name, which may itself hold spaces and parentheses:
    state, ppid, pgrp, session, ..."""
    return stat.rpartition(")")[2].split()


def _all_stats() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat_fields((entry / "stat").read_text())
            except OSError:  # ended meanwhile
                continue
            if len(fields) > 2:
                yield int(entry.name), fields


def _holds(pid: int, marker: bytes) -> bool:
    for _ in range(EXEC_RETRIES):
        texts = [_read_proc(pid, "cmdline"), _read_proc(pid, "environ")]
        if any(marker in text for text in texts):
            return True
        if any(texts):
            return False
        time.sleep(0.02)
    return False  # a kernel thread, or a process that ended


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone, or another user's environment
        return b""


def _signal(pid: int, sig: int) -> None:
    """The group `pid` leads; only the process itself when it leads no group, or leads
    ours (a `prognos run` started from a shell), which is not ours to signal."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    if group == pid and group != os.getpgrp():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
    else:
        _signal_one(pid, sig)


def _signal_one(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise PrognosError(f"not permitted to signal pid {pid}") from None


def _kill_group(pgid: int) -> None:
    """SIGKILL every member of the group until none is left (or KILL_WAIT_S passed)."""
    if pgid == os.getpgrp():
        return

    def gone() -> bool:
        if not group_members(pgid):
            return True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        return False

    _wait_until(gone, KILL_WAIT_S)


def _wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True

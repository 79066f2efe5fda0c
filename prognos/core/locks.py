"""Exclusive locks between processes: an flock on a file, with a timeout and a record of
the holder.

The kernel releases an flock when its holder exits, even by SIGKILL, so a crashed job
never leaves its lake or a registry locked; the record in the file only names the holder
in the error of a process that waited too long. The lock file is never deleted: a
process that opened it before a deletion would lock an orphaned inode.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from prognos.core.errors import LakeBusyError, PrognosError
from prognos.core.settings import Settings

LAKE_LOCK_FILE = "_prognos_lake.lock"
LAKE_HISTORY_FILE = "_prognos_lake.history"
MAX_POLL_S = 0.5


@contextlib.contextmanager
def exclusive(
    path: Path, holder: str, timeout_s: float, busy: type[PrognosError] = PrognosError
) -> Iterator[dict]:
    """Hold the lock of `path` inside the block; after `timeout_s` of waiting, raise `busy`
    naming the current holder. Yields the record written for this holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(descriptor, path, holder, timeout_s, busy)
        record = _write_record(descriptor, holder)
        try:
            yield record
        finally:
            os.ftruncate(descriptor, 0)  # a free lock names no holder
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def holder_of(path: Path) -> dict | None:
    """The record of the process holding the lock of `path`, None when it is free."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return {"holder": "unknown (its record is being written)"}


def lake_lock_path(settings: Settings) -> Path:
    return settings.lake / LAKE_LOCK_FILE


@contextlib.contextmanager
def lake_lock(settings: Settings, job: str, timeout_s: float | None = None) -> Iterator[dict]:
    """The lock every job that reads or writes the lake holds while it runs: the jobs of
    one lake never run concurrently, whichever DAG (or plain spark-submit) started them.

    Each holder appends to the lake's lock history (one JSON line each) when it took the
    lock, after how long a wait, and when it released it. The job's output stays its own
    (its last line is its report)."""
    timeout = settings.lake_lock_timeout_s if timeout_s is None else timeout_s
    asked = time.monotonic()
    with exclusive(lake_lock_path(settings), job, timeout, LakeBusyError) as record:
        waited = round(time.monotonic() - asked, 3)
        _append_history(settings, "acquired", record, waited_s=waited)
        try:
            yield record
        finally:
            _append_history(settings, "released", record)


def lake_lock_history(settings: Settings) -> list[dict]:
    """Who took and released the lake's lock, oldest first."""
    path = settings.lake / LAKE_HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_history(settings: Settings, event: str, record: dict, **extra) -> None:
    line = {"event": event, **record, "at": datetime.now(UTC).isoformat(), **extra}
    # only the lock's holder appends, so lines never interleave
    with open(settings.lake / LAKE_HISTORY_FILE, "a") as history:
        history.write(json.dumps(line) + "\n")


def _acquire(
    descriptor: int, path: Path, holder: str, timeout_s: float, busy: type[PrognosError]
) -> None:
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise busy(_busy_message(path, holder, timeout_s)) from None
            time.sleep(pause)
            pause = min(pause * 2, MAX_POLL_S)


def _busy_message(path: Path, holder: str, timeout_s: float) -> str:
    record = holder_of(path) or {"holder": "unknown (it just released the lock)"}
    details = ", ".join(f"{key} {record[key]}" for key in ("pid", "host", "since") if key in record)
    held_by = record.get("holder", "unknown")
    suffix = f" ({details})" if details else ""
    return f"{holder}: {path} is held by {held_by}{suffix}; gave up after {timeout_s:g} s"


def _write_record(descriptor: int, holder: str) -> dict:
    record = {
        "holder": holder,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(),
    }
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(record).encode(), 0)
    return record

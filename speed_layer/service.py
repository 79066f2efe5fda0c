"""Run the speed layer as a background `spark-submit` with a PID file (start/stop/status)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prognos.core.errors import PrognosError, SetupMissingError
from prognos.core.settings import PROJECT_ROOT, Settings, settings_env
from prognos.core.spark import spark_conf

STREAM_SCRIPT = PROJECT_ROOT / "speed_layer" / "stream.py"


@dataclass(frozen=True)
class SpeedStatus:
    running: bool
    pid: int | None
    log: Path
    detail: str


def _paths(settings: Settings) -> tuple[Path, Path]:
    base = settings.run_dir / "speed"
    return base / "speed.pid", base / "speed.log"


def spark_submit() -> str:
    """spark-submit of the project's virtualenv, else the one on PATH."""
    beside = Path(sys.executable).parent / "spark-submit"
    found = str(beside) if beside.exists() else shutil.which("spark-submit")
    if found is None:
        raise SetupMissingError("spark-submit not found: run `make setup`")
    return found


def submit_command(settings: Settings, trigger: str | None = None) -> list[str]:
    command = [spark_submit(), "--master", settings.spark_master]
    for key, value in spark_conf(settings).items():
        command += ["--conf", f"{key}={value}"]
    command.append(str(STREAM_SCRIPT))
    if trigger:
        command += ["--trigger", trigger]
    return command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as dead
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _read_pid(settings: Settings) -> int | None:
    pid_file, _ = _paths(settings)
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def status(settings: Settings) -> SpeedStatus:
    pid = _read_pid(settings)
    _, log = _paths(settings)
    if pid is None:
        return SpeedStatus(False, None, log, "not running")
    if not _alive(pid):
        return SpeedStatus(False, pid, log, f"not running (stale PID file, pid {pid} gone)")
    return SpeedStatus(True, pid, log, f"running, pid {pid}")


def start(settings: Settings, trigger: str | None = None) -> SpeedStatus:
    """Start `spark-submit speed_layer/stream.py` in its own process group."""
    current = status(settings)
    if current.running:
        raise PrognosError(f"speed layer already running (pid {current.pid})")
    pid_file, log = _paths(settings)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(settings)}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log, "ab") as output:
        process = subprocess.Popen(
            submit_command(settings, trigger),
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return SpeedStatus(True, process.pid, log, f"started, pid {process.pid}")


def stop(settings: Settings, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process group started by `start`, SIGKILL after timeout_s."""
    pid_file, _ = _paths(settings)
    pid = _read_pid(settings)
    if pid is None or not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def kill(settings: Settings) -> None:
    """SIGKILL the process group at once (crash tests)."""
    pid = _read_pid(settings)
    if pid is not None and _alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the group start() created (start_new_session: pgid == pid)

"""Run the speed layer as a background `spark-submit`, a supervised process (start/stop/status)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from prognos.core import supervisor
from prognos.core.errors import PrognosError, SetupMissingError
from prognos.core.settings import PROJECT_ROOT, Settings, settings_env
from prognos.core.spark import spark_conf

STREAM_SCRIPT = PROJECT_ROOT / "speed_layer" / "stream.py"
SPEED_MARKER = str(STREAM_SCRIPT).encode()  # on spark-submit's command line, then the JVM's


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


def status(settings: Settings) -> SpeedStatus:
    pid_file, log = _paths(settings)
    pid = supervisor.read_pid(pid_file)
    if pid is None:
        return SpeedStatus(False, None, log, "not running")
    if not supervisor.is_alive(pid_file, SPEED_MARKER):
        return SpeedStatus(False, pid, log, f"not running (stale PID file, pid {pid} gone)")
    return SpeedStatus(True, pid, log, f"running, pid {pid}")


def start(settings: Settings, trigger: str | None = None) -> SpeedStatus:
    """Start `spark-submit speed_layer/stream.py` in its own process group."""
    current = status(settings)
    if current.running:
        raise PrognosError(f"speed layer already running (pid {current.pid})")
    pid_file, log = _paths(settings)
    env = {**os.environ, **settings_env(settings)}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spec = supervisor.ProcessSpec(
        name="speed layer",
        command=submit_command(settings, trigger),
        pid_file=pid_file,
        log_file=log,
        env=env,
        cwd=PROJECT_ROOT,
        marker=SPEED_MARKER,
    )
    pid = supervisor.start(spec)
    return SpeedStatus(True, pid, log, f"started, pid {pid}")


def stop(settings: Settings, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process group started by `start`, SIGKILL it after timeout_s (and
    whatever of its process tree left the group)."""
    pid_file, _ = _paths(settings)
    return supervisor.stop(pid_file, timeout_s, marker=SPEED_MARKER)


def kill(settings: Settings) -> None:
    """SIGKILL the process group at once (crash tests); the PID file stays, as after a crash."""
    pid_file, _ = _paths(settings)
    supervisor.kill(pid_file, SPEED_MARKER)

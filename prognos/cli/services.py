"""Processes the `prognos` command starts: foreground steps and background services.

Every child runs in its own process group (session), so stopping it stops what it spawned
(spark-submit's JVM and Python workers, Airflow's task runners). Background services are
supervised processes (prognos.core.supervisor) with a PID file under `<run_dir>/<name>/` (and
a log beside it); every PID started is also appended to `<run_dir>/started.pids` so a caller
can check afterwards that none is left alive. `prognos down` stops them by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prognos.core import supervisor
from prognos.core.errors import PrognosError
from prognos.core.settings import PROJECT_ROOT, Settings, settings_env

STOP_GRACE_S = 30.0
STEP_STOP_GRACE_S = 10.0
# TensorFlow's C++ log lines (absl): kept in the log, not shown
NATIVE_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")


class DeadlineExpiredError(PrognosError):
    """A step did not finish before the command's deadline."""


class ChildFailedError(PrognosError):
    """A child process exited with an error."""


@dataclass(frozen=True)
class Service:
    """A background process known by name: PID file and log under the run dir."""

    name: str
    marker: bytes  # in its command line or environment, so a reused PID is never signalled

    def pid_file(self, settings: Settings) -> Path:
        return settings.run_dir / self.name / f"{self.name}.pid"

    def log(self, settings: Settings) -> Path:
        return settings.run_dir / self.name / f"{self.name}.log"

    def spec(
        self, settings: Settings, command: list[str], env: dict[str, str]
    ) -> supervisor.ProcessSpec:
        return supervisor.ProcessSpec(
            name=self.name,
            command=command,
            pid_file=self.pid_file(settings),
            log_file=self.log(settings),
            env=env,
            cwd=PROJECT_ROOT,
            marker=self.marker,
        )


SERVE = Service("serve", b"prognos.cli.main")
AIRFLOW = Service("airflow", b"airflow")
RUN = Service("run", b"prognos")


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child: this one plus the settings as PROGNOS_* variables."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(settings_env(settings))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def prognos_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "prognos.cli.main", *args]


def record_started(settings: Settings, name: str, pid: int) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / "started.pids", "a") as record:
        record.write(f"{pid} {name}\n")


def alive(pid: int, marker: bytes = b"") -> bool:
    """True while the process runs (not a zombie) and holds `marker`."""
    return supervisor.pid_alive(pid, marker)


def child_exited(pid: int) -> bool:
    """True once a child this process started has ended."""
    return supervisor.has_exited(pid)


def descendants(pid: int) -> list[int]:
    """The PIDs below `pid` in the process tree (children first)."""
    return supervisor.descendants(pid)


def processes_of_state_dir(state_dir: Path | str, command_marker: bytes = b"") -> list[int]:
    """Live processes whose environment names this state dir (children inherit it) and
    whose command line contains `command_marker`: never another lake's processes."""
    return supervisor.find_processes(f"PROGNOS_STATE_DIR={state_dir}".encode(), command_marker)


def read_pid(settings: Settings, service: Service) -> int | None:
    return supervisor.read_pid(service.pid_file(settings))


def running_pid(settings: Settings, service: Service) -> int | None:
    """The PID of the running service; None (and a stale PID file removed) otherwise."""
    pid = read_pid(settings, service)
    alive = pid is not None and supervisor.is_alive(service.pid_file(settings), service.marker)
    return pid if alive else None


def start_service(
    settings: Settings, service: Service, command: list[str], env: dict[str, str]
) -> int:
    """Start `command` in the background in its own session; write its PID file."""
    if (pid := running_pid(settings, service)) is not None:
        raise PrognosError(f"{service.name} already running (pid {pid}): `prognos down` first")
    pid = supervisor.start(service.spec(settings, command, env))
    record_started(settings, service.name, pid)
    return pid


def stop_service(settings: Settings, service: Service, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop a background service by its PID file (with what of its process tree left its
    group); True if it was running."""
    return supervisor.stop(service.pid_file(settings), grace_s, marker=service.marker)


def run_step_child(
    settings: Settings,
    name: str,
    command: list[str],
    env: dict[str, str],
    log: Path,
    deadline: float | None,
    show: Callable[[str], None] | None = None,
) -> None:
    """Run a foreground child to its end, its output to `log` (and each line to `show`);
    its whole process group is stopped when the deadline passes or the caller is
    interrupted."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE if show else output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        record_started(settings, name, process.pid)
        pump = None
        if show is not None:
            pump = threading.Thread(target=_pump, args=(process.stdout, output, show), daemon=True)
            pump.start()
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeadlineExpiredError(f"{name} was still running at the deadline") from None
        finally:
            supervisor.stop_pid(process.pid, STEP_STOP_GRACE_S, leftovers=True)
            process.poll()
            if pump is not None:
                pump.join(timeout=5)
    if code != 0:
        raise ChildFailedError(f"{name} failed (exit {code}); last lines of {log}:\n{tail(log)}")


def _pump(source, log, show: Callable[[str], None]) -> None:
    for line in iter(source.readline, b""):
        log.write(line)
        log.flush()
        text = line.decode(errors="replace").rstrip()
        if not NATIVE_LOG_LINE.match(text):
            show("      | " + text)


def claim_run(settings: Settings) -> None:
    """Write the PID file of this `prognos run` (one at a time per state dir)."""
    if (pid := running_pid(settings, RUN)) is not None:
        raise PrognosError(f"prognos run is already running (pid {pid}): `prognos down` stops it")
    supervisor.write_pid(RUN.pid_file(settings), os.getpid())


def release_run(settings: Settings) -> None:
    if read_pid(settings, RUN) == os.getpid():
        RUN.pid_file(settings).unlink(missing_ok=True)


def stop_run(settings: Settings, timeout_s: float = 120.0) -> bool:
    """SIGTERM a running `prognos run` (it stops what it started) and wait for it to end."""
    pid = running_pid(settings, RUN)
    if pid is None or pid == os.getpid():
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # not its group: that is the user's terminal's
    deadline = time.monotonic() + timeout_s
    while supervisor.pid_alive(pid, RUN.marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    if supervisor.pid_alive(pid, RUN.marker):
        os.kill(pid, signal.SIGKILL)
    RUN.pid_file(settings).unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def start_airflow(settings: Settings, timeout_s: float = 600.0) -> str:
    """`airflow standalone` (API server on 127.0.0.1, scheduler, DAG processor) in the
    background with the project's DAGs; returns where it answers once it does."""
    import httpx

    from prognos.core.airflow_env import airflow_env, airflow_home, ensure_airflow_db

    env = airflow_env(settings, base=child_env(settings))
    ensure_airflow_db(settings, env)
    airflow = str(Path(sys.executable).parent / "airflow")
    pid = start_service(settings, AIRFLOW, [airflow, "standalone"], env)
    url = f"http://127.0.0.1:{settings.airflow_port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if child_exited(pid):
            log = AIRFLOW.log(settings)
            raise ChildFailedError(f"airflow standalone exited; last lines of {log}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            stop_service(settings, AIRFLOW)
            raise ChildFailedError(f"airflow standalone did not answer at {url} in {timeout_s} s")
        time.sleep(2)
    passwords = airflow_home(settings) / "simple_auth_manager_passwords.json.generated"
    return f"airflow standalone pid {pid} at {url} (login: admin, password in {passwords})"


def stop_all(settings: Settings) -> list[str]:
    """Stop a running `prognos run`, then every background service by its PID file."""
    lines = []
    if stop_run(settings):
        lines.append("prognos run: stopped")
    for service in (SERVE, AIRFLOW):
        if stop_service(settings, service):
            lines.append(f"{service.name}: stopped")
    if stop_speed(settings):
        lines.append("speed layer: stopped")
    return lines


def stop_speed(settings: Settings) -> bool:
    """`prognos speed stop` (which also stops what of its process tree left the group)."""
    from speed_layer import service as speed

    return speed.stop(settings)

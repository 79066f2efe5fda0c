"""A Spark standalone cluster on localhost, from the pyspark installation.

`up` starts one master and `PROGNOS_SPARK_CLUSTER_WORKERS` workers (``spark-class
org.apache.spark.deploy.{master.Master,worker.Worker}``), each bound to 127.0.0.1 as a
supervised process (own process group; PID file and log in ``<state>/run/spark-cluster/``)
and waits until every worker is registered. `down` stops exactly the recorded PIDs (and the
executors their workers launched). A driver joins with `driver_conf()` and ships the
project code to the executors with `code_archive()` (``--py-files`` / ``addPyFile``).
Usage: python -m prognos.core.cluster up|down|status [--json]  (infra/spark-cluster.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from prognos.core import supervisor
from prognos.core.errors import PrognosError, SetupMissingError
from prognos.core.settings import PROJECT_ROOT, Settings, get_settings

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
CODE_PACKAGES = ("prognos", "spark_jobs", "speed_layer", "models")


class ClusterError(PrognosError):
    """The local Spark cluster could not be started or reached."""


@dataclass(frozen=True)
class ClusterStatus:
    master_url: str
    ui_url: str
    pids: dict[str, int]
    running: bool
    alive_workers: int
    detail: str


def cluster_dir(settings: Settings) -> Path:
    return settings.run_dir / "spark-cluster"


def master_url(settings: Settings) -> str:
    return f"spark://{HOST}:{settings.spark_cluster_port}"


def ui_url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.spark_cluster_ui_port}"


def _spark_class() -> Path:
    import pyspark

    script = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not script.exists():
        raise SetupMissingError(f"{script} not found: run `make setup`")
    return script


def _daemons(settings: Settings) -> dict[str, list[str]]:
    """Name -> spark-class arguments of every process of the cluster."""
    daemons = {
        "master": [
            MASTER_CLASS,
            "--host",
            HOST,
            "--port",
            str(settings.spark_cluster_port),
            "--webui-port",
            str(settings.spark_cluster_ui_port),
        ]
    }
    for number in range(1, settings.spark_cluster_workers + 1):
        daemons[f"worker-{number}"] = [
            WORKER_CLASS,
            "--host",
            HOST,
            "--port",
            "0",
            "--webui-port",
            "0",
            "--cores",
            str(settings.spark_worker_cores),
            "--memory",
            settings.spark_worker_memory,
            "--work-dir",
            str(cluster_dir(settings) / f"work-{number}"),
            master_url(settings),
        ]
    return daemons


def _pid_file(settings: Settings, name: str) -> Path:
    return cluster_dir(settings) / f"{name}.pid"


def _marker(name: str) -> bytes:
    """The daemon's main class: on its command line from spark-class to the JVM."""
    return (MASTER_CLASS if name == "master" else WORKER_CLASS).encode()


def recorded_pids(settings: Settings) -> dict[str, int]:
    """Name -> PID of the cluster processes still running; stale PID files are removed."""
    pids = {}
    for pid_file in sorted(cluster_dir(settings).glob("*.pid")):
        pid = supervisor.read_pid(pid_file)
        if supervisor.is_alive(pid_file, _marker(pid_file.stem)) and pid is not None:
            pids[pid_file.stem] = pid
    return pids


def alive_workers(settings: Settings) -> int:
    """Workers the master reports ALIVE (0 when the master does not answer)."""
    try:
        with urllib.request.urlopen(f"{ui_url(settings)}/json/", timeout=2) as answer:
            state = json.load(answer)
    except (OSError, ValueError):
        return 0
    return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


def _start(settings: Settings, name: str, args: list[str]) -> int:
    env = {**os.environ, "SPARK_LOCAL_IP": HOST, "SPARK_NO_DAEMONIZE": "1"}
    env["SPARK_MASTER_OPTS"] = "-Dspark.master.rest.enabled=false"  # no fixed port 6066
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.pop("SPARK_MASTER", None)
    spec = supervisor.ProcessSpec(
        name=f"spark {name}",
        command=[str(_spark_class()), *args],
        pid_file=_pid_file(settings, name),
        log_file=cluster_dir(settings) / f"{name}.log",
        env=env,
        marker=_marker(name),
    )
    return supervisor.start(spec)


def up(settings: Settings | None = None, timeout_s: float = 180.0) -> ClusterStatus:
    """Start whatever part of the cluster is not running; wait until all workers register."""
    settings = settings or get_settings()
    cluster_dir(settings).mkdir(parents=True, exist_ok=True)
    running = recorded_pids(settings)
    if "master" not in running:
        _require_free_ports(settings)
    try:
        for name, args in _daemons(settings).items():
            if name not in running:
                _start(settings, name, args)
        _wait_for_workers(settings, timeout_s)
    except BaseException:
        down(settings)
        raise
    return status(settings)


def _require_free_ports(settings: Settings) -> None:
    """Spark would silently move to the next port; refuse instead."""
    for port in (settings.spark_cluster_port, settings.spark_cluster_ui_port):
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((HOST, port)) == 0:
                raise ClusterError(
                    f"port {HOST}:{port} is already taken by another process; stop it or set "
                    "PROGNOS_SPARK_CLUSTER_PORT / PROGNOS_SPARK_CLUSTER_UI_PORT"
                )


def _wait_for_workers(settings: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    wanted = settings.spark_cluster_workers
    while time.monotonic() < deadline:
        if alive_workers(settings) >= wanted:
            return
        if "master" not in recorded_pids(settings):
            break
        time.sleep(1.0)
    log = cluster_dir(settings) / "master.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise ClusterError(
        f"{wanted} Spark workers did not register with {master_url(settings)} within "
        f"{timeout_s:.0f} s (port taken? see {log}): {tail}"
    )


def down(settings: Settings | None = None, timeout_s: float = 20.0) -> list[str]:
    """Stop the recorded processes (workers first, SIGTERM then SIGKILL); their names."""
    settings = settings or get_settings()
    pids = recorded_pids(settings)
    names = sorted(pids, key=lambda name: name == "master")  # the master last
    for name in names:  # a daemon's group holds the executors it launched
        supervisor.stop(_pid_file(settings, name), timeout_s, marker=_marker(name))
    return names


def status(settings: Settings | None = None) -> ClusterStatus:
    settings = settings or get_settings()
    pids = recorded_pids(settings)
    workers = alive_workers(settings) if "master" in pids else 0
    running = bool(pids)
    wanted = settings.spark_cluster_workers
    if not running:
        detail = "not running"
    elif workers >= wanted:
        detail = "healthy"
    else:
        detail = f"{workers} of {wanted} workers registered"
    return ClusterStatus(master_url(settings), ui_url(settings), pids, running, workers, detail)


def driver_conf(settings: Settings | None = None) -> dict[str, str]:
    """Spark conf a driver on this machine adds to run its executors on the cluster."""
    settings = settings or get_settings()
    return {
        "spark.driver.host": HOST,
        "spark.driver.bindAddress": HOST,
        "spark.executor.cores": str(settings.spark_worker_cores),
        "spark.executor.memory": "512m",
        "spark.cores.max": str(settings.spark_worker_cores * settings.spark_cluster_workers),
    }


def code_archive(settings: Settings | None = None) -> Path:
    """A zip of the project's Python packages for the executors (``--py-files``)."""
    settings = settings or get_settings()
    target = cluster_dir(settings) / "prognos-code.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in CODE_PACKAGES:
            for source in sorted((PROJECT_ROOT / package).rglob("*.py")):
                archive.write(source, source.relative_to(PROJECT_ROOT).as_posix())
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    try:
        if args.action == "down":
            stopped = down()
            print(f"stopped: {', '.join(stopped)}" if stopped else "not running")
            return 0
        current = up() if args.action == "up" else status()
    except PrognosError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(current)))
    else:
        print(f"{current.master_url}  UI {current.ui_url}  {current.detail}  pids {current.pids}")
    return 0 if args.action == "up" or current.running else 3


if __name__ == "__main__":
    sys.exit(main())

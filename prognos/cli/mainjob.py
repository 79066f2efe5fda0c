"""The main job of `prognos run` (`make run`): the whole pipeline on the configured stack.

Steps: stack up; the FD001 training fleet replayed as history; the batch layer through
`airflow dags test batch_layer`; a champion (a shortened training when the registry has
none); the speed layer and the serving API in the background; the FD001 test fleet replayed
live while a table of served answers is printed. Everything the job started is stopped by
PID when it ends, fails, is interrupted (SIGINT/SIGTERM) or `prognos down` is run.
"""

from __future__ import annotations

import math
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prognos.cli import services
from prognos.core.errors import PrognosError
from prognos.core.settings import Settings

CYCLE_SECONDS = 60.0  # event-time seconds per cycle of both replays
POLL_S = 1.0
TABLE_EVERY_S = 5.0
TABLE_ROWS = 8
LIVE_SUBSET = "FD001"


class RunFailedError(PrognosError):
    """The main job could not finish."""


@dataclass
class Job:
    settings: Settings
    echo: Callable[[str], None]
    timeout_s: float | None = None  # --until-complete: the whole job's limit
    until_complete: bool = False
    began: float = field(default_factory=time.monotonic)
    broker_started: bool = False
    speed_started: bool = False
    serve_started: bool = False
    api_key: str = ""
    first_answers_s: float | None = None

    @property
    def deadline(self) -> float | None:
        return None if self.timeout_s is None else self.began + self.timeout_s

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def check_deadline(self, where: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise services.DeadlineExpiredError(f"{where} was not done at the deadline")


# --- steps: each takes the job and returns one line -------------------------------------


def start_stack(job: Job) -> str:
    from prognos.core import stack

    was_running = stack.status(job.settings).running
    broker = stack.up(job.settings)
    job.broker_started = broker.managed and not was_running
    owner = "started" if job.broker_started else "already running"
    return f"kafka {broker.bootstrap_servers}: {broker.detail} ({owner})"


def replay_history(job: Job) -> str:
    """The training fleet, stamped to end before the live fleet's first cycle (so the
    live events are never behind the speed layer's watermark)."""
    from prognos.core.replay import fleet_frame, replay

    machines = job.settings.run_machines
    history = fleet_frame("FD001", "train", machines, settings=job.settings)
    live = fleet_frame(LIVE_SUBSET, "test", machines, settings=job.settings)
    cycles = int(history["cycle"].max()) + int(live["cycle"].max()) + 5
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=cycles * CYCLE_SECONDS)
    summary = replay(
        "FD001", "train", machines, start=start, source="history", settings=job.settings
    )
    _require_delivered(summary)
    return summary.line()


def run_batch_layer(job: Job) -> str:
    from prognos.core import lake
    from prognos.core.airflow_env import airflow_env, ensure_airflow_db

    settings = job.settings
    env = airflow_env(settings, base=services.child_env(settings))
    ensure_airflow_db(settings, env)
    logical_date = datetime.now(UTC).replace(microsecond=0).isoformat()
    log = settings.run_dir / "run" / "batch_layer.log"
    job.echo(f"      airflow dags test batch_layer {logical_date} (log: {log})")
    airflow = str(Path(sys.executable).parent / "airflow")
    command = [airflow, "dags", "test", "batch_layer", logical_date]
    services.run_step_child(settings, "batch_layer", command, env, log, job.deadline)
    published = lake.read_published_arrow(settings)
    if published is None:
        raise RunFailedError(f"the batch layer published no views; see {log}")
    manifest = published.manifest
    return f"batch views published by {manifest['run_id']}: {manifest['rows_covered']} readings"


def ensure_champion(job: Job) -> str:
    """Reuse the registry's champion; else a shortened training registers one."""
    from prognos.core.registry import FilesystemRegistry

    settings = job.settings
    registry = FilesystemRegistry(settings.registry)
    name = settings.serving_model
    version = registry.aliases(name).get("champion")
    if version is not None:
        return f"reusing champion {name} version {version} ({_test_rmse(registry, name, version)})"
    epochs = settings.run_train_epochs
    job.echo(
        f"      shortened training: at most {epochs} epochs (PROGNOS_RUN_TRAIN_EPOCHS); "
        f"train fully with `prognos train --subset {subset_of_model(name)}`"
    )
    command = services.prognos_command(
        "train", "--subset", subset_of_model(name), "--epochs", str(epochs)
    )
    if settings.run_machines is not None:
        command += ["--machines", str(settings.run_machines)]
    log = settings.run_dir / "run" / "train.log"
    services.run_step_child(
        settings, "train", command, services.child_env(settings), log, job.deadline, job.echo
    )
    version = registry.aliases(name).get("champion")
    if version is None:
        raise RunFailedError(f"training registered no champion of {name}; see {log}")
    return (
        f"{name} version {version} registered as champion "
        f"({_test_rmse(registry, name, version)}; shortened training)"
    )


def start_layers(job: Job) -> str:
    from serving_layer.server import base_url
    from speed_layer import service as speed

    settings = job.settings
    speed_state = speed.start(settings)
    job.speed_started = True
    services.record_started(settings, "speed", speed_state.pid)
    job.api_key = run_api_key(settings)
    keys = ",".join(filter(None, [settings.api_keys, f"{_digest(job.api_key)}:reader:run"]))
    env = services.child_env(settings, PROGNOS_API_KEYS=keys)
    pid = services.start_service(settings, services.SERVE, services.prognos_command("serve"), env)
    job.serve_started = True
    wait_for_api(job, pid)
    return (
        f"speed layer pid {speed_state.pid} (log: {speed_state.log}); "
        f"serving API pid {pid} at {base_url(settings)}"
    )


def serve_live_fleet(job: Job) -> str:
    from serving_layer.server import base_url

    fleet = LiveFleet(job.settings)
    fleet.start()
    job.echo(f"      dashboard: {base_url(job.settings)}/dashboard?key={job.api_key}")
    job.echo(f"      replaying {fleet.events} events of {len(fleet.final_cycle)} machines at "
             f"{job.settings.run_replay_rate:g} events/s")  # fmt: skip
    monitor = Monitor(job, fleet)
    while True:
        job.check_deadline("serving the live fleet")
        check_layers_alive(job)
        if monitor.poll() and job.until_complete:
            monitor.print_table()
            return monitor.final_line()
        time.sleep(POLL_S)


STEPS = (
    ("stack up", start_stack),
    ("replay the FD001 training fleet as history", replay_history),
    ("batch layer through Airflow", run_batch_layer),
    ("champion model", ensure_champion),
    ("speed layer and serving API", start_layers),
    ("replay the FD001 test fleet live and serve it", serve_live_fleet),
)


def check_ports_free(settings: Settings) -> None:
    """Fail before starting anything when a port the job's servers need is taken."""
    from prognos.core.stack import port_in_use

    wanted = {
        "PROGNOS_API_PORT": (settings.api_host, settings.api_port),
        "PROGNOS_GRPC_PORT": ("127.0.0.1", settings.grpc_port),
    }
    if settings.speed_metrics_port:
        wanted["PROGNOS_SPEED_METRICS_PORT"] = ("127.0.0.1", settings.speed_metrics_port)
    for name, (host, port) in wanted.items():
        if port_in_use(host, port):
            raise RunFailedError(
                f"port {host}:{port} ({name}) is taken by another process: stop it "
                f"(`prognos down` if it is an earlier run) or set {name}"
            )


def run_job(job: Job) -> None:
    """Run the steps; stop everything started, whatever happens."""
    services.claim_run(job.settings)
    try:
        check_ports_free(job.settings)
    except RunFailedError:
        services.release_run(job.settings)
        raise
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    title = ""
    try:
        for number, (title, step) in enumerate(STEPS, 1):
            job.check_deadline(title)
            job.echo(f"[{number}/{len(STEPS)}] {title}")
            step_began = time.monotonic()
            result = step(job)
            job.echo(
                f"      {result} ({time.monotonic() - step_began:.1f} s, "
                f"total {job.elapsed():.1f} s)"
            )
    except services.DeadlineExpiredError:
        raise RunFailedError(
            f"run did not complete within {job.timeout_s:g} s (step: {title})"
        ) from None
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # no second interrupt during the clean-up
        stop_started(job)
        services.release_run(job.settings)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_started(job: Job) -> None:
    """Stop what this job started, each by its PID, latest first."""
    stopped = []
    if job.serve_started and services.stop_service(job.settings, services.SERVE):
        stopped.append("serving API")
    if job.speed_started and services.stop_speed(job.settings):
        stopped.append("speed layer")
    if job.broker_started:
        from prognos.core import stack

        if stack.down(job.settings):
            stopped.append("kafka broker")
    job.echo(f"run: stopped {', '.join(stopped) or 'nothing left running'}")


# --- the live fleet ---------------------------------------------------------------------


class LiveFleet:
    """The test fleet replayed in a background thread, with each event's scheduled send
    time (replay start + index / rate) to measure freshness."""

    def __init__(self, settings: Settings) -> None:
        from prognos.core.replay import default_start, fleet_frame

        self.settings = settings
        frame = fleet_frame(LIVE_SUBSET, "test", settings.run_machines, settings=settings)
        self.events = len(frame)
        self.final_cycle = frame.groupby("machine")["cycle"].max().astype(int).to_dict()
        rate = settings.run_replay_rate
        keys = zip(frame["machine"], frame["cycle"].astype(int), strict=True)
        self.send_offset_s = {key: index / rate for index, key in enumerate(keys)}
        self.start_time = default_start(frame, CYCLE_SECONDS)
        self.began_wall: float | None = None
        self.summary = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._replay, name="live-replay", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _replay(self) -> None:
        from prognos.core.replay import replay

        self.began_wall = time.time()
        try:
            self.summary = replay(
                LIVE_SUBSET,
                "test",
                self.settings.run_machines,
                rate=self.settings.run_replay_rate,
                cycle_seconds=CYCLE_SECONDS,
                start=self.start_time,
                source="live",
                settings=self.settings,
            )
        except Exception as error:  # reported by the monitor in the main thread
            self.error = error

    @property
    def done(self) -> bool:
        if self.error is not None:
            raise RunFailedError(f"live replay failed: {self.error}")
        if self.summary is not None:
            _require_delivered(self.summary)
        return self.summary is not None

    def sent_at(self, machine: str, cycle: int) -> float | None:
        offset = self.send_offset_s.get((machine, cycle))
        return None if offset is None or self.began_wall is None else self.began_wall + offset


class Monitor:
    """Polls the serving API for the live machines' merged answers; prints the table."""

    def __init__(self, job: Job, fleet: LiveFleet) -> None:
        from serving_layer.client import ServingClient
        from serving_layer.server import base_url

        settings = job.settings
        verify = str(settings.api_tls_cert) if settings.api_tls_cert else True
        self.client = ServingClient(base_url(settings), job.api_key, verify=verify, timeout_s=10)
        self.job, self.fleet = job, fleet
        self.answers: dict[str, dict] = {}
        self.freshness: dict[str, float] = {}
        self.seen: set[tuple[str, int]] = set()
        self.last_table = 0.0

    def poll(self) -> bool:
        """Read the answers once; True when the fleet is fully replayed and served."""
        from serving_layer.client import ServingApiError

        try:
            rows = self.client.fleet()
        except ServingApiError as error:
            self.job.echo(f"      (serving API: {error})")
            return False
        now = time.time()
        for row in rows:
            machine, cycle = row["machine_id"], row.get("last_cycle")
            if machine not in self.fleet.final_cycle or row.get("predicted_rul") is None:
                continue
            self.answers[machine] = row
            if (machine, cycle) not in self.seen:
                self.seen.add((machine, cycle))
                sent = self.fleet.sent_at(machine, cycle)
                if sent is not None:
                    self.freshness[machine] = now - sent
        if self.answers and self.job.first_answers_s is None:
            self.job.first_answers_s = self.job.elapsed()
            self.job.echo(f"      first merged answers after {self.job.first_answers_s:.0f} s")
        if time.monotonic() - self.last_table >= TABLE_EVERY_S:
            self.print_table()
        return self.fleet.done and self.at_last_cycle() == len(self.fleet.final_cycle)

    def at_last_cycle(self) -> int:
        final = self.fleet.final_cycle
        return sum(1 for m, row in self.answers.items() if row.get("last_cycle") == final[m])

    def print_table(self) -> None:
        from serving_layer.client import format_table

        self.last_table = time.monotonic()
        urgent = sorted(self.answers.values(), key=lambda row: row["predicted_rul"])[:TABLE_ROWS]
        rows = [
            {
                "machine": row["machine_id"],
                "cycle": row.get("last_cycle"),
                "predicted_rul": row["predicted_rul"],
                "true_rul": row.get("true_rul"),
                "alert": row.get("alert_level"),
                "freshness_s": self.freshness.get(row["machine_id"]),
            }
            for row in urgent
        ]
        fresh = sorted(self.freshness.values())
        median = f"{fresh[len(fresh) // 2]:.1f} s" if fresh else "-"
        self.job.echo(
            f"--- {self.job.elapsed():.0f} s: answers for {len(self.answers)}/"
            f"{len(self.fleet.final_cycle)} machines, {self.at_last_cycle()} at their last "
            f"cycle, replay {'done' if self.fleet.summary else 'running'}, "
            f"freshness median {median}"
        )
        if rows:
            self.job.echo(format_table(rows, tuple(rows[0])))

    def final_line(self) -> str:
        errors = [
            (row["predicted_rul"], row["true_rul"])
            for row in self.answers.values()
            if row.get("true_rul") is not None
        ]
        if not errors:
            raise RunFailedError("no served answer has a known true RUL")
        cap = self.job.settings.gold_rul_cap
        plain = _rmse([p - t for p, t in errors])
        capped = _rmse([p - min(t, cap) for p, t in errors])
        return (
            f"final RMSE of served predictions vs true RUL: {plain:.2f} over {len(errors)} "
            f"machines at their last cycle (vs truth capped at {cap}: {capped:.2f})"
        )


def wait_for_api(job: Job, pid: int, timeout_s: float = 300.0) -> None:
    import httpx

    from serving_layer.server import base_url

    url = f"{base_url(job.settings)}/healthz"
    verify = str(job.settings.api_tls_cert) if job.settings.api_tls_cert else True
    limit = time.monotonic() + timeout_s
    while True:
        job.check_deadline("starting the serving API")
        if not services.alive(pid):
            log = services.SERVE.log(job.settings)
            raise RunFailedError(f"the serving API exited; last lines of {log}:\n"
                                 f"{services.tail(log)}")  # fmt: skip
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > limit:
            raise RunFailedError(f"the serving API did not answer {url} within {timeout_s:g} s")
        time.sleep(0.5)


def check_layers_alive(job: Job) -> None:
    from speed_layer import service as speed

    state = speed.status(job.settings)
    if not state.running:
        raise RunFailedError(f"the speed layer stopped; last lines of {state.log}:\n"
                             f"{services.tail(state.log)}")  # fmt: skip
    if services.running_pid(job.settings, services.SERVE) is None:
        log = services.SERVE.log(job.settings)
        raise RunFailedError(f"the serving API stopped; last lines of {log}:\n"
                             f"{services.tail(log)}")  # fmt: skip


def run_api_key(settings: Settings) -> str:
    """The reader key of `prognos run`'s API and dashboard, kept in the run dir (0600)."""
    path = settings.run_dir / "run" / "api.key"
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def _digest(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def _require_delivered(summary) -> None:
    from prognos.core.replay import ReplayDeliveryError

    if summary.failed:
        raise ReplayDeliveryError(f"{summary.failed} events not delivered: {summary.first_error}")


def subset_of_model(name: str) -> str:
    """rul_fd001 -> FD001 (models.train has the same rule; importing it loads TensorFlow)."""
    from prognos.core.data import SUBSETS

    subset = name.removeprefix("rul_").upper()
    if not name.startswith("rul_") or subset not in SUBSETS:
        raise RunFailedError(f"PROGNOS_SERVING_MODEL {name!r} names no subset: expected rul_fd00N")
    return subset


def _test_rmse(registry, name: str, version: int) -> str:
    rmse = registry.metadata(name, version).get("metrics", {}).get("test", {}).get("rmse")
    return f"test RMSE {rmse:.2f}" if rmse is not None else "no test RMSE recorded"


def _rmse(differences: list[float]) -> float:
    return math.sqrt(sum(d * d for d in differences) / len(differences))

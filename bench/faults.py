"""Fault injection: the pipeline under kill -9, broker restarts and a batch task killed
(and retried by Airflow) ends with the same tables as a clean run over the same events;
and the serving API holds 200 requests/s while the speed layer runs.

Faulted run (own broker, state dir and an untrained LSTM champion of the production
shape): `prognos serve` and the speed layer (spark-submit) start; the replayer streams an
FD001 test fleet at a fixed rate (idempotent producer, long delivery timeout) while
1. load: GET /v1/machines/{id} at 200 requests/s for 60 s from a process of its own
   (bench/serving.py's open-loop generator), starting 30 s after the speed layer's first
   commit; errors counted;
2. faults: the speed layer is killed (SIGKILL of its process group) at random points and
   restarted, the broker is stopped and started twice between kills (a speed layer that
   died of the outage is restarted too);
3. when the replay has ended and the speed view shows every machine's last cycle: the
   batch layer through Airflow - `airflow dags test batch_layer <LOGICAL_DATE>` in the
   run's own Airflow home (prognos.core.airflow_env, as `make run` does; retry delay 2 s)
   - while a watcher SIGKILLs the silver task's spark-submit mid-write on its first
   attempt (the process whose command line runs spark_jobs/silver.py and whose
   PROGNOS_STATE_DIR is this run's; once silver's first micro-batch is planned, plus a
   random 0.5-4 s); the task fails, Airflow retries it and the DAG run must succeed. Its
   state, the silver task's tries and every task's times are read from Airflow's metadata
   DB (bench/airflow_run.py, through Airflow's models).
Clean run: the same topic through the speed layer (availableNow) and the batch jobs in one
process, in a second state dir. Compared: bronze, silver, speed view and the merged answers
of the serving snapshot row for row (lost, duplicated and extra counts must be 0; floats to
6 significant digits); alerts by what batch splits cannot change (compare_alerts: ids once,
rises only, levels matching their evidence, no machine below the clean run's level) and
the alerts topic against the table.
The DAG's last task expires the speed-view rows its manifest covers and the clean run
expires nothing, so the faulted speed view is compared as it was before the batch phase
(both have seen no manifest then); the merged answers after it (the serving layer skips
covered speed rows, so expiring them changes no answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import BenchResult, parse_args, percentile
from bench.http_load import open_loop_get
from bench.serving import start_process
from bench.serving import stop as stop_process
from bench.speed import API_KEY, bench_settings, child_env, register_champion
from prognos.cli import services
from prognos.core import lake, stack
from prognos.core.errors import PrognosError
from prognos.core.settings import Settings, load_settings, settings_env

SUBSET, SPLIT = "FD001", "test"
LOGICAL_DATE = "2026-11-01T00:00:00+00:00"
RUN_ID = "faults"
JOB_ARGS = ("--logical-date", LOGICAL_DATE, "--run-id", RUN_ID)
IGNORED = {  # columns recording when or in which batch/run a row was written
    "speed_view": {"batch_id", "updated_at"},
    "silver": {"ingest_time"},
    "bronze": {"ingest_time", "ingest_date", "kafka_timestamp"},
}
PLANS = {
    "quick": {"machines": 4, "replay_s": 60, "kills": 2, "broker_restarts": 1, "load_s": 10},
    "full": {"machines": 20, "replay_s": 420, "kills": 10, "broker_restarts": 2, "load_s": 60},
}
LOAD_RPS = 200.0
LOAD_SETTLE_S = 30.0
DAG_TIMEOUT_S = 3 * 3600.0
SILVER_MARKER = b"spark_jobs/silver.py"
DAG_RETRY_DELAY_S = 2.0  # the first retry of a failed task waits ~2-4 s (not 30 s)


# ------------------------------------------------------------------ the batch DAG


def run_dag(settings: Settings, result: BenchResult) -> None:
    """`airflow dags test batch_layer` in the bench's Airflow home while a watcher kills
    the silver task's first attempt mid-write; record what Airflow says of the run."""
    from prognos.core.airflow_env import airflow_env, ensure_airflow_db

    env = airflow_env(settings, base=services.child_env(settings))
    ensure_airflow_db(settings, env)
    airflow = str(Path(sys.executable).parent / "airflow")
    command = [airflow, "dags", "test", "batch_layer", LOGICAL_DATE]
    done, killed = threading.Event(), {}
    watcher = threading.Thread(target=kill_silver_task, args=(settings, done, killed))
    watcher.start()
    began = time.monotonic()
    try:
        log, deadline = settings.run_dir / "batch_layer.log", time.monotonic() + DAG_TIMEOUT_S
        services.run_step_child(settings, "batch_layer", command, env, log, deadline)
    except PrognosError as error:
        result.notes.append(f"the batch_layer DAG test failed: {error}")
    finally:
        done.set()
        watcher.join()
    result.figures["dag_test_s"] = round(time.monotonic() - began, 1)
    result.figures["silver_killed_after_s"] = round(killed.get("ran_s", -1.0), 1)
    result.figures["dag_run"] = dag_run_of(env)


def kill_silver_task(settings: Settings, done: threading.Event, killed: dict) -> None:
    """Wait for the silver task's spark-submit (this bench's own), SIGKILL it and what it
    started once its first micro-batch is planned (plus a random delay); killed['ran_s']:
    the seconds it ran. Gives up when `done` is set (the DAG test ended)."""
    seen: list[int] = []

    def started() -> bool:
        seen[:] = bench_silver_pids(settings)
        return bool(seen) or done.is_set()

    lake.wait_for(started, DAG_TIMEOUT_S, 0.5)
    if not seen:
        return
    began = time.monotonic()
    offsets = lake.checkpoint_path(settings, "silver") / "offsets"

    def planned_or_ended() -> bool:  # by PID: an exec shows an empty command line
        return any(offsets.glob("[0-9]*")) or not any(services.alive(pid) for pid in seen)

    lake.wait_for(planned_or_ended, DAG_TIMEOUT_S)
    time.sleep(random.uniform(0.5, 4.0))
    if pids := bench_silver_pids(settings):  # signal only processes verified as ours
        kill_tree(pids)
        killed["ran_s"] = time.monotonic() - began


def bench_silver_pids(settings: Settings) -> list[int]:
    """This bench's silver processes: never another lake's silver."""
    state_dir = settings_env(settings)["PROGNOS_STATE_DIR"]
    return services.processes_of_state_dir(state_dir, SILVER_MARKER)


def kill_tree(pids: list[int]) -> None:
    """SIGKILL these processes and their descendants (Spark's Python workers)."""
    tree = [*pids, *(child for parent in pids for child in services.descendants(parent))]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def dag_run_of(env: dict) -> dict:
    """The DAG run as Airflow's metadata DB has it (bench/airflow_run.py in its env), with
    run_s: first task start to last task end (dags test dates the run's own start at its
    logical date)."""
    from datetime import datetime

    script = Path(__file__).with_name("airflow_run.py")
    command = [sys.executable, str(script), "batch_layer", LOGICAL_DATE]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"state": "unknown", "tasks": {}, "error": done.stderr.strip()[-2000:]}
    run = json.loads(done.stdout.strip().splitlines()[-1])
    times = [t.get(key) for t in run["tasks"].values() for key in ("start", "end")]
    times = sorted(datetime.fromisoformat(value) for value in times if value)
    run["run_s"] = round((times[-1] - times[0]).total_seconds(), 1) if times else None
    return run


# ------------------------------------------------------------------ replay


class Replayer(threading.Thread):
    """Streams the fleet at `rate` with an idempotent producer that rides out a broker
    restart (retries until a long delivery timeout); counts acknowledged records."""

    def __init__(self, settings: Settings, machines: int, seconds: float) -> None:
        super().__init__(daemon=True)
        from prognos.core.replay import fleet_frame, fleet_messages

        fleet = fleet_frame(SUBSET, SPLIT, machines=machines, settings=settings)
        start = _fixed_start(fleet)
        self.messages = list(fleet_messages(fleet, start, 60.0, "faults"))
        self.last_cycles = fleet.groupby("machine")["cycle"].max().to_dict()
        self.settings, self.rate = settings, len(self.messages) / seconds
        self.acked = self.failed = 0

    def run(self) -> None:
        from kafka import KafkaProducer

        from prognos.core.replay import producer_config

        config = producer_config(self.settings) | {
            "delivery_timeout_ms": 300_000,
            "max_block_ms": 300_000,
            "retries": 10**6,
        }
        producer = KafkaProducer(**config)
        futures, began = [], time.monotonic()
        for index, (key, value) in enumerate(self.messages):
            time.sleep(max(0.0, began + index / self.rate - time.monotonic()))
            futures.append(producer.send(self.settings.topic_readings, key=key, value=value))
        producer.flush(300)
        for future in futures:
            try:
                future.get(timeout=1)
                self.acked += 1
            except Exception:
                self.failed += 1
        producer.close(10)


def _fixed_start(fleet):
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(minutes=int(fleet["cycle"].max()) + 60)


# ------------------------------------------------------------------ faults and load


def speed_caught_up(settings: Settings, last_cycles: dict) -> bool:
    try:
        rows = lake.read_table_arrow("speed_view", settings).to_pylist()
    except Exception:
        return False
    seen = {row["machine_id"]: row["last_cycle"] for row in rows}
    return all(seen.get(m) == c for m, c in last_cycles.items())


def speed_rows(settings: Settings) -> int:
    try:
        return lake.read_table_arrow("speed_view", settings).num_rows
    except Exception:
        return 0


def ensure_speed(settings: Settings) -> None:
    from speed_layer import service

    if not service.status(settings).running:
        service.start(settings)


def inject_faults(settings: Settings, plan: dict, replayer: Replayer, result) -> None:
    """Kill -9 the speed layer `kills` times at random points, restart the broker
    `broker_restarts` times between kills."""
    from speed_layer import service

    rng = random.Random(7)
    restart_at = set(rng.sample(range(plan["kills"]), plan["broker_restarts"]))
    downtime = []
    for index in range(plan["kills"]):
        ensure_speed(settings)
        time.sleep(rng.uniform(10, 40))
        service.kill(settings)
        if index in restart_at:
            began = time.monotonic()
            stack.down(settings)
            time.sleep(rng.uniform(2, 8))
            stack.up(settings)
            downtime.append(time.monotonic() - began)
    ensure_speed(settings)
    result.figures["speed_kills"] = plan["kills"]
    result.figures["broker_restarts"] = len(downtime)
    result.figures["broker_down_s"] = [round(d, 1) for d in downtime]


def load_in_child(settings: Settings, machines: list[str], seconds: float) -> dict:
    """load_phase in a process of its own: the generator keeps its pace instead of sharing
    this process' GIL with the replayer thread."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(load_phase, settings, machines, seconds).result()


def load_phase(settings: Settings, machines: list[str], seconds: float) -> dict:
    """GET /v1/machines/{id} at LOAD_RPS over the fleet for `seconds` (bench.http_load)."""
    paths = [f"/v1/machines/{machine}" for machine in machines]
    total = int(LOAD_RPS * seconds)
    load = asyncio.run(
        open_loop_get(
            settings.api_host,
            settings.api_port,
            paths,
            LOAD_RPS,
            total,
            headers={"X-API-Key": API_KEY},
        )
    )
    errors = {str(s): n for s, n in load.statuses.items() if s not in (200, 404)}
    return {
        "requests": len(load.latencies),
        "achieved_rps": round(load.achieved_rps, 1),
        "p50_ms": round(percentile(load.latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(load.latencies, 99) * 1000, 2),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "not_found_yet": load.statuses[404],  # the machine is in no view yet
    }


# ------------------------------------------------------------------ clean run


def clean_run(settings: Settings, workdir: Path) -> Settings:
    """The same topic through the speed layer and the batch jobs in this process."""
    from prognos.core.spark import get_spark
    from spark_jobs import bronze_ingest, common, gold, silver, views
    from speed_layer.stream import build_query

    clean = load_settings(
        **{
            **settings.model_dump(),
            "state_dir": workdir / "clean",
            "registry_root": settings.registry,
            "topic_alerts": f"{settings.topic_alerts}-clean",
            "topic_dead_letter": f"{settings.topic_dead_letter}-clean",
            "speed_metrics_port": 0,
        }
    )
    stack.ensure_topics(clean)
    spark = get_spark("prognos-faults-clean", clean)
    try:
        lake.await_query(build_query(spark, clean, trigger="availableNow"), clean, 1200)
        bronze_ingest.ingest(spark, clean)
        silver.run(spark, clean, run_id=RUN_ID)
        args = common.job_parser("clean").parse_args(JOB_ARGS)
        run_id = common.run_id_of(args)
        gold.build(spark, clean, run_id)
        views.build(spark, clean, common.interval_id_of(args), common.logical_date_of(args), run_id)
    finally:
        spark.stop()
    return clean


# ------------------------------------------------------------------ comparison


def rows_of(settings: Settings, table: str) -> list[str]:
    ignored = IGNORED.get(table, set())
    rows = lake.read_table_arrow(table, settings).to_pylist()
    return [
        json.dumps({k: _plain(v) for k, v in row.items() if k not in ignored}, sort_keys=True)
        for row in rows
    ]


def _plain(value):
    """A JSON-comparable value; floats to 6 significant digits (the model's float32 output,
    computed in another process over windows batched differently)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if value and isinstance(value[0], tuple) else items
    return value if isinstance(value, int | str | bool | type(None)) else str(value)


def compare(faulted: list[str], clean: list[str]) -> dict:
    """lost: rows of the clean run missing here; duplicated: rows here more than once;
    extra: rows here the clean run does not have."""
    from collections import Counter

    mine, theirs = Counter(faulted), Counter(clean)
    return {
        "rows": len(faulted),
        "clean_rows": len(clean),
        "lost": sum((theirs - mine).values()),
        "duplicated": sum(n - 1 for n in mine.values() if n > 1),
        "extra": sum((mine - theirs).values()) - sum(n - 1 for n in mine.values() if n > 1),
        "lost_samples": [row[:600] for row in list(theirs - mine)[:2]],
        "extra_samples": [row[:600] for row in list(mine - theirs)[:2]],
    }


LEVEL_RANK = {None: 0, "unknown": 0, "green": 1, "amber": 2, "red": 3}


def compare_alerts(settings: Settings, clean: Settings) -> dict:
    """Alerts against the clean run. A level is judged at each micro-batch's last cycle, so
    which rises happen (and at which cycle) depends on where batches split, which restarts
    change, and the one-batch clean run sees each machine's final level only. What must
    hold: an alert id once in the table (exactly once), every alert a rise whose level its
    evidence (predicted RUL) gives, and nothing lost: each machine reaches at least the
    level the clean run alerted."""
    from collections import Counter

    from prognos.core.alerting import alert_level

    mine = lake.read_table_arrow("alerts", settings).to_pylist()
    theirs = lake.read_table_arrow("alerts", clean).to_pylist()

    def top(rows) -> dict[str, int]:
        levels: dict[str, int] = {}
        for row in rows:
            rank = LEVEL_RANK[row["alert_level"]]
            levels[row["machine_id"]] = max(levels.get(row["machine_id"], 0), rank)
        return levels

    reached, expected = top(mine), top(theirs)
    ids = Counter(row["alert_id"] for row in mine)
    return {
        "rows": len(mine),
        "clean_rows": len(theirs),
        "duplicated": sum(n - 1 for n in ids.values() if n > 1),
        "not_a_rise": sum(
            LEVEL_RANK[row["alert_level"]] <= LEVEL_RANK[row["previous_level"]] for row in mine
        ),
        "evidence_mismatch": sum(
            alert_level(row["predicted_rul"], settings) != row["alert_level"] for row in mine
        ),
        "lost": sum(reached.get(machine, 0) < rank for machine, rank in expected.items()),
    }


def merged_answers(settings: Settings) -> list[str]:
    import functools

    from prognos.core.alerting import alert_level
    from serving_layer.snapshot import SnapshotStore
    from serving_layer.views import DeltaViews

    store = SnapshotStore(
        DeltaViews(settings), level_of=functools.partial(alert_level, settings=settings)
    )
    store.refresh()
    volatile = {"as_of", "updated_at", "run_id", "published_at", "batch_id"}
    return [
        json.dumps({k: _plain(v) for k, v in state.items() if k not in volatile}, sort_keys=True)
        for state in store.current.machines.values()
    ]


def alert_ids_on_topic(settings: Settings, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        return [message.key for message in consumer]
    finally:
        consumer.close()


# ------------------------------------------------------------------ main


def run_bench(result: BenchResult, plan: dict, workdir: Path) -> None:
    from speed_layer import service

    # a day-long watermark: equal to the clean run (one batch) means no row went late
    # a short retry delay: the killed silver task is retried within seconds
    overrides = {"speed_watermark": "1 day", "dag_retry_delay_s": DAG_RETRY_DELAY_S}
    settings = load_settings(**{**bench_settings(workdir, result.quick).model_dump(), **overrides})
    stack.up(settings)
    server = None
    try:
        register_champion(settings)
        server_env = child_env(settings)
        server = start_process(
            [sys.executable, "-m", "prognos.cli.main", "serve"],
            server_env,
            f"http://127.0.0.1:{settings.api_port}/healthz",
            workdir / "serve.log",
        )
        replayer = Replayer(settings, plan["machines"], plan["replay_s"])
        service.start(settings)
        began = time.monotonic()
        replayer.start()
        machines = sorted(replayer.last_cycles)
        # load once the speed layer serves (its first commit), so answers are not all 404,
        # and has caught up with its backlog (the catch-up batches and the serving layer's
        # first snapshots are start-up, not the steady state the load is meant to meet)
        lake.wait_for(lambda: speed_rows(settings) > 0, 600, 1)
        time.sleep(LOAD_SETTLE_S)
        result.figures["load"] = load_in_child(settings, machines, plan["load_s"])
        inject_faults(settings, plan, replayer, result)
        replayer.join()
        result.figures["replay"] = {
            "events": len(replayer.messages),
            "acked": replayer.acked,
            "failed": replayer.failed,
            "rate_events_per_s": round(replayer.rate, 1),
        }
        if not lake.wait_for(lambda: speed_caught_up(settings, replayer.last_cycles), 900, 2):
            result.notes.append("the speed view did not show every last cycle within 15 min")
        result.figures["streaming_phase_s"] = round(time.monotonic() - began, 1)
        service.stop(settings)
        speed_view = batch_phase(settings, result)
        began = time.monotonic()
        clean = clean_run(settings, workdir)
        result.figures["clean_run_s"] = round(time.monotonic() - began, 1)
        compare_runs(result, settings, clean, replayer, speed_view)
        check_dag(result)
    finally:
        service.stop(settings)
        if server is not None:
            stop_process(server)
        stack.down(settings)


def batch_phase(settings: Settings, result: BenchResult) -> list[str]:
    """The batch_layer DAG over the faulted lake (silver killed, retried by Airflow); returns
    the speed view as it was before the DAG, whose last task expires the rows it covers."""
    speed_view = rows_of(settings, "speed_view")
    began = time.monotonic()
    run_dag(settings, result)
    result.figures["batch_phase_s"] = round(time.monotonic() - began, 1)
    result.figures["speed_view_rows_after_dag"] = speed_rows(settings)
    return speed_view


def check_dag(result: BenchResult) -> None:
    run = result.figures["dag_run"]
    silver = run["tasks"].get("silver", {})
    result.check("silver task tries", silver.get("try_number", 0), ">=", 2)
    result.check("DAG run succeeded", 1 if run["state"] == "success" else 0, ">=", 1)


def compare_runs(
    result: BenchResult, settings: Settings, clean: Settings, replayer, speed_view: list[str]
) -> None:
    """Faulted against clean; the faulted speed view as captured before the batch phase
    (the clean run expires nothing), the merged answers after it."""
    faulted = {name: rows_of(settings, name) for name in IGNORED} | {"speed_view": speed_view}
    tables = {name: compare(faulted[name], rows_of(clean, name)) for name in IGNORED}
    tables["merged_answers"] = compare(merged_answers(settings), merged_answers(clean))
    tables["alerts"] = compare_alerts(settings, clean)
    on_topic = alert_ids_on_topic(settings, settings.topic_alerts)
    in_table = {
        row["alert_id"].encode() for row in lake.read_table_arrow("alerts", settings).to_pylist()
    }
    tables["alerts_topic"] = {  # a resend after a crash repeats a key: consumers dedup
        "records": len(on_topic),
        "distinct_ids": len(set(on_topic)),
        "lost": len(in_table - set(on_topic)),
    }
    result.figures["comparison"] = tables
    result.check("events not acknowledged", replayer.failed, "<=", 0)
    bronze_values = [row["value"] for row in lake.read_table_arrow("bronze", settings).to_pylist()]
    result.figures["topic"] = {
        "records": len(bronze_values),
        "distinct_events": len(set(bronze_values)),
        "events_meant": len(replayer.messages),
    }
    missing = len(replayer.messages) - len(set(bronze_values))
    result.check("events missing in the topic", missing, "<=", 0)
    for name in (*IGNORED, "merged_answers"):
        counts = tables[name]
        result.check(f"{name} lost", counts["lost"], "<=", 0)
        result.check(f"{name} duplicated", counts["duplicated"], "<=", 0)
        result.check(f"{name} extra", counts["extra"], "<=", 0)
    for name in ("lost", "duplicated", "not_a_rise", "evidence_mismatch"):
        result.check(f"alerts {name}", tables["alerts"][name], "<=", 0)
    result.check("alert ids lost on the topic", tables["alerts_topic"]["lost"], "<=", 0)
    load = result.figures["load"]
    result.check("load errors at 200 rps", load["errors"], "<=", 0)
    result.check("load achieved rps", load.get("achieved_rps", 0.0), ">=", LOAD_RPS * 0.95)


def main() -> None:
    args = parse_args(__doc__)
    result = BenchResult("faults", args.quick)
    plan = PLANS["quick" if args.quick else "full"]
    result.figures["plan"] = plan
    with tempfile.TemporaryDirectory(prefix="prognos-faults-") as workdir:
        run_bench(result, plan, Path(workdir))
    result.finish()


if __name__ == "__main__":
    main()

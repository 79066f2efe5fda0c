"""Fault injection: the pipeline under kill -9, broker restarts and a killed batch job
ends with the same tables as a clean run over the same events; and the serving API holds
200 requests/s while the speed layer runs.

Faulted run (own broker, state dir and an untrained LSTM champion of the production
shape): `prognos serve` and the speed layer (spark-submit) start; the replayer streams an
FD001 test fleet at a fixed rate (idempotent producer, long delivery timeout) while
1. load: GET /v1/machines/{id} at 200 requests/s for 60 s (bench/serving.py's open-loop
   generator), errors counted;
2. faults: the speed layer is killed (SIGKILL of its process group) at random points and
   restarted, the broker is stopped and started twice between kills (a speed layer that
   died of the outage is restarted too);
3. when the replay has ended and the speed view shows every machine's last cycle: bronze
   ingest, then silver, killed with SIGKILL mid-write (once its first micro-batch started),
   then silver again, gold and views (each a spark-submit).
Clean run: the same topic through the speed layer (availableNow) and the batch jobs in one
process, in a second state dir. Compared: bronze, silver, speed view, alerts (table and
topic) and the merged answers of the serving snapshot; lost and duplicated counts must be 0.
Not done here: a failed Airflow task retried (the DAG's retries are not exercised).
"""

from __future__ import annotations

import asyncio
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

import httpx

from bench._harness import BenchResult, parse_args, percentile
from bench.serving import open_loop, start_process
from bench.serving import stop as stop_process
from bench.speed import API_KEY, bench_settings, child_env, register_champion
from prognos.core import lake, stack
from prognos.core.settings import PROJECT_ROOT, Settings, load_settings

SUBSET, SPLIT = "FD001", "test"
LOGICAL_DATE = "2026-11-01T00:00:00+00:00"
RUN_ID = "faults"
JOB_ARGS = ("--logical-date", LOGICAL_DATE, "--run-id", RUN_ID)
IGNORED = {  # columns recording when or in which batch/run a row was written
    "speed_view": {"batch_id", "updated_at"},
    "alerts": {"raised_at"},
    "silver": {"ingest_time"},
    "bronze": {"ingest_time", "ingest_date", "kafka_timestamp"},
}
# An alert is raised in the micro-batch where a machine's level rises, so its cycle (and id)
# depends on where batches split, which a restart changes; what must match is each rise.
KEPT = {"alerts": ("machine_id", "alert_level", "previous_level", "model_version")}
PLANS = {
    "quick": {"machines": 4, "replay_s": 60, "kills": 2, "broker_restarts": 1, "load_s": 10},
    "full": {"machines": 20, "replay_s": 420, "kills": 10, "broker_restarts": 2, "load_s": 60},
}
LOAD_RPS = 200.0


# ------------------------------------------------------------------ processes


def spark_job(settings: Settings, job: str, *args: str) -> subprocess.Popen:
    from prognos.core.spark import spark_conf
    from speed_layer.service import spark_submit

    command = [spark_submit(), "--master", settings.spark_master]
    for key, value in spark_conf(settings).items():
        command += ["--conf", f"{key}={value}"]
    command += [str(PROJECT_ROOT / "spark_jobs" / f"{job}.py"), *args]
    log = settings.run_dir / f"{job}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**child_env(settings), "PYSPARK_PYTHON": sys.executable}
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def run_job(settings: Settings, job: str, *args: str) -> None:
    code = spark_job(settings, job, *args).wait()
    if code != 0:
        raise RuntimeError(f"{job} exited {code}; see {settings.run_dir / f'{job}.log'}")


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_silver_mid_write(settings: Settings, timeout_s: float = 600) -> float:
    """Start silver, SIGKILL it once its first micro-batch is planned (plus a random
    delay), return the seconds it ran; False-start guarded by a timeout."""
    process = spark_job(settings, "silver", *JOB_ARGS)
    offsets = lake.checkpoint_path(settings, "silver") / "offsets"
    began = time.monotonic()
    lake.wait_for(lambda: any(offsets.glob("[0-9]*")) or process.poll() is not None, timeout_s)
    time.sleep(random.uniform(0.5, 4.0))
    if process.poll() is not None:
        return -1.0  # it finished first: nothing was killed
    kill_group(process)
    return time.monotonic() - began


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


def load_phase(settings: Settings, machines: list[str], seconds: float) -> dict:
    base = f"http://{settings.api_host}:{settings.api_port}"
    headers = {"X-API-Key": API_KEY}
    errors: list[str] = []
    not_found = [0]

    async def request(client, index):
        response = await client.get(
            f"{base}/v1/machines/{machines[index % len(machines)]}", headers=headers
        )
        if response.status_code == 404:  # the machine is in no view yet
            not_found[0] += 1
        elif response.status_code != 200:
            errors.append(str(response.status_code))
        # open_loop raises on an error status: errors are counted here instead
        return httpx.Response(200, request=response.request)

    total = int(LOAD_RPS * seconds)
    try:
        latencies, elapsed = asyncio.run(open_loop(request, total, LOAD_RPS))
    except httpx.HTTPError as error:
        return {"requests": total, "errors": total, "first_error": str(error)}
    return {
        "requests": len(latencies),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "errors": len(errors),
        "not_found_yet": not_found[0],
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
    if table in KEPT:
        rows = [{k: row[k] for k in KEPT[table]} for row in rows]
    return [
        json.dumps({k: _plain(v) for k, v in row.items() if k not in ignored}, sort_keys=True)
        for row in rows
    ]


def _plain(value):
    """A JSON-comparable value; floats to 10 significant digits (TF in another process)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return float(f"{value:.10g}")
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
    settings = load_settings(
        **{**bench_settings(workdir, result.quick).model_dump(), "speed_watermark": "1 day"}
    )
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
        # load once the speed layer serves (its first commit), so answers are not all 404
        lake.wait_for(lambda: speed_rows(settings) > 0, 600, 1)
        result.figures["load"] = load_phase(settings, machines, plan["load_s"])
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
        began = time.monotonic()
        run_job(settings, "bronze_ingest")
        result.figures["silver_killed_after_s"] = round(kill_silver_mid_write(settings), 1)
        for job in ("silver", "gold", "views"):
            run_job(settings, job, *JOB_ARGS)
        result.figures["batch_phase_s"] = round(time.monotonic() - began, 1)
        began = time.monotonic()
        clean = clean_run(settings, workdir)
        result.figures["clean_run_s"] = round(time.monotonic() - began, 1)
        compare_runs(result, settings, clean, replayer)
    finally:
        service.stop(settings)
        if server is not None:
            stop_process(server)
        stack.down(settings)


def compare_runs(result: BenchResult, settings: Settings, clean: Settings, replayer) -> None:
    tables = {name: compare(rows_of(settings, name), rows_of(clean, name)) for name in IGNORED}
    tables["merged_answers"] = compare(merged_answers(settings), merged_answers(clean))
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

"""Serving latency: merged machine query and predict through `prognos serve` (real HTTP),
beside a bare FastAPI endpoint returning a constant (same uvicorn settings) and a direct
SavedModel call, in the same run.

Builds a fleet (batch view + manifest + speed view, delta-rs) and an (untrained) LSTM of
the project's shape in a temporary state dir. Figures: p50/p99 latency and throughput at
concurrency 1 and 16 (closed loop) and p99 at a paced 200 requests/s (open loop).
Each figure is measured in slices interleaved with its reference (the machine may be
shared). Checks: merged query p99 <= 10 ms at 200 rps; predict p99 <= 20 ms; each <= 2x its
reference. One more figure, without a check: the merged query at 200 rps while the speed
view changes every 2 s (each change makes the server rebuild its snapshot), as it does
while the speed layer runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

from bench._harness import BenchResult, parse_args, percentile
from prognos.core.settings import Settings, load_settings, settings_env

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5  # slices per scenario, interleaved with the scenarios it is compared with
KEY = "bench-key"
MODEL = "rul_lstm"
WINDOW, FEATURES = 30, 24
BARE_APP = (
    "import sys, uvicorn\n"
    "from fastapi import FastAPI\n"
    "app = FastAPI()\n"
    "@app.get('/const')\n"
    "def const():\n"
    "    return {'machine_id': 'm1', 'predicted_rul': 42.0}\n"
    "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='info',"
    " access_log=False)\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_fleet(settings: Settings, machines: int) -> None:
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from prognos.core.tables import get_table, table_path

    def write(name: str, rows: list[dict]) -> int:
        schema = get_table(name).arrow_schema
        table = pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema)
        write_deltalake(str(table_path(name, settings)), table, mode="append")
        return DeltaTable(str(table_path(name, settings))).version()

    start = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(0)
    batch = [
        {
            "machine_id": f"m{i:05d}",
            "last_cycle": 100,
            "readings_count": 100,
            "last_event_time": start + timedelta(minutes=100),
            "predicted_rul": rng.uniform(0, 150),
            "model_version": "1",
        }
        for i in range(machines)
    ]
    version = write("machine_state", batch)
    write(
        "batch_manifest",
        [
            {
                "run_id": "bench",
                "published_at": datetime.now(UTC),
                "table_versions": [("machine_state", version)],
                "partition_offsets": [(0, 100 * machines)],
            }
        ],
    )
    speed = [
        {
            **row,
            "last_cycle": 103,
            "readings_count": 3,
            "kafka_partition": 0,
            "pending_offsets": [100 * machines + 3 * i + k for k in range(3)],
        }
        for i, row in enumerate(batch[: machines // 4])
    ]
    write("speed_view", speed)


def build_model(settings: Settings) -> None:
    from models.config import TrainConfig
    from models.network import build_model as lstm
    from models.network import export_saved_model
    from prognos.core.registry import FilesystemRegistry

    model = lstm(WINDOW, FEATURES, TrainConfig())
    registry = FilesystemRegistry(settings.registry)
    version = registry.register(
        MODEL,
        lambda d: export_saved_model(model, d, WINDOW, FEATURES),
        {"metrics": {"validation": {"rmse": 1.0}}},
    )
    registry.promote(MODEL, version)


def write_speed_row(settings: Settings, machines: int, serial: int) -> None:
    """One more speed-view row (a newer cycle of one machine): a new Delta version."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from prognos.core.tables import get_table, table_path

    schema = get_table("speed_view").arrow_schema
    row = {name: None for name in schema.names}
    row.update(
        machine_id=f"m{serial % machines:05d}",
        last_cycle=200 + serial,
        readings_count=1,
        predicted_rul=50.0,
        model_version="1",
        kafka_partition=0,
        pending_offsets=[10**9 + serial],
    )
    write_deltalake(
        str(table_path("speed_view", settings)), pa.Table.from_pylist([row], schema), mode="append"
    )


SPEED_WRITER = (  # a separate process, so its writes do not hold the client's GIL
    "import sys, time\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from bench.serving import write_speed_row\n"
    "from prognos.core.settings import load_settings\n"
    "settings, serial = load_settings(), 0\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    time.sleep(float(sys.argv[3]))\n"
    "    write_speed_row(settings, int(sys.argv[2]), serial)\n"
    "    serial += 1\n"
)


class SpeedWriter:
    """A child process appending a speed-view row every `interval_s` until the block ends."""

    def __init__(self, env: dict, machines: int, interval_s: float = 2.0) -> None:
        self.args = [sys.executable, "-c", SPEED_WRITER, str(ROOT), str(machines), str(interval_s)]
        self.env = env
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SpeedWriter:
        self.process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()  # imports done: they would compete with the server
        return self

    def __exit__(self, *_) -> None:
        stop(self.process)


def speed_view_version(settings: Settings) -> int:
    from deltalake import DeltaTable

    from prognos.core.tables import table_path

    return DeltaTable(str(table_path("speed_view", settings))).version()


def start_process(args: list[str], env: dict, url: str, log: Path) -> subprocess.Popen:
    stream = log.open("w")
    process = subprocess.Popen(args, env=env, stdout=stream, stderr=stream)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[-1]} exited; see {log}")
        try:
            httpx.get(url, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"{args} did not start; see {log}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def closed_loop(make_request, total: int, concurrency: int) -> dict:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker(client):
        for index in counter:
            started = time.perf_counter()
            response = await make_request(client, index)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        for _ in range(min(20, total)):  # warm up connections and code paths
            (await make_request(client, 0)).raise_for_status()
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return latencies, elapsed


async def open_loop(make_request, total: int, rate: float) -> dict:
    latencies: list[float] = []

    async def one(client, index):
        started = time.perf_counter()
        response = await make_request(client, index)
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        for _ in range(20):
            (await make_request(client, 0)).raise_for_status()
        began, tasks = time.perf_counter(), []
        for index in range(total):
            await asyncio.sleep(max(0.0, began + index / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, index)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    return latencies, elapsed


def interleaved(scenarios: dict, total: int) -> dict[str, dict]:
    """Each scenario in ROUNDS slices alternating with the others (order reversed every
    other round), so background load on a shared machine hits them alike; a scenario's
    figures pool the latencies of its slices. A scenario: n -> (latencies, seconds)."""
    latencies = {name: [] for name in scenarios}
    elapsed = dict.fromkeys(scenarios, 0.0)
    for round_index in range(ROUNDS):
        order = list(scenarios) if round_index % 2 == 0 else list(reversed(scenarios))
        for name in order:
            found, seconds = scenarios[name](total // ROUNDS)
            latencies[name].extend(found)
            elapsed[name] += seconds
    return {name: summary(latencies[name], elapsed[name]) for name in scenarios}


def summary(latencies: list[float], elapsed: float) -> dict:
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
    }


def direct_savedmodel(settings: Settings, window):
    """n -> latencies of n direct calls of the champion's serving signature (in this
    process, no HTTP), and their total seconds."""
    import tensorflow as tf

    from prognos.core.registry import FilesystemRegistry

    signature = FilesystemRegistry(settings.registry).load(MODEL).signature
    for _ in range(20):
        signature(window=tf.constant(window))

    def run(n: int) -> tuple[list[float], float]:
        latencies = []
        began = time.perf_counter()
        for _ in range(n):
            started = time.perf_counter()
            signature(window=tf.constant(window))
            latencies.append(time.perf_counter() - started)
        return latencies, time.perf_counter() - began

    return run


def over_http(make_request, runner, *args):
    return lambda n: asyncio.run(runner(make_request, n, *args))


def main() -> None:
    args = parse_args(__doc__)
    result = BenchResult("serving", args.quick)
    machines, total = (2000, 300) if args.quick else (20000, 3000)
    window = np.random.default_rng(0).normal(size=(1, WINDOW, FEATURES)).astype(np.float32)
    body = {"instances": window.tolist()}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        from serving_layer.auth import hash_key

        settings = load_settings(
            state_dir=Path(tmp),
            api_port=free_port(),
            grpc_port=free_port(),
            api_keys=f"{hash_key(KEY)}:operator:bench",
        )
        build_fleet(settings, machines)
        build_model(settings)
        env = {**os.environ, **settings_env(settings)}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        api = f"http://127.0.0.1:{settings.api_port}"
        bare_port = free_port()
        server = start_process(
            [sys.executable, "-m", "prognos.cli.main", "serve"],
            env,
            f"{api}/healthz",
            Path(tmp) / "serve.log",
        )
        bare = start_process(
            [sys.executable, "-c", BARE_APP, str(bare_port)],
            env,
            f"http://127.0.0.1:{bare_port}/const",
            Path(tmp) / "bare.log",
        )
        headers = {"X-API-Key": KEY}
        ids = [f"m{i:05d}" for i in random.Random(1).sample(range(machines), 200)]

        def query(client, i):
            return client.get(f"{api}/v1/machines/{ids[i % len(ids)]}", headers=headers)

        def predict(client, i):
            return client.post(f"{api}/v1/models/{MODEL}:predict", json=body, headers=headers)

        def constant(client, i):
            return client.get(f"http://127.0.0.1:{bare_port}/const")

        try:
            direct = direct_savedmodel(settings, window)
            # this process holds TensorFlow (model build, direct calls): without this, its
            # full garbage collections (~0.3 s) stall the client and inflate every p99
            gc.collect()
            gc.freeze()
            for concurrency in (1, 16):
                scenarios = {
                    name: over_http(make, closed_loop, concurrency)
                    for name, make in (
                        ("query", query),
                        ("predict", predict),
                        ("bare_constant", constant),
                    )
                }
                if concurrency == 1:
                    scenarios["direct_savedmodel"] = direct
                found = interleaved(scenarios, total)
                result.figures[f"query_c{concurrency}"] = found["query"]
                result.figures[f"predict_c{concurrency}"] = found["predict"]
                result.reference[f"bare_constant_c{concurrency}"] = found["bare_constant"]
                if concurrency == 1:
                    result.reference["direct_savedmodel"] = found["direct_savedmodel"]
            found = interleaved(
                {
                    "query": over_http(query, open_loop, 200),
                    "bare_constant": over_http(constant, open_loop, 200),
                },
                total,
            )
            result.figures["query_at_200rps"] = found["query"]
            result.reference["bare_constant_at_200rps"] = found["bare_constant"]
            before = speed_view_version(settings)
            with SpeedWriter(env, machines):
                live = summary(*asyncio.run(open_loop(query, max(total, 1200), 200)))
            result.figures["query_at_200rps_speed_view_changing"] = {
                **live,
                "speed_view_writes": speed_view_version(settings) - before,
            }
        finally:
            stop(server)
            stop(bare)
    result.notes.append(
        f"{machines} machines (1/4 from the speed view); {total} requests per "
        f"scenario in {ROUNDS} slices interleaved with its reference; client is Python "
        "httpx (async) on the same machine"
    )
    query_p99 = result.figures["query_at_200rps"]["p99_ms"]
    predict_p99 = result.figures["predict_c1"]["p99_ms"]
    result.check("merged query p99 ms at 200 rps", query_p99, "<=", 10)
    result.check("predict p99 ms (concurrency 1)", predict_p99, "<=", 20)
    result.check(
        "query p99 / bare constant p99 (both at 200 rps)",
        query_p99 / result.reference["bare_constant_at_200rps"]["p99_ms"],
        "<=",
        2,
    )
    direct_p99 = result.reference["direct_savedmodel"]["p99_ms"]
    bare_p99 = result.reference["bare_constant_c1"]["p99_ms"]
    result.check(
        "predict p99 / (direct SavedModel + bare HTTP) p99",
        predict_p99 / (direct_p99 + bare_p99),
        "<=",
        2,
    )
    result.finish()


if __name__ == "__main__":
    main()

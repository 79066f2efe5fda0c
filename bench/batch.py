"""Batch layer throughput: silver -> gold -> batch views with Spark (the real jobs)
beside the same feature and view computation in DuckDB on the same silver Parquet files.

The fleet is C-MAPSS FD002 train (six operating conditions) multiplied by --scale
(40 -> ~2.15M rows). Silver is written directly from the scaled fleet (as
prognos.core.replay generates it; no Kafka: this measures silver -> gold -> views only).
Both sides do the same work: operating-condition assignment (nearest centroid),
per-condition sensor normalisation, health index, rolling mean/std/slope per signal over
each window, machine_state (latest cycle, readings, health features) and fleet_summary.
No champion is registered, so neither side scores a model.
Figures: rows/s of each, their ratio (check: Spark/DuckDB >= 0.33), peak memory of each
(Spark: driver JVM + its Python workers, sampled; DuckDB: peak RSS of its process), and the
largest difference between the two sides' feature values.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import BenchResult, parse_args

SUBSET = "FD002"
FULL_SCALE = 40
COMPARED = ("health_index", "health_index_slope_30", "sensor_11_std_30", "sensor_4_mean_5")


def configure(parser) -> None:
    parser.add_argument(
        "--scale", type=int, default=None, help=f"fleet multiplier (default {FULL_SCALE})"
    )
    parser.add_argument("--duckdb-only", default=None, help="internal: DuckDB side of a run")


def write_silver(settings, scale: int, machines: int | None) -> int:
    """Silver (Delta, written with delta-rs) from the scaled fleet; return its rows."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from prognos.core.replay import fleet_frame
    from prognos.core.tables import get_table, table_path
    from spark_jobs.silver import silver_frame_of_fleet

    fleet = fleet_frame(SUBSET, "train", machines=machines, scale=scale)
    rows = silver_frame_of_fleet(fleet, datetime(2026, 1, 1, tzinfo=UTC), source="bench")
    spec = get_table("silver")
    table = pa.Table.from_pandas(rows, schema=spec.arrow_schema, preserve_index=False)
    write_deltalake(str(table_path(spec, settings)), table, mode="overwrite")
    return len(rows)


class TreeMemory:
    """Peak RSS of a process and its descendants, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)
            time.sleep(0.2)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def spark_side(settings) -> dict:
    from prognos.core.spark import get_spark
    from spark_jobs import gold, views

    spark = get_spark("bench-batch", settings)
    try:
        jvm = spark.sparkContext._gateway.proc.pid
        with TreeMemory(jvm) as memory:
            started = time.perf_counter()
            built = gold.build(spark, settings, "bench")
            views.build(spark, settings, "bench", datetime.now(UTC))
            elapsed = time.perf_counter() - started
        return {"elapsed_s": elapsed, "gold_rows": built["rows"], "peak_mb": memory.peak_mb}
    finally:
        spark.stop()


# ---------------------------------------------------------------- the DuckDB side


def _values(rows) -> str:
    return ", ".join("(" + ", ".join(repr(float(v)) for v in row) + ")" for row in rows)


def gold_sql(files: list[str], model) -> str:
    """The gold features in SQL: the same definition as prognos.core.features."""
    from prognos.core.features import HEALTH, SETTING_NAMES, FeatureConfig

    config = FeatureConfig()
    scale = model.setting_scale
    distances = [
        " + ".join(
            f"power({name} / {scale[j]!r} - {centre[j] / scale[j]!r}, 2)"
            for j, name in enumerate(SETTING_NAMES)
        )
        for centre in model.centroids
    ]
    condition = f"list_position([{', '.join(distances)}], list_min([{', '.join(distances)}])) - 1"
    stats_rows = [
        [index, *model.sensor_mean[index], *model.sensor_std[index]]
        for index in range(model.n_conditions)
    ]
    stat_names = [f"m_{s}" for s in config.sensors] + [f"s_{s}" for s in config.sensors]
    z = [f"(({s} - m_{s}) / s_{s}) AS {s}_z" for s in config.sensors]
    signs = model.health_signs
    health = " + ".join(f"{signs[i]!r} * {s}_z" for i, s in enumerate(config.sensors))
    rolling = []
    for w in config.windows:
        frame = (
            f"(PARTITION BY machine_id ORDER BY cycle "
            f"ROWS BETWEEN {w - 1} PRECEDING AND CURRENT ROW)"
        )
        for signal in [*(f"{s}_z" for s in config.sensors), HEALTH]:
            base = signal.removesuffix("_z")
            rolling += [
                f"avg({signal}) OVER {frame} AS {base}_mean_{w}",
                f"stddev_pop({signal}) OVER {frame} AS {base}_std_{w}",
                f"coalesce(nullif(regr_slope({signal}, cycle) OVER {frame}, 'NaN'::DOUBLE), 0)"
                f" AS {base}_slope_{w}",
            ]
    sensors = ", ".join(config.sensors)
    return f"""
        WITH s AS (
            SELECT machine_id, cycle, event_time, {sensors}, CAST({condition} AS INTEGER)
                   AS condition
            FROM read_parquet({files!r})),
        c(condition, {", ".join(stat_names)}) AS (VALUES {_values(stats_rows)}),
        z AS (SELECT machine_id, cycle, event_time, s.condition, {", ".join(z)}
              FROM s JOIN c ON CAST(c.condition AS INTEGER) = s.condition),
        h AS (SELECT *, ({health}) / {len(config.sensors)} AS {HEALTH} FROM z)
        SELECT *, {", ".join(rolling)} FROM h
    """


def views_sql(files: list[str], gold: str) -> tuple[str, str]:
    """machine_state and fleet_summary in SQL (no champion: no prediction, level unknown)."""
    from prognos.core.features import HEALTH

    readings = [f"setting_{i}" for i in range(1, 4)] + [f"sensor_{i}" for i in range(1, 22)]
    readings_map = f"map([{', '.join(repr(r) for r in readings)}], [{', '.join(readings)}])"
    state = f"""
        WITH s AS (SELECT * FROM read_parquet({files!r})),
        counts AS (SELECT machine_id, max(cycle) AS last_cycle,
                          max(event_time) AS last_event_time, count(*) AS readings_count,
                          arg_max({readings_map}, cycle) AS sensors FROM s GROUP BY machine_id),
        g AS (SELECT * FROM read_parquet('{gold}')),
        health AS (SELECT machine_id, arg_max({HEALTH}, cycle) AS health_index,
                          arg_max(COLUMNS('^{HEALTH}_.*'), cycle) FROM g GROUP BY machine_id)
        SELECT counts.*, CAST(NULL AS DOUBLE) AS predicted_rul, 'unknown' AS alert_level,
               health.* EXCLUDE (machine_id)
        FROM counts LEFT JOIN health USING (machine_id)
    """
    summary = """
        SELECT count(*) AS machines, sum(readings_count) AS readings,
               count(*) FILTER (alert_level = 'red') AS red,
               count(*) FILTER (alert_level = 'amber') AS amber,
               count(*) FILTER (alert_level = 'green') AS green,
               count(*) FILTER (alert_level = 'unknown') AS unknown,
               quantile_cont(predicted_rul, [0.1, 0.5, 0.9]) AS rul_quantiles,
               min(predicted_rul), avg(predicted_rul), max(predicted_rul),
               max(last_event_time) AS max_event_time
        FROM state
    """
    return state, summary


def duckdb_run(job: dict) -> dict:
    import duckdb

    from prognos.core.features import ConditionModel

    model = ConditionModel.from_json(job["model"])
    out = Path(job["out"])
    gold_file = out / "gold.parquet"
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(f"COPY ({gold_sql(job['files'], model)}) TO '{gold_file}' (FORMAT parquet)")
    state, summary = views_sql(job["files"], str(gold_file))
    con.execute(f"CREATE TABLE state AS {state}")
    con.execute(f"COPY state TO '{out / 'machine_state.parquet'}' (FORMAT parquet)")
    con.execute(f"COPY ({summary}) TO '{out / 'fleet_summary.parquet'}' (FORMAT parquet)")
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{gold_file}')").fetchone()[0]
    machines = con.execute("SELECT count(*) FROM state").fetchone()[0]
    return {
        "elapsed_s": elapsed,
        "rows": rows,
        "machines": machines,
        "peak_mb": peak_mb,
        "max_abs_diff": _max_difference(con, gold_file, job["spark_gold"]),
    }


def _max_difference(con, duck_gold: Path, spark_gold: list[str]) -> float:
    """Largest |DuckDB - Spark| over some feature columns of every row (after timing)."""
    diffs = ", ".join(f"max(abs(d.{c} - s.{c}))" for c in COMPARED)
    row = con.execute(
        f"SELECT greatest({diffs}), count(*) FROM read_parquet('{duck_gold}') d "
        f"JOIN read_parquet({spark_gold!r}) s USING (machine_id, cycle)"
    ).fetchone()
    return float(row[0])


def duckdb_side(files: list[str], spark_gold: list[str], model_json: str, out: Path) -> dict:
    job = {"files": files, "spark_gold": spark_gold, "model": model_json, "out": str(out)}
    job_file = out / "job.json"
    job_file.write_text(json.dumps(job))
    result = subprocess.run(
        [sys.executable, __file__, "--duckdb-only", str(job_file)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"DuckDB side failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parquet_files(name: str, settings) -> list[str]:
    from deltalake import DeltaTable

    from prognos.core.tables import table_path

    uris = DeltaTable(str(table_path(name, settings))).file_uris()
    return [uri.removeprefix("file://") for uri in uris]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], configure)
    if args.duckdb_only:
        print(json.dumps(duckdb_run(json.loads(Path(args.duckdb_only).read_text()))))
        return
    from prognos.core.data import load_cmapss
    from prognos.core.features import fit_condition_model
    from prognos.core.settings import load_settings

    scale = args.scale or (2 if args.quick else FULL_SCALE)
    machines = 40 if args.quick else None
    result = BenchResult("batch", args.quick)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        settings = load_settings(
            state_dir=Path(tmp),
            jars_dir=Path(__file__).resolve().parents[1] / ".state" / "jars",
            registry_root=Path(tmp) / "no-models",
        )
        rows = write_silver(settings, scale, machines)
        spark = spark_side(settings)
        model = fit_condition_model(load_cmapss(SUBSET, "train"))
        duck = duckdb_side(
            parquet_files("silver", settings),
            parquet_files("gold_features", settings),
            model.to_json(),
            Path(tmp),
        )
    spark_rate, duck_rate = rows / spark["elapsed_s"], rows / duck["elapsed_s"]
    result.figures.update(
        {
            "subset": SUBSET,
            "scale": scale,
            "silver_rows": rows,
            "spark_gold_views_s": round(spark["elapsed_s"], 2),
            "spark_rows_per_s": round(spark_rate),
            "spark_peak_mb_jvm_and_python_workers": round(spark["peak_mb"]),
            "spark_gold_rows": spark["gold_rows"],
        }
    )
    result.reference.update(
        {
            "duckdb_gold_views_s": round(duck["elapsed_s"], 2),
            "duckdb_rows_per_s": round(duck_rate),
            "duckdb_process_peak_mb": round(duck["peak_mb"]),
            "duckdb_gold_rows": duck["rows"],
            "duckdb_machines": duck["machines"],
            "max_abs_feature_difference": duck["max_abs_diff"],
        }
    )
    result.notes += [
        "Silver is generated directly from the scaled fleet (prognos.core.replay.fleet_frame)"
        " and written with delta-rs: no Kafka, no bronze; the timed part is silver -> gold ->"
        " views on both sides.",
        "Spark timing includes the Delta commits of gold, both views and the manifest;"
        " DuckDB writes gold and both views as Parquet files.",
        "No champion in the registry: neither side scores a model.",
    ]
    result.check("spark_vs_duckdb_rows_per_s_ratio", spark_rate / duck_rate, ">=", 0.33)
    result.check("same_gold_rows", float(spark["gold_rows"] == duck["rows"] == rows), ">=", 1)
    result.check("same_features_max_abs_diff", duck["max_abs_diff"], "<=", 1e-6)
    result.finish()


if __name__ == "__main__":
    main()

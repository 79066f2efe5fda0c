"""Batch layer throughput: silver -> gold -> batch views with Spark (the real jobs)
beside the same feature and view computation in DuckDB on the same silver Parquet files.

Figures: rows/s of each, their ratio (check: Spark/DuckDB >= 0.33), peak memory of each
(Spark: the driver JVM's peak RSS; DuckDB: the peak RSS of the process running it).
The fleet is C-MAPSS FD001 train multiplied by --scale (100 -> ~2.06M rows).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import BenchResult, parse_args


def configure(parser) -> None:
    parser.add_argument("--scale", type=int, default=None, help="fleet multiplier (default 100)")
    parser.add_argument("--duckdb-only", default=None, help="internal: DuckDB side of a run")


def silver_frame(scale: int, machines: int | None):
    import pandas as pd

    from prognos.core.replay import fleet_frame

    fleet = fleet_frame("FD001", "train", machines=machines, scale=scale)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frame = fleet.drop(columns=["machine_id"]).rename(columns={"machine": "machine_id"})
    frame["cycle"] = frame["cycle"].astype("int32")
    frame["event_time"] = [start + timedelta(minutes=int(c)) for c in frame["cycle"]]
    frame["source"] = "bench"
    frame["schema_version"] = 1
    frame["kafka_partition"] = 0
    frame["kafka_offset"] = range(len(frame))
    frame["ingest_time"] = pd.Timestamp.now(tz="UTC")
    return frame


def write_silver(spark, settings, frame) -> int:
    from prognos.core import lake
    from prognos.core.tables import get_table

    spec = get_table("silver")
    df = spark.createDataFrame(frame[spec.column_names], schema=spec.spark_schema)
    return lake.write_table(df, spec, settings, mode="overwrite")


def spark_side(spark, settings) -> float:
    from spark_jobs import gold, views

    started = time.perf_counter()
    gold.build(spark, settings, "bench")
    views.build(spark, settings, "bench", datetime.now(UTC))
    return time.perf_counter() - started


def jvm_peak_mb(spark) -> float:
    pid = spark.sparkContext._gateway.proc.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def duckdb_sql(files: list[str], model) -> str:
    from prognos.core.features import HEALTH, FeatureConfig

    config = FeatureConfig()
    mean, std = model.sensor_mean[0], model.sensor_std[0]  # FD001: one operating condition
    z = [
        f"(({name} - {mean[i]!r}) / {std[i]!r}) AS {name}_z"
        for i, name in enumerate(config.sensors)
    ]
    signs = model.health_signs
    health = " + ".join(f"{signs[i]!r} * {name}_z" for i, name in enumerate(config.sensors))
    stats = []
    for w in config.windows:
        frame = (
            f"(PARTITION BY machine_id ORDER BY cycle "
            f"ROWS BETWEEN {w - 1} PRECEDING AND CURRENT ROW)"
        )
        for name in [*(f"{s}_z" for s in config.sensors), HEALTH]:
            base = name.removesuffix("_z")
            stats += [
                f"avg({name}) OVER {frame} AS {base}_mean_{w}",
                f"stddev_pop({name}) OVER {frame} AS {base}_std_{w}",
                f"coalesce(regr_slope({name}, cycle) OVER {frame}, 0) AS {base}_slope_{w}",
            ]
    names = ", ".join(repr(f) for f in files)
    return f"""
        WITH s AS (SELECT * FROM read_parquet([{names}])),
        z AS (SELECT machine_id, cycle, event_time, {", ".join(z)} FROM s),
        h AS (SELECT *, ({health}) / {len(config.sensors)} AS {HEALTH} FROM z)
        SELECT machine_id, cycle, event_time, 0 AS condition, *
               EXCLUDE (machine_id, cycle, event_time), {", ".join(stats)} FROM h
    """


def duckdb_run(job: dict) -> dict:
    import duckdb

    from prognos.core.features import ConditionModel

    model = ConditionModel.from_json(job["model"])
    out = Path(job["out"])
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads = 2")
    gold_sql = duckdb_sql(job["files"], model)
    con.execute(f"COPY ({gold_sql}) TO '{out / 'gold.parquet'}' (FORMAT parquet)")
    con.execute(
        f"COPY (SELECT machine_id, max(cycle) AS last_cycle, max(event_time) AS last_event_time,"
        f" count(*) AS readings_count FROM read_parquet({job['files']!r}) GROUP BY machine_id)"
        f" TO '{out / 'machine_state.parquet'}' (FORMAT parquet)"
    )
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out / 'gold.parquet'}')").fetchone()
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"elapsed_s": elapsed, "rows": rows[0], "peak_mb": peak_mb}


def duckdb_side(files: list[str], model_json: str, out: Path) -> dict:
    job = {"files": files, "model": model_json, "out": str(out)}
    job_file = out / "job.json"
    job_file.write_text(json.dumps(job))
    result = subprocess.run(
        [sys.executable, __file__, "--duckdb-only", str(job_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], configure)
    if args.duckdb_only:
        print(json.dumps(duckdb_run(json.loads(Path(args.duckdb_only).read_text()))))
        return
    from deltalake import DeltaTable

    from prognos.core.data import load_cmapss
    from prognos.core.features import fit_condition_model
    from prognos.core.settings import load_settings
    from prognos.core.spark import get_spark
    from prognos.core.tables import table_path

    scale = args.scale or (1 if args.quick else 100)
    machines = 20 if args.quick else None
    result = BenchResult("batch", args.quick)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        settings = load_settings(
            state_dir=Path(tmp), jars_dir=Path(__file__).resolve().parents[1] / ".state" / "jars"
        )
        frame = silver_frame(scale, machines)
        spark = get_spark("bench-batch", settings)
        write_silver(spark, settings, frame)
        spark_s = spark_side(spark, settings)
        spark_peak = jvm_peak_mb(spark)
        spark.stop()
        silver_dir = table_path("silver", settings)
        files = [uri.removeprefix("file://") for uri in DeltaTable(str(silver_dir)).file_uris()]
        model = fit_condition_model(load_cmapss("FD001", "train"))
        duck = duckdb_side(files, model.to_json(), Path(tmp))
    rows = len(frame)
    spark_rate, duck_rate = rows / spark_s, rows / duck["elapsed_s"]
    result.figures.update(
        {
            "silver_rows": rows,
            "spark_gold_views_s": round(spark_s, 2),
            "spark_rows_per_s": round(spark_rate),
            "spark_driver_jvm_peak_mb": round(spark_peak),
        }
    )
    result.reference.update(
        {
            "duckdb_gold_views_s": round(duck["elapsed_s"], 2),
            "duckdb_rows_per_s": round(duck_rate),
            "duckdb_process_peak_mb": round(duck["peak_mb"]),
            "duckdb_gold_rows": duck["rows"],
        }
    )
    result.notes.append("Spark timing includes Delta commits of gold, views and the manifest.")
    result.check("spark_vs_duckdb_rows_per_s_ratio", spark_rate / duck_rate, ">=", 0.33)
    result.finish()


if __name__ == "__main__":
    main()

"""The batch layer (silver -> gold -> views) on a small fleet, run by test_cluster.py on
the local standalone cluster (this file as the driver) and in process on local[2]
(`run_batch`), so both runs execute the same code. Silver is written directly from the
fleet (no broker, no Great Expectations run: the suite's time budget).
Usage: cluster_job.py  (settings, incl. PROGNOS_SPARK_MASTER, from the environment)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from prognos.core import cluster, lake
from prognos.core.replay import fleet_frame
from prognos.core.settings import Settings, get_settings
from prognos.core.spark import get_spark
from prognos.core.tables import get_table
from spark_jobs import gold, silver, views

START = datetime(2026, 1, 1, tzinfo=UTC)
LOGICAL_DATE = datetime(2026, 1, 3, tzinfo=UTC)
RUN_ID = "cluster-test"
INTERVAL = f"batch__{LOGICAL_DATE.isoformat()}"
VOLATILE = {"published_at"}  # the wall clock of the run, not data: not compared
COMPARED = ("gold_features", "machine_state", "fleet_summary", "batch_manifest")


def silver_frame():
    """Silver rows of three FD001 test engines (as the silver job writes them)."""
    return silver.silver_frame_of_fleet(fleet_frame("FD001", "test", machines=3), START)


def run_batch(spark, settings: Settings) -> dict:
    """Write silver, run gold and views; the resulting tables, comparable."""
    small = "spark.databricks.delta.snapshotPartitions"  # tiny tables: a few tasks, not 50
    before = spark.conf.get(small, None)
    spark.conf.set(small, "2")
    try:
        frame = spark.createDataFrame(silver_frame(), schema=get_table("silver").spark_schema)
        lake.write_table(frame, "silver", settings, mode="overwrite")
        gold.build(spark, settings, RUN_ID)
        views.build(spark, settings, INTERVAL, LOGICAL_DATE, RUN_ID)
    finally:
        if before is None:
            spark.conf.unset(small)
        else:
            spark.conf.set(small, before)
    return {name: table_rows(name, settings) for name in COMPARED}


def table_rows(name: str, settings: Settings) -> list[dict]:
    """A table read through delta-rs, without wall-clock columns, floats rounded, sorted."""
    rows = lake.read_table_arrow(name, settings).to_pylist()
    plain = [{k: _plain(v) for k, v in row.items() if k not in VOLATILE} for row in rows]
    return sorted(plain, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def _plain(value):
    if isinstance(value, float):
        return round(value, 9)  # sums may add up in another order on other executors
    if isinstance(value, list) and value and isinstance(value[0], tuple):  # an arrow map
        return {k: _plain(v) for k, v in sorted(value)}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def executor_code_files(spark) -> list[str]:
    """Where each executor imported the batch job code from."""

    def job_module_file(_):
        import spark_jobs.gold

        return spark_jobs.gold.__file__

    return spark.sparkContext.parallelize(range(4), 4).map(job_module_file).distinct().collect()


def main() -> None:
    settings = get_settings()
    spark = get_spark("prognos-cluster-job", settings, **cluster.driver_conf(settings))
    spark.sparkContext.addPyFile(str(cluster.code_archive(settings)))
    result = {"tables": run_batch(spark, settings)}
    result["executor_code"] = executor_code_files(spark)
    result["executors"] = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
    print("RESULT " + json.dumps(result, default=str), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()

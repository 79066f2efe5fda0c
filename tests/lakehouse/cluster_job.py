"""One small Spark job run on local[2] and on a standalone cluster (by test_cluster.py).

It runs project code in executors (a UDF from prognos.core.events), writes a catalog table
through Delta (jars on the executors) and prints the table read back through delta-rs.
Usage: cluster_job.py  (settings, including PROGNOS_SPARK_MASTER, from the environment)
"""

from __future__ import annotations

import json

from lakehelp import with_catalog_columns

from prognos.core import lake
from prognos.core.settings import get_settings
from prognos.core.spark import get_spark

CLUSTER_CONF = {
    "spark.executor.memory": "512m",
    "spark.executor.cores": "2",
    "spark.cores.max": "2",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


def main() -> None:
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    settings = get_settings()
    extra = CLUSTER_CONF if settings.spark_master.startswith("spark://") else {}
    spark = get_spark("prognos-cluster-job", settings, **extra)

    @F.udf(StringType())
    def machine_id(number):
        from prognos.core.events import machine_id_for  # imported inside the executor

        return machine_id_for("FD001", "train", number % 25 + 1)

    readings = spark.range(0, 20_000, numPartitions=4).withColumn("machine_id", machine_id("id"))
    state = readings.groupBy("machine_id").agg(
        F.max((F.col("id") % 300).cast("int")).alias("last_cycle"),
        F.timestamp_seconds(F.max("id")).alias("last_event_time"),
        F.count("*").alias("readings_count"),
        F.avg(F.col("id") / 7).alias("predicted_rul"),
        F.lit("job").alias("model_version"),
        F.lit("cluster-test").alias("run_id"),
    )
    state = with_catalog_columns(state, "machine_state")
    lake.write_table(state, "machine_state", settings, mode="overwrite")
    rows = lake.read_table_arrow("machine_state", settings).sort_by("machine_id").to_pylist()
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
    print("RESULT " + json.dumps({"rows": rows, "executors": executors}, default=str), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()

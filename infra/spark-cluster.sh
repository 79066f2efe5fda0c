#!/usr/bin/env bash
# A Spark standalone cluster on 127.0.0.1 (one master, PROGNOS_SPARK_CLUSTER_WORKERS workers)
# from the pyspark installation; PIDs and logs in <state>/run/spark-cluster/.
# Usage: infra/spark-cluster.sh up|down|status [--json]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec "$root/.venv/bin/python" -m prognos.core.cluster "$@"

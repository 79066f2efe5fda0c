"""A Kafka -> bronze driver run as its own process (so a test can kill -9 it).

Usage: stream_driver.py TOPIC MAX_OFFSETS_PER_TRIGGER  (settings from PROGNOS_* env)
"""

from __future__ import annotations

import sys

from prognos.core import lake
from prognos.core.settings import get_settings
from prognos.core.spark import get_spark


def main(topic: str, max_offsets: int) -> None:
    settings = get_settings()
    spark = get_spark("prognos-stream-driver", settings)
    source = lake.kafka_stream(spark, settings, topic, max_offsets_per_trigger=max_offsets or None)
    query = lake.append_stream_to_delta(
        lake.to_bronze(source), "bronze", settings, query_name="bronze-ingest"
    )
    lake.await_query(query, settings)
    print("done", flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

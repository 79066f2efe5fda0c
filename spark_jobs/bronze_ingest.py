"""Bronze ingestion: Kafka topic -> bronze Delta table, exactly once.

Spark's Kafka source + the Delta streaming sink with a checkpoint: the checkpoint keeps
the Kafka offsets and the sink records each batch id in the table log, so a rerun (or a
crash and restart) never writes a record twice. Nothing is parsed or dropped here.
"""

from __future__ import annotations

from prognos.core import lake, logs
from prognos.core.settings import Settings, get_settings

QUERY_NAME = "bronze-ingest"


def ingest(spark, settings: Settings, trigger: str = "availableNow", timeout_s: float = 900):
    """Run the Kafka -> bronze stream; availableNow returns when caught up."""
    stream = lake.kafka_stream(spark, settings, settings.topic_readings)
    query = lake.append_stream_to_delta(
        lake.to_bronze(stream),
        "bronze",
        settings,
        checkpoint=lake.checkpoint_path(settings, QUERY_NAME),
        trigger=trigger,
        query_name=QUERY_NAME,
    )
    if trigger != "availableNow":
        query.awaitTermination()  # a continuous stream runs until stopped
    lake.await_query(query, settings, timeout_s=timeout_s)
    return {"bronze_version": lake.latest_version(spark, "bronze", settings)}


def main(argv=None) -> None:
    from spark_jobs import common

    parser = common.job_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--trigger",
        default="availableNow",
        help="availableNow (read what is there, then stop) or processingTime=<interval>",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    with common.lake_job("bronze_ingest", args, settings):
        spark = common.session("bronze-ingest", settings)
        run_id, result = common.run_id_of(args), ingest(spark, settings, args.trigger)
        outputs = {"bronze": result["bronze_version"]}
        logs.lineage("bronze_ingest", run_id, {f"kafka:{settings.topic_readings}": None}, outputs)
        common.report({"run_id": run_id, **result})


if __name__ == "__main__":
    main()

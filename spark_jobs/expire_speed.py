"""Expire speed-view rows the newest batch manifest covers (event time <= its boundary).

The speed_view table may not exist yet (no speed layer running): nothing to do then.
"""

from __future__ import annotations

from prognos.core import lake
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import is_delta_table, table_path


def expire(spark, settings: Settings) -> dict:
    published = lake.read_published(spark, settings)
    if published is None or published.manifest.get("max_event_time") is None:
        return {"expired": 0, "reason": "no batch manifest"}
    path = table_path("speed_view", settings)
    if not is_delta_table(path):
        return {"expired": 0, "reason": "no speed_view table"}
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    boundary = published.manifest["max_event_time"]
    covered = F.col("last_event_time") <= F.lit(boundary)
    expired = lake.read_table(spark, "speed_view", settings).where(covered).count()
    if expired:
        DeltaTable.forPath(spark, str(path)).delete(covered)
    return {"expired": expired, "boundary": boundary}


def main(argv=None) -> None:
    from spark_jobs import common

    args = common.job_parser(__doc__.splitlines()[0]).parse_args(argv)
    settings = get_settings()
    spark = common.session("expire-speed", settings)
    common.report({"run_id": common.run_id_of(args), **expire(spark, settings)})


if __name__ == "__main__":
    main()

"""Expire speed-view rows the newest batch manifest covers (exactly, by Kafka offsets).

The speed_view table may not exist yet (no speed layer running): nothing to do then.
"""

from __future__ import annotations

from prognos.core import logs
from prognos.core.boundary import expire_speed_view
from prognos.core.settings import Settings, get_settings


def expire(spark, settings: Settings) -> dict:
    """The same offset-exact expiry the speed layer applies (prognos.core.boundary)."""
    return dict(expire_speed_view(spark, settings))


def main(argv=None) -> None:
    from spark_jobs import common

    args = common.job_parser(__doc__.splitlines()[0]).parse_args(argv)
    settings = get_settings()
    with common.lake_job("expire_speed", args, settings):
        spark = common.session("expire-speed", settings)
        run_id, result = common.run_id_of(args), expire(spark, settings)
        inputs, outputs = (
            logs.versions(settings, "batch_manifest"),
            logs.versions(settings, "speed_view"),
        )
        logs.lineage("expire_speed", run_id, inputs, outputs, settings)
        common.report({"run_id": run_id, **result})


if __name__ == "__main__":
    main()

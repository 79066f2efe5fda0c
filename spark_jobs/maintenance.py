"""Lake maintenance: compact small files, vacuum old files, prune streaming checkpoints."""

from __future__ import annotations

from prognos.core import lake
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import TABLES, is_delta_table, table_path


def existing_tables(settings: Settings) -> list[str]:
    return [name for name in TABLES if is_delta_table(table_path(name, settings))]


def compact_all(spark, settings: Settings) -> dict:
    report = {}
    for name in existing_tables(settings):
        metrics = lake.compact(spark, name, settings)
        report[name] = {
            "files_removed": metrics.get("numFilesRemoved", 0),
            "files_added": metrics.get("numFilesAdded", 0),
        }
    return report


def vacuum_all(spark, settings: Settings, retention_hours: float | None) -> dict:
    report = {}
    for name in existing_tables(settings):
        before = _data_files(table_path(name, settings))
        lake.vacuum(spark, name, settings, retention_hours=retention_hours)
        report[name] = {"files_removed": len(before - _data_files(table_path(name, settings)))}
    return report


def _data_files(path) -> set:
    return {p for p in path.rglob("*.parquet") if "_delta_log" not in p.parts}


def cleanup(settings: Settings, keep_latest: int) -> dict:
    removed = lake.cleanup_checkpoints(settings.checkpoints, keep_latest=keep_latest)
    return {"checkpoint_files_removed": len(removed)}


def main(argv=None) -> None:
    from spark_jobs import common

    parser = common.job_parser(__doc__.splitlines()[0])
    parser.add_argument("--step", choices=("compact", "vacuum", "checkpoints"), required=True)
    parser.add_argument(
        "--retention-hours",
        type=float,
        default=None,
        help="vacuum retention (default: PROGNOS_LAKE_VACUUM_FLOOR_HOURS)",
    )
    parser.add_argument(
        "--keep-latest", type=int, default=10, help="checkpoint log entries kept per query"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    with common.lake_job(f"maintenance {args.step}", args, settings):
        if args.step == "checkpoints":
            common.report(cleanup(settings, args.keep_latest))
            return
        spark = common.session(f"maintenance-{args.step}", settings)
        if args.step == "compact":
            common.report(compact_all(spark, settings))
        else:
            common.report(vacuum_all(spark, settings, args.retention_hours))


if __name__ == "__main__":
    main()

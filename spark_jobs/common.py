"""What every batch job shares: its command line and its Spark session."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from prognos.core.settings import Settings, get_settings


def job_parser(description: str) -> argparse.ArgumentParser:
    """--run-id and --logical-date, accepted (and recorded) by every job."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-id", default=None, help="Airflow run id (default: manual__<now>)")
    parser.add_argument(
        "--logical-date", default=None, help="ISO date/time of the interval (default: now)"
    )
    return parser


def run_id_of(args) -> str:
    if args.run_id:
        return args.run_id
    return f"manual__{logical_date_of(args).isoformat()}"


def interval_id_of(args) -> str:
    """Names the interval a run covers; what view rows carry, so a rerun of the same
    logical date writes identical contents (Airflow gives each rerun a new run id)."""
    return f"batch__{logical_date_of(args).isoformat()}"


def logical_date_of(args) -> datetime:
    if not args.logical_date:
        return datetime.now(UTC).replace(microsecond=0)
    moment = datetime.fromisoformat(args.logical_date.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def session(app_name: str, settings: Settings | None = None):
    from prognos.core.spark import get_spark

    return get_spark(f"prognos-{app_name}", settings or get_settings())


def report(result: dict) -> None:
    """One JSON line on stdout: what the job did (Airflow logs it, tests parse it)."""
    print(json.dumps({"result": result}, default=str), flush=True)
    sys.stdout.flush()

"""What every batch job shares: its command line and its Spark session."""

from __future__ import annotations

import argparse
import contextlib
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


@contextlib.contextmanager
def lake_job(job: str, args, settings: Settings):
    """Hold the lake's lock for the whole job, Spark session included: the jobs of one lake
    never run concurrently, whether Airflow or a plain spark-submit started them. A job
    that waited longer than PROGNOS_LAKE_LOCK_TIMEOUT_S exits with one line naming the
    job that holds the lake."""
    from prognos.core.errors import LakeBusyError
    from prognos.core.locks import lake_lock

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lake_lock(settings, f"{job} {run_id_of(args)}"))
        except LakeBusyError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(getattr(error, "exit_code", 1))
        yield


def session(app_name: str, settings: Settings | None = None):
    from prognos.core.spark import get_spark

    return get_spark(f"prognos-{app_name}", settings or get_settings())


def report(result: dict) -> None:
    """One JSON line on stdout: what the job did (Airflow logs it, tests parse it)."""
    print(json.dumps({"result": result}, default=str), flush=True)
    sys.stdout.flush()

"""Structured job logs: one JSON object per line, each naming its run id, job and event.

Records go to stderr (Airflow and `prognos` show them with the job's output) and are
appended to ``<state>/run/logs/jobs.jsonl``. `lineage()` is the record every job writes
at its end: the Delta versions of the tables it read and of those it wrote (and the run's
Prometheus metrics, prognos.core.jobmetrics).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from prognos.core.settings import Settings, get_settings


def log_path(settings: Settings) -> Path:
    return settings.run_dir / "logs" / "jobs.jsonl"


def emit(job: str, run_id: str, event: str, settings: Settings | None = None, **fields) -> dict:
    """Write one record {ts, run_id, job, event, **fields}; return it."""
    settings = settings or get_settings()
    record = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "run_id": run_id,
        "job": job,
        "event": event,
        **fields,
    }
    line = json.dumps(record, default=str)
    print(line, file=sys.stderr, flush=True)
    path = log_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:  # one short append per record
        log.write(line + "\n")
    return record


def lineage(
    job: str,
    run_id: str,
    inputs: dict[str, int | None],
    outputs: dict[str, int | None],
    settings: Settings | None = None,
    **fields,
) -> dict:
    """The lineage record of a job run: {table: Delta version} read and written; also
    publishes the run's metrics (prognos.core.jobmetrics: versions, numeric fields)."""
    from prognos.core import jobmetrics

    settings = settings or get_settings()
    record = emit(job, run_id, "lineage", settings, inputs=inputs, outputs=outputs, **fields)
    jobmetrics.publish(job, inputs, outputs, fields, settings)
    return record


def read_records(settings: Settings | None = None, **match) -> list[dict]:
    """The records of the log whose fields equal `match` (e.g. job="gold", event="lineage")."""
    path = log_path(settings or get_settings())
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if all(record.get(key) == value for key, value in match.items()):
            records.append(record)
    return records


def versions(settings: Settings, *tables: str) -> dict[str, int | None]:
    """{table: latest Delta version} read through delta-rs; None for a table not written yet."""
    from prognos.core.lake import table_version_arrow
    from prognos.core.tables import is_delta_table, table_path

    return {
        name: table_version_arrow(name, settings)
        if is_delta_table(table_path(name, settings))
        else None
        for name in tables
    }

"""Prometheus metrics of short-lived jobs (batch jobs, training): the figures of the last run.

A job cannot be scraped after it exits, so `publish()` writes its registry as a textfile
(``<state>/run/metrics/<job>.prom``, for node_exporter's textfile collector) and, when
``PROGNOS_PUSHGATEWAY_URL`` is set, pushes it to a Prometheus Pushgateway (grouped by job:
each run replaces the previous one's figures). `logs.lineage()` calls it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway, write_to_textfile

from prognos.core.settings import Settings

PREFIX = "prognos_job"
log = logging.getLogger("prognos.jobmetrics")


def registry_of(
    job: str, inputs: dict, outputs: dict, counts: dict[str, float], finished_at: float
) -> CollectorRegistry:
    """The last run of `job`: when it finished, the Delta versions it read and wrote, and
    its row counts (e.g. silver's quarantined rows)."""
    registry = CollectorRegistry()
    Gauge(
        f"{PREFIX}_last_run_timestamp_seconds",
        "Unix time the job's last run finished",
        ["job"],
        registry=registry,
    ).labels(job).set(finished_at)
    versions = Gauge(
        f"{PREFIX}_table_version",
        "Delta version of a table the job's last run read (input) or wrote (output)",
        ["job", "table", "direction"],
        registry=registry,
    )
    for direction, tables in (("input", inputs), ("output", outputs)):
        for table, version in tables.items():
            if version is not None:
                versions.labels(job, table, direction).set(version)
    rows = Gauge(
        f"{PREFIX}_rows", "Rows by kind in the job's last run", ["job", "kind"], registry=registry
    )
    for kind, value in counts.items():
        rows.labels(job, kind).set(value)
    return registry


def textfile_path(settings: Settings, job: str) -> Path:
    return settings.run_dir / "metrics" / f"{job}.prom"


def publish(job: str, inputs: dict, outputs: dict, fields: dict, settings: Settings) -> Path:
    """Write (and push, if configured) the last-run metrics of `job`; return the textfile."""
    counts = {
        name: float(value)
        for name, value in fields.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    registry = registry_of(job, inputs, outputs, counts, time.time())
    path = textfile_path(settings, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    if settings.pushgateway_url:
        try:
            pushadd_to_gateway(settings.pushgateway_url, job=f"prognos-{job}", registry=registry)
        except OSError as error:  # the job's work is done: a monitoring outage must not fail it
            log.warning("metrics of %s not pushed to %s: %s", job, settings.pushgateway_url, error)
    return path

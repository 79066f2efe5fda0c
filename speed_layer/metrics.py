"""Prometheus metrics of the speed layer (exporter on 127.0.0.1:<speed_metrics_port>).

Query progress (input rows/s, micro-batch duration, state rows) is polled from the query
(`follow`); dead letters, late rows, alerts and processing lag (wall clock
minus the newest event time written) from the batch writer.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from prognos.core.settings import get_settings

PREFIX = "prognos_speed"
log = logging.getLogger(__name__)


class SpeedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.input_rows = Counter(f"{PREFIX}_input_rows", "Kafka records read", registry=r)
        self.input_rate = Gauge(
            f"{PREFIX}_input_rows_per_second", "Input rows/s of the last batch", registry=r
        )
        self.batch_duration = Gauge(
            f"{PREFIX}_batch_duration_seconds", "Duration of the last micro-batch", registry=r
        )
        self.write_duration = Gauge(
            f"{PREFIX}_write_duration_seconds", "foreachBatch time of the last batch", registry=r
        )
        self.state_rows = Gauge(f"{PREFIX}_state_rows", "Machines held in state", registry=r)
        self.lag = Gauge(
            f"{PREFIX}_processing_lag_seconds",
            "Wall clock minus the newest event time written to the speed view",
            registry=r,
        )
        self.batches = Counter(f"{PREFIX}_batches", "Micro-batches written", registry=r)
        self.write_phase = Counter(
            f"{PREFIX}_write_phase_seconds",
            "foreachBatch time by phase (state: Kafka read + state function; then writes)",
            ["phase"],
            registry=r,
        )
        self.trigger_phase = Counter(
            f"{PREFIX}_trigger_phase_seconds",
            "Micro-batch time by Spark phase (durationMs of the query progress)",
            ["phase"],
            registry=r,
        )
        self.progress_batches = Counter(
            f"{PREFIX}_progress_batches", "Micro-batches whose query progress was read", registry=r
        )
        self.records = Counter(f"{PREFIX}_records", "Records routed, by kind", ["kind"], registry=r)

    @classmethod
    def start(cls, port: int, host: str | None = None) -> SpeedMetrics:
        """Metrics with an HTTP exporter (default bind: PROGNOS_SPEED_METRICS_HOST)."""
        host = host or get_settings().speed_metrics_host
        metrics = cls()
        start_http_server(port, addr=host, registry=metrics.registry)
        return metrics

    def batch_written(
        self, counts: dict, max_event_time, seconds: float, phases: dict | None = None
    ) -> None:
        self.batches.inc()
        self.write_duration.set(seconds)
        for phase, spent in (phases or {}).items():
            self.write_phase.labels(phase).inc(spent)
        for kind in ("dead", "late", "view", "alert"):
            self.records.labels(kind).inc(counts.get(kind, 0))
        if max_event_time is not None:
            self.lag.set(max(0.0, time.time() - max_event_time.timestamp()))

    def progress(self, progress) -> None:
        self.input_rows.inc(progress.numInputRows or 0)
        self.input_rate.set(progress.inputRowsPerSecond or 0.0)
        self.batch_duration.set((progress.batchDuration or 0) / 1000.0)
        self.state_rows.set(sum(op.numRowsTotal for op in progress.stateOperators or []))
        self.progress_batches.inc()
        for phase, millis in (progress.durationMs or {}).items():
            self.trigger_phase.labels(phase).inc(millis / 1000.0)

    def follow(self, query, interval_s: float = 0.2) -> threading.Thread:
        """Feed the progress metrics from a running query, on a daemon thread that ends
        with the query. Every batch counts once: batches that ended between two polls are
        taken from the query's recent progress.

        Polled, not a StreamingQueryListener: pyspark hands a Python listener each progress
        event field by field over py4j, which took ~15% of the driver JVM's CPU at 1k
        events/s and held the GIL beside foreachBatch.
        """
        thread = threading.Thread(
            target=self._follow, args=(query, interval_s), name="speed-metrics", daemon=True
        )
        thread.start()
        return thread

    def _follow(self, query, interval_s: float) -> None:
        counted = -1
        while _still_active(query):
            try:
                for progress in progress_since(query, counted):
                    self.progress(progress)
                    counted = progress.batchId
            except Exception as error:  # py4j fails while the JVM stops with the query
                if _still_active(query):
                    log.warning("speed metrics: query progress not read: %s", error)
            time.sleep(interval_s)


def progress_since(query, counted: int) -> list:
    """The query's progress of batches after `counted`, oldest first: the latest, and
    those that ended since the last poll from its recent progress."""
    latest = query.lastProgress
    if latest is None or latest.batchId <= counted:
        return []
    missed = []
    if latest.batchId > counted + 1:
        missed = [p for p in query.recentProgress if counted < p.batchId < latest.batchId]
    return [*sorted(missed, key=lambda p: p.batchId), latest]


def _still_active(query) -> bool:
    try:
        return bool(query.isActive)
    except Exception:
        return False

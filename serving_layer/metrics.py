"""Prometheus metrics of one serving app (its own registry, so apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DISAGREEMENT_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 50, 100)
ERROR_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "prognos_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "prognos_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "prognos_auth_failures", "Rejected requests", ["reason"], registry=r
        )
        self.predictions = Counter(
            "prognos_predictions", "Predict calls served", ["model", "version"], registry=r
        )
        self.shadow_disagreement = Histogram(
            "prognos_shadow_abs_disagreement",
            "Absolute champion-challenger difference per shadow-scored row",
            ["model", "output"],
            buckets=DISAGREEMENT_BUCKETS,
            registry=r,
        )
        self.shadow_abs_error = Histogram(
            "prognos_shadow_abs_error_vs_truth",
            "Absolute error of the predicted RUL against the true RUL per shadow-scored row "
            "whose truth is known, by role (champion or challenger)",
            ["model", "role"],
            buckets=ERROR_BUCKETS,
            registry=r,
        )
        self.shadow_rmse = Gauge(
            "prognos_shadow_rmse_vs_truth",
            "RMSE against the true RUL over the shadow-scored rows whose truth is known "
            "(since the current champion/challenger pair was loaded)",
            ["model", "role"],
            registry=r,
        )
        self.shadow_bias = Gauge(
            "prognos_shadow_bias_vs_truth",
            "Mean (predicted - true) RUL over the shadow-scored rows whose truth is known",
            ["model", "role"],
            registry=r,
        )
        self.snapshot_swaps = Counter("prognos_snapshot_swaps", "Snapshots swapped in", registry=r)
        self.snapshot_build = Histogram(
            "prognos_snapshot_build_seconds",
            "Time to build a snapshot (read changed tables, merge, index)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot_version = Gauge(
            "prognos_snapshot_table_version",
            "Delta version pinned by the current snapshot",
            ["table"],
            registry=r,
        )
        self.snapshot_machines = Gauge(
            "prognos_snapshot_machines", "Machines in the snapshot", ["source"], registry=r
        )

    def shadow_scored(self, model: str, diffs: dict, errors: dict, vs_truth: dict) -> None:
        """One shadow comparison: disagreement per output and row, errors vs truth per role,
        and the running RMSE / bias of each role (`vs_truth`: role -> ErrorSums.to_dict())."""
        for output, diff in diffs.items():
            for value in diff.ravel().tolist():
                self.shadow_disagreement.labels(model, output).observe(value)
        for role, values in errors.items():
            histogram = self.shadow_abs_error.labels(model, role)
            for value in values.tolist():
                histogram.observe(abs(value))
            self.shadow_rmse.labels(model, role).set(vs_truth[role]["rmse"])
            self.shadow_bias.labels(model, role).set(vs_truth[role]["bias"])

    def snapshot_swapped(self, snapshot, build_s: float) -> None:
        self.snapshot_swaps.inc()
        self.snapshot_build.observe(build_s)
        for table, version in snapshot.versions.items():
            self.snapshot_version.labels(table).set(-1 if version is None else version)
        for source in ("batch", "speed"):
            count = sum(1 for s in snapshot.machines.values() if s["source"] == source)
            self.snapshot_machines.labels(source).set(count)

"""Shared benchmark harness: every bench/*.py writes bench/results/<name>.json.

A result holds the figures, the reference figures measured in the same run, the
machine's core count, a CPU probe at start and end (this shared machine's speed varies by
several times from hour to hour: compare absolute figures of two runs only at similar
probes), and `checks` (one per goal of the issue); the script exits non-zero when a check
fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPS = {">=": lambda value, target: value >= target, "<=": lambda value, target: value <= target}


def parse_args(description: str, configure=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    if configure is not None:
        configure(parser)
    return parser.parse_args()


def median(values) -> float:
    return float(statistics.median(values))


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[index])


def cpu_probe_s() -> float:
    """Median seconds of a fixed pure-Python loop on one core."""
    spent = []
    for _ in range(5):
        started = time.perf_counter()
        sum(range(1_000_000))
        spent.append(time.perf_counter() - started)
    return round(median(spent), 4)


@dataclass
class BenchResult:
    name: str
    quick: bool
    figures: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    started: float = field(default_factory=time.time)
    cpu_probe_at_start_s: float = field(default_factory=cpu_probe_s)

    def check(self, name: str, value: float, op: str, target: float) -> bool:
        passed = bool(OPS[op](value, target))
        self.checks.append(
            {"name": name, "value": value, "op": op, "target": target, "pass": passed}
        )
        return passed

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        payload = {
            "name": self.name,
            "quick": self.quick,
            "cores": os.cpu_count(),
            "machine": platform.platform(),
            "python": platform.python_version(),
            "elapsed_s": round(time.time() - self.started, 2),
            "cpu_probe_s": {"start": self.cpu_probe_at_start_s, "end": cpu_probe_s()},
            "figures": self.figures,
            "reference": self.reference,
            "checks": self.checks,
            "notes": self.notes,
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path

    def finish(self) -> None:
        """Write the JSON, print a summary and exit non-zero if a check failed."""
        path = self.write()
        for item in self.checks:
            mark = "ok  " if item["pass"] else "FAIL"
            print(f"{mark} {item['name']}: {item['value']:.4g} {item['op']} {item['target']}")
        print(f"wrote {path}")
        sys.exit(0 if all(item["pass"] for item in self.checks) else 1)

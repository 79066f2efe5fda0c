"""True RUL of replayed C-MAPSS test machines (ids like FD001-test-0007), when known."""

from __future__ import annotations

import functools
import re

from prognos.core.errors import PrognosError
from prognos.core.settings import Settings

TEST_MACHINE = re.compile(r"^(FD00[1-4])-test-(\d{4})$")


class TruthTable:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def true_rul(self, machine_id: str, cycle: int | None) -> int | None:
        match = TEST_MACHINE.match(machine_id)
        if match is None or cycle is None:
            return None
        subset, unit = match.group(1), int(match.group(2))
        ends = self._subset(subset)
        if unit not in ends:
            return None
        final_rul, last_cycle = ends[unit]
        return final_rul + (last_cycle - int(cycle))

    @functools.cache  # noqa: B019 - one table per app, lives as long as the app
    def _subset(self, subset: str) -> dict[int, tuple[int, int]]:
        """unit -> (true RUL after its last test cycle, last test cycle)."""
        from prognos.core.data import load_cmapss, true_rul

        try:
            frame = load_cmapss(subset, "test", self.settings)
            finals = true_rul(subset, self.settings)
        except (PrognosError, OSError):
            return {}
        last_cycles = frame.groupby("machine_id")["cycle"].max()
        ends = {}
        for machine_id, last_cycle in last_cycles.items():
            match = TEST_MACHINE.match(str(machine_id))
            unit = int(match.group(2)) if match else int(machine_id)
            if 0 < unit <= len(finals):
                ends[unit] = (int(finals[unit - 1]), int(last_cycle))
        return ends


def live_errors(machines: dict, truth: TruthTable) -> dict[str, dict]:
    """Per model version: error of the served RUL against the true RUL, where known."""
    errors: dict[str, list[float]] = {}
    for machine_id, state in machines.items():
        rul = state.get("predicted_rul")
        actual = truth.true_rul(machine_id, state.get("last_cycle"))
        if rul is None or actual is None:
            continue
        errors.setdefault(str(state.get("model_version")), []).append(rul - actual)
    return {
        version: {
            "machines": len(diffs),
            "rmse": (sum(d * d for d in diffs) / len(diffs)) ** 0.5,
            "mae": sum(abs(d) for d in diffs) / len(diffs),
            "bias": sum(diffs) / len(diffs),
        }
        for version, diffs in sorted(errors.items())
    }

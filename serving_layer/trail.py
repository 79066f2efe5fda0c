"""Predicted RUL per machine over time, as successive snapshots saw it (in memory, bounded)."""

from __future__ import annotations

import threading
from collections import deque


class PredictionTrail:
    def __init__(self, max_points: int = 500) -> None:
        self.max_points = max_points
        self._points: dict[str, deque] = {}
        self._lock = threading.Lock()

    def record(self, snapshot) -> None:
        with self._lock:
            for machine_id, state in snapshot.machines.items():
                point = (state.get("last_cycle"), state.get("predicted_rul"))
                if point[0] is None or point[1] is None:
                    continue
                trail = self._points.setdefault(machine_id, deque(maxlen=self.max_points))
                if not trail or trail[-1] != point:
                    trail.append(point)

    def points(self, machine_id: str) -> list[dict]:
        with self._lock:
            trail = list(self._points.get(machine_id, ()))
        return [{"cycle": cycle, "predicted_rul": rul} for cycle, rul in trail]

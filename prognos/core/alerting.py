"""Alert levels from a predicted RUL, shared by the batch views and the speed layer."""

from __future__ import annotations

import hashlib
import math

from prognos.core.settings import Settings

# From most to least severe; "unknown" when there is no prediction.
ALERT_LEVELS = ("red", "amber", "green", "unknown")
RAISING_LEVELS = ("red", "amber")


def alert_level(rul: float | None, settings: Settings) -> str:
    """red / amber / green by predicted RUL and the configured thresholds; unknown if None."""
    if rul is None or math.isnan(rul):
        return "unknown"
    if rul <= settings.alert_red_rul:
        return "red"
    return "amber" if rul <= settings.alert_amber_rul else "green"


def severity(level: str | None) -> int:
    """0 for unknown/none, higher for more severe levels."""
    return {"green": 1, "amber": 2, "red": 3}.get(level or "unknown", 0)


def rises(previous: str | None, current: str) -> bool:
    """True when `current` is an alerting level more severe than `previous`."""
    return current in RAISING_LEVELS and severity(current) > severity(previous)


def threshold_of(level: str, settings: Settings) -> float | None:
    return {"red": settings.alert_red_rul, "amber": settings.alert_amber_rul}.get(level)


def alert_id(machine_id: str, cycle: int, level: str) -> str:
    """Deterministic id (Kafka key and table key): a replayed batch yields the same id."""
    digest = hashlib.sha256(f"{machine_id}|{cycle}|{level}".encode()).hexdigest()
    return digest[:24]

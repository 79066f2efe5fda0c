"""The fleet spec: one TOML file declares what a fleet's machines report and how to judge it.

A spec names the fleet, the pattern of its machine ids, what orders a machine's readings
(a cycle counter, or event time at a nominal cadence), its operating settings and sensors
(unit, valid range, required or optional), the feature configuration, where labels come
from (failure records) and the alert rule. The event contract, the silver quality suite
and the speed layer's validation derive from it (prognos.domain.events).

`load_fleet(path)` parses and checks a file; every problem is reported at once, each
naming the file, the key path (``sensors[3] (sensor_4).range``) and what is wrong.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from prognos.domain.errors import FleetSpecError

# Reading names become column names in every table and frame: keep them plain.
ReadingName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
FleetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
Topic = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
TableName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
# Names an event or a table row already uses: a reading may not take them.
RESERVED_NAMES = frozenset(
    {"schema_version", "machine_id", "cycle", "event_time", "settings", "sensors", "source"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reading(_Strict):
    """One operating setting or sensor of every machine of the fleet."""

    name: ReadingName
    unit: str = Field(description="Physical unit, '-' when dimensionless.")
    range: tuple[float, float] = Field(
        description="Valid [min, max]: a reading outside is rejected (dead letter, quarantine)."
    )
    required: bool = Field(True, description="An event without it is rejected.")
    description: str = ""

    @field_validator("range")
    @classmethod
    def _ordered_finite(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"min and max must be finite numbers, got [{low}, {high}]")
        if low > high:
            raise ValueError(f"min {low} > max {high}")
        return value


class Machines(_Strict):
    id_pattern: str = Field(description="Regular expression every machine id fully matches.")

    @field_validator("id_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression ({error})") from None
        return value

    @property
    def pattern(self) -> re.Pattern:
        return re.compile(self.id_pattern)


class Ordering(_Strict):
    """What orders a machine's readings, and the unit RUL is counted in."""

    by: Literal["cycle", "event_time"]
    cadence_s: float | None = Field(
        None, gt=0, description="Nominal seconds between readings (required by event_time)."
    )
    rul_unit: Literal["cycles", "minutes", "hours", "days"]

    @model_validator(mode="after")
    def _consistent(self) -> Ordering:
        if self.by == "cycle" and self.rul_unit != "cycles":
            raise ValueError(
                f"rul_unit must be 'cycles' when ordered by cycle, not {self.rul_unit!r}"
            )
        if self.by == "event_time" and self.cadence_s is None:
            raise ValueError("cadence_s is required when ordered by event_time")
        if self.by == "event_time" and self.rul_unit == "cycles":
            raise ValueError("rul_unit must be a time unit when ordered by event_time")
        return self


class Features(_Strict):
    window: int = Field(ge=2, description="Readings in one model input window.")
    rolling_windows: tuple[Annotated[int, Field(ge=2)], ...] = Field(min_length=1)
    statistics: tuple[Literal["mean", "std", "slope"], ...] = Field(min_length=1)
    normalisation: Literal["per_condition", "global", "none"]
    sensors: tuple[ReadingName, ...] = Field(
        min_length=1, description="The sensors the features use (the others are kept, unused)."
    )


class Labels(_Strict):
    """Labels come from failure records: time or cycles to a machine's next failure."""

    failures_topic: Topic = "machine-failures"
    failures_table: TableName = "failures"
    rul_cap: float = Field(gt=0, description="RUL labels are capped at this (the RUL unit).")
    horizon: float = Field(gt=0, description="fails_within_h is 1 when RUL <= this.")


class AlertRule(_Strict):
    """Alert levels by predicted RUL (the fleet's RUL unit): red <= red_rul < amber <= amber_rul."""

    red_rul: float = Field(ge=0)
    amber_rul: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AlertRule:
        if self.red_rul > self.amber_rul:
            raise ValueError(f"red_rul {self.red_rul} > amber_rul {self.amber_rul}")
        return self


class FleetSpec(_Strict):
    name: FleetName
    description: str = ""
    machines: Machines
    ordering: Ordering
    settings: tuple[Reading, ...] = Field(
        (), description="Operating settings; when present they drive per-condition normalisation."
    )
    sensors: tuple[Reading, ...] = Field(min_length=1)
    features: Features
    labels: Labels
    alert: AlertRule

    @field_validator("settings", "sensors")
    @classmethod
    def _names_unique(cls, value: tuple[Reading, ...], info: ValidationInfo):
        seen = {r.name: "settings" for r in info.data.get("settings", ())}
        for index, reading in enumerate(value):
            if reading.name in RESERVED_NAMES:
                raise ValueError(f"name {reading.name!r} at [{index}] is reserved by the event")
            if reading.name in seen:
                raise ValueError(
                    f"duplicate name {reading.name!r} at [{index}] "
                    f"(already in {seen[reading.name]})"
                )
            seen[reading.name] = info.field_name
        return value

    @field_validator("features")
    @classmethod
    def _features_fit(cls, value: Features, info: ValidationInfo) -> Features:
        declared = {r.name for r in info.data.get("sensors", ())}
        unknown = [name for name in value.sensors if name not in declared]
        if "sensors" in info.data and unknown:
            raise ValueError(f"sensors lists undeclared sensors {unknown}")
        if value.normalisation == "per_condition" and not info.data.get("settings"):
            raise ValueError("normalisation 'per_condition' needs operating settings")
        return value

    @property
    def readings(self) -> tuple[Reading, ...]:
        """Settings then sensors: the order of reading columns everywhere."""
        return (*self.settings, *self.sensors)

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.settings)

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.sensors)

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return {r.name: r.range for r in self.readings}


def load_fleet(path: str | Path) -> FleetSpec:
    """Parse and check a fleet spec file; FleetSpecError naming the file and every bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FleetSpecError(f"{path}: no such fleet spec file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FleetSpecError(f"{path}: cannot read the fleet spec ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise FleetSpecError(f"{path}: not valid TOML ({error})") from None
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as error:
        raise FleetSpecError(f"{path}: " + "; ".join(_problems(error, data))) from None


def _problems(error: ValidationError, data: dict) -> list[str]:
    return [f"{_key_path(item['loc'], data)}: {_message(item)}" for item in error.errors()]


def _key_path(loc: tuple, data) -> str:
    """`sensors[3] (sensor_4).range` for pydantic's ('sensors', 3, 'range')."""
    path, node = "", data
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                path += f" ({node['name']})"
        else:
            path += f".{part}" if path else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return path or "(top level)"


def _message(item: dict) -> str:
    kind = item["type"]
    if kind == "missing":
        return "required key missing"
    if kind == "extra_forbidden":
        return "unknown key"
    message = item["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return message
    shown = repr(item.get("input"))
    return f"{message}, got {shown if len(shown) <= 60 else shown[:60] + '...'}"

"""The fleet spec the processes of this installation run on (setting `fleet_spec`)."""

from __future__ import annotations

import functools
from pathlib import Path

from prognos.core.errors import PrognosError
from prognos.core.settings import Settings, get_settings
from prognos.domain import errors as domain_errors
from prognos.domain import fleet as domain_fleet
from prognos.domain.events import EventContract
from prognos.domain.fleet import FleetSpec


class FleetSpecError(PrognosError, domain_errors.FleetSpecError):
    """A fleet spec file is missing, not TOML, or breaks the spec's rules."""


def load_fleet(path: str | Path) -> FleetSpec:
    """prognos.domain.fleet.load_fleet, its errors as PrognosErrors."""
    try:
        return domain_fleet.load_fleet(path)
    except domain_errors.FleetSpecError as error:
        raise FleetSpecError(str(error)) from None


def default_fleet(settings: Settings | None = None) -> FleetSpec:
    """The fleet spec named by the settings (default: fleets/cmapss.toml)."""
    return _fleet_at(Path((settings or get_settings()).fleet_spec))


def default_contract(settings: Settings | None = None) -> EventContract:
    """The event contract of the default fleet (validators call this per event: cheap)."""
    if settings is None:
        return _process_contract()
    return _contract_at(Path(settings.fleet_spec))


@functools.cache
def _process_contract() -> EventContract:
    return _contract_at(Path(get_settings().fleet_spec))


@functools.cache
def _fleet_at(path: Path) -> FleetSpec:
    return load_fleet(path)


@functools.cache
def _contract_at(path: Path) -> EventContract:
    return EventContract(_fleet_at(path))

"""Errors the domain raises.

The domain may import nothing of the project outside itself, so its errors cannot derive
from prognos.core.errors.PrognosError. They derive from `DomainError`; prognos.core gives
each a PrognosError subclass that derives from both (prognos.core.fleet.FleetSpecError)
and converts at the one place the layers load a spec, so callers see a PrognosError
(exit code, HTTP status) and `except` on the domain class catches either.
"""


class DomainError(Exception):
    """Base class of the domain's errors: a one-line message the user can act on."""


class FleetSpecError(DomainError):
    """A fleet spec file is missing, not TOML, or breaks the spec's rules."""

"""API keys, stored only as sha256 hashes, with roles reader < operator < admin.

Keys come from `PROGNOS_API_KEYS` and/or the file `PROGNOS_API_KEYS_FILE`, each entry
`<sha256 hex of the key>:<role>[:<name>]` (file: one per line, `#` comments). A client
sends the key as `X-API-Key: <key>` or `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from prognos.core.errors import PrognosError
from prognos.core.settings import Settings
from serving_layer.errors import ApiError

ROLES = ("reader", "operator", "admin")
HEX_DIGITS = set("0123456789abcdef")

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
bearer = HTTPBearer(auto_error=False)


class ApiKeyConfigError(PrognosError):
    """An API key entry in the settings or the keys file is malformed."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@functools.lru_cache(maxsize=256)
def _cached_digest(key: str) -> str:
    """The digest of a presented key; recent keys are not hashed again on every request."""
    return hash_key(key)


def parse_key_entry(entry: str, where: str) -> tuple[str, Principal]:
    parts = entry.strip().split(":")
    digest, role = parts[0].lower(), parts[1] if len(parts) > 1 else ""
    if len(digest) != 64 or not set(digest) <= HEX_DIGITS:
        raise ApiKeyConfigError(f"{where}: expected the sha256 hex digest of the key")
    if role not in ROLES:
        raise ApiKeyConfigError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    name = parts[2] if len(parts) > 2 and parts[2] else f"key-{digest[:8]}"
    return digest, Principal(name, role)


class KeyStore:
    """Hashed key -> principal."""

    def __init__(self, entries: dict[str, Principal]) -> None:
        self._by_hash = entries

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        entries = {}
        for index, entry in enumerate(filter(None, settings.api_keys.split(",")), 1):
            digest, principal = parse_key_entry(entry, f"PROGNOS_API_KEYS entry {index}")
            entries[digest] = principal
        if settings.api_keys_file is not None:
            entries.update(_read_keys_file(Path(settings.api_keys_file)))
        return cls(entries)

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, key: str | None) -> Principal | None:
        return self._by_hash.get(_cached_digest(key)) if key else None


def _read_keys_file(path: Path) -> dict[str, Principal]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ApiKeyConfigError(f"API keys file {path}: {error.strerror}") from None
    entries = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            digest, principal = parse_key_entry(line, f"{path} line {number}")
            entries[digest] = principal
    return entries


def require(role: str):
    """A FastAPI dependency admitting principals with at least `role`."""
    needed = ROLES.index(role)

    async def dependency(  # async: no thread-pool hop for an in-memory lookup
        request: Request,
        header_key: Annotated[str | None, Security(api_key_header)] = None,
        bearer_key: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    ) -> Principal:
        key = header_key or (bearer_key.credentials if bearer_key else None)
        principal = request.app.state.keys.authenticate(key)
        if principal is None:
            reason = "missing" if not key else "invalid"
            request.app.state.metrics.auth_failures.labels(reason).inc()
            raise ApiError(401, f"{reason} API key", {"WWW-Authenticate": "Bearer"})
        if ROLES.index(principal.role) < needed:
            request.app.state.metrics.auth_failures.labels("forbidden").inc()
            raise ApiError(403, f"this action needs the {role} role")
        return principal

    return dependency


class AuditLog:
    """One JSON line per admin action, appended to a file and logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.logger = logging.getLogger("prognos.audit")

    def record(self, principal: Principal, action: str, outcome: str, **details) -> None:
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "principal": principal.name,
            "role": principal.role,
            "action": action,
            "outcome": outcome,
            **details,
        }
        line = json.dumps(entry, sort_keys=True)
        self.logger.info(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(line + "\n")

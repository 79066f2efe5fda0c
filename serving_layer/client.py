"""A small client of the serving API (used by `prognos query`) and its table output."""

from __future__ import annotations

import httpx

from prognos.core.errors import PrognosError

FLEET_COLUMNS = (
    "machine_id",
    "alert_level",
    "predicted_rul",
    "last_cycle",
    "readings_count",
    "source",
    "model_version",
)


class ServingApiError(PrognosError):
    """The serving API answered with an error or could not be reached."""


class ServingClient:
    def __init__(
        self, url: str, key: str | None, verify: str | bool = True, timeout_s: float = 30.0
    ) -> None:
        headers = {"X-API-Key": key} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, verify=verify, timeout=timeout_s)

    def _get(self, path: str, **params) -> dict:
        params = {k: v for k, v in params.items() if v is not None}
        try:
            response = self.http.get(path, params=params)
        except httpx.HTTPError as error:
            raise ServingApiError(
                f"serving API at {self.http.base_url} unreachable: {error}"
            ) from None
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServingApiError(f"HTTP {response.status_code}: {message}")
        return response.json()

    def machine(self, machine_id: str) -> dict:
        return self._get(f"/v1/machines/{machine_id}")

    def fleet(
        self,
        alert_level: str | None = None,
        max_rul: float | None = None,
        sort: str = "rul",
        limit: int | None = None,
    ) -> list[dict]:
        """Every machine matching the filters, following the pagination cursor."""
        machines, cursor = [], None
        while True:
            page = self._get(
                "/v1/machines",
                alert_level=alert_level,
                max_rul=max_rul,
                sort=sort,
                limit=min(limit or 1000, 1000),
                cursor=cursor,
            )
            machines += page["machines"]
            cursor = page["next_cursor"]
            if cursor is None or (limit is not None and len(machines) >= limit):
                return machines[:limit] if limit else machines


def format_table(rows: list[dict], columns=FLEET_COLUMNS) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def format_machine(state: dict) -> str:
    keys = (
        "machine_id",
        "alert_level",
        "predicted_rul",
        "true_rul",
        "last_cycle",
        "last_event_time",
        "readings_count",
        "source",
        "batch_cycle",
        "model_version",
    )
    lines = [f"{k:16} {_cell(state.get(k))}" for k in keys]
    boundary = (state.get("as_of") or {}).get("boundary") or {}
    lines.append(f"{'batch run':16} {_cell(boundary.get('run_id'))}")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)

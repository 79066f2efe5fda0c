"""Merged-view routes: machines, history, alerts, fleet summary (role: reader).

Every handler is `async`: it only reads the in-memory snapshot, so it runs on the event
loop without a thread-pool hop (the hop dominated the latency of a machine query).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from serving_layer.auth import require
from serving_layer.errors import invalid, not_found, respond
from serving_layer.snapshot import (
    SORTS,
    Snapshot,
    alerts_since,
    fleet_summary,
    machine_history,
    query_fleet,
)

router = APIRouter(prefix="/v1", tags=["views"], dependencies=[Depends(require("reader"))])

AlertLevel = Literal["red", "amber", "green", "unknown"]
Sort = Literal[SORTS]  # type: ignore[valid-type]


def snapshot_of(request: Request) -> Snapshot:
    return request.app.state.snapshots.current


@router.get("/machines/{machine_id}", summary="Merged state of one machine")
async def get_machine(machine_id: str, request: Request):
    body = snapshot_of(request).machine_json(machine_id, request.app.state.truth.true_rul)
    if body is None:
        raise not_found(f"unknown machine {machine_id!r}")
    return Response(body, media_type="application/json")


@router.get("/machines", summary="The fleet: filter, sort, paginate (cursor)")
async def list_machines(
    request: Request,
    alert_level: AlertLevel | None = None,
    min_rul: float | None = Query(None, allow_inf_nan=False),
    max_rul: float | None = Query(None, allow_inf_nan=False),
    sort: Sort = "rul",
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=512),
):
    if min_rul is not None and max_rul is not None and min_rul > max_rul:
        raise invalid(f"min_rul ({min_rul}) must not exceed max_rul ({max_rul})")
    snapshot = snapshot_of(request)
    page, next_cursor = query_fleet(
        snapshot,
        sort=sort,
        alert_level=alert_level,
        min_rul=min_rul,
        max_rul=max_rul,
        limit=limit,
        cursor=cursor,
    )
    truth = request.app.state.truth
    page = [{**s, "true_rul": truth.true_rul(s["machine_id"], s.get("last_cycle"))} for s in page]
    return respond({"machines": page, "next_cursor": next_cursor, "as_of": snapshot.as_of()})


@router.get("/machines/{machine_id}/history", summary="Time series of one machine (silver)")
async def get_history(
    machine_id: str,
    request: Request,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
):
    _check_range(start, end)
    snapshot = snapshot_of(request)
    if machine_id not in snapshot.machines and machine_id not in snapshot.history_slices:
        raise not_found(f"unknown machine {machine_id!r}")
    rows = machine_history(snapshot, machine_id, start, end)
    truth = request.app.state.truth
    predictions = [
        {**point, "true_rul": truth.true_rul(machine_id, point["cycle"])}
        for point in request.app.state.trail.points(machine_id)
    ]
    for row in rows:
        row["true_rul"] = truth.true_rul(machine_id, row.get("cycle"))
    return respond(
        {
            "machine_id": machine_id,
            "readings": rows,
            "predictions": predictions,
            "as_of": snapshot.as_of(),
        }
    )


def _check_range(start: datetime | None, end: datetime | None) -> None:
    if (start is None) != (end is None) and (start or end).tzinfo is None:
        raise invalid("'from' and 'to' need a timezone (e.g. 2026-01-01T00:00:00Z)")
    if start is not None and end is not None:
        if (start.tzinfo is None) != (end.tzinfo is None) or start.tzinfo is None:
            raise invalid("'from' and 'to' need a timezone (e.g. 2026-01-01T00:00:00Z)")
        if start > end:
            raise invalid("'from' must not be after 'to'")


@router.get("/alerts", summary="Alerts raised since a time (newest last)")
async def get_alerts(
    request: Request,
    since: datetime | None = None,
    limit: int = Query(100, ge=1, le=1000),
):
    if since is not None and since.tzinfo is None:
        raise invalid("'since' needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    snapshot = snapshot_of(request)
    return respond({"alerts": alerts_since(snapshot, since, limit), "as_of": snapshot.as_of()})


@router.get("/fleet/summary", summary="Fleet-wide figures of the merged view")
async def get_fleet_summary(request: Request):
    return respond(fleet_summary(snapshot_of(request)))

"""Merged-view routes: machines, history, alerts, fleet summary (role: reader).

The handlers that only read the in-memory snapshot are `async`: they run on the event
loop without a thread-pool hop (the hop dominated the latency of a machine query). History
and alerts read Delta on demand (pruned reads at the snapshot's pinned versions): they are
plain functions, run in the thread pool, so a read never stalls the loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from serving_layer.auth import require
from serving_layer.errors import invalid, not_found, respond
from serving_layer.snapshot import (
    HISTORY_MAX_LIMIT,
    HISTORY_MAX_SPAN,
    SORTS,
    HistoryRangeError,
    Snapshot,
    alerts_page,
    fleet_summary,
    history_window,
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


@router.get(
    "/machines/{machine_id}/history",
    summary="Readings of one machine in a time range (the history view), with predictions",
    description=f"At most {HISTORY_MAX_SPAN} per query (without 'from'/'to': the span up to "
    "the machine's last reading) and at most `limit` readings, in event time order; "
    "`next_from` is the 'from' of the next page (null when the range is exhausted).",
)
def get_history(
    machine_id: str,
    request: Request,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    limit: int = Query(1000, ge=1, le=HISTORY_MAX_LIMIT),
):
    _check_range(start, end)
    snapshot = snapshot_of(request)
    state = snapshot.machines.get(machine_id)
    if state is None:
        raise not_found(f"unknown machine {machine_id!r}")
    try:
        window = history_window(state, start, end)
    except HistoryRangeError as error:
        raise invalid(str(error)) from None
    rows, next_from = [], None
    if window is not None:
        views = request.app.state.snapshots.views
        rows, next_from = machine_history(views, snapshot, machine_id, window, limit)
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
            "from": window[0] if window else None,
            "to": window[1] if window else None,
            "readings": rows,
            "next_from": next_from,
            "predictions": predictions,
            "as_of": snapshot.as_of(),
        }
    )


def _check_range(start: datetime | None, end: datetime | None) -> None:
    if any(bound is not None and bound.tzinfo is None for bound in (start, end)):
        raise invalid("'from' and 'to' need a timezone (e.g. 2026-01-01T00:00:00Z)")
    if start is not None and end is not None and start > end:
        raise invalid("'from' must not be after 'to'")


@router.get(
    "/alerts",
    summary="Alerts in time order, paged (newest last)",
    description="With `since` or `cursor`: the alerts raised at or after `since` (or after "
    "the cursor's page), oldest first; `next_cursor` continues (null at the end). With "
    "neither: the newest `limit` alerts.",
)
def get_alerts(
    request: Request,
    since: datetime | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=512),
):
    if since is not None and since.tzinfo is None:
        raise invalid("'since' needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    snapshot = snapshot_of(request)
    views = request.app.state.snapshots.views
    alerts, next_cursor = alerts_page(views, snapshot, since, limit, cursor)
    return respond({"alerts": alerts, "next_cursor": next_cursor, "as_of": snapshot.as_of()})


@router.get("/fleet/summary", summary="Fleet-wide figures of the merged view")
async def get_fleet_summary(request: Request):
    return respond(fleet_summary(snapshot_of(request)))

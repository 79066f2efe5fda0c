"""The serving app: `create_app(settings)` wires snapshots, models, auth, metrics, routes."""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from prognos.core.alerting import alert_level
from prognos.core.registry import FilesystemRegistry, ModelRegistry
from prognos.core.settings import Settings
from serving_layer import routes_models, routes_views
from serving_layer.auth import AuditLog, KeyStore, require
from serving_layer.errors import install_error_handlers, respond
from serving_layer.metrics import ServingMetrics
from serving_layer.models import ModelServer
from serving_layer.poller import Poller
from serving_layer.snapshot import SnapshotStore
from serving_layer.trail import PredictionTrail
from serving_layer.truth import TruthTable
from serving_layer.views import DeltaViews

DASHBOARD = Path(__file__).with_name("dashboard.html")
API_DOCS = Path(__file__).with_name("docs.html")  # renders /openapi.json; no CDN


def create_app(
    settings: Settings,
    *,
    registry: ModelRegistry | None = None,
    views=None,
    background: bool = True,
    grpc: bool = False,
    shadow_seed: int | None = None,
) -> FastAPI:
    """The FastAPI app. With `background`, refreshers poll Delta versions and the registry;
    with `grpc`, the gRPC PredictionService listens on 127.0.0.1:<grpc_port>."""
    metrics, trail, truth = ServingMetrics(), PredictionTrail(), TruthTable(settings)
    registry = registry or FilesystemRegistry(settings.registry)

    def on_swap(snapshot) -> None:
        metrics.snapshot_swapped(snapshot, snapshots.last_build_s)
        trail.record(snapshot)
        gc.freeze()  # the new snapshot is long-lived: keep it out of full collections

    def refresh_models() -> bool:
        changed = models.refresh()
        if changed:  # retired models may hold reference cycles: collect them once, refreeze
            collect_and_freeze()
        return changed

    snapshots = SnapshotStore(
        views or DeltaViews(settings),
        level_of=functools.partial(alert_level, settings=settings),
        on_swap=on_swap,
    )
    models = ModelServer(
        registry, settings.shadow_share, metrics, seed=shadow_seed, true_rul=truth.true_rul
    )
    pollers = [
        Poller(snapshots.refresh, settings.serving_refresh_s, "snapshot-refresher"),
        Poller(refresh_models, settings.serving_refresh_s, "registry-watcher"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for poller in pollers:
            with contextlib.suppress(Exception):  # readyz reports what did not load
                poller.check()
            if background:
                poller.start()
        collect_and_freeze()
        grpc_server = None
        if grpc:
            from serving_layer.grpc_service import start_grpc_server

            grpc_server = start_grpc_server(models, settings.grpc_port)
        try:
            yield
        finally:
            if grpc_server is not None:
                grpc_server.stop(grace=1).wait()
            for poller in pollers:
                poller.stop()
            models.close()

    app = FastAPI(
        title="prognos serving layer",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load from a CDN: /docs is local
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        description="Merged batch + speed views of the fleet, RUL predictions "
        "(TensorFlow Serving-compatible), model champion/challenger management.",
    )
    app.state.settings, app.state.metrics, app.state.registry = settings, metrics, registry
    app.state.snapshots, app.state.models, app.state.pollers = snapshots, models, pollers
    app.state.refresh_models = refresh_models
    app.state.keys = KeyStore.from_settings(settings)
    app.state.audit = AuditLog(settings.audit_log)
    app.state.truth, app.state.trail = truth, trail
    install_error_handlers(app)
    _install_request_metrics(app, metrics)
    _add_operational_routes(app)
    app.include_router(routes_views.router)
    app.include_router(routes_models.router)
    return app


def collect_and_freeze() -> None:
    """Collect garbage, then move every live object out of the cyclic collector's reach.

    The snapshot, TensorFlow and the loaded models are long-lived: a full collection over
    them takes ~0.3 s, and it would stall requests at random (the latency p99). Frozen
    objects are still freed by reference counting, so a swapped-out snapshot goes away.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _install_request_metrics(app: FastAPI, metrics: ServingMetrics) -> None:
    app.add_middleware(RequestMetrics, metrics=metrics)


class RequestMetrics:
    """Pure ASGI middleware: count and time every HTTP request by route template."""

    def __init__(self, app, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple, tuple] = {}  # labelled metrics, looked up once per label

    def _observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.metrics.latency.labels(route),
                self.metrics.requests.labels(route, method, str(status)),
            )
        children[0].observe(seconds)
        children[1].inc()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_with_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self._observe(route, scope["method"], status[0], time.perf_counter() - started)


def _add_operational_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"], summary="Liveness (no key needed)")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Views and model loaded (no key needed)")
    def readyz(request: Request):
        state = request.app.state
        checks = {"views_loaded": state.snapshots.refreshed, "model_loaded": state.models.ready}
        errors = [p.last_error for p in state.pollers if p.last_error]
        body = {"ready": all(checks.values()), **checks, "errors": errors}
        return respond(body, 200 if body["ready"] else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        dependencies=[Depends(require("reader"))],
    )
    def prometheus(request: Request):
        return Response(
            generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.get(
        "/dashboard",
        tags=["operations"],
        response_class=HTMLResponse,
        summary="Dashboard page (static; it sends the key it is given with each call)",
    )
    def dashboard():
        return HTMLResponse(DASHBOARD.read_text())

    @app.get("/docs", include_in_schema=False)
    def api_docs():
        return HTMLResponse(API_DOCS.read_text())

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/dashboard")

"""Run the serving layer: HTTP (uvicorn; HTTPS when a certificate is configured) + gRPC."""

from __future__ import annotations

from prognos.core.errors import PrognosError
from prognos.core.settings import Settings


def tls_files(settings: Settings) -> tuple[str, str] | None:
    """(cert, key) when TLS is configured; a clear error when half-configured or missing."""
    cert, key = settings.api_tls_cert, settings.api_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise PrognosError("TLS needs both PROGNOS_API_TLS_CERT and PROGNOS_API_TLS_KEY")
    for path in (cert, key):
        if not path.is_file():
            raise PrognosError(f"TLS file not found: {path}")
    return str(cert), str(key)


def serve(settings: Settings) -> None:
    """Serve until interrupted."""
    import uvicorn

    from serving_layer.app import create_app

    tls = tls_files(settings)
    app = create_app(settings, grpc=True)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="info",
        access_log=False,  # every request is counted and timed in /metrics instead
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )


def base_url(settings: Settings) -> str:
    scheme = "https" if settings.api_tls_cert is not None else "http"
    return f"{scheme}://{settings.api_host}:{settings.api_port}"

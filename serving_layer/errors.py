"""The one place mapping errors to HTTP answers: JSON `{"error": "..."}`, never internals.

The shape is TensorFlow Serving's error shape, used by every route alike.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from prognos.core.registry import NoChampionError, RegistryError, UnknownVersionError
from serving_layer.models import ModelNotFoundError
from serving_layer.predict_format import PredictRequestError
from serving_layer.snapshot import CursorError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 200, with a message meant for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def invalid(message: str) -> ApiError:
    return ApiError(422, message)


# exception type -> HTTP status; the exception's message is the client's message
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (ModelNotFoundError, 404),
    (UnknownVersionError, 404),
    (PredictRequestError, 400),
    (CursorError, 422),
    (NoChampionError, 409),
    (RegistryError, 409),
)


def clean(value):
    """JSON-safe: non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def respond(payload, status: int = 200) -> JSONResponse:
    return JSONResponse(clean(jsonable_encoder(payload)), status_code=status)


def error_response(status: int, message: str, headers: dict | None = None, **extra):
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        problems = [_describe(item) for item in error.errors()]
        return error_response(422, "invalid request: " + "; ".join(problems), problems=problems)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail), error.headers)

    for error_type, status in STATUS_BY_ERROR:
        app.add_exception_handler(error_type, _mapped(status))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")


def _mapped(status: int):
    async def handler(request: Request, error: Exception):
        return error_response(status, str(error))

    return handler


def _describe(item: dict) -> str:
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", "invalid")

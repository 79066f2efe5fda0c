"""Errors as HTTP and gRPC answers, never internals.

HTTP: TensorFlow Serving's error shape `{"error": "..."}`, used by every route alike, with
the error class's `http_status`. gRPC: the error class's `grpc_code` and the message.
prognos/core/errors.py holds the one table of HTTP, gRPC and exit codes; an exception that
is not a PrognosError is a bug and answers 500 "internal error" (gRPC: UNKNOWN).
"""

from __future__ import annotations

import functools
import logging
import math

import grpc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from prognos.core.errors import PrognosError

log = logging.getLogger(__name__)


class ApiError(PrognosError):
    """An answer other than 200 that a route decides itself (auth, parameter checks)."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.message = message
        self.headers = headers


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def invalid(message: str) -> ApiError:
    return ApiError(422, message)


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
    @app.exception_handler(PrognosError)
    async def _prognos_error(request: Request, error: PrognosError):
        if error.http_status >= 500:
            log.error("%s on %s %s: %s", type(error).__name__, request.method, request.url, error)
        return error_response(error.http_status, error.one_line(), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        problems = [_describe(item) for item in error.errors()]
        return error_response(422, "invalid request: " + "; ".join(problems), problems=problems)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")


def _describe(item: dict) -> str:
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", "invalid")


def grpc_status(error: PrognosError) -> grpc.StatusCode:
    """The gRPC status code an error class declares (UNKNOWN for a name gRPC lacks)."""
    return grpc.StatusCode.__members__.get(error.grpc_code, grpc.StatusCode.UNKNOWN)


def answers_errors(method):
    """A PrognosError raised by the call ends it with the error's code and message."""

    @functools.wraps(method)
    def call(self, request, context):
        try:
            return method(self, request, context)
        except PrognosError as error:
            context.abort(grpc_status(error), error.one_line())

    return call

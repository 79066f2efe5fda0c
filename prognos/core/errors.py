"""Errors every layer raises; each carries a one-line message meant for the user.

This module is the one place that says how an error is answered:
- `http_status`: the REST API's status code (body `{"error": "<message>"}`),
- `grpc_code`: the gRPC status code, as a `grpc.StatusCode` member name (the core does not
  import grpc; `serving_layer.grpc_service` looks the name up),
- `exit_code`: the CLI's exit status (it prints `error: <message>` on one line).

A new error subclasses the category it belongs to (NotFoundError, InvalidArgumentError, ...)
and inherits its answers; the base class answers like an internal error. The categories
follow gRPC's canonical codes, and their HTTP statuses follow TF Serving's mapping of those
codes (model_servers/http_server.cc), except FAILED_PRECONDITION: TF Serving answers 400,
prognos 409, because the request was well formed and the server's state refused it.
"""

from __future__ import annotations


class PrognosError(Exception):
    """Base class: a problem the user can act on, with a clear one-line message."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    exit_code: int = 1  # 2 is click's usage error; 130 an interrupt

    def one_line(self) -> str:
        """The message on one line (a CLI prints it after `error: `)."""
        lines = [line.strip() for line in str(self).splitlines() if line.strip()]
        return "; ".join(lines) or type(self).__name__


# ------------------------------------------------------------------------- categories


class InvalidArgumentError(PrognosError):
    """The request itself is wrong (bad body, bad parameter); retrying it cannot help."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class InvalidQueryError(InvalidArgumentError):
    """A query parameter is wrong: 422 like the API's other parameter checks (FastAPI's)."""

    http_status = 422


class NotFoundError(PrognosError):
    """What the request names does not exist (model, version, label, table, ...)."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class FailedPreconditionError(PrognosError):
    """The request is well formed but the current state refuses it (e.g. no champion)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class ConflictError(PrognosError):
    """A concurrent change got in the way (a lock is held, an update lost its race);
    the same request can succeed when retried. Exit 75 is sysexits' EX_TEMPFAIL."""

    http_status = 409
    grpc_code = "ABORTED"
    exit_code = 75


class UnavailableError(PrognosError):
    """A service prognos depends on cannot be reached right now."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class UnimplementedError(PrognosError):
    """prognos does not offer this operation (e.g. TF Serving's Classify)."""

    http_status = 501
    grpc_code = "UNIMPLEMENTED"


# ------------------------------------------------------------------------- errors


class SettingsError(PrognosError, ValueError):
    """A setting has an invalid value (a misconfigured server answers 500)."""


class SetupMissingError(PrognosError):
    """Something `make setup` provides is missing (jars, virtualenv, data)."""


class BrokerUnavailableError(UnavailableError):
    """The Kafka broker could not be reached."""


class UnknownTableError(NotFoundError):
    """A table name is not in the catalog."""


class SchemaMismatchError(FailedPreconditionError):
    """A write's schema differs from the catalog's schema for the table."""


class DataFileError(PrognosError):
    """A vendored data file is missing or damaged."""

    grpc_code = "DATA_LOSS"


class EventValidationError(InvalidArgumentError):
    """An event does not satisfy the event schema."""


class LakeBusyError(ConflictError):
    """Another job held the lake's lock for longer than the wait allowed."""


class AliasConflictError(ConflictError):
    """A model's aliases changed since the caller read them (an expected_version mismatch)."""

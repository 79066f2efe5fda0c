"""The one table of error answers (prognos/core/errors.py) as HTTP, gRPC and exit codes."""

from __future__ import annotations

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from prognos.core import errors
from prognos.core.errors import (
    AliasConflictError,
    BrokerUnavailableError,
    DataFileError,
    LakeBusyError,
    PrognosError,
    SettingsError,
    UnimplementedError,
)
from prognos.core.registry import CorruptVersionError, NoChampionError, UnknownVersionError
from serving_layer.errors import ApiError, answers_errors, grpc_status, install_error_handlers
from serving_layer.models import ModelNotFoundError
from serving_layer.predict_format import PredictRequestError
from serving_layer.snapshot import CursorError

pytestmark = pytest.mark.unit

# TF Serving's canonical code -> HTTP status (tensorflow_serving/model_servers/http_server.cc,
# ToHTTPStatusCode); prognos follows it except where DEVIATIONS says why not
TF_SERVING_HTTP = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
DEVIATIONS = {
    errors.FailedPreconditionError: 409,  # well formed, refused by the state: a conflict
    errors.InvalidQueryError: 422,  # like FastAPI's own query parameter checks
}

# (error, HTTP status, gRPC code, exit code) for the errors the API and CLI raise
ANSWERS = [
    (ModelNotFoundError("Servable not found for request: model 'x'"), 404, "NOT_FOUND", 1),
    (UnknownVersionError("model 'x' has no version 9"), 404, "NOT_FOUND", 1),
    (PredictRequestError("'instances' must be a non-empty list"), 400, "INVALID_ARGUMENT", 1),
    (CursorError("invalid cursor"), 422, "INVALID_ARGUMENT", 1),
    (NoChampionError("model 'x' has no champion yet"), 409, "FAILED_PRECONDITION", 1),
    (CorruptVersionError("x version 2 is corrupted"), 409, "FAILED_PRECONDITION", 1),
    (AliasConflictError("aliases at version 3, not 2"), 409, "ABORTED", 75),
    (LakeBusyError("the lake is locked by batch_layer"), 409, "ABORTED", 75),
    (BrokerUnavailableError("Kafka broker unreachable"), 503, "UNAVAILABLE", 1),
    (UnimplementedError("Classify is not supported"), 501, "UNIMPLEMENTED", 1),
    (SettingsError("invalid setting: api_port"), 500, "INTERNAL", 1),
    (DataFileError("data file damaged"), 500, "DATA_LOSS", 1),
    (PrognosError("something prognos-specific"), 500, "INTERNAL", 1),
]
ANSWER_IDS = [type(error).__name__ for error, *_ in ANSWERS]


def all_error_classes() -> list[type[PrognosError]]:
    found, pending = {}, [PrognosError]
    while pending:
        cls = pending.pop()
        found[cls] = None  # a class under two categories is found twice
        pending.extend(cls.__subclasses__())
    return list(found)


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_declares_valid_codes(cls):
    assert cls.grpc_code in grpc.StatusCode.__members__
    assert cls.grpc_code != "OK"
    assert 400 <= cls.http_status <= 599
    assert cls.exit_code not in (0, 2, 130)  # success, click's usage error, an interrupt
    assert 1 <= cls.exit_code <= 125


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_http_statuses_follow_tf_serving_unless_a_deviation_says_why(cls):
    declaring = next(c for c in cls.__mro__ if "http_status" in vars(c))
    assert cls.http_status == DEVIATIONS.get(declaring, TF_SERVING_HTTP[cls.grpc_code])


@pytest.mark.parametrize(("error", "http", "code", "exit_code"), ANSWERS, ids=ANSWER_IDS)
def test_each_error_has_its_answers(error, http, code, exit_code):
    assert (error.http_status, error.grpc_code, error.exit_code) == (http, code, exit_code)
    assert grpc_status(error) == grpc.StatusCode[code]


def test_settings_errors_are_prognos_errors_and_still_value_errors():
    from prognos.core.settings import SettingsError as FromSettings
    from prognos.core.settings import load_settings

    assert FromSettings is SettingsError
    with pytest.raises(PrognosError) as caught:
        load_settings(api_port="not-a-port")
    assert isinstance(caught.value, SettingsError) and isinstance(caught.value, ValueError)


def test_one_line_joins_lines_and_never_is_empty():
    assert PrognosError("first\n\n  second  \n").one_line() == "first; second"
    assert LakeBusyError().one_line() == "LakeBusyError"


def test_a_class_added_later_inherits_its_category_answers():
    class ReplicaBehindError(errors.UnavailableError):
        """A stand-in for an error another module adds."""

    error = ReplicaBehindError("replica 2 is behind")
    assert (error.http_status, grpc_status(error), error.exit_code) == (
        503,
        grpc.StatusCode.UNAVAILABLE,
        1,
    )


# --------------------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def client():
    """An app with the serving error handlers; each route raises the error it names."""
    app = FastAPI()
    install_error_handlers(app)
    raising = {str(i): error for i, (error, *_) in enumerate(ANSWERS)}

    @app.get("/raise/{index}")
    def raise_answer(index: str):
        raise raising[index]

    @app.get("/unauthorised")
    def unauthorised():
        raise ApiError(401, "missing API key", {"WWW-Authenticate": "Bearer"})

    @app.get("/multi-line")
    def multi_line():
        raise PredictRequestError("input 'window':\nshape [1] does not match")

    @app.get("/bug")
    def bug():
        raise RuntimeError("/secret/path/model.pb: internal detail")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("index", range(len(ANSWERS)), ids=ANSWER_IDS)
def test_http_answer_is_the_status_and_tf_serving_error_shape(client, index):
    error, http, *_ = ANSWERS[index]
    response = client.get(f"/raise/{index}")
    assert response.status_code == http
    assert response.json() == {"error": str(error)}


def test_http_answer_keeps_the_headers_of_an_api_error(client):
    response = client.get("/unauthorised")
    assert response.status_code == 401 and response.json() == {"error": "missing API key"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_http_answer_is_one_line(client):
    response = client.get("/multi-line")
    assert response.status_code == 400
    assert response.json() == {"error": "input 'window':; shape [1] does not match"}


def test_a_bug_answers_500_without_its_internals(client):
    response = client.get("/bug")
    assert response.status_code == 500 and response.json() == {"error": "internal error"}


# --------------------------------------------------------------------------- gRPC


class Aborted(Exception):
    pass


class RecordingContext:
    """What a grpc.ServicerContext's abort receives; abort raises like the real one."""

    def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted


class Servicer:
    @answers_errors
    def Call(self, request, context):
        raise request


@pytest.mark.parametrize(("error", "http", "code", "exit_code"), ANSWERS, ids=ANSWER_IDS)
def test_grpc_answer_is_the_code_and_one_line_message(error, http, code, exit_code):
    context = RecordingContext()
    with pytest.raises(Aborted):
        Servicer().Call(error, context)
    assert (context.code, context.details) == (grpc.StatusCode[code], error.one_line())


def test_grpc_lets_a_bug_through_to_grpc_which_answers_unknown():
    with pytest.raises(RuntimeError):
        Servicer().Call(RuntimeError("a bug"), RecordingContext())

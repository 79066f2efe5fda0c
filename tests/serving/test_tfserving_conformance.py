"""TF Serving clients work against prognos unchanged.

No `tensorflow_model_server` binary is available to compare against, so this drives both
protocols as TF Serving documents them:
- gRPC with the official `tensorflow_serving.apis` stubs: ModelService.GetModelStatus
  (get_model_status.proto: ModelVersionStatus.State, StatusProto) and PredictionService
  (Predict, GetModelMetadata; Classify, Regress, MultiInference answer UNIMPLEMENTED).
- REST with request and response bodies exactly as the RESTful API page shows them
  (tensorflow.org/tfx/serving/api_rest): "Model status API", "Model Metadata API",
  "Predict API" in row ("instances") and columnar ("inputs") format with the optional
  "signature_name", and the error body `{"error": <error message string>}`.
Status codes follow TF Serving: gRPC NOT_FOUND for an unknown model, version or label and
INVALID_ARGUMENT for a bad request; REST the HTTP status TF Serving gives those codes
(model_servers/http_server.cc: NOT_FOUND 404, INVALID_ARGUMENT 400).
"""

from __future__ import annotations

import threading

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from serving_support import (
    FEATURES,
    KEYS,
    MODEL,
    WINDOW,
    RunningServer,
    free_port,
    key_settings,
    lake_settings,
    seed_lake,
    tiny_registry,
)
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from prognos.core.registry import FilesystemRegistry
from serving_layer.app import create_app
from serving_layer.grpc_service import model_status_response
from serving_layer.models import ModelServer

READER = {"X-API-Key": KEYS["reader"]}
OPERATOR = {"X-API-Key": KEYS["operator"]}
# the Model status API's documented example body of one version: TF Serving's JSON of
# GetModelStatusResponse (int64 version as a string, State and error code as names)
OK_STATUS = {"error_code": "OK", "error_message": ""}


def version_status(version: int, state: str) -> dict:
    return {"version": str(version), "state": state, "status": OK_STATUS}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real server over REST and gRPC: version 1 is the champion, 2 the challenger, and
    3 a registered version no alias names (so not loaded)."""
    settings = lake_settings(
        tmp_path_factory.mktemp("conformance"),
        api_keys=key_settings(),
        grpc_port=free_port(),
        serving_model=MODEL,
    )
    seed_lake(settings)
    tiny_registry(settings.registry, scales=(1.0, 1.5, 2.0))
    server = RunningServer(create_app(settings, grpc=True), free_port()).start()
    try:
        with (
            httpx.Client(base_url=server.url, timeout=30) as rest,
            grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel,
        ):
            yield rest, channel
    finally:
        server.stop()


@pytest.fixture
def rest(served):
    return served[0]


@pytest.fixture
def model_service(served):
    return model_service_pb2_grpc.ModelServiceStub(served[1])


@pytest.fixture
def prediction_service(served):
    return prediction_service_pb2_grpc.PredictionServiceStub(served[1])


def windows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, WINDOW, FEATURES)).astype(np.float32)


def status_request(name=MODEL, version=None, label=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return request


def as_rest_json(message) -> dict:
    """A proto as TF Serving's REST API prints it (always_print_primitive_fields)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value


# --------------------------------------------------------------------- model status


def test_rest_status_of_a_version_is_the_documented_body(rest):
    response = rest.get(f"/v1/models/{MODEL}/versions/2", headers=READER)
    assert response.status_code == 200
    assert response.json() == {"model_version_status": [version_status(2, "AVAILABLE")]}


def test_rest_status_of_a_model_lists_every_version(rest):
    body = rest.get(f"/v1/models/{MODEL}", headers=READER).json()
    assert body["model_version_status"] == [
        version_status(1, "AVAILABLE"),
        version_status(2, "AVAILABLE"),
        version_status(3, "END"),  # registered, no alias: not loaded
    ]


@pytest.mark.parametrize(("label", "version"), [("champion", 1), ("challenger", 2)])
def test_rest_status_of_a_label_is_its_version(rest, label, version):
    response = rest.get(f"/v1/models/{MODEL}/labels/{label}", headers=READER)
    assert response.json() == {"model_version_status": [version_status(version, "AVAILABLE")]}


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({}, ""),
        ({"version": 1}, "/versions/1"),
        ({"version": 3}, "/versions/3"),
        ({"label": "challenger"}, "/labels/challenger"),
    ],
    ids=["all versions", "version 1", "version 3", "label"],
)
def test_grpc_model_status_equals_rest(rest, model_service, spec, path):
    response = model_service.GetModelStatus(status_request(**spec), timeout=30)
    body = rest.get(f"/v1/models/{MODEL}{path}", headers=READER).json()
    assert as_rest_json(response) == {"model_version_status": body["model_version_status"]}
    state_names = [
        get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
        for s in response.model_version_status
    ]
    assert set(state_names) <= {"AVAILABLE", "END"}


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"name": "nope"}, "/v1/models/nope", "Could not find any versions of model nope"),
        ({"version": 99}, f"/v1/models/{MODEL}/versions/99", "Could not find version 99"),
        ({"label": "stable"}, f"/v1/models/{MODEL}/labels/stable", "Could not find label"),
    ],
    ids=["unknown model", "unknown version", "unknown label"],
)
def test_unknown_model_version_or_label_is_not_found_in_both_protocols(
    rest, model_service, spec, path, message
):
    error = rpc_error(model_service.GetModelStatus, status_request(**spec))
    assert error.code() == grpc.StatusCode.NOT_FOUND and message in error.details()
    response = rest.get(path, headers=READER)
    assert response.status_code == 404
    assert response.json() == {"error": error.details()}


def test_bad_status_requests_are_invalid_arguments(model_service):
    missing_spec = rpc_error(
        model_service.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()
    )
    assert missing_spec.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing_spec.details() == "Missing ModelSpec"
    no_name = rpc_error(model_service.GetModelStatus, status_request(name=""))
    assert no_name.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert no_name.details() == "Missing model name in request."


def test_reload_config_is_unimplemented_with_what_to_do_instead(model_service):
    error = rpc_error(
        model_service.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest()
    )
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "HandleReloadConfigRequest is not supported" in error.details()
    assert ":promote" in error.details()


@pytest.mark.parametrize(
    ("method", "request_type"),
    [
        ("Classify", classification_pb2.ClassificationRequest),
        ("Regress", regression_pb2.RegressionRequest),
        ("MultiInference", inference_pb2.MultiInferenceRequest),
    ],
)
def test_classify_regress_multi_inference_are_unimplemented(
    prediction_service, method, request_type
):
    error = rpc_error(getattr(prediction_service, method), request_type())
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details().startswith(f"{method} is not supported")
    assert "call Predict" in error.details()


# --------------------------------------------------------------------- states in-process


class SlowLoadingRegistry(FilesystemRegistry):
    """The real registry, whose loads wait until the test lets them go on."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.loading, self.go_on = threading.Event(), threading.Event()

    def load(self, model, ref="champion"):
        self.loading.set()
        assert self.go_on.wait(60)
        return super().load(model, ref)


def test_a_version_is_loading_while_its_saved_model_loads(tmp_path):
    registry = SlowLoadingRegistry(tiny_registry(tmp_path / "registry", scales=(1.0,)).root)
    models = ModelServer(registry, shadow_share=0.0)
    refresh = threading.Thread(target=models.refresh)
    refresh.start()
    try:
        assert registry.loading.wait(60)
        assert as_rest_json(model_status_response(models, status_request())) == {
            "model_version_status": [version_status(1, "LOADING")]
        }
    finally:
        registry.go_on.set()
        refresh.join(60)
    assert [s.state for s in models.version_status(MODEL)] == ["AVAILABLE"]


def test_a_failed_load_reports_end_with_its_error(tmp_path):
    registry = tiny_registry(tmp_path / "registry", scales=(1.0,))
    (registry.root / MODEL / "1" / "saved_model.pb").unlink()
    models = ModelServer(registry, shadow_share=0.0)
    with pytest.raises(Exception, match="corrupted"):
        models.refresh()
    [status] = as_rest_json(model_status_response(models, status_request()))["model_version_status"]
    assert status["state"] == "END"
    assert status["status"]["error_code"] == "FAILED_PRECONDITION"
    assert "missing saved_model.pb" in status["status"]["error_message"]


# --------------------------------------------------------------------- metadata


def grpc_signature(prediction_service, **spec) -> dict:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    response = prediction_service.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return response.model_spec.version.value, json_format.MessageToDict(
        signatures, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@pytest.mark.parametrize(
    ("path", "spec", "version"),
    [
        ("", {}, 1),
        ("/versions/2", {"version": 2}, 2),
        ("/labels/challenger", {"label": "challenger"}, 2),
    ],
    ids=["champion", "version", "label"],
)
def test_rest_metadata_is_the_documented_body_and_equals_grpc(
    rest, prediction_service, path, spec, version
):
    """Model Metadata API: `{"model_spec": {...}, "metadata": {"signature_def":
    <SignatureDefMap JSON>}}`, proto field names kept (method_name, tensor_shape)."""
    response = rest.get(f"/v1/models/{MODEL}{path}/metadata", headers=READER)
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": str(version)}
    grpc_version, signatures = grpc_signature(prediction_service, **spec)
    assert grpc_version == version
    assert body["metadata"] == {"signature_def": signatures}
    signature = signatures["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert [d["size"] for d in signature["inputs"]["window"]["tensor_shape"]["dim"]] == [
        "-1",
        str(WINDOW),
        str(FEATURES),
    ]


def test_rest_metadata_of_an_unknown_label_is_the_error_body(rest):
    response = rest.get(f"/v1/models/{MODEL}/labels/stable/metadata", headers=READER)
    assert response.status_code == 404 and list(response.json()) == ["error"]


# --------------------------------------------------------------------- predict


def grpc_predict(prediction_service, x: np.ndarray, **spec) -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs["window"].CopyFrom(tf.make_tensor_proto(x))
    response = prediction_service.Predict(request, timeout=30)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def rest_predict(rest, path: str, body) -> httpx.Response:
    return rest.post(f"/v1/models/{MODEL}{path}:predict", json=body, headers=OPERATOR)


@pytest.mark.parametrize(
    ("path", "spec"),
    [("", {}), ("/versions/2", {"version": 2}), ("/labels/challenger", {"label": "challenger"})],
    ids=["champion", "version", "label"],
)
def test_row_format_answers_predictions_like_grpc(rest, prediction_service, path, spec):
    """Row format: `{"instances": <list>}`; with several named outputs the answer is
    `{"predictions": <list-of-objects>}`, one object per instance."""
    x = windows(3, seed=5)
    expected = grpc_predict(prediction_service, x, **spec)
    for body in (
        {"instances": x.tolist()},  # one named input: the instance is the input's value
        {"instances": [{"window": row.tolist()} for row in x]},  # an object per instance
        {"signature_name": "serving_default", "instances": x.tolist()},
    ):
        response = rest_predict(rest, path, body)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert list(response.json()) == ["predictions"] and len(predictions) == 3
        for name in ("rul", "fail_prob"):
            np.testing.assert_allclose([p[name] for p in predictions], expected[name], rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "spec"),
    [("", {}), ("/versions/2", {"version": 2}), ("/labels/challenger", {"label": "challenger"})],
    ids=["champion", "version", "label"],
)
def test_columnar_format_answers_outputs_like_grpc(rest, prediction_service, path, spec):
    """Columnar format: `{"inputs": <object>|<(nested)list>}`; with several named outputs
    the answer is `{"outputs": <object>}` of named output tensors."""
    x = windows(2, seed=6)
    expected = grpc_predict(prediction_service, x, **spec)
    for body in ({"inputs": {"window": x.tolist()}}, {"inputs": x.tolist(), "signature_name": ""}):
        response = rest_predict(rest, path, body)
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        assert list(response.json()) == ["outputs"] and set(outputs) == {"rul", "fail_prob"}
        for name in ("rul", "fail_prob"):
            np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("", {"instances": [[[0.0] * FEATURES] * WINDOW]}, 200, None),
        (
            "",
            {"signature_name": "classify", "instances": [[[0.0] * FEATURES] * WINDOW]},
            400,
            "signature name",
        ),
        ("", {"instances": [], "inputs": []}, 400, "exactly one of"),
        ("", {"inputs": {"sensor": [[0.0]]}}, 400, "unknown input"),
        ("/versions/99", {"instances": [[[0.0] * FEATURES] * WINDOW]}, 404, "version 99"),
        ("/labels/stable", {"instances": [[[0.0] * FEATURES] * WINDOW]}, 404, "stable"),
    ],
    ids=[
        "valid",
        "unknown signature",
        "both formats",
        "unknown input",
        "unknown version",
        "unknown label",
    ],
)
def test_predict_errors_are_the_documented_error_body(rest, path, body, status, message):
    response = rest_predict(rest, path, body)
    assert response.status_code == status, response.text
    if message is not None:
        assert list(response.json()) == ["error"] and message in response.json()["error"]


def test_grpc_predict_errors_have_tf_serving_codes(prediction_service):
    x = windows(1, seed=7)
    with pytest.raises(grpc.RpcError) as unknown_label:
        grpc_predict(prediction_service, x, label="stable")
    assert unknown_label.value.code() == grpc.StatusCode.NOT_FOUND
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify"
    request.inputs["window"].CopyFrom(tf.make_tensor_proto(x))
    assert rpc_error(prediction_service.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT

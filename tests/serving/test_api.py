"""The serving API over real HTTP (uvicorn) and gRPC, on a tiny real lake and SavedModel."""

from __future__ import annotations

import json
import re

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from serving_support import (
    FEATURES,
    KEYS,
    MODEL,
    WINDOW,
    RunningServer,
    at,
    free_port,
    key_settings,
    lake_settings,
    seed_lake,
    tiny_registry,
)
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving_layer.app import create_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    settings = lake_settings(
        tmp,
        api_keys=key_settings(),
        grpc_port=free_port(),
        shadow_share=1.0,
        serving_refresh_s=0.2,
        serving_model=MODEL,
    )
    seed_lake(settings)
    registry = tiny_registry(settings.registry)
    app = create_app(settings, registry=registry, grpc=True, shadow_seed=1)
    server = RunningServer(app, free_port()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client, app, settings, registry
    finally:
        server.stop()


def get(client, path, role="reader", **params):
    return client.get(path, params=params, headers={"X-API-Key": KEYS[role]})


def windows(n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, WINDOW, FEATURES)).astype(np.float32)


def in_process(settings, version, x):
    loaded = tf.saved_model.load(str(settings.registry / MODEL / str(version)))
    outputs = loaded.signatures["serving_default"](window=tf.constant(x))
    return {k: v.numpy() for k, v in outputs.items()}


def test_health_and_readiness(served):
    client, *_ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_machine_is_merged_with_truth(served):
    client, *_ = served
    body = get(client, "/v1/machines/m3").json()
    assert (body["source"], body["last_cycle"], body["readings_count"]) == ("speed", 12, 12)
    assert body["as_of"]["boundary"]["run_id"] == "run-1"
    test_machine = get(client, "/v1/machines/FD001-test-0001").json()
    assert test_machine["alert_level"] == "red" and test_machine["true_rul"] == 112
    assert test_machine["sensors_cycle"] == 31 and "sensor_2" in test_machine["sensors"]


def test_fleet_history_alerts_summary(served):
    client, *_ = served
    fleet = get(client, "/v1/machines", sort="-rul", limit=2).json()
    assert [m["machine_id"] for m in fleet["machines"]] == ["m2", "m3"]
    rest = get(client, "/v1/machines", sort="-rul", limit=2, cursor=fleet["next_cursor"]).json()
    assert [m["machine_id"] for m in rest["machines"]] == ["FD001-test-0001"]
    assert rest["next_cursor"] is None
    red = get(client, "/v1/machines", alert_level="red").json()["machines"]
    assert [m["machine_id"] for m in red] == ["FD001-test-0001"]
    history = get(
        client, "/v1/machines/m2/history", **{"from": at(2).isoformat(), "to": at(4).isoformat()}
    ).json()
    assert [r["cycle"] for r in history["readings"]] == [2, 3, 4]
    assert len(get(client, "/v1/alerts", since=at(30).isoformat()).json()["alerts"]) == 1
    assert get(client, "/v1/alerts", since=at(32).isoformat()).json()["alerts"] == []
    summary = get(client, "/v1/fleet/summary").json()
    assert summary["machines"] == 3 and summary["readings"] == 31 + 40 + 12


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/v1/machines/nope", {}, 404, "unknown machine 'nope'"),
        ("/v1/machines/nope/history", {}, 404, "unknown machine 'nope'"),
        ("/v1/machines", {"min_rul": 50, "max_rul": 10}, 422, "must not exceed"),
        ("/v1/machines", {"limit": 0}, 422, "limit"),
        ("/v1/machines", {"alert_level": "purple"}, 422, "alert_level"),
        ("/v1/machines", {"sort": "colour"}, 422, "sort"),
        ("/v1/machines", {"cursor": "garbage"}, 422, "invalid cursor"),
        ("/v1/machines", {"min_rul": "nan"}, 422, "min_rul"),
        (
            "/v1/machines/m2/history",
            {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            422,
            "must not be after",
        ),
        ("/v1/machines/m2/history", {"from": "yesterday"}, 422, "from"),
        ("/v1/alerts", {"since": "2026-01-01T00:00:00"}, 422, "timezone"),
        ("/v1/models/unknown", {}, 404, "Could not find any versions of model unknown"),
    ],
)
def test_bad_parameters_give_clear_json_errors(served, path, params, status, message):
    client, *_ = served
    response = get(client, path, **params)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_rest_predict_row_and_columnar_equal_in_process(served):
    client, _, settings, _ = served
    x = windows()
    expected = in_process(settings, 1, x)
    headers = {"X-API-Key": KEYS["operator"]}
    rows = client.post(
        f"/v1/models/{MODEL}:predict", headers=headers, json={"instances": x.tolist()}
    ).json()["predictions"]
    columns = client.post(
        f"/v1/models/{MODEL}:predict", headers=headers, json={"inputs": {"window": x.tolist()}}
    ).json()["outputs"]
    for name in ("rul", "fail_prob"):
        np.testing.assert_allclose([r[name] for r in rows], expected[name], atol=1e-5)
        np.testing.assert_allclose(columns[name], expected[name], atol=1e-5)
    v2 = client.post(
        f"/v1/models/{MODEL}/versions/2:predict",
        headers=headers,
        json={"instances": [{"window": row} for row in x.tolist()]},
    )
    np.testing.assert_allclose(
        [r["rul"] for r in v2.json()["predictions"]], in_process(settings, 2, x)["rul"], atol=1e-5
    )
    label = client.post(
        f"/v1/models/{MODEL}/labels/challenger:predict",
        headers=headers,
        json={"inputs": x.tolist()},
    )
    np.testing.assert_allclose(
        label.json()["outputs"]["rul"], in_process(settings, 2, x)["rul"], atol=1e-5
    )


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "exactly one of 'instances' or 'inputs'"),
        ({"instances": [], "inputs": []}, 400, "exactly one of"),
        ({"instances": []}, 400, "non-empty"),
        ({"instances": [[[1.0, 2.0]]]}, 400, "does not match the signature"),
        ({"inputs": {"wrong": [[[0.0] * 3] * 4]}}, 400, "unknown input"),
        ({"instances": [[["a", "b", "c"]] * 4]}, 400, "array of float32"),
        ({"instances": [[[0.0] * 3] * 4], "signature_name": "other"}, 400, "signature name"),
        ("not json", 400, "not valid JSON"),
        ({"instances": [[[0.0] * 3] * 4], "machines": [None, None]}, 400, "one entry per row"),
        (
            {"inputs": [[[0.0] * 3] * 4], "machines": [{"machine_id": 7, "cycle": 1}]},
            400,
            "'machines'[0] must be null or an object",
        ),
        (
            {"inputs": [[[0.0] * 3] * 4], "machines": [{"machine_id": "m", "cycle": -1}]},
            400,
            "integer 'cycle' >= 0",
        ),
    ],
)
def test_bad_predict_requests_get_tf_serving_errors(served, body, status, message):
    client, *_ = served
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post(
        f"/v1/models/{MODEL}:predict", content=content, headers={"X-API-Key": KEYS["operator"]}
    )
    assert response.status_code == status
    assert list(response.json()) == ["error"] and message in response.json()["error"]
    missing = client.post(
        "/v1/models/nope:predict",
        json={"instances": [[[0.0] * 3] * 4]},
        headers={"X-API-Key": KEYS["operator"]},
    )
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_grpc_predict_and_metadata_equal_in_process(served):
    _, _, settings, _ = served
    x = windows(5, seed=3)
    with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["window"].CopyFrom(tf.make_tensor_proto(x))
        response = stub.Predict(request, timeout=30)
        assert response.model_spec.version.value == 1
        expected = in_process(settings, 1, x)
        for name in ("rul", "fail_prob"):
            np.testing.assert_allclose(
                tf.make_ndarray(response.outputs[name]), expected[name], atol=1e-5
            )
        request.model_spec.version.value = 2
        response = stub.Predict(request, timeout=30)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["rul"]), in_process(settings, 2, x)["rul"], atol=1e-5
        )

        meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        meta.model_spec.name = MODEL
        signatures = get_model_metadata_pb2.SignatureDefMap()
        stub.GetModelMetadata(meta, timeout=30).metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        assert set(signature.inputs) == {"window"}
        assert set(signature.outputs) == {"rul", "fail_prob"}
        assert [d.size for d in signature.inputs["window"].tensor_shape.dim] == [-1, 4, 3]

        unknown = predict_pb2.PredictRequest()
        unknown.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(unknown, timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_keras_lstm_over_rest_and_grpc_equals_in_process_keras(served):
    """The project's LSTM (random weights) exported like training exports it: REST rows,
    REST columns and gRPC answers equal the in-process Keras model to 1e-5."""
    from models.config import TrainConfig
    from models.network import build_model, export_saved_model
    from models.network import predict as keras_predict

    client, app, settings, registry = served
    window, features = 6, 3
    model = build_model(window, features, TrainConfig(lstm_units=(8,), dense_units=4))
    version = registry.register(
        "rul_keras", lambda d: export_saved_model(model, d, window, features), {"metrics": {}}
    )
    registry.promote("rul_keras", version)
    app.state.refresh_models()
    x = np.random.default_rng(13).normal(size=(5, window, features)).astype(np.float32)
    expected = keras_predict(model, x)
    headers = {"X-API-Key": KEYS["operator"]}
    rows = client.post(
        "/v1/models/rul_keras:predict", headers=headers, json={"instances": x.tolist()}
    ).json()["predictions"]
    columns = client.post(
        "/v1/models/rul_keras:predict", headers=headers, json={"inputs": {"window": x.tolist()}}
    ).json()["outputs"]
    with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "rul_keras"
        request.inputs["window"].CopyFrom(tf.make_tensor_proto(x))
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    for name in ("rul", "fail_prob"):
        np.testing.assert_allclose([r[name] for r in rows], expected[name], atol=1e-5)
        np.testing.assert_allclose(columns[name], expected[name], atol=1e-5)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs[name]), expected[name], atol=1e-5
        )


def test_shadow_scoring_reports_disagreement(served):
    client, app, *_ = served
    x = windows(4, seed=7)
    client.post(
        f"/v1/models/{MODEL}:predict",
        headers={"X-API-Key": KEYS["operator"]},
        json={"instances": x.tolist()},
    )
    app.state.models.wait_for_shadow()
    info = get(client, f"/v1/models/{MODEL}").json()
    # FD001-test-0001 is served with RUL 10 by model "1"; its true RUL at cycle 31 is 112
    assert info["live_error_vs_truth"]["1"] == {
        "machines": 1,
        "rmse": 102.0,
        "mae": 102.0,
        "bias": -102.0,
    }
    shadow = info["shadow"]
    assert shadow["challenger_version"] == 2 and shadow["shadow_rows"] >= 4
    assert shadow["mean_abs_disagreement"]["rul"] > 0
    metrics = get(client, "/metrics").text
    assert "prognos_shadow_abs_disagreement_count" in metrics
    assert "prognos_snapshot_build_seconds_count" in metrics
    assert 'prognos_snapshot_table_version{table="machine_state"}' in metrics


def test_shadow_scoring_compares_both_models_with_the_truth(served):
    client, app, settings, _ = served
    x = windows(4, seed=5)
    # FD001 test unit 1 ends at cycle 31 with true RUL 112: at cycle 20 it is 123;
    # m2 is no replayed test machine (no truth) and the third row names no machine
    machines = [
        {"machine_id": "FD001-test-0001", "cycle": 31},
        {"machine_id": "FD001-test-0001", "cycle": 20},
        None,
        {"machine_id": "m2", "cycle": 5},
    ]
    response = client.post(
        f"/v1/models/{MODEL}:predict",
        headers={"X-API-Key": KEYS["operator"]},
        json={"instances": x.tolist(), "machines": machines},
    )
    assert response.status_code == 200, response.text
    # the same over gRPC: one more row, named in the call metadata
    with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["window"].CopyFrom(tf.make_tensor_proto(x[2:3]))
        named = [("prognos-machines", json.dumps([{"machine_id": "FD001-test-0001", "cycle": 1}]))]
        stub.Predict(request, timeout=30, metadata=named)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Predict(request, timeout=30, metadata=[("prognos-machines", "[1, 2]")])
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one entry per row" in bad.value.details()
    app.state.models.wait_for_shadow()
    # FD001 test unit 1 at cycle 1: true RUL 112 + 30
    rows, truth = np.concatenate([x[:2], x[2:3]]), np.array([112.0, 123.0, 142.0])
    shadow = get(client, f"/v1/models/{MODEL}").json()["shadow"]
    assert (shadow["champion_version"], shadow["challenger_version"]) == (1, 2)
    for role, version in (("champion", 1), ("challenger", 2)):
        errors = in_process(settings, version, rows)["rul"].astype(float) - truth
        found = shadow["error_vs_truth"][role]
        assert found["rows"] == 3
        np.testing.assert_allclose(found["mae"], np.abs(errors).mean(), rtol=1e-5)
        np.testing.assert_allclose(found["rmse"], np.sqrt((errors**2).mean()), rtol=1e-5)
        np.testing.assert_allclose(found["bias"], errors.mean(), rtol=1e-5)
    metrics = get(client, "/metrics").text
    for role in ("champion", "challenger"):
        labels = f'model="{MODEL}",role="{role}"'
        assert f"prognos_shadow_abs_error_vs_truth_count{{{labels}}} 3.0" in metrics
        assert f"prognos_shadow_rmse_vs_truth{{{labels}}}" in metrics
        assert f"prognos_shadow_bias_vs_truth{{{labels}}}" in metrics


def test_promote_rollback_audited_and_picked_up(served):
    client, _, settings, registry = served
    admin = {"X-API-Key": KEYS["admin"]}
    x = windows(2, seed=11)
    try:
        promoted = client.post(f"/v1/models/{MODEL}:promote", headers=admin, json={"version": 2})
        assert promoted.status_code == 200 and promoted.json()["champion"] == 2
        rul = client.post(
            f"/v1/models/{MODEL}:predict", headers=admin, json={"instances": x.tolist()}
        ).json()["predictions"]
        np.testing.assert_allclose(
            [r["rul"] for r in rul], in_process(settings, 2, x)["rul"], atol=1e-5
        )
        bad = client.post(f"/v1/models/{MODEL}:promote", headers=admin, json={"version": 99})
        assert bad.status_code == 404 and "no version 99" in bad.json()["error"]
        assert (
            client.post(
                f"/v1/models/{MODEL}:promote", headers=admin, json={"version": "x"}
            ).status_code
            == 422
        )
        back = client.post(f"/v1/models/{MODEL}:rollback", headers=admin)
        assert back.status_code == 200 and back.json()["champion"] == 1
    finally:
        if registry.champion(MODEL) != 1:
            registry.promote(MODEL, 1)
    lines = [json.loads(line) for line in settings.audit_log.read_text().splitlines()]
    assert [(e["action"], e["outcome"], e["principal"]) for e in lines[-3:]] == [
        ("promote", "done", "admin-user"),
        ("promote", "refused", "admin-user"),
        ("rollback", "done", "admin-user"),
    ]


def test_registry_watcher_picks_up_a_new_champion(served):
    client, app, _, registry = served
    registry.promote(MODEL, 2)  # behind the server's back, like `prognos models promote`
    try:
        import time

        deadline = time.monotonic() + 30
        while app.state.models.resolve(MODEL).version != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(client, f"/v1/models/{MODEL}").json()["loaded"]["champion"] == 2
    finally:
        registry.rollback(MODEL)
        app.state.models.refresh()


ROLE_ORDER = ("reader", "operator", "admin")
# (method, path, body, least role); bodies are valid so an admitted call succeeds
ROUTES = [
    ("GET", "/v1/machines/m2", None, "reader"),
    ("GET", "/v1/machines", None, "reader"),
    ("GET", "/v1/machines/m2/history", None, "reader"),
    ("GET", "/v1/alerts", None, "reader"),
    ("GET", "/v1/fleet/summary", None, "reader"),
    ("GET", "/v1/models", None, "reader"),
    ("GET", f"/v1/models/{MODEL}", None, "reader"),
    ("GET", "/metrics", None, "reader"),
    ("GET", f"/v1/models/{MODEL}/metadata", None, "reader"),
    ("GET", f"/v1/models/{MODEL}/versions/2/metadata", None, "reader"),
    ("GET", f"/v1/models/{MODEL}/versions/2", None, "reader"),
    ("GET", f"/v1/models/{MODEL}/labels/champion", None, "reader"),
    ("GET", f"/v1/models/{MODEL}/labels/champion/metadata", None, "reader"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [[[0.0] * 3] * 4]}, "operator"),
    ("POST", f"/v1/models/{MODEL}/versions/1:predict", {"inputs": [[[0.0] * 3] * 4]}, "operator"),
    (
        "POST",
        f"/v1/models/{MODEL}/labels/champion:predict",
        {"inputs": [[[0.0] * 3] * 4]},
        "operator",
    ),
    ("POST", f"/v1/models/{MODEL}:promote", {"version": 1}, "admin"),
    ("POST", f"/v1/models/{MODEL}:rollback", None, "admin"),
]
CALLERS = ("none", "bad", *ROLE_ORDER)


def expected_status(caller: str, least: str) -> int:
    if caller in ("none", "bad"):
        return 401
    return 200 if ROLE_ORDER.index(caller) >= ROLE_ORDER.index(least) else 403


@pytest.mark.parametrize(
    ("method", "path", "body", "least"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
def test_auth_matrix(served, method, path, body, least):
    client, _, _, registry = served
    for caller in CALLERS:
        if path.endswith(":rollback") and caller == "admin":
            registry.promote(MODEL, 2)  # so that there is a champion to roll back from
        headers = (
            {}
            if caller == "none"
            else {"X-API-Key": "wrong-key" if caller == "bad" else KEYS[caller]}
        )
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == expected_status(caller, least), (caller, response.text)
        if response.status_code in (401, 403):
            error = response.json()["error"]
            assert error in (
                "missing API key",
                "invalid API key",
                f"this action needs the {least} role",
            ), error
    assert registry.champion(MODEL) == 1


OPEN_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/dashboard"),
    ("GET", "/"),
}


def route_template(path: str) -> str:
    """The route template a concrete path of ROUTES calls."""
    for concrete, template in (
        (f"/{MODEL}", "/{name}"),
        ("/m2", "/{machine_id}"),
        ("/versions/1", "/versions/{version}"),
        ("/versions/2", "/versions/{version}"),
        ("/labels/champion", "/labels/{label}"),
    ):
        path = path.replace(concrete, template)
    return path


def test_the_auth_matrix_covers_every_route(served):
    _, app, *_ = served
    served_routes = {
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    in_matrix = {(method, route_template(path)) for method, path, _, _ in ROUTES}
    assert served_routes - OPEN_ROUTES == in_matrix


def test_bearer_header_and_open_routes(served):
    client, *_ = served
    bearer = {"Authorization": f"Bearer {KEYS['reader']}"}
    assert client.get("/v1/fleet/summary", headers=bearer).status_code == 200
    for path in ("/healthz", "/readyz", "/openapi.json", "/dashboard", "/docs"):
        assert client.get(path).status_code == 200, path


def test_pages_load_nothing_from_another_host(served):
    client, *_ = served
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN pages are off
    assert client.get("/docs/oauth2-redirect").status_code == 404
    for path in ("/docs", "/dashboard"):
        html = client.get(path).text
        external = re.findall(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", html)
        assert external == [], path
        assert "cdn" not in html.lower(), path


def test_rest_metadata_has_the_signature(served):
    client, *_ = served
    body = get(client, f"/v1/models/{MODEL}/versions/2/metadata").json()
    assert body["model_spec"]["version"] == "2"
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"window"} and set(signature["outputs"]) == {
        "rul",
        "fail_prob",
    }
    assert get(client, "/v1/models/nope/metadata").status_code == 404


def test_grpc_port_taken_is_a_clear_error(served):
    import socket

    from prognos.core.errors import PrognosError
    from serving_layer.grpc_service import start_grpc_server

    _, app, settings, _ = served
    with pytest.raises(PrognosError, match=r"gRPC port .* is taken"):
        start_grpc_server(app.state.models, settings.grpc_port)  # the served app holds it
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(PrognosError, match="is taken"):
            start_grpc_server(app.state.models, holder.getsockname()[1])

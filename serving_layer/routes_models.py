"""Model routes: registry views (reader), TF Serving-compatible predict (operator),
promote/rollback (admin, audited).

The TF Serving routes follow its REST API (tensorflow.org/tfx/serving/api_rest): model
status at /v1/models/{name}[/versions/{v}|/labels/{label}], metadata under the same paths
plus /metadata, and predict at the same paths plus :predict. Labels are the registry's
aliases, champion and challenger. GET /v1/models/{name} adds prognos' registry view
(versions, aliases, shadow comparison) beside TF Serving's `model_version_status`.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from serving_layer.auth import Principal, require
from serving_layer.errors import clean, respond
from serving_layer.predict_format import (
    PredictRequestError,
    format_predict_response,
    parse_machines,
    parse_predict_request,
)
from serving_layer.truth import live_errors

router = APIRouter(prefix="/v1/models", tags=["models"])
Reader = Annotated[Principal, Depends(require("reader"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "TF Serving predict request: exactly one of instances / "
                    "inputs. Optional `machines` (prognos): per row {machine_id, cycle} or "
                    "null, so shadow scoring compares champion and challenger with the true RUL.",
                    "properties": {
                        "signature_name": {"type": "string"},
                        "instances": {"type": "array", "items": {}},
                        "inputs": {},
                        "machines": {
                            "type": "array",
                            "items": {
                                "type": ["object", "null"],
                                "properties": {
                                    "machine_id": {"type": "string"},
                                    "cycle": {"type": "integer", "minimum": 0},
                                },
                            },
                        },
                    },
                }
            }
        },
    }
}


class PromoteRequest(BaseModel):
    version: int = Field(ge=1, description="Registry version to make the champion.")


@router.get("", summary="Models in the registry with their champion and challenger")
def list_models(request: Request, _: Reader):
    return respond({"models": request.app.state.models.models()})


@router.get("/{name}", summary="Versions, aliases, metrics and shadow comparison of a model")
def get_model(name: str, request: Request, _: Reader):
    """`shadow`: champion vs challenger on shadow-scored predict traffic (disagreement, and
    error vs the true RUL where requests named machine and cycle); `live_error_vs_truth`:
    per version, the error of the RUL the merged views serve (the scoring model only)."""
    state = request.app.state
    info = state.models.describe(name)
    served = state.snapshots.current.machines if name == state.settings.serving_model else {}
    info["live_error_vs_truth"] = live_errors(served, state.truth)
    return respond(info)


@router.get(
    "/{name}/versions/{version}", summary="Status of one version (TF Serving REST model status)"
)
def get_version_status(name: str, version: int, request: Request, _: Reader):
    return respond(_status(request, name, version=version))


@router.get(
    "/{name}/labels/{label}",
    summary="Status of the version a label names: champion or challenger (TF Serving REST)",
)
def get_label_status(name: str, label: str, request: Request, _: Reader):
    return respond(_status(request, name, label=label))


def _status(request: Request, name: str, version=None, label=None) -> dict:
    statuses = request.app.state.models.version_status(name, version, label)
    return {"model_version_status": [status.to_dict() for status in statuses]}


@router.get("/{name}/metadata", summary="Signature of the champion (TF Serving REST metadata)")
def get_metadata(name: str, request: Request, _: Reader):
    return respond(_metadata(request.app.state.models.resolve(name)))


@router.get(
    "/{name}/versions/{version}/metadata",
    summary="Signature of one version (TF Serving REST metadata)",
)
def get_version_metadata(name: str, version: int, request: Request, _: Reader):
    return respond(_metadata(request.app.state.models.resolve(name, version)))


@router.get(
    "/{name}/labels/{label}/metadata",
    summary="Signature of the version a label names (TF Serving REST metadata)",
)
def get_label_metadata(name: str, label: str, request: Request, _: Reader):
    return respond(_metadata(request.app.state.models.resolve(name, label=label)))


def _metadata(servable) -> dict:
    """TF Serving's JSON of GetModelMetadataResponse: the SignatureDefMap unpacked from its
    Any, proto field names kept and default values printed (http_rest_api_util.cc)."""
    from google.protobuf import json_format

    from serving_layer.grpc_service import signature_def

    signature = json_format.MessageToDict(
        signature_def(servable),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return {
        "model_spec": {
            "name": servable.name,
            "signature_name": "",
            "version": str(servable.version),
        },
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
    }


@router.post(
    "/{name}:predict",
    summary="Predict with the champion (TF Serving REST)",
    openapi_extra=PREDICT_BODY,
)
async def predict_champion(name: str, request: Request, _: Operator):
    return await _predict(request, name, None)


@router.post(
    "/{name}/versions/{version}:predict",
    summary="Predict with one version (TF Serving REST)",
    openapi_extra=PREDICT_BODY,
)
async def predict_version(name: str, version: int, request: Request, _: Operator):
    return await _predict(request, name, version)


@router.post(
    "/{name}/labels/{label}:predict",
    summary="Predict with a label: champion or challenger (TF Serving REST)",
    openapi_extra=PREDICT_BODY,
)
async def predict_label(name: str, label: str, request: Request, _: Operator):
    servable = request.app.state.models.resolve(name, label=label)
    return await _predict(request, name, servable.version)


async def _predict(request: Request, name: str, version: int | None):
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise PredictRequestError("the request body is not valid JSON") from None
    models = request.app.state.models
    servable = models.resolve(name, version)
    # like TF Serving, an absent or empty signature_name means the default signature
    signature_name = body.get("signature_name") if isinstance(body, dict) else None
    if signature_name not in (None, "", "serving_default"):
        raise PredictRequestError(f"serving signature name {signature_name!r} not found")
    inputs, row_format = parse_predict_request(body, servable.input_specs)
    machines = parse_machines(body, len(next(iter(inputs.values()))))
    outputs = await _run(models.predict, name, inputs, version, machines)
    return JSONResponse(clean(format_predict_response(outputs, row_format)))  # plain lists


async def _run(function, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


@router.post("/{name}:promote", summary="Make a version the champion (admin, audited)")
def promote(
    name: str,
    request: Request,
    body: Annotated[PromoteRequest, Body()],
    principal: Admin,
):
    return _admin_action(request, principal, "promote", name, body.version)


@router.post("/{name}:rollback", summary="Restore the previous champion (admin, audited)")
def rollback(name: str, request: Request, principal: Admin):
    return _admin_action(request, principal, "rollback", name, None)


def _admin_action(
    request: Request, principal: Principal, action: str, name: str, version: int | None
):
    registry, audit = request.app.state.registry, request.app.state.audit
    request.app.state.models.describe(name, brief=True)  # 404 for an unknown model
    try:
        if action == "promote":
            registry.promote(name, version)
        else:
            version = registry.rollback(name)
    except Exception as error:
        audit.record(principal, action, "refused", model=name, version=version, reason=str(error))
        raise
    audit.record(principal, action, "done", model=name, version=version)
    request.app.state.refresh_models()
    return respond({"model": name, "action": action, "champion": version})

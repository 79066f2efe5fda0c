"""TF Serving's gRPC API from tensorflow-serving-api's protos, over the same ModelServer as
the REST API, listening on 127.0.0.1 only: PredictionService (Predict, GetModelMetadata)
and ModelService (GetModelStatus). Classify, Regress, MultiInference and
HandleReloadConfigRequest answer UNIMPLEMENTED saying what to use instead.

A PrognosError raised by a call ends it with the error class's `grpc_code`
(prognos/core/errors.py holds the one table of codes) and its one-line message.

Like the REST "machines" key, a Predict call may name each row's machine and cycle in the
call metadata `prognos-machines` (a JSON list), so shadow scoring can use the truth.
"""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from prognos.core.errors import InvalidArgumentError, PrognosError, UnimplementedError
from serving_layer.errors import answers_errors
from serving_layer.models import Servable
from serving_layer.predict_format import PredictRequestError, parse_machines

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
MACHINES_METADATA = "prognos-machines"
PREDICT_ONLY = (
    "prognos models have one predict signature (serving_default, method "
    f"{PREDICT_METHOD}): call Predict"
)
RELOAD_INSTEAD = (
    "prognos serves the registry's champion and challenger and follows their changes: "
    "promote or roll back a version (POST /v1/models/{name}:promote, `prognos models "
    "promote`) instead of reloading a model config"
)
VERSION_STATE = get_model_status_pb2.ModelVersionStatus.State
ERROR_CODE = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models) -> None:
        self.models = models

    @answers_errors
    def Predict(self, request: predict_pb2.PredictRequest, context):
        servable = self._servable(request.model_spec, context)
        self._check_signature(request.model_spec.signature_name, context)
        specs = servable.input_specs
        unknown = sorted(set(request.inputs) - set(specs))
        missing = sorted(set(specs) - set(request.inputs))
        if unknown or missing:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"inputs must be exactly {sorted(specs)}; unknown {unknown}, missing {missing}",
            )
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        spec = request.model_spec
        # only a call naming neither version nor label goes to the champion (and shadow)
        named = spec.HasField("version") or bool(spec.version_label)
        version = servable.version if named else None
        machines = _machines(context, len(next(iter(inputs.values()))))
        try:
            outputs = self.models.predict(servable.name, inputs, version, machines)
        except (ValueError, tf.errors.InvalidArgumentError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error).splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(_spec(servable))
        wanted = set(request.output_filter) or set(outputs)
        for name in sorted(wanted & set(outputs)):
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    @answers_errors
    def GetModelMetadata(self, request, context):
        servable = self._servable(request.model_spec, context)
        fields = set(request.metadata_field)
        if fields != {"signature_def"}:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "metadata_field must be exactly ['signature_def']"
            )
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[SIGNATURE].CopyFrom(signature_def(servable))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(_spec(servable))
        response.metadata["signature_def"].Pack(signatures)
        return response

    @answers_errors
    def Classify(self, request, context):
        raise UnimplementedError(f"Classify is not supported: {PREDICT_ONLY}")

    @answers_errors
    def Regress(self, request, context):
        raise UnimplementedError(f"Regress is not supported: {PREDICT_ONLY}")

    @answers_errors
    def MultiInference(self, request, context):
        raise UnimplementedError(f"MultiInference is not supported: {PREDICT_ONLY}")

    def _servable(self, spec, context) -> Servable:
        version = spec.version.value if spec.HasField("version") else None
        return self.models.resolve(spec.name, version, spec.version_label or None)

    def _check_signature(self, name: str, context) -> None:
        if name not in ("", SIGNATURE):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"serving signature name {name!r} not found"
            )


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models) -> None:
        self.models = models

    @answers_errors
    def GetModelStatus(self, request, context):
        return model_status_response(self.models, request)

    @answers_errors
    def HandleReloadConfigRequest(self, request, context):
        raise UnimplementedError(f"HandleReloadConfigRequest is not supported: {RELOAD_INSTEAD}")


def model_status_response(models, request) -> get_model_status_pb2.GetModelStatusResponse:
    """TF Serving's GetModelStatus: all versions, or the one the spec's version or label names."""
    if not request.HasField("model_spec"):
        raise InvalidArgumentError("Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in models.version_status(spec.name, version, spec.version_label or None):
        entry = response.model_version_status.add(
            version=status.version, state=VERSION_STATE.Value(status.state)
        )
        entry.status.SetInParent()  # TF Serving always sends the status, even when OK
        entry.status.error_code = ERROR_CODE.values_by_name[status.error_code].number
        entry.status.error_message = status.error_message
    return response


def _machines(context, rows: int):
    """The rows' (machine id, cycle) from the call metadata, or None when not given."""
    for key, value in context.invocation_metadata() or ():
        if key != MACHINES_METADATA:
            continue
        try:
            return parse_machines({"machines": json.loads(value)}, rows)
        except (ValueError, PredictRequestError) as error:
            message = str(error) if isinstance(error, PredictRequestError) else "not JSON"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{MACHINES_METADATA}: {message}")
    return None


def _spec(servable: Servable):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=servable.name, signature_name=SIGNATURE)
    spec.version.value = servable.version
    return spec


def signature_def(servable: Servable) -> meta_graph_pb2.SignatureDef:
    definition = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for side, specs in (("inputs", servable.input_specs), ("outputs", servable.output_specs)):
        for name, spec in specs.items():
            info = getattr(definition, side)[name]
            info.name = f"{side[:-1]}_{name}:0"
            info.dtype = spec.dtype.as_datatype_enum
            info.tensor_shape.CopyFrom(spec.shape.as_proto())
    return definition


def start_grpc_server(models, port: int, workers: int = 4) -> grpc.Server:
    # no SO_REUSEPORT: a second server on a taken port must fail, not share it
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)]
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(models), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(models), server)
    try:
        server.add_insecure_port(f"127.0.0.1:{port}")
    except RuntimeError:
        raise PrognosError(f"gRPC port 127.0.0.1:{port} is taken (set PROGNOS_GRPC_PORT)") from None
    server.start()
    return server

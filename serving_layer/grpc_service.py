"""gRPC PredictionService (Predict, GetModelMetadata) from tensorflow-serving-api's protos,
over the same ModelServer as the REST API, listening on 127.0.0.1 only.

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
    predict_pb2,
    prediction_service_pb2_grpc,
)

from prognos.core.errors import PrognosError
from serving_layer.models import ModelNotFoundError, Servable
from serving_layer.predict_format import PredictRequestError, parse_machines

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
MACHINES_METADATA = "prognos-machines"


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models) -> None:
        self.models = models

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
        version = servable.version if request.model_spec.HasField("version") else None
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

    def _servable(self, spec, context) -> Servable:
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label or None
        try:
            return self.models.resolve(spec.name, version, label)
        except ModelNotFoundError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))

    def _check_signature(self, name: str, context) -> None:
        if name not in ("", SIGNATURE):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"serving signature name {name!r} not found"
            )


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
    try:
        server.add_insecure_port(f"127.0.0.1:{port}")
    except RuntimeError:
        raise PrognosError(f"gRPC port 127.0.0.1:{port} is taken (set PROGNOS_GRPC_PORT)") from None
    server.start()
    return server

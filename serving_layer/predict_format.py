"""TensorFlow Serving's REST predict format: row ("instances") and columnar ("inputs").

Mirrors https://www.tensorflow.org/tfx/serving/api_rest: a request holds exactly one of
"instances" (a list of rows; each a value, or an object of named inputs) and "inputs"
(a value, or an object of named inputs, batched along the first axis). Row requests are
answered with "predictions", columnar ones with "outputs"; errors as {"error": "..."}.

prognos adds one optional top-level key, which TF Serving itself ignores: "machines", one
entry per row, `{"machine_id": "FD001-test-0007", "cycle": 31}` or null, naming what the
row was built from, so that shadow scoring can compare both models with the true RUL.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from prognos.core.errors import InvalidArgumentError


class PredictRequestError(InvalidArgumentError, ValueError):
    """The request body does not fit the predict format or the model's signature."""


def parse_predict_request(body, input_specs: Mapping) -> tuple[dict[str, np.ndarray], bool]:
    """Named input arrays and whether the request was row format."""
    if not isinstance(body, dict):
        raise PredictRequestError("the request body must be a JSON object")
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise PredictRequestError("JSON object must hold exactly one of 'instances' or 'inputs'")
    names = list(input_specs)
    raw = _from_rows(body["instances"], names) if has_rows else _from_columns(body["inputs"], names)
    return {
        name: _to_array(name, value, input_specs[name]) for name, value in raw.items()
    }, has_rows


def _from_rows(instances, names: list[str]) -> dict:
    if not isinstance(instances, list) or not instances:
        raise PredictRequestError("'instances' must be a non-empty list")
    if all(isinstance(row, dict) for row in instances):
        _check_names(set().union(*instances), names)
        missing = [n for n in names if any(n not in row for row in instances)]
        if missing:
            raise PredictRequestError(f"every instance must have input(s) {missing}")
        return {name: [row[name] for row in instances] for name in names}
    if len(names) != 1:
        raise PredictRequestError(f"the model has inputs {names}: give each instance as an object")
    return {names[0]: instances}


def _from_columns(inputs, names: list[str]) -> dict:
    if isinstance(inputs, dict):
        _check_names(set(inputs), names)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise PredictRequestError(f"missing input(s) {missing}")
        return {name: inputs[name] for name in names}
    if len(names) != 1:
        raise PredictRequestError(f"the model has inputs {names}: give 'inputs' as an object")
    return {names[0]: inputs}


def _check_names(given: set, names: list[str]) -> None:
    unknown = sorted(given - set(names))
    if unknown:
        raise PredictRequestError(f"unknown input(s) {unknown}; the signature has {names}")


def _to_array(name: str, value, spec) -> np.ndarray:
    dtype = spec.dtype.as_numpy_dtype
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError):
        raise PredictRequestError(
            f"input {name!r}: expected a (rectangular) array of {spec.dtype.name}"
        ) from None
    expected = spec.shape.as_list() if spec.shape.rank is not None else None
    if expected is not None and (
        array.ndim != len(expected)
        or any(e is not None and e != a for e, a in zip(expected, array.shape, strict=True))
    ):
        shape = ["?" if d is None else d for d in expected]
        raise PredictRequestError(
            f"input {name!r}: shape {list(array.shape)} does not match the signature {shape}"
        )
    return array


def parse_machines(body: dict, rows: int) -> list[tuple[str, int] | None] | None:
    """The optional "machines" of a predict request: (machine id, cycle) or None per row."""
    machines = body.get("machines")
    if machines is None:
        return None
    if not isinstance(machines, list) or len(machines) != rows:
        raise PredictRequestError(f"'machines' must be a list with one entry per row ({rows})")
    return [_machine_ref(index, item) for index, item in enumerate(machines)]


def _machine_ref(index: int, item) -> tuple[str, int] | None:
    if item is None:
        return None
    machine_id = item.get("machine_id") if isinstance(item, dict) else None
    cycle = item.get("cycle") if isinstance(item, dict) else None
    if (
        not isinstance(machine_id, str)
        or isinstance(cycle, bool)
        or not isinstance(cycle, int)
        or cycle < 0
    ):
        raise PredictRequestError(
            f"'machines'[{index}] must be null or an object with a string 'machine_id' "
            "and an integer 'cycle' >= 0"
        )
    return machine_id, cycle


def format_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict:
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return {"outputs": outputs[names[0]].tolist()}
        return {"outputs": {name: outputs[name].tolist() for name in names}}
    if len(names) == 1:
        return {"predictions": outputs[names[0]].tolist()}
    rows = len(next(iter(outputs.values())))
    return {"predictions": [{n: outputs[n][i].tolist() for n in names} for i in range(rows)]}

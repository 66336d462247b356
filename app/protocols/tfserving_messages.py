"""TF Serving's REST request and response bodies for an image classifier. Pure code: no I/O,
no Flask.

Binary values travel as ``{"b64": "<base64>"}`` (TF Serving's convention). ``:predict`` takes
rows (``"instances"``: each ``{"b64": ...}`` or ``{"<input>": {"b64": ...}}``) or columns
(``"inputs"``: a list of those, or ``{"<input>": [...]}``) and answers
``{"predictions": [[p0, p1, ...], ...]}`` (rows) or ``{"outputs": [[...], ...]}`` (columns),
every class's probability by index. ``:classify`` takes ``"examples"`` (each
``{"image": {"b64": ...}}``, with optional shared ``"context"`` features) and answers
``{"result": [[["label", score], ...], ...]}``, highest score first.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

import pybase64

INPUT_NAME = "image"
SIGNATURE = "serving_default"
B64 = "b64"


class TFServingRequestError(ValueError):
    """The body does not fit the API or the model; the message says why (a 400)."""


@dataclass(frozen=True)
class PredictBody:
    images: list[bytes]
    columns: bool
    """True for the columnar form (``"inputs"``): answered as ``"outputs"``."""


def parse_predict(body: Any) -> PredictBody:
    """The images of a ``:predict`` body."""
    if not isinstance(body, dict):
        raise TFServingRequestError("the request must be a JSON object")
    _check_signature(body)
    if ("instances" in body) == ("inputs" in body):
        raise TFServingRequestError(
            "the request needs exactly one of 'instances' (rows) or 'inputs' (columns)"
        )
    if "instances" in body:
        return PredictBody(_rows(body["instances"], "instances"), columns=False)
    inputs = body["inputs"]
    if isinstance(inputs, dict) and B64 not in inputs:
        inputs = _named(inputs, "inputs")
    if isinstance(inputs, dict):  # one {"b64": ...}: a batch of one
        return PredictBody([_binary(inputs, "inputs")], columns=True)
    return PredictBody(_rows(inputs, "inputs"), columns=True)


def parse_classify(body: Any) -> list[bytes]:
    """The images of a ``:classify`` body: each example's ``image`` feature (or its context's)."""
    if not isinstance(body, dict):
        raise TFServingRequestError("the request must be a JSON object")
    _check_signature(body)
    examples = body.get("examples")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise TFServingRequestError("'context' must be an object of features")
    if not isinstance(examples, list) or not examples:
        raise TFServingRequestError(
            "'examples' must be a non-empty list of objects, each with the feature "
            f'\'{INPUT_NAME}\': {{"{B64}": "<base64>"}}'
        )
    images = []
    for i, example in enumerate(examples):
        where = f"examples[{i}]"
        if not isinstance(example, dict):
            raise TFServingRequestError(f"'{where}' must be an object of features")
        features = context | example
        if INPUT_NAME not in features:
            raise TFServingRequestError(f"'{where}' has no feature '{INPUT_NAME}'")
        images.append(_binary(features[INPUT_NAME], f"{where}.{INPUT_NAME}"))
    return images


def _check_signature(body: dict[str, Any]) -> None:
    name = body.get("signature_name", SIGNATURE)
    if name not in ("", SIGNATURE):
        raise TFServingRequestError(
            f"unknown signature_name {name!r}: this model has one, '{SIGNATURE}'"
        )


def _rows(items: Any, where: str) -> list[bytes]:
    if not isinstance(items, list) or not items:
        raise TFServingRequestError(
            f'\'{where}\' must be a non-empty list, each item {{"{B64}": "<base64>"}} or '
            f'{{"{INPUT_NAME}": {{"{B64}": "<base64>"}}}}'
        )
    images = []
    for i, item in enumerate(items):
        named = isinstance(item, dict) and B64 not in item
        value = _named(item, f"{where}[{i}]") if named else item
        images.append(_binary(value, f"{where}[{i}]"))
    return images


def _named(item: dict[str, Any], where: str) -> Any:
    """The value of the model's one input in ``{"<input>": value}``."""
    if list(item) != [INPUT_NAME]:
        raise TFServingRequestError(
            f"'{where}' names inputs {sorted(item)[:5]}; this model has one, '{INPUT_NAME}'"
        )
    return item[INPUT_NAME]


def _binary(value: Any, where: str) -> bytes:
    if not isinstance(value, dict) or list(value) != [B64] or not isinstance(value[B64], str):
        raise TFServingRequestError(
            f'\'{where}\' must be an encoded image as {{"{B64}": "<base64>"}}'
        )
    try:
        return pybase64.b64decode(value[B64], validate=True)
    except (binascii.Error, ValueError):
        raise TFServingRequestError(f"'{where}.{B64}' is not valid base64") from None


# --- metadata --------------------------------------------------------------------------------


def model_status(states: list[tuple[str, str, str]]) -> dict[str, Any]:
    """``GET /v1/models/{m}``'s body from (version, state, error message) triples."""
    return {
        "model_version_status": [
            {
                "version": version,
                "state": state,
                "status": {"error_code": "UNAVAILABLE" if message else "OK",
                           "error_message": message},
            }
            for version, state, message in states
        ]
    }  # fmt: skip


def signature_def(num_classes: int) -> dict[str, Any]:
    """The one signature, ``serving_default``: a string tensor of encoded images in, a float
    tensor ``[-1, classes]`` of probabilities out."""

    def shape(*sizes: int) -> dict[str, Any]:
        return {"dim": [{"size": str(s), "name": ""} for s in sizes], "unknown_rank": False}

    return {
        "inputs": {
            INPUT_NAME: {"dtype": "DT_STRING", "tensor_shape": shape(-1), "name": "image:0"}
        },
        "outputs": {
            "probabilities": {
                "dtype": "DT_FLOAT",
                "tensor_shape": shape(-1, num_classes),
                "name": "probabilities:0",
            }
        },
        "method_name": "tensorflow/serving/predict",
    }

"""The Open Inference Protocol's (KServe V2) inference request and response for an image
classifier, as JSON plus Triton's binary tensors. Pure code: no I/O, no Flask.

The model takes one BYTES input, ``image``, shape ``[-1]``: each element an encoded image
(PNG, JPEG, ...). In JSON each element is base64 (``"parameters": {"content_type": "base64"}``,
as MLServer marks it; a JSON string cannot carry raw bytes, so base64 is assumed without it
too); in the binary extension each is ``<uint32 LE length><bytes>``. It answers one FP32
output, ``probabilities``, shape ``[N, classes]``; with Triton's classification extension
(``"parameters": {"classification": k}`` on the output) a BYTES ``[N, k]`` tensor of
``"score:index:label"`` strings instead.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybase64

from app.protocols.binary_tensors import (
    BinaryTensorError,
    decode_bytes_elements,
    encode_bytes_elements,
)

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BASE64 = "base64"


class V2RequestError(ValueError):
    """The request does not fit the protocol or the model; the message says why (a 400)."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes]
    classification: int
    """Triton's classification extension: the top ``k`` as strings; 0 for probabilities."""
    binary_output: bool
    """Answer the output as a binary tensor (Triton's extension) rather than JSON."""
    timeout_us: int
    """Triton's schedule-policy ``timeout`` in microseconds; 0 for the server's own."""


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    """JSON elements in row-major order (floats, or strings for BYTES)."""
    raw: bytes | None
    """The binary form when the client asked for it, else None."""


def parse_infer_request(header: Any, binary: bytes) -> InferRequest:
    """The request from its JSON header and the binary part that followed it."""
    if not isinstance(header, dict):
        raise V2RequestError("the inference request must be a JSON object")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2RequestError("'id' must be a string")
    parameters = _object(header.get("parameters"), "parameters")
    images = _input_images(header.get("inputs"), binary)
    classification, binary_output = _requested_output(header.get("outputs"), parameters)
    return InferRequest(
        id=request_id,
        images=images,
        classification=classification,
        binary_output=binary_output,
        timeout_us=_whole(parameters.get("timeout", 0), "parameters.timeout", minimum=0),
    )


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2RequestError(f"'{where}' must be a JSON object")
    return value


def _whole(value: Any, where: str, *, minimum: int) -> int:
    # JSON has one number type: 5.0 is the whole number 5.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise V2RequestError(f"'{where}' must be a whole number ≥ {minimum}, got {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise V2RequestError(f"'{where}' must be true or false, got {value!r}")
    return value


def _input_images(inputs: Any, binary: bytes) -> list[bytes]:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise V2RequestError(
            f"'inputs' must be a list of one tensor: this model takes one BYTES input "
            f"'{INPUT_NAME}' of encoded images"
        )
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise V2RequestError(
            f"unexpected input {tensor.get('name')!r}: this model takes one BYTES input "
            f"'{INPUT_NAME}'"
        )
    if tensor.get("datatype") != "BYTES":
        raise V2RequestError(
            f"input '{INPUT_NAME}' must be BYTES (encoded images), got {tensor.get('datatype')!r}"
        )
    parameters = _object(tensor.get("parameters"), "inputs[0].parameters")
    if "binary_data_size" in parameters:
        images = _binary_elements(parameters, binary)
    else:
        images = _json_elements(tensor.get("data"), parameters)
        if binary:
            raise V2RequestError(
                f"{len(binary)} bytes follow the JSON header but no input has 'binary_data_size'"
            )
    _check_shape(tensor.get("shape"), len(images))
    return images


def _binary_elements(parameters: dict[str, Any], binary: bytes) -> list[bytes]:
    size = _whole(parameters["binary_data_size"], "binary_data_size", minimum=0)
    if size != len(binary):
        raise V2RequestError(
            f"input '{INPUT_NAME}' has binary_data_size {size}, but {len(binary)} bytes "
            "follow the JSON header"
        )
    try:
        return decode_bytes_elements(binary)
    except BinaryTensorError as exc:
        raise V2RequestError(f"input '{INPUT_NAME}': {exc}") from None


def _json_elements(data: Any, parameters: dict[str, Any]) -> list[bytes]:
    content_type = parameters.get("content_type", BASE64)
    if content_type != BASE64:
        raise V2RequestError(
            f"input '{INPUT_NAME}' has content_type {content_type!r}: images in JSON are "
            f"base64 ('content_type': '{BASE64}'); raw bytes travel as binary tensor data"
        )
    elements = _flatten(data)
    images = []
    for i, element in enumerate(elements):
        if not isinstance(element, str):
            raise V2RequestError(f"input '{INPUT_NAME}' element {i + 1} must be a base64 string")
        try:
            images.append(pybase64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise V2RequestError(
                f"input '{INPUT_NAME}' element {i + 1} is not valid base64"
            ) from None
    return images


def _flatten(data: Any) -> list[Any]:
    """The elements of ``data`` (flat or nested lists) in row-major order."""
    if not isinstance(data, list):
        raise V2RequestError(
            f"input '{INPUT_NAME}' needs 'data' (a list of base64 images) or "
            "'parameters.binary_data_size'"
        )
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise V2RequestError(f"input '{INPUT_NAME}' is nested too deeply")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_shape(shape: Any, count: int) -> None:
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise V2RequestError(
            f"input '{INPUT_NAME}' needs a 'shape': a list of whole numbers, e.g. [{count}]"
        )
    if math.prod(shape) != count:
        raise V2RequestError(
            f"input '{INPUT_NAME}' has shape {shape} ({math.prod(shape)} elements) but "
            f"holds {count} image(s)"
        )


def _requested_output(outputs: Any, parameters: dict[str, Any]) -> tuple[int, bool]:
    """(classification count, binary) of the one output, ``probabilities``."""
    binary = _flag(parameters.get("binary_data_output", False), "parameters.binary_data_output")
    if outputs is None:
        return 0, binary
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise V2RequestError(f"'outputs' must be a list of at most one output, '{OUTPUT_NAME}'")
    if not outputs:
        return 0, binary
    output = outputs[0]
    if not isinstance(output, dict) or output.get("name") != OUTPUT_NAME:
        name = output.get("name") if isinstance(output, dict) else output
        raise V2RequestError(f"unknown output {name!r}: this model has one, '{OUTPUT_NAME}'")
    wanted = _object(output.get("parameters"), "outputs[0].parameters")
    if "binary_data" in wanted:
        binary = _flag(wanted["binary_data"], "outputs[0].parameters.binary_data")
    classification = _whole(
        wanted.get("classification", 0), "outputs[0].parameters.classification", minimum=0
    )
    return classification, binary


# --- the response ----------------------------------------------------------------------------


def probabilities_output(table: np.ndarray, *, binary: bool) -> OutputTensor:
    """The FP32 ``[N, classes]`` output."""
    values = np.ascontiguousarray(table, dtype="<f4")
    if binary:
        return OutputTensor(OUTPUT_NAME, "FP32", list(values.shape), [], values.tobytes())
    return OutputTensor(OUTPUT_NAME, "FP32", list(values.shape), values.ravel().tolist(), None)


def classification_output(rows: list[list[str]], *, binary: bool) -> OutputTensor:
    """The BYTES ``[N, k]`` output of the classification extension."""
    shape = [len(rows), len(rows[0]) if rows else 0]
    flat = [item for row in rows for item in row]
    if binary:
        raw = encode_bytes_elements([item.encode("utf-8") for item in flat])
        return OutputTensor(OUTPUT_NAME, "BYTES", shape, [], raw)
    return OutputTensor(OUTPUT_NAME, "BYTES", shape, flat, None)


def classification_entry(probability: float, index: int, label: str) -> str:
    """``"<value>:<index>:<label>"``, the value printed as Triton prints it (``%f``)."""
    return f"{probability:f}:{index}:{label}"


def render_response(
    model: str, version: str, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[dict[str, Any], bytes]:
    """(the JSON header, the binary part that follows it, empty when all outputs are JSON)."""
    header: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        header["id"] = request_id
    tensors = []
    raws = []
    for output in outputs:
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if output.raw is None:
            tensor["data"] = output.data
        else:
            tensor["parameters"] = {"binary_data_size": len(output.raw)}
            raws.append(output.raw)
        tensors.append(tensor)
    header["outputs"] = tensors
    return header, b"".join(raws)

"""The Open Inference Protocol (KServe V2) over REST, as Triton and KServe serve it, with
Triton's binary tensor data, classification and schedule-policy (``timeout``) extensions:

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (no API key needed: probes call them);
- ``GET /v2`` (server metadata);
- ``GET /v2/models/{m}[/versions/{v}]`` (model metadata), ``.../ready``;
- ``POST /v2/models/{m}[/versions/{v}]/infer``.

Every inference goes through the same path as ``POST /predict`` (``app.protocols.inference``).
Errors are ``{"error": "<message>"}`` with the status ``/predict`` would give
(``app.errors``).
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import orjson
from flask import Blueprint, Response, request

from app import components
from app.errors import InvalidRequestError
from app.ops import readiness_checks
from app.protocols import inference
from app.protocols.binary_tensors import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    BinaryTensorError,
    split_body,
)
from app.protocols.v2_messages import (
    INPUT_NAME,
    OUTPUT_NAME,
    InferRequest,
    OutputTensor,
    V2RequestError,
    classification_entry,
    classification_output,
    parse_infer_request,
    probabilities_output,
    render_response,
)

logger = logging.getLogger(__name__)

bp = Blueprint("kserve_v2", __name__, url_prefix="/v2")

SERVER_NAME = "queuenet"
EXTENSIONS = ("binary_tensor_data", "classification", "schedule_policy")
"""Triton's names for the extensions spoken here (``schedule_policy``: only ``timeout``;
``priority`` is accepted and has no effect: one queue per model version, first come first
served)."""
PLATFORM = "queuenet"


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@bp.get("/health/live")
def live() -> Response:
    """Liveness: the web process serves HTTP (``/healthz``)."""
    return json_response({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    """Readiness of the server: ``/readyz``'s checks (the default model's serving version has a
    model card, a live worker and room in its queue); 503 with the failed checks' reasons."""
    settings = components.settings()
    checks = readiness_checks(components.router(), settings.max_queue)
    failed = [f"{name}: {c['error']}" for name, c in checks.items() if not c["ok"]]
    if failed:
        return json_response({"ready": False, "error": "; ".join(failed)}, 503)
    return json_response({"ready": True})


@bp.get("")
def server_metadata() -> Response:
    """The server's name, version and the protocol extensions it speaks."""
    return json_response(
        {"name": SERVER_NAME, "version": _server_version(), "extensions": list(EXTENSIONS)}
    )


def _server_version() -> str:
    try:
        return package_version("queuenet")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    """One BYTES input of encoded images, shape ``[-1]``; one FP32 output ``[-1, classes]``."""
    target = inference.describe(model, version)
    versions = list(components.router().catalog().versions[model])
    return json_response(
        {
            "name": model,
            "versions": versions if version is None else [target.version],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, target.card.num_labels]}
            ],
        }
    )


@bp.get("/models/<model>/ready")
@bp.get("/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> Response:
    """200 when the version (without one: the serving version) has a model card and a live
    worker; 503 with the reason when not; 404 for an unknown model or version."""
    if version is None:
        route = components.router().catalog().routes.get(model)
        version = None if route is None else route.serving
    _, statuses = inference.status(model, version)
    if version is None or not statuses or not statuses[0].ready:
        reason = (
            f"model {model} has no serving version yet"
            if version is None
            else f"version {version} of {model} has no live worker or no model card"
        )
        return json_response({"name": model, "ready": False, "error": reason}, 503)
    return json_response({"name": model, "ready": True})


@bp.post("/models/<model>/infer")
@bp.post("/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    """Classify a batch of encoded images: FP32 probabilities, or with the classification
    extension the top ``k`` as ``"score:index:label"``; JSON or binary tensors as asked."""
    parsed = _read_request()
    target = inference.resolve(model, version)
    num_classes = target.card.num_labels
    if parsed.classification > num_classes:
        raise InvalidRequestError(
            f"classification asks for {parsed.classification} classes; {model} has {num_classes}"
        )
    timeout_s = parsed.timeout_us / 1e6 if parsed.timeout_us else None
    answer = inference.classify(
        target,
        parsed.images,
        top_k=parsed.classification or num_classes,
        deadline=inference.deadline_from(timeout_s),
    )
    output = _output(parsed, answer, num_classes)
    header, raw = render_response(target.model, target.version, parsed.id, [output])
    body = orjson.dumps(header)
    if not raw:
        return Response(body, mimetype="application/json")
    response = Response(body + raw, mimetype=BINARY_CONTENT_TYPE)
    response.headers[HEADER_LENGTH] = str(len(body))
    return response


def _read_request() -> InferRequest:
    body = inference.read_body()
    try:
        json_part, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        header = orjson.loads(json_part)
    except BinaryTensorError as exc:
        raise InvalidRequestError(str(exc)) from None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the inference header is not valid JSON ({exc})") from None
    try:
        return parse_infer_request(header, binary)
    except V2RequestError as exc:
        raise InvalidRequestError(str(exc)) from None


def _output(parsed: InferRequest, answer: inference.Answer, num_classes: int) -> OutputTensor:
    if parsed.classification:
        rows = [
            [classification_entry(p.probability, p.index, p.label) for p in r.predictions]
            for r in answer.results
        ]
        return classification_output(rows, binary=parsed.binary_output)
    table = inference.probabilities(answer.results, num_classes)
    return probabilities_output(table, binary=parsed.binary_output)

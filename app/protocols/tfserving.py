"""TF Serving's REST API, so its clients and scripts work unchanged:

- ``GET /v1/models/{m}[/versions/{v}]`` (model status), ``.../metadata``;
- ``POST /v1/models/{m}[/versions/{v}]:predict`` and ``:classify``.

Every inference goes through the same path as ``POST /predict`` (``app.protocols.inference``).
Errors are ``{"error": "<message>"}`` with the status ``/predict`` would give
(``app.errors``).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response

from app import components
from app.errors import InvalidRequestError
from app.protocols import inference
from app.protocols.tfserving_messages import (
    SIGNATURE,
    TFServingRequestError,
    model_status,
    parse_classify,
    parse_predict,
    signature_def,
)
from protocol.status import VersionStatus

bp = Blueprint("tfserving", __name__, url_prefix="/v1")

AVAILABLE = "AVAILABLE"
END = "END"
"""TF Serving's state of a version that is not loaded: here, no live worker or no model card."""


def json_response(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), mimetype="application/json")


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def status(model: str, version: str | None = None) -> Response:
    """Each version's state: ``AVAILABLE`` with a model card and a live worker, else ``END``."""
    _, statuses = inference.status(model, version)
    return json_response(model_status([_state(s) for s in statuses]))


def _state(status: VersionStatus) -> tuple[str, str, str]:
    if status.ready:
        return status.version, AVAILABLE, ""
    missing = "no model card" if status.card is None else "no live worker"
    return status.version, END, f"version {status.version} of {status.model}: {missing}"


@bp.get("/models/<model>/metadata")
@bp.get("/models/<model>/versions/<version>/metadata")
def metadata(model: str, version: str | None = None) -> Response:
    """The model spec and its one signature (``serving_default``)."""
    target = inference.describe(model, version)
    return json_response(
        {
            "model_spec": {"name": model, "signature_name": "", "version": target.version},
            "metadata": {
                "signature_def": {
                    "signature_def": {SIGNATURE: signature_def(target.card.num_labels)}
                }
            },
        }
    )


@bp.post("/models/<model>:predict")
@bp.post("/models/<model>/versions/<version>:predict")
def predict(model: str, version: str | None = None) -> Response:
    """Every class's probability for each image, by class index."""
    body = _read_json()
    try:
        parsed = parse_predict(body)
    except TFServingRequestError as exc:
        raise InvalidRequestError(str(exc)) from None
    target = inference.resolve(model, version)
    num_classes = target.card.num_labels
    answer = inference.classify(
        target, parsed.images, top_k=num_classes, deadline=inference.deadline_from(None)
    )
    rows = inference.probabilities(answer.results, num_classes).tolist()
    return json_response({"outputs": rows} if parsed.columns else {"predictions": rows})


@bp.post("/models/<model>:classify")
@bp.post("/models/<model>/versions/<version>:classify")
def classify(model: str, version: str | None = None) -> Response:
    """The ``QUEUENET_DEFAULT_TOP_K`` most probable ``[label, score]`` pairs per example."""
    body = _read_json()
    try:
        images = parse_classify(body)
    except TFServingRequestError as exc:
        raise InvalidRequestError(str(exc)) from None
    target = inference.resolve(model, version)
    top_k = min(components.settings().default_top_k, target.card.num_labels)
    answer = inference.classify(target, images, top_k=top_k, deadline=inference.deadline_from(None))
    result = [[[p.label, p.probability] for p in r.predictions] for r in answer.results]
    return json_response({"result": result})


def _read_json() -> Any:
    try:
        return orjson.loads(inference.read_body())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the body is not valid JSON ({exc})") from None

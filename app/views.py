"""HTTP endpoints: ``POST /predict`` and ``GET /healthz``."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import InvalidImageError, InvalidRequestError
from app.preprocess import ImageDecodeError, image_to_input
from app.queueing import PredictionService
from app.settings import AppSettings

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

IMAGE_FIELD = "image"


def _settings() -> AppSettings:
    settings: AppSettings = current_app.extensions["queuenet.settings"]
    return settings


def _service() -> PredictionService:
    service: PredictionService = current_app.extensions["queuenet.service"]
    return service


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process is up and serving HTTP."""
    return jsonify({"status": "ok"})


@bp.post("/predict")
def predict() -> Response:
    """Classify the uploaded image; answers the top-k labels, highest probability first."""
    settings = _settings()
    deadline = time.time() + settings.predict_timeout_s
    data = _uploaded_image()
    service = _service()
    card = service.model_card()
    top_k = _top_k(settings.default_top_k, card.num_labels)
    try:
        array = image_to_input(data, card, max_pixels=settings.max_image_pixels)
    except ImageDecodeError as exc:
        raise InvalidImageError(f"field '{IMAGE_FIELD}': {exc}") from None
    result = service.predict(array, top_k=top_k, deadline=deadline)
    predictions: list[dict[str, Any]] = [
        {"label": p.label, "probability": p.probability, "index": p.index}
        for p in result.predictions
    ]
    return jsonify({"success": True, "predictions": predictions})


def _uploaded_image() -> bytes:
    try:
        files = request.files.getlist(IMAGE_FIELD)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(_too_large_message()) from None
    if not files:
        raise InvalidRequestError(_missing_image_message())
    if len(files) > 1:
        raise InvalidRequestError(
            f"{len(files)} '{IMAGE_FIELD}' fields received; send one image per request"
        )
    data: bytes = files[0].read()
    return data


def _missing_image_message() -> str:
    """Why no file field 'image' arrived, in terms of what the client actually sent."""
    usage = (
        f"send the image as a file in multipart field '{IMAGE_FIELD}' "
        f"(`curl -F {IMAGE_FIELD}=@photo.jpg`, multipart/form-data)"
    )
    if IMAGE_FIELD in request.form:
        return f"field '{IMAGE_FIELD}' arrived as a plain form value, not a file upload; {usage}"
    received = sorted(set(request.files) | set(request.form))
    if received:
        fields = ", ".join(received)
        return f"missing multipart field '{IMAGE_FIELD}'; received field(s): {fields}; {usage}"
    if request.mimetype != "multipart/form-data":
        got = f"Content-Type {request.mimetype!r}" if request.mimetype else "no Content-Type"
        return f"missing multipart field '{IMAGE_FIELD}': the body has {got}; {usage}"
    return (
        f"missing multipart field '{IMAGE_FIELD}': no field could be read from the "
        f"multipart body (check its boundary and framing); {usage}"
    )


def _too_large_message() -> str:
    limit = _settings().max_upload_bytes
    length = request.content_length
    if length is not None and length > limit:
        return f"the request body is {length} bytes, over the limit of {limit} bytes"
    # A chunked body (no Content-Length) over the limit, or a non-file form value over
    # Flask's MAX_FORM_MEMORY_SIZE.
    message = f"the request is too large: the body may hold at most {limit} bytes"
    form_limit = request.max_form_memory_size
    if form_limit is not None:
        message += f", and a form value that is not a file at most {form_limit} bytes"
    return message


def _top_k(default: int, num_labels: int) -> int:
    raw = request.args.get("top_k")
    if raw is None:
        return min(default, num_labels)
    try:
        top_k = int(raw)
    except ValueError:
        top_k = 0
    if not 1 <= top_k <= num_labels:
        raise InvalidRequestError(
            f"top_k must be a whole number from 1 to {num_labels}, got {raw!r}"
        )
    return top_k

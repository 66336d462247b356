"""HTTP endpoints: ``POST /predict`` and ``GET /healthz``."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

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
    files = request.files.getlist(IMAGE_FIELD)
    if not files:
        received = sorted(set(request.files) | set(request.form))
        hint = f"; received field(s): {', '.join(received)}" if received else ""
        raise InvalidRequestError(
            f"missing multipart field '{IMAGE_FIELD}': send the image as "
            f"`-F {IMAGE_FIELD}=@photo.jpg` (multipart/form-data){hint}"
        )
    if len(files) > 1:
        raise InvalidRequestError(
            f"{len(files)} '{IMAGE_FIELD}' fields received; send one image per request"
        )
    data: bytes = files[0].read()
    return data


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

"""HTTP endpoints: ``POST /predict`` (the default model), ``POST /models/{name}/predict``,
``POST /models/{name}/versions/{version}/predict`` and ``GET /healthz``."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, request

from app import components
from app.errors import APIError, InvalidImageError, InvalidRequestError
from app.preprocess import ImageDecodeError
from app.protocols import inference
from app.uploads import IMAGE_FIELD, Uploads, read_uploads
from protocol.messages import ModelCard, PredictResult

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process is up and serving HTTP."""
    return jsonify({"status": "ok"})


@bp.post("/predict")
def predict() -> Response:
    """Classify the uploaded image(s) with the default model; answers the top-k labels,
    highest probability first."""
    return _predict()


@bp.post("/models/<name>/predict")
def predict_with_model(name: str) -> Response:
    """Classify with model ``name``: its serving version (or, for its canary share, the
    canary)."""
    return _predict(name)


@bp.post("/models/<name>/versions/<version>/predict")
def predict_with_version(name: str, version: str) -> Response:
    """Classify with version ``version`` of model ``name``, whatever the routes say."""
    return _predict(name, version)


def _predict(model: str | None = None, version: str | None = None) -> Response:
    settings = components.settings()
    deadline = time.time() + settings.predict_timeout_s
    uploads = read_uploads(request, max_images=settings.max_images_per_request)
    target = inference.resolve(model, version)
    card = target.card
    top_k = _top_k(uploads.top_k, settings.default_top_k, card.num_labels)
    prepared = [_prepare(data, i, uploads, card) for i, data in enumerate(uploads.images)]
    arrays = [p for p in prepared if isinstance(p, np.ndarray)]
    answers = iter(
        components.service().predict(target, arrays, top_k=top_k, deadline=deadline)
        if arrays
        else []
    )
    outcomes = [next(answers) if isinstance(p, np.ndarray) else p for p in prepared]
    if not uploads.many:
        if isinstance(outcomes[0], APIError):
            raise outcomes[0]
        body: dict[str, Any] = {"success": True, "predictions": _predictions(outcomes[0])}
    else:
        body = {"success": True, "results": [_entry(o) for o in outcomes]}
    body["model"] = {"name": target.model, "version": target.version}
    return jsonify(body)


def _prepare(data: bytes, index: int, uploads: Uploads, card: ModelCard) -> np.ndarray | APIError:
    where = f"image {index + 1}" if uploads.many else f"field '{IMAGE_FIELD}'"
    try:
        return inference.prepare_image(data, card)
    except ImageDecodeError as exc:
        return InvalidImageError(f"{where}: {exc}")


def _predictions(result: PredictResult) -> list[dict[str, Any]]:
    return [
        {"label": p.label, "probability": p.probability, "index": p.index}
        for p in result.predictions
    ]


def _entry(outcome: PredictResult | APIError) -> dict[str, Any]:
    if isinstance(outcome, APIError):
        error = {"code": outcome.code, "message": outcome.message, "status": outcome.status_code}
        return {"success": False, "error": error}
    return {"success": True, "predictions": _predictions(outcome)}


def _top_k(raw: str | None, default: int, num_labels: int) -> int:
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

"""Operational endpoints: ``GET /readyz``, ``GET /metrics`` and ``GET /openapi.json``
(``/healthz`` is in views)."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from app.metrics import render
from app.openapi import openapi_document
from app.queueing import PredictionService
from app.settings import AppSettings

bp = Blueprint("ops", __name__)


def _service() -> PredictionService:
    service: PredictionService = current_app.extensions["queuenet.service"]
    return service


@bp.get("/readyz")
def readyz() -> Response:
    """200 only when this replica can serve predictions now; 503 says which check failed."""
    settings: AppSettings = current_app.extensions["queuenet.settings"]
    checks = readiness_checks(_service(), settings.max_queue)
    ready = all(check["ok"] for check in checks.values())
    response = jsonify({"ready": ready, "checks": checks})
    response.status_code = 200 if ready else 503
    return response


def readiness_checks(service: PredictionService, max_queue: int) -> dict[str, dict[str, Any]]:
    queue = service.queue
    try:
        queue.client.ping()
        live = queue.live_workers()
        card = bool(queue.client.exists(queue.keys.model_card()))
        depth = queue.depth()
    except redis.RedisError as exc:
        return {"redis": {"ok": False, "error": f"Redis unreachable ({type(exc).__name__})"}}
    return {
        "redis": {"ok": True},
        "workers": {"ok": bool(live), "live": len(live)}
        | ({} if live else {"error": "no worker has a fresh heartbeat"}),
        "model_card": {"ok": card} | ({} if card else {"error": "no model card published"}),
        "queue": {"ok": depth < max_queue, "depth": depth, "max": max_queue}
        | ({} if depth < max_queue else {"error": "the queue is full"}),
    }


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of the web tier and the queue."""
    settings: AppSettings = current_app.extensions["queuenet.settings"]
    body = render(_service().queue, settings.prometheus_multiproc_dir)
    return Response(body, content_type=CONTENT_TYPE_LATEST)  # it carries its own charset


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this server's API, with this deployment's limits."""
    settings: AppSettings = current_app.extensions["queuenet.settings"]
    return jsonify(openapi_document(settings))

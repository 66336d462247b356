"""Operational endpoints: ``GET /readyz``, ``GET /metrics`` and ``GET /openapi.json``
(``/healthz`` is in views)."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from app import components
from app.metrics import render
from app.openapi import openapi_document
from app.routing import ModelRouter
from protocol.status import version_status

bp = Blueprint("ops", __name__)


@bp.get("/readyz")
def readyz() -> Response:
    """200 only when this replica can serve the default model now; 503 says which check
    failed."""
    settings = components.settings()
    checks = readiness_checks(components.router(), settings.max_queue)
    ready = all(check["ok"] for check in checks.values())
    response = jsonify({"ready": ready, "checks": checks})
    response.status_code = 200 if ready else 503
    return response


def readiness_checks(router: ModelRouter, max_queue: int) -> dict[str, dict[str, Any]]:
    """Redis answers; the default model's serving version has a model card, a live worker
    and room in its queue (on the shards that answer)."""
    try:
        catalog = router.directory.catalog()
    except redis.RedisError as exc:
        return {"redis": {"ok": False, "error": f"Redis unreachable ({type(exc).__name__})"}}
    checks: dict[str, dict[str, Any]] = {"redis": {"ok": True}}
    name = router.default_model or catalog.default
    route = catalog.routes.get(name) if name else None
    if name is None or route is None:
        checks["model"] = {"ok": False, "error": "no model is served yet (no worker announced one)"}
        return checks
    checks["model"] = {"ok": True, "name": name, "version": route.serving}
    try:
        status = version_status(router.backend, router.keys, name, route.serving, router.health)
    except redis.RedisError as exc:
        return {"redis": {"ok": False, "error": f"Redis unreachable ({type(exc).__name__})"}}
    live = len(status.live_workers)
    checks["workers"] = {"ok": bool(live), "live": live} | (
        {} if live else {"error": f"no worker of {name} version {route.serving} is alive"}
    )
    card = status.card is not None
    checks["model_card"] = {"ok": card} | ({} if card else {"error": "no model card published"})
    depth = status.queued
    checks["queue"] = {"ok": depth < max_queue, "depth": depth, "max": max_queue} | (
        {} if depth < max_queue else {"error": "the queue is full"}
    )
    if len(status.shard_queued) > 1:
        down = [i for i, n in enumerate(status.shard_queued) if n is None]
        checks["shards"] = {"ok": len(down) < len(status.shard_queued), "down": down} | (
            {} if len(down) < len(status.shard_queued) else {"error": "no shard answers"}
        )
    return checks


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of the web tier and the queue."""
    settings = components.settings()
    body = render(
        components.router().backend,
        components.router().keys,
        settings.prometheus_multiproc_dir,
    )
    return Response(body, content_type=CONTENT_TYPE_LATEST)  # it carries its own charset


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this server's API, with this deployment's limits."""
    settings = components.settings()
    return jsonify(openapi_document(settings))

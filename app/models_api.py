"""``GET /models`` and ``GET /models/{name}``: every model, its versions (ready or not, live
workers, input size, labels, queue), which version serves unversioned requests (and any canary)
and which model ``POST /predict`` serves."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app import components
from app.errors import ModelNotFoundError
from app.redis_errors import redis_errors_as_503
from protocol.status import catalog_status

bp = Blueprint("models", __name__)


@bp.get("/models")
def list_models() -> Response:
    settings = components.settings()
    with redis_errors_as_503():
        catalog, models = catalog_status(components.router().backend, components.router().keys)
    return jsonify(
        {
            "default": settings.default_model or catalog.default,
            "models": [m.to_json() for m in models],
        }
    )


@bp.get("/models/<name>")
def show_model(name: str) -> Response:
    with redis_errors_as_503():
        catalog, models = catalog_status(components.router().backend, components.router().keys)
    for model in models:
        if model.name == name:
            return jsonify(model.to_json())
    raise ModelNotFoundError(f"there is no model {name!r}; {catalog.describe()}")

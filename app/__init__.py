"""QueueNet web tier: a Flask app that queues images for the model workers.

Never imports TensorFlow: images are prepared with Pillow from the recipe in the model card
that the workers publish in Redis.
"""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, Response, g, request

from app import components, demo, metrics
from app.auth import require_api_keys
from app.errors import register_error_handlers
from app.memory import limit_malloc_arenas
from app.models_api import bp as models_bp
from app.ops import bp as ops_bp
from app.protocols import protocol_of
from app.protocols.kserve_v2 import bp as kserve_v2_bp
from app.protocols.tfserving import bp as tfserving_bp
from app.queueing import PredictionService
from app.routing import ModelRouter
from app.settings import AppSettings
from app.views import bp
from protocol.backend import connect_backend
from protocol.shards import ShardHealth, directory_for

logger = logging.getLogger(__name__)


def create_app(settings: AppSettings | None = None) -> Flask:
    """Build the app; production reads the environment, tests pass ``settings`` in."""
    settings = settings or AppSettings.from_env(os.environ)
    limit_malloc_arenas(settings.web_malloc_arenas)  # before gunicorn starts its threads
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # A deadline of predict_timeout_s on the server-side BLPOP; the socket may wait that long.
    backend = connect_backend(settings.redis, blocking_timeout_s=settings.predict_timeout_s)
    keys = backend.keys(settings.redis.namespace)
    health = ShardHealth(backend.shards)
    components.install(
        app,
        backend=backend,
        settings=settings,
        router=ModelRouter(
            directory_for(backend, keys), backend, keys, default_model=settings.default_model
        ),
        service=PredictionService(backend, keys, max_queue=settings.max_queue, health=health),
    )
    app.register_blueprint(bp)
    app.register_blueprint(models_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(kserve_v2_bp)  # /v2: the Open Inference Protocol
    app.register_blueprint(tfserving_bp)  # /v1: TF Serving's REST API
    app.register_blueprint(demo.bp)  # GET /: the demo page (app/static/)
    register_error_handlers(app)
    app.before_request(_start_timer)
    if settings.api_keys:  # after the timer, so rejected requests are logged with their time
        require_api_keys(app, settings.api_keys)
    app.after_request(_log_request)
    return app


def _start_timer() -> None:
    g.started = time.monotonic()


def _log_request(response: Response) -> Response:
    """One log line and one metrics sample per request; the job id also goes to the client."""
    elapsed_s = time.monotonic() - g.get("started", time.monotonic())
    job_id = g.get("job_id", "")
    if job_id:
        response.headers["X-Request-ID"] = job_id
    model, version = g.get("model", ""), g.get("version", "")
    if model:  # the version a prediction went to, on its answer and on its errors
        response.headers["X-Model-Name"] = model
        response.headers["X-Model-Version"] = version
    code = g.get("error_code", "ok")
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    protocol = protocol_of(request.path)
    metrics.observe(endpoint, response.status_code, code, elapsed_s, model, version, protocol)
    shard = g.get("shard")
    logger.info(
        "request %s %s status=%d code=%s ms=%.1f model=%s version=%s shard=%s job_id=%s "
        "batch_id=%s worker=%s protocol=%s",
        request.method,
        request.path,
        response.status_code,
        code,
        elapsed_s * 1000.0,
        model or "-",
        version or "-",
        "-" if shard is None else shard,
        job_id or "-",
        g.get("batch_id", "") or "-",
        g.get("worker", "") or "-",
        protocol,
    )
    return response

"""Prometheus metrics of the web tier, correct across gunicorn's processes.

Under gunicorn, ``queuenet web``/``serve`` point ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the processes start; each process then writes its samples there and
``/metrics`` adds them up. The queue's own state (depth, live workers, dead letters) is read
from Redis at scrape time: it is the same for every web replica, so aggregate it with
``max``, not ``sum``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.protocols import QUEUENET
from protocol import error_codes as codes
from protocol.backend import Backend
from protocol.keys import Keys
from protocol.routing import Route
from protocol.status import catalog_status

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "queuenet_http_requests_total",
    "HTTP requests answered, by the protocol they spoke (queuenet, kserve-v2, tfserving)",
    ["endpoint", "status", "code", "protocol"],
)
PREDICT_LATENCY = Histogram(
    "queuenet_predict_duration_seconds",
    "End-to-end time of a prediction request: upload, decode, queue, inference, answer",
    ["status", "model", "version", "protocol"],
    buckets=LATENCY_BUCKETS_S,
)
TIMEOUTS = Counter(
    "queuenet_prediction_timeouts_total",
    "Requests that got no prediction before the deadline",
    ["model", "version"],
)
REJECTIONS = Counter(
    "queuenet_rejections_total",
    "Requests refused before reaching the queue",
    ["reason"],
)


def observe(
    endpoint: str,
    status: int,
    code: str,
    elapsed_s: float,
    model: str = "",
    version: str = "",
    protocol: str = QUEUENET,
) -> None:
    """Record one answered request (``model``/``version``: where a prediction went;
    ``protocol``: which API it spoke, ``app.protocols``)."""
    REQUESTS.labels(endpoint, str(status), code, protocol).inc()
    if model:
        PREDICT_LATENCY.labels(str(status), model, version, protocol).observe(elapsed_s)
    if code == codes.PREDICTION_TIMEOUT:
        TIMEOUTS.labels(model, version).inc()
    elif code in codes.REJECTIONS:
        REJECTIONS.labels(code).inc()


class QueueCollector(Collector):
    """Gauges read from Redis at scrape time, one series per model version."""

    def __init__(self, backend: Backend, keys: Keys) -> None:
        self.backend = backend
        self.keys = keys

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("queuenet_redis_up", "1 when Redis answered this scrape")
        try:
            _, models = catalog_status(self.backend, self.keys)
        except redis.RedisError as exc:
            logger.warning("metrics: redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        labels = ["model", "version"]
        depth = GaugeMetricFamily(
            "queuenet_queue_depth", "Requests waiting in a version's queue", labels=labels
        )
        live = GaugeMetricFamily(
            "queuenet_live_workers", "Workers of a version with a fresh heartbeat", labels=labels
        )
        dead = GaugeMetricFamily(
            "queuenet_dead_letters", "Items in a version's dead-letter list", labels=labels
        )
        card = GaugeMetricFamily(
            "queuenet_model_card_published",
            "1 when a version's model card is in Redis",
            labels=labels,
        )
        serving = GaugeMetricFamily(
            "queuenet_serving_share",
            "Share (0..1) of a model's unversioned requests that a version takes",
            labels=labels,
        )
        shard_depth = GaugeMetricFamily(
            "queuenet_shard_queue_depth",
            "Requests waiting in one shard of a version's queue",
            labels=[*labels, "shard"],
        )
        shard_up = GaugeMetricFamily(
            "queuenet_shard_up",
            "1 when a shard of a version's queue answered this scrape",
            labels=[*labels, "shard"],
        )
        for model in models:
            route = model.route
            for v in model.versions:
                values = [model.name, v.version]
                depth.add_metric(values, v.queued)
                live.add_metric(values, len(v.live_workers))
                dead.add_metric(values, v.dead_letters)
                card.add_metric(values, int(v.card is not None))
                serving.add_metric(values, _share(route, v.version))
                for shard, queued in enumerate(v.shard_queued):
                    shard_up.add_metric([*values, str(shard)], int(queued is not None))
                    shard_depth.add_metric([*values, str(shard)], queued or 0)
        yield from (depth, live, dead, card, serving, shard_depth, shard_up)


def _share(route: Route | None, version: str) -> float:
    if route is None:
        return 0.0
    canary = route.canary_percent / 100.0 if route.canary is not None else 0.0
    if version == route.canary:
        return canary
    return 1.0 - canary if version == route.serving else 0.0


def render(backend: Backend, keys: Keys, multiprocess_dir: str) -> bytes:
    """The exposition text: this process's (or all gunicorn processes') metrics + the queues."""
    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    else:
        for collector in (REQUESTS, PREDICT_LATENCY, TIMEOUTS, REJECTIONS):
            registry.register(collector)
    registry.register(QueueCollector(backend, keys))
    return generate_latest(registry)

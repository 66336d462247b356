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

from protocol.queue import Queue

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "queuenet_http_requests_total", "HTTP requests answered", ["endpoint", "status", "code"]
)
PREDICT_LATENCY = Histogram(
    "queuenet_predict_duration_seconds",
    "End-to-end time of POST /predict: upload, decode, queue, inference, answer",
    ["status"],
    buckets=LATENCY_BUCKETS_S,
)
TIMEOUTS = Counter(
    "queuenet_prediction_timeouts_total", "Requests that got no prediction before the deadline"
)
REJECTIONS = Counter(
    "queuenet_rejections_total",
    "Requests refused before reaching the queue",
    ["reason"],
)
REJECTION_CODES = frozenset(
    {
        "queue_full",
        "queue_unavailable",
        "model_unavailable",
        "invalid_request",
        "invalid_image",
        "request_entity_too_large",
        "unauthorized",
    }
)


def observe(endpoint: str, status: int, code: str, elapsed_s: float) -> None:
    """Record one answered request."""
    REQUESTS.labels(endpoint, str(status), code).inc()
    if endpoint == "/predict":
        PREDICT_LATENCY.labels(str(status)).observe(elapsed_s)
    if code == "prediction_timeout":
        TIMEOUTS.inc()
    elif code in REJECTION_CODES:
        REJECTIONS.labels(code).inc()


class QueueCollector(Collector):
    """Gauges read from Redis at scrape time."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("queuenet_redis_up", "1 when Redis answered this scrape")
        try:
            depth = self.queue.depth()
            live = len(self.queue.live_workers())
            dead = int(self.queue.client.llen(self.queue.keys.dead()))
            card = int(self.queue.client.exists(self.queue.keys.model_card()))
        except redis.RedisError as exc:
            logger.warning("metrics: redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _gauge("queuenet_queue_depth", "Requests waiting in the queue", depth)
        yield _gauge("queuenet_live_workers", "Workers with a fresh heartbeat", live)
        yield _gauge("queuenet_dead_letters", "Items in the dead-letter list", dead)
        yield _gauge("queuenet_model_card_published", "1 when a model card is in Redis", card)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def render(queue: Queue, multiprocess_dir: str) -> bytes:
    """The exposition text: this process's (or all gunicorn processes') metrics + the queue."""
    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    else:
        for collector in (REQUESTS, PREDICT_LATENCY, TIMEOUTS, REJECTIONS):
            registry.register(collector)
    registry.register(QueueCollector(queue))
    return generate_latest(registry)

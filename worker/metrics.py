"""Prometheus metrics of a model worker, served on its own port (``QUEUENET_METRICS_PORT``)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

logger = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "queuenet_worker_batch_size",
    "Images predicted in one call of the model",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256),
)
INFERENCE_SECONDS = Histogram(
    "queuenet_worker_inference_seconds",
    "Time of one model call (one batch)",
    ["model", "version"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5),
)
QUEUE_WAIT_SECONDS = Histogram(
    "queuenet_worker_queue_wait_seconds",
    "Time from enqueueing by the web tier to the claim by a worker",
    ["model", "version"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ITEMS = Counter(
    "queuenet_worker_items_total",
    "Claimed items by outcome",
    ["model", "version", "outcome"],  # predicted, failed, retried, expired, dead
)


def serve_metrics(port: int) -> None:
    """Expose this process's metrics over HTTP on ``port`` (0: do not)."""
    if port:
        start_http_server(port)
        logger.info("metrics on http://0.0.0.0:%d/metrics", port)

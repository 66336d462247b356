"""The web side of the queue: enqueue a request's images on its model version's queue and wait
for their results within the deadline."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np
from flask import g

from app.errors import (
    APIError,
    PredictionFailedError,
    PredictionTimeoutError,
    QueueFullError,
)
from app.redis_errors import RETRY_AFTER_S, redis_errors_as_503
from app.routing import Target
from protocol.backend import Backend
from protocol.errors import MessageDecodeError
from protocol.keys import Keys
from protocol.messages import PredictRequest, PredictResult, decode_result, encode_request
from protocol.shards import ShardedQueue, ShardHealth

logger = logging.getLogger(__name__)


class PredictionService:
    """Enqueues prepared images on one shard of their version's queue and waits for their
    results there, within a deadline."""

    def __init__(
        self,
        backend: Backend,
        keys: Keys,
        *,
        max_queue: int,
        health: ShardHealth | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.keys = keys
        self.max_queue = max_queue
        self.health = health or ShardHealth(backend.shards)
        self.clock = clock
        self._queues: dict[tuple[str, str], ShardedQueue] = {}
        self._lock = threading.Lock()

    def queue(self, target: Target) -> ShardedQueue:
        """The sharded queue of ``target``'s version (made once per process)."""
        key = (target.model, target.version)
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                queue = ShardedQueue(
                    self.backend, self.keys, target.model, target.version, health=self.health
                )
                self._queues[key] = queue
        return queue

    def predict(
        self,
        target: Target,
        arrays: Sequence[np.ndarray],
        *,
        top_k: int,
        deadline: float,
    ) -> list[PredictResult | APIError]:
        """Enqueue every array (all or none) on ``target``'s queue and wait until ``deadline``
        (unix seconds) for their results; one entry per array, in order: a result, or the
        error for that image.

        Redis failures and a full queue concern the whole request and are raised.
        """
        now = self.clock()
        card = target.card
        requests = [
            PredictRequest.from_array(
                uuid.uuid4().hex,
                array,
                top_k=top_k,
                deadline=deadline,
                enqueued=now,
                model=card.name,
                version=card.version,
                card=card.fingerprint,
            )
            for array in arrays
        ]
        g.job_id = ",".join(r.id for r in requests)
        queue = self.queue(target)
        with redis_errors_as_503():
            shard = queue.push([encode_request(r) for r in requests], max_queue=self.max_queue)
            if shard is None:
                raise QueueFullError(
                    f"the queue of {target.model} version {target.version} is full "
                    f"({self.max_queue} requests); retry later",
                    retry_after_s=RETRY_AFTER_S,
                )
            g.shard = shard
            # Waiting for each in turn costs nothing extra: the last to finish sets the pace.
            raws = [queue.wait_result(shard, r.id, deadline - self.clock()) for r in requests]
        outcomes = [_outcome(r.id, raw) for r, raw in zip(requests, raws, strict=True)]
        answered = [o for o in outcomes if isinstance(o, PredictResult)]
        g.batch_id = ",".join(sorted({o.batch_id for o in answered if o.batch_id}))
        g.worker = ",".join(sorted({o.worker for o in answered if o.worker}))
        return outcomes


def _outcome(job_id: str, raw: bytes | None) -> PredictResult | APIError:
    if raw is None:
        return PredictionTimeoutError(
            f"no prediction within the deadline (job {job_id}); the model workers are "
            "busy or not running"
        )
    try:
        result = decode_result(raw)
    except MessageDecodeError as exc:
        return PredictionFailedError(f"unreadable result for job {job_id}: {exc}")
    if not result.ok:
        return PredictionFailedError(result.error_message, code=result.error_code)
    return result

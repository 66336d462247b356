"""The web side of the queue: enqueue a request's images on its model version's queue and wait
for their results within the deadline."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import redis
from flask import g

from app.errors import (
    APIError,
    PredictionFailedError,
    PredictionTimeoutError,
    QueueFullError,
)
from app.redis_errors import RETRY_AFTER_S, redis_errors_as_503
from app.routing import Target
from protocol.errors import MessageDecodeError
from protocol.messages import PredictRequest, PredictResult, decode_result, encode_request
from protocol.queue import Queue

logger = logging.getLogger(__name__)


class PredictionService:
    """Enqueues prepared images and waits for their results within a deadline."""

    def __init__(
        self, client: redis.Redis, *, max_queue: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.max_queue = max_queue
        self.clock = clock

    def queue(self, target: Target) -> Queue:
        return Queue(self.client, target.keys)

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
            if not queue.push([encode_request(r) for r in requests], max_queue=self.max_queue):
                raise QueueFullError(
                    f"the queue of {target.model} version {target.version} is full "
                    f"({self.max_queue} requests); retry later",
                    retry_after_s=RETRY_AFTER_S,
                )
            # Waiting for each in turn costs nothing extra: the last to finish sets the pace.
            raws = [queue.wait_result(r.id, deadline - self.clock()) for r in requests]
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

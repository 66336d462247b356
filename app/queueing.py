"""The web side of the queue: read the model card, enqueue a request, wait for its result."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import redis
from flask import g

from app.errors import (
    APIError,
    ModelUnavailableError,
    PredictionFailedError,
    PredictionTimeoutError,
    QueueFullError,
    QueueUnavailableError,
)
from protocol.errors import MessageDecodeError
from protocol.messages import (
    ModelCard,
    PredictRequest,
    PredictResult,
    decode_model_card,
    decode_result,
    encode_request,
)
from protocol.queue import Queue

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""Retry-After advertised with a 503 for a full queue or an unreachable Redis."""
CARD_TTL_S = 1.0
"""How long a web process reuses the model card it read (one Redis round trip less per
request); a new model's card is picked up within this time, and the worker checks every
message against its own card anyway."""


@contextmanager
def redis_errors_as_503() -> Iterator[None]:
    """Any Redis failure becomes a 503 JSON answer instead of a hang or a bare 500."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # The detail (host, port, auth) goes to the log, not to the client.
        logger.warning("redis unreachable: %s", exc)
        raise QueueUnavailableError(
            "the queue (Redis) is unreachable; retry later", retry_after_s=RETRY_AFTER_S
        ) from None
    except redis.RedisError as exc:
        logger.warning("redis error: %s", exc)
        raise QueueUnavailableError(
            "the queue (Redis) failed; retry later", retry_after_s=RETRY_AFTER_S
        ) from None


class PredictionService:
    """Enqueues prepared images and waits for their results within a deadline."""

    def __init__(
        self, queue: Queue, *, max_queue: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.queue = queue
        self.max_queue = max_queue
        self.clock = clock
        self._card: tuple[float, ModelCard] | None = None

    def model_card(self) -> ModelCard:
        """The published model card, re-read from Redis at most every CARD_TTL_S seconds."""
        cached = self._card
        if cached is not None and time.monotonic() - cached[0] < CARD_TTL_S:
            return cached[1]
        card = self._read_model_card()
        self._card = (time.monotonic(), card)
        return card

    def _read_model_card(self) -> ModelCard:
        with redis_errors_as_503():
            raw = self.queue.client.get(self.queue.keys.model_card())
        if raw is None:
            raise ModelUnavailableError(
                "no model worker has published a model card yet; start a worker "
                "(queuenet worker) or wait for it to finish loading",
                retry_after_s=RETRY_AFTER_S,
            )
        try:
            return decode_model_card(raw)
        except MessageDecodeError as exc:
            raise ModelUnavailableError(
                f"the published model card is unusable: {exc}", retry_after_s=RETRY_AFTER_S
            ) from None

    def predict(
        self, arrays: Sequence[np.ndarray], *, top_k: int, deadline: float
    ) -> list[PredictResult | APIError]:
        """Enqueue every array (all or none) and wait until ``deadline`` (unix seconds) for
        their results; one entry per array, in order: a result, or the error for that image.

        Redis failures and a full queue concern the whole request and are raised.
        """
        now = self.clock()
        requests = [
            PredictRequest.from_array(
                uuid.uuid4().hex, array, top_k=top_k, deadline=deadline, enqueued=now
            )
            for array in arrays
        ]
        g.job_id = ",".join(r.id for r in requests)
        with redis_errors_as_503():
            if not self.queue.push([encode_request(r) for r in requests], max_queue=self.max_queue):
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} requests); retry later",
                    retry_after_s=RETRY_AFTER_S,
                )
            # Waiting for each in turn costs nothing extra: the last to finish sets the pace.
            raws = [self.queue.wait_result(r.id, deadline - self.clock()) for r in requests]
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

"""Redis failures as answers: any of them becomes a 503 JSON error, never a hang or a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from app.errors import QueueUnavailableError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""Retry-After advertised with a 503 (full queue, unreachable Redis, model not ready)."""


@contextmanager
def redis_errors_as_503() -> Iterator[None]:
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

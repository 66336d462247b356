"""Creating Redis clients with finite timeouts and a short reconnect policy."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from protocol.settings import RedisSettings


def connect(settings: RedisSettings, *, blocking_timeout_s: float = 0.0) -> redis.Redis:
    """A client for ``settings.url``.

    ``blocking_timeout_s`` is the longest server-side block (BLPOP/BLMOVE) the caller will ask
    for; the socket read timeout is raised above it so a legitimate wait is never cut, while a
    dead server is still noticed. One quick retry lets a pooled connection that went stale
    across a Redis restart reconnect without failing the request; beyond that, errors surface
    at once so the web tier can answer 503 instead of hanging.
    """
    return redis.Redis.from_url(
        settings.url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s + blocking_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
        health_check_interval=30,
    )

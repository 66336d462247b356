"""Optional API keys: with ``QUEUENET_API_KEYS`` set, every request must carry one of them.

A key travels as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The check runs
before routing is looked at, so an anonymous client gets the same 401 on every path and
method (``/predict``, a typo, ``OPTIONS``): nothing about the API can be enumerated without a
key. Only ``EXEMPT_PATHS`` (health checks for load balancers and orchestrators, the demo page)
and ``EXEMPT_PREFIXES`` (its static files) stay open.

The received key is compared with every configured key, without stopping at a match, and
through SHA-256 digests, so the time taken says neither which key matched, nor how many there
are, nor how long they are. No key is ever logged or echoed back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence

from flask import Flask, Response, request

from app.errors import error_response
from protocol import error_codes as codes

logger = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/", "/v2/health/live", "/v2/health/ready"}
)
"""Paths answered without a key (whether or not the route exists); ``/`` is the demo page.
The Open Inference Protocol's liveness and readiness are ``/healthz`` and ``/readyz`` under
the names KServe's and Triton's orchestration probes call (no credentials, no data)."""
EXEMPT_PREFIXES = ("/static/",)
"""The demo page's stylesheet, script and icon: no data, so no key (the page asks for one)."""
REALM = "queuenet"
HOW_TO_SEND = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def require_api_keys(app: Flask, keys: Sequence[str]) -> None:
    """Register the check on ``app``; call after any timing hook so rejections are timed."""
    digests = tuple(_digest(key) for key in keys)
    app.before_request(_make_check(digests))
    open_paths = ", ".join(sorted(EXEMPT_PATHS) + [f"{p}*" for p in EXEMPT_PREFIXES])
    logger.info("API keys required (%d configured); open paths: %s", len(digests), open_paths)


def _make_check(digests: tuple[bytes, ...]) -> Callable[[], Response | None]:
    def check_api_key() -> Response | None:
        if request.path in EXEMPT_PATHS or request.path.startswith(EXEMPT_PREFIXES):
            return None
        candidates = _presented_keys()
        if not candidates:
            return _reject("missing API key; " + HOW_TO_SEND, "no key", invalid=False)
        accepted = [_matches(_digest(candidate), digests) for candidate in candidates]
        if not any(accepted):
            return _reject(
                "the API key sent is not valid; " + HOW_TO_SEND, "key not accepted", invalid=True
            )
        return None

    return check_api_key


def _presented_keys() -> list[str]:
    """The Bearer token and the X-API-Key value, those that are present and non-empty."""
    keys = [request.headers.get("X-API-Key", "").strip()]
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        keys.append(token.strip())
    return [key for key in keys if key]


def _matches(digest: bytes, digests: tuple[bytes, ...]) -> bool:
    """True if ``digest`` equals any of ``digests``; always compares against all of them."""
    found = False
    for expected in digests:
        found |= hmac.compare_digest(digest, expected)
    return found


def _digest(key: str) -> bytes:
    # Header values arrive as latin-1 text; surrogatepass makes any str encodable.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _reject(message: str, reason: str, *, invalid: bool) -> Response:
    logger.warning(
        "rejected request %s %s from %s: %s",
        request.method,
        request.path,
        request.remote_addr,
        reason,
    )
    response = error_response(401, codes.UNAUTHORIZED, message)
    # RFC 6750: a key that was sent but is wrong is an "invalid_token"; a missing one has no code.
    error = ', error="invalid_token"' if invalid else ""
    response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"{error}'
    return response

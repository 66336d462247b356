"""Settings of the web tier, read once from ``QUEUENET_*`` variables at the entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from protocol.errors import SettingsError
from protocol.settings import (
    PREFIX,
    RedisSettings,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_str,
)

API_KEY_MIN_CHARS = 16
"""Shortest API key accepted: shorter ones are guessable (``secrets.token_urlsafe(32)``
gives 43 characters)."""


@dataclass(frozen=True)
class AppSettings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    predict_timeout_s: float = 10.0
    """Seconds a request may wait for its prediction (queue + inference) before a 504."""
    max_upload_bytes: int = 16 * 1024 * 1024
    """Largest request body in bytes; larger ones get 413."""
    max_image_pixels: int = 40_000_000
    """Largest decoded image in pixels (width x height); larger ones get 400."""
    max_queue: int = 1000
    """Requests allowed to wait in the queue; beyond that /predict answers 503 + Retry-After."""
    jpeg_draft: bool = False
    """Opt-in: decode large JPEGs at a reduced DCT scale (faster, but not the reference pixels:
    it changes answers; bench/fidelity.py measures by how much). Off by default."""
    default_top_k: int = 5
    """Predictions returned when the request does not say ``top_k``."""
    max_images_per_request: int = 32
    """Images one request may carry (repeated ``image`` fields or JSON ``images``)."""
    host: str = "127.0.0.1"
    """Address gunicorn binds to."""
    port: int = 5000
    """TCP port gunicorn binds to."""
    web_processes: int = 2
    """gunicorn worker processes."""
    web_threads: int = 32
    """Threads per gunicorn process. Each in-flight request holds one while it waits for its
    result, so processes x threads bounds the requests in flight (and the batch sizes)."""
    log_level: str = "INFO"
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per line)."""
    prometheus_multiproc_dir: str = ""
    """``PROMETHEUS_MULTIPROC_DIR``: where gunicorn's processes share their metrics (set by
    ``queuenet web``/``serve``); empty means this process's metrics only."""
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    """Keys a client must send (``Authorization: Bearer`` or ``X-API-Key``); empty = no auth.
    Left out of ``repr`` so logging the settings never prints a key."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AppSettings:
        return cls(
            redis=RedisSettings.from_env(env),
            predict_timeout_s=env_float(env, "PREDICT_TIMEOUT_S", 10.0, minimum=0.1, maximum=3600),
            max_upload_bytes=env_int(env, "MAX_UPLOAD_BYTES", 16 * 1024 * 1024, minimum=1024),
            max_image_pixels=env_int(env, "MAX_IMAGE_PIXELS", 40_000_000, minimum=1),
            max_queue=env_int(env, "MAX_QUEUE", 1000, minimum=1),
            jpeg_draft=env_bool(env, "JPEG_DRAFT", False),
            default_top_k=env_int(env, "DEFAULT_TOP_K", 5, minimum=1),
            max_images_per_request=env_int(
                env, "MAX_IMAGES_PER_REQUEST", 32, minimum=1, maximum=1024
            ),
            host=env_str(env, "HOST", "127.0.0.1"),
            port=env_int(env, "PORT", 5000, minimum=1, maximum=65535),
            web_processes=env_int(env, "WEB_PROCESSES", 2, minimum=1, maximum=64),
            web_threads=env_int(env, "WEB_THREADS", 32, minimum=1, maximum=256),
            log_level=env_choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=env_choice(env, "LOG_FORMAT", "text", ("text", "json")),
            # prometheus_client's own variable, so it is not QUEUENET_-prefixed.
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR", ""),
            api_keys=parse_api_keys(env_str(env, "API_KEYS", "")),
        )


def parse_api_keys(raw: str) -> tuple[str, ...]:
    """Comma-separated keys, each stripped; ``""`` means none (auth off).

    A key must be at least ``API_KEY_MIN_CHARS`` visible ASCII characters: whitespace,
    control and non-ASCII characters cannot travel reliably in an HTTP header. Errors say
    which item is wrong, never what it holds.
    """
    if not raw:
        return ()
    items = [item.strip() for item in raw.split(",")]
    for position, key in enumerate(items, start=1):
        _check_api_key(key, f"{PREFIX}API_KEYS item {position} of {len(items)}")
    return tuple(items)


def _check_api_key(key: str, where: str) -> None:
    if not key:
        raise SettingsError(f"{where} is empty; separate keys with single commas")
    if not all("!" <= char <= "~" for char in key):
        raise SettingsError(
            f"{where} holds whitespace, control or non-ASCII characters; use letters, digits "
            "and punctuation only"
        )
    if len(key) < API_KEY_MIN_CHARS:
        raise SettingsError(
            f"{where} has {len(key)} characters, fewer than {API_KEY_MIN_CHARS}; generate one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )

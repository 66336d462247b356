"""Settings of the web tier, each declared once here, read once from ``QUEUENET_*`` variables
at the entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from protocol.errors import SettingsError
from protocol.keys import model_name
from protocol.settings import (
    LOG_FORMAT,
    LOG_LEVEL,
    RedisSettings,
    declare,
    from_env,
    nested,
    number,
    setting_field,
    switch,
    text,
    whole,
)

API_KEY_MIN_CHARS = 16
"""Shortest API key accepted: shorter ones are guessable (``secrets.token_urlsafe(32)``
gives 43 characters)."""


def _api_keys(variable: str, raw: str) -> tuple[str, ...]:
    return parse_api_keys(raw, variable)


PREDICT_TIMEOUT_S = declare(
    "PREDICT_TIMEOUT_S",
    10.0,
    "seconds a request may wait for its prediction, queue included",
    tier="web",
    parse=number(0.1, 3600),
)
MAX_UPLOAD_BYTES = declare(
    "MAX_UPLOAD_BYTES", 16 * 1024 * 1024, "bytes in one request body", tier="web", parse=whole(1024)
)
MAX_IMAGE_PIXELS = declare(
    "MAX_IMAGE_PIXELS",
    40_000_000,
    "width × height of a decoded image (checked before decoding)",
    tier="web",
    parse=whole(1),
)
MAX_QUEUE = declare(
    "MAX_QUEUE",
    1000,
    "requests waiting in one model version's queue before 503",
    tier="web",
    parse=whole(1),
)
JPEG_DRAFT = declare(
    "JPEG_DRAFT",
    False,
    "opt-in: decode large JPEGs at a reduced DCT scale; faster, but it changes answers "
    '(see "Exact answers")',
    tier="web",
    parse=switch,
)
DEFAULT_TOP_K = declare(
    "DEFAULT_TOP_K", 5, "predictions returned without `top_k`", tier="web", parse=whole(1)
)
MAX_IMAGES_PER_REQUEST = declare(
    "MAX_IMAGES_PER_REQUEST",
    32,
    "images in one request (repeated fields or JSON `images`)",
    tier="web",
    parse=whole(1, 1024),
)
DEFAULT_MODEL = declare(
    "DEFAULT_MODEL",
    "",
    "model that `POST /predict` serves; empty: the one set in Redis by `queuenet models default` "
    "or `queuenet serve` (else the first model whose worker became ready)",
    tier="web",
    parse=model_name,
)
HOST = declare("HOST", "127.0.0.1", "address gunicorn listens on", tier="web", parse=text)
PORT = declare("PORT", 5000, "TCP port gunicorn listens on", tier="web", parse=whole(1, 65535))
WEB_PROCESSES = declare("WEB_PROCESSES", 2, "gunicorn processes", tier="web", parse=whole(1, 64))
WEB_THREADS = declare(
    "WEB_THREADS",
    32,
    "threads per gunicorn process (each waiting request holds one; processes × threads bounds "
    "requests in flight)",
    tier="web",
    parse=whole(1, 256),
)
WEB_MALLOC_ARENAS = declare(
    "WEB_MALLOC_ARENAS",
    2,
    "glibc malloc arenas per gunicorn process (0: glibc's default, 8 per core); more let "
    "each thread keep the memory of the photos it decoded",
    tier="web",
    parse=whole(0, 1024),
)
API_KEYS = declare(
    "API_KEYS",
    (),
    "comma-separated API keys, each ≥ 16 visible ASCII characters; when set, every request "
    "needs one except `/healthz`, `/readyz`, `/v2/health/live`, `/v2/health/ready`, `/metrics` "
    "and the demo page (`/`, `/static/*`)",
    tier="web",
    parse=_api_keys,
    shown_default="– (no auth)",
)


@dataclass(frozen=True)
class AppSettings:
    redis: RedisSettings = nested(RedisSettings)
    predict_timeout_s: float = setting_field(PREDICT_TIMEOUT_S)
    """Seconds a request may wait for its prediction (queue + inference) before a 504."""
    max_upload_bytes: int = setting_field(MAX_UPLOAD_BYTES)
    """Largest request body in bytes; larger ones get 413."""
    max_image_pixels: int = setting_field(MAX_IMAGE_PIXELS)
    """Largest decoded image in pixels (width x height); larger ones get 400."""
    max_queue: int = setting_field(MAX_QUEUE)
    """Requests allowed to wait in a version's queue; beyond that the answer is 503."""
    jpeg_draft: bool = setting_field(JPEG_DRAFT)
    """Opt-in: decode large JPEGs at a reduced DCT scale (not the reference pixels)."""
    default_top_k: int = setting_field(DEFAULT_TOP_K)
    max_images_per_request: int = setting_field(MAX_IMAGES_PER_REQUEST)
    default_model: str = setting_field(DEFAULT_MODEL)
    host: str = setting_field(HOST)
    port: int = setting_field(PORT)
    web_processes: int = setting_field(WEB_PROCESSES)
    web_threads: int = setting_field(WEB_THREADS)
    """Each in-flight request holds a thread while it waits for its result, so processes x
    threads bounds the requests in flight (and the batch sizes)."""
    web_malloc_arenas: int = setting_field(WEB_MALLOC_ARENAS)
    """Bounds the memory a process keeps after decoding large photos on many threads."""
    log_level: str = setting_field(LOG_LEVEL)
    log_format: str = setting_field(LOG_FORMAT)
    api_keys: tuple[str, ...] = field(default=(), repr=False, metadata={"setting": API_KEYS})
    """Left out of ``repr`` so logging the settings never prints a key."""
    prometheus_multiproc_dir: str = ""
    """``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's own variable): where gunicorn's
    processes share their metrics (set by ``queuenet web``/``serve``); empty means this
    process's metrics only."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AppSettings:
        return replace(
            from_env(cls, env), prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR", "")
        )


def parse_api_keys(raw: str, variable: str = API_KEYS.variable) -> tuple[str, ...]:
    """Comma-separated keys, each stripped; ``""`` means none (auth off).

    A key must be at least ``API_KEY_MIN_CHARS`` visible ASCII characters: whitespace,
    control and non-ASCII characters cannot travel reliably in an HTTP header. Errors say
    which item is wrong, never what it holds.
    """
    if not raw:
        return ()
    items = [item.strip() for item in raw.split(",")]
    for position, key in enumerate(items, start=1):
        _check_api_key(key, f"{variable} item {position} of {len(items)}")
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

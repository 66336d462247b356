"""Settings of a model worker, each declared once here, read once from ``QUEUENET_*`` variables
at the entry point."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from protocol.errors import SettingsError
from protocol.keys import model_name
from protocol.settings import (
    LOG_FORMAT,
    LOG_LEVEL,
    RedisSettings,
    choice,
    declare,
    from_env,
    nested,
    number,
    setting_field,
    text,
    whole,
)
from worker.litert import QUANTIZATIONS
from worker.runtimes import RUNTIMES, RuntimeOptions

DEFAULT_MODEL = "efficientnet-lite0"


def host_prefix() -> str:
    """Prefix of the default worker names on this host."""
    return f"{socket.gethostname()}-"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "queuenet"


def _path(variable: str, raw: str) -> Path:
    return Path(raw).expanduser()


MODEL = declare(
    "MODEL",
    DEFAULT_MODEL,
    "the model spec: `efficientnet-lite0`, `efficientnet-lite1`, `efficientnet-lite2`, a "
    "`keras.applications` name (`ResNet50`…), or a `.keras` path",
    tier="worker",
    parse=text,
)
MODEL_NAME = declare(
    "MODEL_NAME",
    "",
    "the name clients use (`/models/{name}/predict`)",
    tier="worker",
    parse=model_name,
    shown_default="from the spec (`efficientnet-lite0`; a `.keras` path: its file name)",
)
MODEL_VERSION = declare(
    "MODEL_VERSION",
    "1",
    "the version this worker serves; a new version takes no unversioned traffic until "
    "promoted (`queuenet models promote`), except a model's first",
    tier="worker",
    parse=model_name,
)
LABELS = declare(
    "LABELS",
    "",
    "text file, one label per line in output order (for a `.keras` path)",
    tier="worker",
    parse=text,
)
MODEL_CACHE_DIR = declare(
    "MODEL_CACHE_DIR",
    None,
    "where built models are cached",
    tier="worker",
    parse=_path,
    shown_default="`~/.cache/queuenet`",
    default_factory=default_cache_dir,
)
BATCH_SIZE = declare(
    "BATCH_SIZE", 32, "most images per model call", tier="worker", parse=whole(1, 1024)
)
BATCH_WAIT_MS = declare(
    "BATCH_WAIT_MS",
    2.0,
    "milliseconds to wait for a partial batch to fill",
    tier="worker",
    parse=number(0.0, 10_000),
)
BLOCK_TIMEOUT_S = declare(
    "BLOCK_TIMEOUT_S",
    1.0,
    "seconds one wait for work blocks before the loop looks up",
    tier="worker",
    parse=number(0.01, 5),
)
RESULT_TTL_S = declare(
    "RESULT_TTL_S", 60, "seconds an unread result stays in Redis", tier="worker", parse=whole(1)
)
HEARTBEAT_TTL_S = declare(
    "HEARTBEAT_TTL_S",
    10,
    "seconds without a heartbeat before a worker's items are taken back",
    tier="worker",
    parse=whole(2),
)
MAX_ATTEMPTS = declare(
    "MAX_ATTEMPTS",
    3,
    "claims of an item by workers that died (or a model that raised) before it is dead-lettered",
    tier="worker",
    parse=whole(1, 100),
)
DRAIN_TIMEOUT_S = declare(
    "DRAIN_TIMEOUT_S",
    10.0,
    "on SIGTERM, the last live worker of a version keeps answering its queue until it has been "
    "empty for a second, at most this long (0: stop after the batch in hand)",
    tier="worker",
    parse=number(0.0, 3600),
)
WORKER_NAME = declare(
    "WORKER_NAME",
    "",
    "unique worker name",
    tier="worker",
    parse=text,
    shown_default="`{hostname}-{pid}`",
)
TF_INTRA_OP_THREADS = declare(
    "TF_INTRA_OP_THREADS",
    0,
    "TensorFlow threads inside one op; 0 lets TensorFlow choose",
    tier="worker",
    parse=whole(0),
)
TF_INTER_OP_THREADS = declare(
    "TF_INTER_OP_THREADS",
    0,
    "TensorFlow ops run in parallel; 0 lets TensorFlow choose",
    tier="worker",
    parse=whole(0),
)
RUNTIME = declare(
    "RUNTIME",
    "auto",
    "what runs the model: `auto` (LiteRT on a CPU-only machine when its converted model passes "
    "the fidelity check, else TensorFlow), `tensorflow`, `litert`",
    tier="worker",
    parse=choice(*RUNTIMES),
)
QUANTIZE = declare(
    "QUANTIZE",
    "none",
    "`int8`: opt-in LiteRT full-integer quantisation; faster, and it changes answers (see "
    '"Runtimes")',
    tier="worker",
    parse=choice(*QUANTIZATIONS),
)
RUNTIME_THREADS = declare(
    "RUNTIME_THREADS",
    0,
    "threads of the LiteRT interpreter that runs a lone image; 0 = the CPUs this process may "
    "run on",
    tier="worker",
    parse=whole(0, 1024),
)
RUNTIME_BATCH_THREADS = declare(
    "RUNTIME_BATCH_THREADS",
    0,
    "LiteRT: a batch of several images runs on this many single-threaded interpreters at once, "
    "each on its share of the images; 0 = as `QUEUENET_RUNTIME_THREADS`",
    tier="worker",
    parse=whole(0, 1024),
)
METRICS_PORT = declare(
    "METRICS_PORT",
    0,
    "TCP port of the worker's Prometheus `/metrics` (0: none; `serve` gives its workers port, "
    "port+1, …)",
    tier="worker",
    parse=whole(0, 65535),
)


@dataclass(frozen=True)
class WorkerSettings:
    redis: RedisSettings = nested(RedisSettings)
    model: str = setting_field(MODEL)
    model_name: str = setting_field(MODEL_NAME)
    """Empty: derived from ``model`` by :func:`worker.registry.derive_model_name`."""
    model_version: str = setting_field(MODEL_VERSION)
    labels_path: str = setting_field(LABELS)
    model_cache_dir: Path = setting_field(MODEL_CACHE_DIR)
    batch_size: int = setting_field(BATCH_SIZE)
    batch_wait_ms: float = setting_field(BATCH_WAIT_MS)
    block_timeout_s: float = setting_field(BLOCK_TIMEOUT_S)
    result_ttl_s: int = setting_field(RESULT_TTL_S)
    heartbeat_ttl_s: int = setting_field(HEARTBEAT_TTL_S)
    max_attempts: int = setting_field(MAX_ATTEMPTS)
    drain_timeout_s: float = setting_field(DRAIN_TIMEOUT_S)
    worker_name: str = setting_field(WORKER_NAME)
    tf_intra_op_threads: int = setting_field(TF_INTRA_OP_THREADS)
    tf_inter_op_threads: int = setting_field(TF_INTER_OP_THREADS)
    runtime: str = setting_field(RUNTIME)
    quantize: str = setting_field(QUANTIZE)
    runtime_threads: int = setting_field(RUNTIME_THREADS)
    runtime_batch_threads: int = setting_field(RUNTIME_BATCH_THREADS)
    metrics_port: int = setting_field(METRICS_PORT)
    log_level: str = setting_field(LOG_LEVEL)
    log_format: str = setting_field(LOG_FORMAT)

    def name(self) -> str:
        """The configured name, or one unique to this process on this host."""
        return self.worker_name or f"{host_prefix()}{os.getpid()}"

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(
            self.runtime, self.quantize, self.runtime_threads, self.runtime_batch_threads
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        from worker.registry import derive_model_name

        settings = from_env(cls, env)
        if not settings.model_name:
            settings = replace(settings, model_name=derive_model_name(settings.model))
        if settings.quantize != "none" and settings.runtime == "tensorflow":
            raise SettingsError(
                f"{QUANTIZE.variable}={settings.quantize} needs {RUNTIME.variable}=litert or auto"
            )
        return settings

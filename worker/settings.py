"""Settings of a model worker, read once from ``QUEUENET_*`` variables at the entry point."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import SettingsError
from protocol.settings import RedisSettings, env_choice, env_float, env_int, env_str
from worker.litert import QUANTIZATIONS
from worker.runtimes import RUNTIMES, RuntimeOptions

DEFAULT_MODEL = "efficientnet-lite0"


def host_prefix() -> str:
    """Prefix of the default worker names on this host."""
    return f"{socket.gethostname()}-"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "queuenet"


@dataclass(frozen=True)
class WorkerSettings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    model: str = DEFAULT_MODEL
    """``efficientnet-lite0``, a ``keras.applications`` name, or a path to a ``.keras`` file."""
    labels_path: str = ""
    """Text file with one label per line, in output order (for a ``.keras`` model)."""
    model_cache_dir: Path = field(default_factory=default_cache_dir)
    """Where the built default model is saved as ``.keras`` and loaded on later starts."""
    batch_size: int = 32
    """Most images predicted in one call of the model."""
    batch_wait_ms: float = 2.0
    """Milliseconds to wait for a partial batch to fill after the queue ran empty."""
    block_timeout_s: float = 1.0
    """Seconds one blocking wait for work lasts before the loop checks heartbeat and stop flag."""
    result_ttl_s: int = 60
    """Seconds a result stays in Redis for the web tier to pick up."""
    heartbeat_ttl_s: int = 10
    """Seconds after the last heartbeat at which other workers take this worker's items back."""
    max_attempts: int = 3
    """Times an item may be claimed by a worker that then dies before it is dead-lettered."""
    worker_name: str = ""
    """Unique name of this worker; empty means ``{hostname}-{pid}`` (see :meth:`name`)."""
    tf_intra_op_threads: int = 0
    """TensorFlow threads inside one op; 0 lets TensorFlow choose (one per core)."""
    tf_inter_op_threads: int = 0
    """TensorFlow ops run in parallel; 0 lets TensorFlow choose."""
    runtime: str = "auto"
    """Backend that runs the model: ``auto`` (``litert`` on a CPU-only machine when its
    converted model passes the fidelity check, else ``tensorflow``), ``tensorflow``, ``litert``."""
    quantize: str = "none"
    """``int8``: opt-in LiteRT full-integer quantisation; faster, and answers change."""
    runtime_threads: int = 0
    """Threads of the LiteRT interpreter; 0 = the CPUs this process may run on."""
    metrics_port: int = 0
    """TCP port of this worker's Prometheus ``/metrics``; 0 serves none."""
    log_level: str = "INFO"
    log_format: str = "text"

    def name(self) -> str:
        """The configured name, or one unique to this process on this host."""
        return self.worker_name or f"{host_prefix()}{os.getpid()}"

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(self.runtime, self.quantize, self.runtime_threads)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        settings = cls(
            redis=RedisSettings.from_env(env),
            model=env_str(env, "MODEL", DEFAULT_MODEL),
            labels_path=env_str(env, "LABELS", ""),
            model_cache_dir=Path(env_str(env, "MODEL_CACHE_DIR", str(default_cache_dir()))),
            batch_size=env_int(env, "BATCH_SIZE", 32, minimum=1, maximum=1024),
            batch_wait_ms=env_float(env, "BATCH_WAIT_MS", 2.0, minimum=0.0, maximum=10_000),
            block_timeout_s=env_float(env, "BLOCK_TIMEOUT_S", 1.0, minimum=0.01, maximum=5),
            result_ttl_s=env_int(env, "RESULT_TTL_S", 60, minimum=1),
            heartbeat_ttl_s=env_int(env, "HEARTBEAT_TTL_S", 10, minimum=2),
            max_attempts=env_int(env, "MAX_ATTEMPTS", 3, minimum=1, maximum=100),
            worker_name=env_str(env, "WORKER_NAME", ""),
            tf_intra_op_threads=env_int(env, "TF_INTRA_OP_THREADS", 0, minimum=0),
            tf_inter_op_threads=env_int(env, "TF_INTER_OP_THREADS", 0, minimum=0),
            runtime=env_choice(env, "RUNTIME", "auto", RUNTIMES),
            quantize=env_choice(env, "QUANTIZE", "none", QUANTIZATIONS),
            runtime_threads=env_int(env, "RUNTIME_THREADS", 0, minimum=0, maximum=1024),
            metrics_port=env_int(env, "METRICS_PORT", 0, minimum=0, maximum=65535),
            log_level=env_choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=env_choice(env, "LOG_FORMAT", "text", ("text", "json")),
        )
        if settings.quantize != "none" and settings.runtime == "tensorflow":
            raise SettingsError(
                f"QUEUENET_QUANTIZE={settings.quantize} needs QUEUENET_RUNTIME=litert or auto"
            )
        return settings

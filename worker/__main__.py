"""Entry point of a model worker: ``python -m worker`` or ``queuenet worker``.

Reads the settings from the environment, configures logging, loads the model once, warms
it up, and runs the loop until SIGTERM/SIGINT (the batch in hand is finished first).
``--check`` exits 0 when this worker's heartbeat is fresh, 1 otherwise (container health).
``--model``, ``--model-name`` and ``--model-version`` set ``QUEUENET_MODEL``,
``QUEUENET_MODEL_NAME`` and ``QUEUENET_MODEL_VERSION``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from protocol.backend import connect_backend
from protocol.errors import SettingsError
from protocol.logconfig import configure_logging
from protocol.shards import ShardedQueue, ShardedRegistry, ShardHealth, directory_for
from worker.settings import MODEL, MODEL_NAME, MODEL_VERSION, WorkerSettings, host_prefix

logger = logging.getLogger("worker")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="queuenet worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for flag, variable in FLAG_SETTINGS.items():  # a flag sets its variable, and wins over it
        if getattr(args, flag) is not None:
            env[variable] = getattr(args, flag)
    try:
        settings = WorkerSettings.from_env(env)
    except SettingsError as exc:
        print(f"queuenet worker: {exc}", file=sys.stderr)  # logging is not configured yet
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.check:
        return check(settings)
    return serve(settings)


FLAG_SETTINGS = {
    "model": MODEL.variable,
    "model_name": MODEL_NAME.variable,
    "model_version": MODEL_VERSION.variable,
}
"""Command-line flags and the setting each one sets."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's flags (``queuenet worker`` shares them)."""
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if a worker heartbeat is fresh"
    )
    parser.add_argument("--model", help=f"the model spec ({MODEL.variable})")
    parser.add_argument("--model-name", help=f"the name clients use ({MODEL_NAME.variable})")
    parser.add_argument(
        "--model-version", help=f"the version this worker serves ({MODEL_VERSION.variable})"
    )


def check(settings: WorkerSettings) -> int:
    """0 when the named worker (``QUEUENET_WORKER_NAME``) or, without a name, any worker on
    this host serving the configured model version has a fresh heartbeat; 1 otherwise."""
    try:
        backend = connect_backend(settings.redis)
        keys = backend.keys(settings.redis.namespace)
        health = ShardHealth(backend.shards)
        registry = ShardedRegistry(
            backend, keys, settings.model_name, settings.model_version, health
        )
        live = registry.live_workers()
    except Exception as exc:  # any failure to look means "not healthy"
        logger.error("health check failed: %s", exc)
        return 1
    if settings.worker_name:
        alive = [n for n in live if n == settings.worker_name]
    else:
        alive = [n for n in live if n.startswith(host_prefix())]
    logger.info("live workers: %s", ", ".join(alive) or "none")
    return 0 if alive else 1


def serve(settings: WorkerSettings) -> int:
    from worker.loop import Worker
    from worker.metrics import serve_metrics
    from worker.model import warm_up, warmup_sizes
    from worker.registry import ModelLoadError, load_model

    _configure_tensorflow(settings)
    started = time.monotonic()
    try:
        model = load_model(
            settings.model,
            labels_path=settings.labels_path,
            cache_dir=settings.model_cache_dir,
            runtime=settings.runtime_options(),
        ).named(settings.model_name, settings.model_version)
    except ModelLoadError as exc:
        logger.error("cannot load model: %s", exc)
        return 2
    warm_up(model.predictor, warmup_sizes(settings.batch_size))
    logger.info(
        "model %s version %s (%s) loaded and warm in %.1fs; redis=%s namespace=%s",
        model.card.name,
        model.card.version,
        settings.model,
        time.monotonic() - started,
        settings.redis.redacted_url(),
        settings.redis.namespace,
    )
    serve_metrics(settings.metrics_port)
    backend = connect_backend(settings.redis, blocking_timeout_s=settings.block_timeout_s + 1)
    keys = backend.keys(settings.redis.namespace)
    health = ShardHealth(backend.shards)
    name, version = settings.model_name, settings.model_version
    worker = Worker(
        ShardedQueue(backend, keys, name, version, health=health),
        ShardedRegistry(backend, keys, name, version, health),
        directory_for(backend, keys),
        model,
        settings,
    )
    logger.info(
        "serving %s version %s from %d queue shard(s) on %s",
        name,
        version,
        backend.shards,
        settings.redis.redacted_url(),
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info(
            "signal %s: finishing the batch in hand, then stopping", signal.Signals(signum).name
        )
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    return 2 if worker.fatal_error else 0


def _configure_tensorflow(settings: WorkerSettings) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if settings.tf_intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(settings.tf_intra_op_threads)
    if settings.tf_inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(settings.tf_inter_op_threads)


if __name__ == "__main__":
    sys.exit(main())

"""``queuenet serve | web | worker | predict``.

``serve`` runs the whole service on one machine: a private Redis (unless
``QUEUENET_REDIS_URL`` is set), gunicorn with the web app, and the model worker(s). It prints
the URL once the service answers and stops every process it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from app.settings import AppSettings
from protocol.errors import SettingsError
from protocol.logconfig import configure_logging

logger = logging.getLogger("queuenet")


def gunicorn_command(settings: AppSettings) -> list[str]:
    """gunicorn's command line for the web tier with ``settings``."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.host}:{settings.port}",
        "--workers",
        str(settings.web_processes),
        "--worker-class",
        "gthread",
        "--threads",
        str(settings.web_threads),
        # Longer than any request may wait, so gunicorn never kills a request that is on time.
        "--timeout",
        str(int(settings.predict_timeout_s) + 30),
        "--graceful-timeout",
        str(int(settings.predict_timeout_s) + 5),
        # The control socket (gunicorn >= 25) is one fixed path per user; several servers on
        # one machine would fight over it, and nothing here uses it.
        "--no-control-socket",
        "app.wsgi:app",
    ]


def prepare_metrics_dir(env: dict[str, str], settings: AppSettings) -> None:
    """Give gunicorn's processes an empty shared metrics directory (one per port, reused)."""
    directory = Path(
        env.get("PROMETHEUS_MULTIPROC_DIR")
        or Path(tempfile.gettempdir()) / f"queuenet-metrics-{settings.port}"
    )
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # samples of a previous run must not be added in
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="queuenet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Redis + web + worker(s) on this machine")
    serve.add_argument("--host", help="address to bind (QUEUENET_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (QUEUENET_PORT, default 5000)")
    serve.add_argument("--workers", type=int, default=1, help="model worker processes (default 1)")
    sub.add_parser("web", help="gunicorn serving the web app (needs QUEUENET_REDIS_URL)")
    sub.add_parser("predict", help="classify image files, folders or globs", add_help=False)
    worker = sub.add_parser("worker", help="one model worker")
    worker.add_argument(
        "--check", action="store_true", help="exit 0 if a worker heartbeat is fresh"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["predict"]:  # the client parses its own arguments
        from client._cli import main as predict_main

        return predict_main(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "worker":
        from worker.__main__ import main as worker_main

        return worker_main(["--check"] if args.check else [])
    env = dict(os.environ)
    if args.command == "serve":
        if args.host:
            env["QUEUENET_HOST"] = args.host
        if args.port is not None:
            env["QUEUENET_PORT"] = str(args.port)
    try:
        settings = AppSettings.from_env(env)
    except SettingsError as exc:
        print(f"queuenet {args.command}: {exc}", file=sys.stderr)  # before logging exists
        return 2
    prepare_metrics_dir(env, settings)
    if args.command == "web":
        os.execve(sys.executable, gunicorn_command(settings), env)
    configure_logging(settings.log_level, settings.log_format)
    if args.workers < 1:
        logger.error("--workers must be at least 1")
        return 2
    from queuenet.supervisor import Supervisor

    return Supervisor(settings, env, num_workers=args.workers).run()

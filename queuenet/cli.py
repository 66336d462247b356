"""``queuenet serve | web | worker | predict``.

``serve`` runs the whole service on one machine: a private Redis (unless
``QUEUENET_REDIS_URL`` is set), gunicorn with the web app, and the model worker(s). It prints
the URL once the service answers, restarts a process that dies (see queuenet/supervisor.py)
and stops every process it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from app.settings import AppSettings
from protocol.errors import SettingsError
from protocol.logconfig import configure_logging
from queuenet.web import gunicorn_command, prepare_metrics_dir

logger = logging.getLogger("queuenet")


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

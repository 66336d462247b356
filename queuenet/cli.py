"""``queuenet serve | web | worker | predict | models | settings``.

``serve`` runs the whole service on one machine: a private Redis (unless
``QUEUENET_REDIS_URL`` is set), gunicorn with the web app, and the model worker(s) of each
``--model``. It prints the URL once the service answers, restarts a process that dies (see
queuenet/supervisor.py) and stops every process it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from protocol.errors import SettingsError
from protocol.keys import model_name
from protocol.logconfig import configure_logging
from queuenet.supervisor_types import ServedModel

logger = logging.getLogger("queuenet")

PASS_THROUGH = ("predict", "worker", "models", "settings")
"""Subcommands that parse their own arguments."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="queuenet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Redis + web + worker(s) on this machine")
    serve.add_argument("--host", help="address to bind (QUEUENET_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (QUEUENET_PORT, default 5000)")
    serve.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]SPEC",
        help="a model to serve (repeatable; the first is the default model of POST /predict); "
        "default: QUEUENET_MODEL or efficientnet-lite0",
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="model worker processes per model (default 1)"
    )
    sub.add_parser("web", help="gunicorn serving the web app (needs QUEUENET_REDIS_URL)")
    sub.add_parser("worker", help="one model worker (queuenet worker --help)", add_help=False)
    sub.add_parser("predict", help="classify image files, folders or globs", add_help=False)
    sub.add_parser("models", help="list, promote and canary model versions", add_help=False)
    sub.add_parser("settings", help="every QUEUENET_* setting", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in PASS_THROUGH:
        return _pass_through(argv[0], argv[1:])
    args = parser.parse_args(argv)
    # The web tier's modules (Flask, prometheus) only for the commands that run it.
    from app.settings import AppSettings
    from queuenet.web import gunicorn_command, prepare_metrics_dir

    env = dict(os.environ)
    if args.command == "serve":
        if args.host:
            env["QUEUENET_HOST"] = args.host
        if args.port is not None:
            env["QUEUENET_PORT"] = str(args.port)
    try:
        settings = AppSettings.from_env(env)
        models = _served_models(args.model or [], env) if args.command == "serve" else []
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

    return Supervisor(settings, env, models=models, num_workers=args.workers).run()


def _pass_through(command: str, argv: list[str]) -> int:
    if command == "predict":
        from client._cli import main as predict_main

        return predict_main(argv)
    if command == "worker":
        from worker.__main__ import main as worker_main

        return worker_main(argv)
    if command == "models":
        from queuenet.models_cli import main as models_main

        return models_main(argv)
    from queuenet.settings_cli import main as settings_main

    return settings_main(argv)


def _served_models(specs: list[str], env: dict[str, str]) -> list[ServedModel]:
    """``--model [NAME=]SPEC`` values (or the worker settings' model), checked: names unique."""
    from worker.registry import derive_model_name
    from worker.settings import WorkerSettings

    base = WorkerSettings.from_env(env)
    if not specs:
        return [ServedModel(base.model_name, base.model, base.model_version)]
    models = []
    for raw in specs:
        name, equals, spec = raw.partition("=")
        if not equals:
            name, spec = derive_model_name(raw), raw
        if not spec:
            raise SettingsError(f"--model {raw!r}: give a spec after '='")
        name = model_name("--model", name)
        models.append(ServedModel(name, spec, base.model_version))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SettingsError(f"--model names must differ, got {', '.join(names)}; use NAME=SPEC")
    return models

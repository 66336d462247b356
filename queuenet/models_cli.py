"""``queuenet models list | promote NAME VERSION | canary NAME VERSION PERCENT | default NAME |
forget NAME VERSION``:
the models and versions of the Redis the service uses (``QUEUENET_REDIS_URL``,
``QUEUENET_NAMESPACE``), and the routes of unversioned requests.

Exit status: 0 done, 1 refused (an unknown model or version, Redis unreachable), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import redis

from protocol.backend import Backend, connect_backend
from protocol.errors import SettingsError
from protocol.keys import Keys, model_name
from protocol.routing import Route, RoutingError
from protocol.settings import RedisSettings
from protocol.shards import directory_for
from protocol.status import ModelStatus, catalog_status


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = RedisSettings.from_env(os.environ)
    except SettingsError as exc:
        sys.stderr.write(f"queuenet models: {exc}\n")
        return 2
    backend = connect_backend(settings)
    try:
        sys.stdout.write(_act(args, backend, backend.keys(settings.namespace)))
    except RoutingError as exc:
        sys.stderr.write(f"queuenet models {args.action}: {exc}\n")
        return 1
    except redis.RedisError as exc:
        sys.stderr.write(f"queuenet models: Redis at {settings.redacted_url()} failed: {exc}\n")
        return 1
    finally:
        backend.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="queuenet models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="every model, version, route and worker count")
    listing.add_argument("--json", action="store_true", help="GET /models' JSON instead")
    promote = sub.add_parser("promote", help="VERSION serves NAME's unversioned requests")
    canary = sub.add_parser("canary", help="PERCENT of NAME's unversioned requests go to VERSION")
    default = sub.add_parser("default", help="NAME serves POST /predict")
    forget = sub.add_parser("forget", help="take a retired VERSION of NAME off the list")
    for command in (promote, canary, default, forget):
        command.add_argument("name", type=_name("NAME"))
    for command in (promote, canary, forget):
        command.add_argument("version", type=_name("VERSION"))
    canary.add_argument("percent", type=float, help="0 to 100; 0 ends the canary")
    return parser


def _act(args: argparse.Namespace, backend: Backend, keys: Keys) -> str:
    """Do what ``args`` ask; the text to print."""
    directory = directory_for(backend, keys)
    if args.action == "list":
        catalog, models = catalog_status(backend, keys)
        if args.json:
            body = {"default": catalog.default, "models": [m.to_json() for m in models]}
            return json.dumps(body, indent=2) + "\n"
        return table(models, catalog.default)
    if args.action == "promote":
        return show(args.name, directory.promote(args.name, args.version))
    if args.action == "canary":
        return show(args.name, directory.canary(args.name, args.version, args.percent))
    if args.action == "forget":
        directory.forget(args.name, args.version)
        return f"version {args.version} of {args.name} is no longer listed\n"
    directory.set_default(args.name)
    return f"{args.name} now serves POST /predict\n"


def _name(what: str) -> argparse.FileType:
    def parse(raw: str) -> str:
        try:
            return model_name(what, raw)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse  # type: ignore[return-value]


def show(name: str, route: Route) -> str:
    canary = (
        f"; canary: version {route.canary} takes {route.canary_percent:g} %" if route.canary else ""
    )
    return f"{name}: version {route.serving} serves unversioned requests{canary}\n"


def table(models: list[ModelStatus], default: str | None) -> str:
    header = ("model", "version", "route", "ready", "workers", "input", "labels", "queued")
    rows: list[tuple[str, ...]] = []
    for model in models:
        route = model.route
        for v in model.versions:
            if route is not None and v.version == route.serving:
                share = f"serving {100 - (route.canary_percent if route.canary else 0):g}%"
            elif route is not None and v.version == route.canary:
                share = f"canary {route.canary_percent:g}%"
            else:
                share = "-"
            name = f"{model.name} (default)" if model.name == default else model.name
            rows.append(
                (
                    name,
                    v.version,
                    share,
                    "yes" if v.ready else "no",
                    str(len(v.live_workers)),
                    "-" if v.card is None else str(v.card.input_size),
                    "-" if v.card is None else str(v.card.num_labels),
                    str(v.queued),
                )
            )
    if not rows:
        return "no model is served yet (no worker has announced one)\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines) + "\n"

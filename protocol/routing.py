"""Which models and versions exist, which version answers a model's unversioned requests (with
an optional canary share), and which model ``POST /predict`` serves.

Stored in three namespace-wide keys (see :mod:`protocol.keys`): the set of announced
``name@version``, one hash of routes (model name -> JSON), and the default model's name. A
worker announces its version when it is ready; the first version of a model is promoted then
(nobody else has), and the first model announced becomes the default unless one is set.
Operators change routes with ``queuenet models promote | canary | default``.

The web tier resolves a request to a concrete version before enqueueing it, so workers only
ever see their own version's queue.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from protocol.keys import Keys
from protocol.workers import WorkerRegistry

SEPARATOR = "@"

# Promote ``version`` for ``model`` unless the model has a route already; make ``model`` the
# default unless there is one. KEYS = routing, default-model; ARGV = model, route JSON.
_ANNOUNCE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return 1
"""


class RoutingError(ValueError):
    """A route to something that does not exist; the message says what does."""


@dataclass(frozen=True)
class Route:
    """Where a model's unversioned requests go."""

    serving: str
    canary: str | None = None
    canary_percent: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {"serving": self.serving, "canary": self.canary, "canary_percent": self.canary_percent}
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Route:
        obj = json.loads(raw)
        canary = obj.get("canary")
        return cls(
            serving=str(obj["serving"]),
            canary=None if canary is None else str(canary),
            canary_percent=float(obj.get("canary_percent") or 0.0),
        )

    def pick(self, draw: Callable[[], float] = random.random) -> str:
        """The version for one request: the canary for ``canary_percent`` % of them."""
        if self.canary is not None and draw() * 100.0 < self.canary_percent:
            return self.canary
        return self.serving


@dataclass(frozen=True)
class Catalog:
    """A snapshot of every model, its versions, routes and the default model."""

    versions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Model name -> its announced versions, sorted."""
    routes: dict[str, Route] = field(default_factory=dict)
    default: str | None = None

    def has(self, model: str, version: str | None = None) -> bool:
        known = self.versions.get(model)
        return known is not None and (version is None or version in known)

    def describe(self) -> str:
        """What exists, in words, for a 404 message."""
        if not self.versions:
            return "no model is served yet (no worker has announced one)"
        return "; ".join(
            f"{name} (versions {', '.join(versions)})" for name, versions in self.versions.items()
        )


class ModelDirectory:
    """Reading and changing the catalog of one namespace."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._announce = client.register_script(_ANNOUNCE)

    def catalog(self) -> Catalog:
        """Every model, version and route, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.versions())
            pipe.hgetall(self.keys.routing())
            pipe.get(self.keys.default_model())
            members, routes, default = pipe.execute()
        versions: dict[str, list[str]] = {}
        for member in members:
            model, _, version = _text(member).rpartition(SEPARATOR)
            versions.setdefault(model, []).append(version)
        return Catalog(
            versions={m: tuple(sorted(v, key=_version_order)) for m, v in sorted(versions.items())},
            routes={_text(m): Route.from_json(r) for m, r in routes.items()},
            default=None if default is None else _text(default),
        )

    def announce(self, model: str, version: str) -> None:
        """A worker of ``model`` ``version`` is ready: list the version; promote it if the
        model has no route yet; make the model the default if there is none."""
        self.client.sadd(self.keys.versions(), f"{model}{SEPARATOR}{version}")
        self._announce(
            keys=[self.keys.routing(), self.keys.default_model()],
            args=[model, Route(serving=version).to_json()],
        )

    def promote(self, model: str, version: str) -> Route:
        """Send ``model``'s unversioned requests to ``version`` (and end any canary)."""
        self._check(model, version)
        route = Route(serving=version)
        self.client.hset(self.keys.routing(), model, route.to_json())
        return route

    def canary(self, model: str, version: str, percent: float) -> Route:
        """Send ``percent`` % of ``model``'s unversioned requests to ``version``; 0 ends it."""
        if not 0.0 <= percent <= 100.0:
            raise RoutingError(f"the canary share must be 0 to 100 percent, got {percent}")
        catalog = self._check(model, version)
        current = catalog.routes.get(model)
        if current is None:
            raise RoutingError(f"model {model} has no serving version yet; promote one first")
        if percent == 0.0:
            route = Route(serving=current.serving)
        elif version == current.serving:
            raise RoutingError(f"version {version} of {model} is already the serving version")
        else:
            route = Route(serving=current.serving, canary=version, canary_percent=percent)
        self.client.hset(self.keys.routing(), model, route.to_json())
        return route

    def set_default(self, model: str, *, known: bool = True) -> None:
        """Make ``model`` the one ``POST /predict`` serves; ``known=False`` sets it before any
        worker of it has announced itself (``queuenet serve`` at start)."""
        if known:
            self._check(model)
        self.client.set(self.keys.default_model(), model)

    def forget(self, model: str, version: str) -> None:
        """Take a retired version out of the catalog (and its model card): ``GET /models`` no
        longer lists it. Refused while a worker of it is alive or a route points at it; a
        model's last version takes its route (and, if it was the default, the default) along."""
        catalog = self._check(model, version)
        route = catalog.routes.get(model)
        remaining = [v for v in catalog.versions[model] if v != version]
        if route is not None and version in (route.serving, route.canary) and remaining:
            raise RoutingError(
                f"version {version} of {model} still takes its requests; promote another "
                "version (or end the canary) first"
            )
        registry = WorkerRegistry(self.client, self.keys.version(model, version))
        live = registry.live_workers()
        if live:
            raise RoutingError(
                f"version {version} of {model} still has {len(live)} live worker(s): "
                f"{', '.join(live)}; stop them first"
            )
        registry.forget_card()
        self.client.srem(self.keys.versions(), f"{model}{SEPARATOR}{version}")
        if not remaining:
            self.client.hdel(self.keys.routing(), model)
            if catalog.default == model:
                self.client.delete(self.keys.default_model())

    def _check(self, model: str, version: str | None = None) -> Catalog:
        catalog = self.catalog()
        if not catalog.has(model):
            raise RoutingError(f"no model {model!r}; {catalog.describe()}")
        if version is not None and not catalog.has(model, version):
            known = ", ".join(catalog.versions[model])
            raise RoutingError(f"no version {version!r} of {model}; its versions: {known}")
        return catalog


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _version_order(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order (2 before 10), then the others by name."""
    return (0, int(version)) if version.isdigit() else (1, version)

"""Which models and versions exist, which version answers a model's unversioned requests (with
an optional canary share), and which model ``POST /predict`` serves.

Stored in three namespace-wide keys (see :mod:`protocol.keys`): the set of announced
``name@version``, one hash of routes (model name -> JSON), and the default model. A
worker announces its version when it is ready; the first version of a model is promoted then
(nobody else has), and the first model announced becomes the default unless one is set.
Operators change routes with ``queuenet models promote | canary | default``.

The web tier resolves a request to a concrete version before enqueueing it, so workers only
ever see their own version's queue.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from protocol.keys import Keys
from protocol.workers import WorkerRegistry

SEPARATOR = "@"
T = TypeVar("T")

# Promote ``version`` for ``model`` unless the model has a route already; make ``model`` the
# default unless there is one. KEYS = routing, default-model; ARGV = model, route, default.
_ANNOUNCE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'NX')
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

    def stored(self, *, revision: int) -> str:
        """As kept in Redis: the route and the revision that orders changes."""
        return json.dumps(
            {
                "serving": self.serving,
                "canary": self.canary,
                "canary_percent": self.canary_percent,
                "revision": revision,
            }
        )

    @classmethod
    def from_stored(cls, raw: bytes | str) -> tuple[int, Route]:
        obj = json.loads(raw)
        canary = obj.get("canary")
        route = cls(
            serving=str(obj["serving"]),
            canary=None if canary is None else str(canary),
            canary_percent=float(obj.get("canary_percent") or 0.0),
        )
        return int(obj.get("revision") or 0), route

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
    """Reading and changing the catalog of one namespace.

    With several independent servers the catalog is kept on each: changes go to every server
    that answers, and a read merges what the servers that answer hold (the union of versions;
    per model the route, and the default, written last: routes and the default carry a
    revision, the time of an operator's change, 0 for what a worker announced). A server that
    was down during a change catches up the next time the change is made or announced.
    """

    def __init__(
        self,
        clients: Any,
        keys: Keys,
        *,
        registry_of: Callable[[str, str], Any] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.clients: list[Any] = list(clients) if isinstance(clients, (list, tuple)) else [clients]
        self.keys = keys
        self.clock_ns = clock_ns
        self._registry_of = registry_of or (
            lambda model, version: WorkerRegistry(self.clients[0], keys.version(model, version))
        )
        self._announce = [client.register_script(_ANNOUNCE) for client in self.clients]

    @property
    def client(self) -> Any:
        """The first catalog server's client (for callers that need one)."""
        return self.clients[0]

    def _each(self, action: Callable[[int, Any], T]) -> list[T]:
        """``action(index, client)`` on every catalog server that answers; raises when none
        does."""
        results: list[T] = []
        error: Exception | None = None
        for index, client in enumerate(self.clients):
            try:
                results.append(action(index, client))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                error = exc
        if error is not None and not results:
            raise error
        return results

    def catalog(self) -> Catalog:
        """Every model, version and route: one round trip per catalog server."""
        snapshots = self._each(lambda _, client: _read_catalog(client, self.keys))
        versions: dict[str, set[str]] = {}
        routes: dict[str, tuple[int, Route]] = {}
        default: tuple[int, str] | None = None
        for members, raw_routes, raw_default in snapshots:
            for member in members:
                model, _, version = _text(member).rpartition(SEPARATOR)
                versions.setdefault(model, set()).add(version)
            for model, raw in raw_routes.items():
                revision, route = Route.from_stored(raw)
                name = _text(model)
                if name not in routes or revision > routes[name][0]:
                    routes[name] = (revision, route)
            if raw_default is not None:
                stored = _stored_default(raw_default)
                if default is None or stored[0] > default[0]:
                    default = stored
        return Catalog(
            versions={m: tuple(sorted(v, key=_version_order)) for m, v in sorted(versions.items())},
            routes={m: r for m, (_, r) in routes.items()},
            default=None if default is None else default[1],
        )

    def announce(self, model: str, version: str) -> None:
        """A worker of ``model`` ``version`` is ready: list the version; promote it if the
        model has no route yet; make the model the default if there is none (both with
        revision 0: any operator's choice wins)."""
        route = Route(serving=version).stored(revision=0)
        default = json.dumps({"model": model, "revision": 0})

        def write(index: int, client: Any) -> None:
            client.sadd(self.keys.versions(), f"{model}{SEPARATOR}{version}")
            self._announce[index](
                keys=[self.keys.routing(), self.keys.default_model()], args=[model, route, default]
            )

        self._each(write)

    def _write_route(self, model: str, route: Route) -> None:
        stored = route.stored(revision=self.clock_ns())
        self._each(lambda _, client: client.hset(self.keys.routing(), model, stored))

    def promote(self, model: str, version: str) -> Route:
        """Send ``model``'s unversioned requests to ``version`` (and end any canary)."""
        self._check(model, version)
        route = Route(serving=version)
        self._write_route(model, route)
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
        self._write_route(model, route)
        return route

    def set_default(self, model: str, *, known: bool = True) -> None:
        """Make ``model`` the one ``POST /predict`` serves; ``known=False`` sets it before any
        worker of it has announced itself (``queuenet serve`` at start)."""
        if known:
            self._check(model)
        stored = json.dumps({"model": model, "revision": self.clock_ns()})
        self._each(lambda _, client: client.set(self.keys.default_model(), stored))

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
        registry = self._registry_of(model, version)
        live = registry.live_workers()
        if live:
            raise RoutingError(
                f"version {version} of {model} still has {len(live)} live worker(s): "
                f"{', '.join(live)}; stop them first"
            )
        registry.forget_card()
        member = f"{model}{SEPARATOR}{version}"
        self._each(lambda _, client: client.srem(self.keys.versions(), member))
        if not remaining:
            self._each(lambda _, client: client.hdel(self.keys.routing(), model))
            if catalog.default == model:
                self._each(lambda _, client: client.delete(self.keys.default_model()))

    def _check(self, model: str, version: str | None = None) -> Catalog:
        catalog = self.catalog()
        if not catalog.has(model):
            raise RoutingError(f"no model {model!r}; {catalog.describe()}")
        if version is not None and not catalog.has(model, version):
            known = ", ".join(catalog.versions[model])
            raise RoutingError(f"no version {version!r} of {model}; its versions: {known}")
        return catalog


def _read_catalog(client: Any, keys: Keys) -> tuple[Any, Any, Any]:
    with client.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.versions())
        pipe.hgetall(keys.routing())
        pipe.get(keys.default_model())
        members, routes, default = pipe.execute()
    return members, routes, default


def _stored_default(raw: bytes | str) -> tuple[int, str]:
    obj = json.loads(raw)
    return int(obj.get("revision") or 0), str(obj["model"])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _version_order(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order (2 before 10), then the others by name."""
    return (0, int(version)) if version.isdigit() else (1, version)

"""Which model version answers a request: the catalog of models and versions, the routes
(serving version, canary) and each version's model card, each reused for a short time.

``POST /predict`` goes to the default model; ``/models/{name}/predict`` to the model's serving
version (or, for its canary share, the canary); ``/models/{name}/versions/{v}/predict`` to that
version. Unknown models and versions are 404s that name what exists.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import ModelNotFoundError, ModelUnavailableError
from app.redis_errors import RETRY_AFTER_S, redis_errors_as_503
from protocol.backend import Backend
from protocol.keys import Keys
from protocol.messages import ModelCard
from protocol.routing import Catalog, ModelDirectory
from protocol.shards import SHARD_ERRORS, ShardedRegistry, ShardHealth

logger = logging.getLogger(__name__)

ROUTES_TTL_S = 0.5
"""How long a web process reuses the catalog and routes it read: a promotion reaches every
web process within this time (a draining worker waits longer, see worker.loop.DRAIN_QUIET_S)."""
CARD_TTL_S = 1.0
"""How long a web process reuses a version's model card (a worker checks every message against
its own card anyway)."""
STALE_IF_ERROR_S = 60.0
"""How long a web process goes on with the catalog or a card it read last while Redis cannot
give them (a Redis Cluster failing over the catalog's master, a Sentinel failover): requests
keep flowing to the shards that answer."""


@dataclass(frozen=True)
class Target:
    """The model version one request goes to, and the card that prepares its images."""

    model: str
    version: str
    card: ModelCard


class ModelRouter:
    """Resolves requests to model versions for one web process (thread-safe)."""

    def __init__(
        self,
        directory: ModelDirectory,
        backend: Backend,
        keys: Keys,
        *,
        default_model: str = "",
        draw: Callable[[], float] | None = None,
    ) -> None:
        self.directory = directory
        self.backend = backend
        self.keys = keys
        self.health = ShardHealth(backend.shards)
        self.default_model = default_model
        self._draw = draw
        self._lock = threading.Lock()
        self._catalog: tuple[float, Catalog] | None = None
        self._cards: dict[tuple[str, str], tuple[float, ModelCard]] = {}

    def catalog(self) -> Catalog:
        with self._lock:
            cached = self._catalog
        age_s = time.monotonic() - cached[0] if cached is not None else 0.0
        if cached is not None and age_s < ROUTES_TTL_S:
            return cached[1]
        try:
            catalog = self.directory.catalog()
        except SHARD_ERRORS as exc:
            if cached is not None and age_s < STALE_IF_ERROR_S:
                _warn_stale("catalog", exc)
                return cached[1]
            with redis_errors_as_503():
                raise
        with self._lock:
            self._catalog = (time.monotonic(), catalog)
        return catalog

    def resolve(self, model: str | None = None, version: str | None = None) -> Target:
        """The version a request for ``model`` (None: the default) and ``version`` (None: by
        the model's route) goes to, with its model card."""
        catalog = self.catalog()
        name = model or self.default_model or catalog.default
        if name is None:
            raise ModelUnavailableError(
                "no model is served yet: start a worker (queuenet worker) or wait for it to "
                "finish loading",
                retry_after_s=RETRY_AFTER_S,
            )
        if not catalog.has(name):
            raise ModelNotFoundError(f"there is no model {name!r}; {catalog.describe()}")
        if version is None:
            route = catalog.routes.get(name)
            if route is None:
                raise ModelUnavailableError(
                    f"model {name} has no serving version yet; promote one "
                    f"(queuenet models promote {name} VERSION)",
                    retry_after_s=RETRY_AFTER_S,
                )
            version = route.pick() if self._draw is None else route.pick(self._draw)
        elif not catalog.has(name, version):
            raise ModelNotFoundError(
                f"there is no version {version!r} of {name}; its versions: "
                f"{', '.join(catalog.versions[name])}",
                code="model_version_not_found",
            )
        return Target(name, version, self.card(name, version))

    def card(self, model: str, version: str) -> ModelCard:
        """The version's published model card (from any shard that answers), re-read at most
        every CARD_TTL_S seconds."""
        with self._lock:
            cached = self._cards.get((model, version))
        age_s = time.monotonic() - cached[0] if cached is not None else 0.0
        if cached is not None and age_s < CARD_TTL_S:
            return cached[1]
        try:
            card = ShardedRegistry(self.backend, self.keys, model, version, self.health).card()
        except SHARD_ERRORS as exc:
            if cached is not None and age_s < STALE_IF_ERROR_S:
                _warn_stale(f"model card of {model} version {version}", exc)
                return cached[1]
            with redis_errors_as_503():
                raise
        if card is None:
            raise ModelUnavailableError(
                f"version {version} of {model} has no model card: no worker of it has started "
                "yet, or Redis lost it (workers publish it again within seconds)",
                retry_after_s=RETRY_AFTER_S,
            )
        with self._lock:
            self._cards[(model, version)] = (time.monotonic(), card)
        return card


_last_stale_warning = [0.0]
STALE_WARNING_INTERVAL_S = 5.0


def _warn_stale(what: str, exc: Exception) -> None:
    """At most one line every few seconds while Redis cannot give what the router reuses."""
    now = time.monotonic()
    if now - _last_stale_warning[0] >= STALE_WARNING_INTERVAL_S:
        _last_stale_warning[0] = now
        logger.warning("redis cannot give the %s (%s); going on with the last one read", what, exc)

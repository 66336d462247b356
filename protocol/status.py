"""The state of every model version, read from Redis: the model card, the live workers, what
waits in the queue and in the dead letters. Shared by ``GET /models``, ``/readyz``, the web
tier's metrics and ``queuenet models list``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.backend import Backend
from protocol.keys import Keys
from protocol.messages import ModelCard
from protocol.routing import Catalog, Route
from protocol.shards import ShardedQueue, ShardedRegistry, ShardHealth, directory_for


@dataclass(frozen=True)
class VersionStatus:
    model: str
    version: str
    card: ModelCard | None
    live_workers: tuple[str, ...]
    queued: int
    """Requests waiting, in every shard that answers."""
    dead_letters: int
    shard_queued: tuple[int | None, ...] = ()
    """Requests waiting per shard (None: the shard does not answer)."""

    @property
    def ready(self) -> bool:
        """A prediction can be served now: a model card and a live worker."""
        return self.card is not None and bool(self.live_workers)

    def to_json(self) -> dict[str, Any]:
        card = self.card
        return {
            "version": self.version,
            "ready": self.ready,
            "workers": len(self.live_workers),
            "input_size": None if card is None else card.input_size,
            "labels": None if card is None else card.num_labels,
            "queued": self.queued,
            "shards": [
                {"shard": i, "queued": n, "up": n is not None}
                for i, n in enumerate(self.shard_queued)
            ],
            "dead_letters": self.dead_letters,
            "card": None if card is None else card.fingerprint,
            "recipe": None if card is None else card.recipe(),
        }


@dataclass(frozen=True)
class ModelStatus:
    name: str
    route: Route | None
    versions: tuple[VersionStatus, ...]

    def to_json(self) -> dict[str, Any]:
        route = self.route
        return {
            "name": self.name,
            "serving": None if route is None else route.serving,
            "canary": None
            if route is None or route.canary is None
            else {"version": route.canary, "percent": route.canary_percent},
            "versions": [v.to_json() for v in self.versions],
        }


def version_status(
    backend: Backend, keys: Keys, model: str, version: str, health: ShardHealth | None = None
) -> VersionStatus:
    health = health or ShardHealth(backend.shards)
    registry = ShardedRegistry(backend, keys, model, version, health)
    depths = ShardedQueue(backend, keys, model, version, health=health).depths()
    return VersionStatus(
        model=model,
        version=version,
        card=registry.card(),
        live_workers=tuple(registry.live_workers()),
        queued=sum(d for d in depths if d is not None),
        dead_letters=registry.dead_letters(),
        shard_queued=tuple(depths),
    )


def catalog_status(backend: Backend, keys: Keys) -> tuple[Catalog, list[ModelStatus]]:
    """The catalog and the status of every version of every model."""
    catalog = directory_for(backend, keys).catalog()
    health = ShardHealth(backend.shards)
    models = [
        ModelStatus(
            name=name,
            route=catalog.routes.get(name),
            versions=tuple(version_status(backend, keys, name, v, health) for v in versions),
        )
        for name, versions in catalog.versions.items()
    ]
    return catalog, models

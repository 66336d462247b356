"""The state of every model version, read from Redis: the model card, the live workers, what
waits in the queue and in the dead letters. Shared by ``GET /models``, ``/readyz``, the web
tier's metrics and ``queuenet models list``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from protocol.keys import Keys, VersionKeys
from protocol.messages import ModelCard
from protocol.queue import Queue
from protocol.routing import Catalog, ModelDirectory, Route
from protocol.workers import WorkerRegistry


@dataclass(frozen=True)
class VersionStatus:
    model: str
    version: str
    card: ModelCard | None
    live_workers: tuple[str, ...]
    queued: int
    dead_letters: int

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


def version_status(client: redis.Redis, keys: VersionKeys) -> VersionStatus:
    registry = WorkerRegistry(client, keys)
    return VersionStatus(
        model=keys.model,
        version=keys.version,
        card=registry.card(),
        live_workers=tuple(registry.live_workers()),
        queued=Queue(client, keys).depth(),
        dead_letters=registry.dead_letters(),
    )


def catalog_status(client: redis.Redis, keys: Keys) -> tuple[Catalog, list[ModelStatus]]:
    """The catalog and the status of every version of every model."""
    catalog = ModelDirectory(client, keys).catalog()
    models = [
        ModelStatus(
            name=name,
            route=catalog.routes.get(name),
            versions=tuple(version_status(client, keys.version(name, v)) for v in versions),
        )
        for name, versions in catalog.versions.items()
    ]
    return catalog, models

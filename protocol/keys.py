"""Every Redis key QueueNet uses, built in one place.

Namespace-wide keys (``QUEUENET_NAMESPACE``, default ``queuenet``), under one hash tag so a
script may touch several of them in Redis Cluster::

    {ns}:{catalog}:versions        set of "name@version" that workers announced
    {ns}:{catalog}:routing         hash: model name -> JSON {serving, canary, canary_percent}
    {ns}:{catalog}:default-model   the model that POST /predict serves

Each model version's queue is split into shards (``QUEUENET_SHARDS``); each shard's keys share
one Redis Cluster hash tag ``{name@version#shard}``, so that every script it runs touches one
slot, result keys included. In a Redis Cluster the tag carries a suffix (``#shard~n``) chosen
so that shard ``i`` of ``N`` hashes into the ``i``-th ``N``-th of the slot space, which spreads
the shards over the masters of an evenly split cluster::

    {ns}:{m@v#s}:queue                 pending request messages (RPUSH by web, claimed by workers)
    {ns}:{m@v#s}:processing:{worker}   messages a worker has claimed and not yet answered
    {ns}:{m@v#s}:result:{job_id}       the one result message of a request (TTL)
    {ns}:{m@v#s}:heartbeat:{worker}    heartbeat of a live worker (TTL)
    {ns}:{m@v#s}:owner:{worker}        token of the process that owns the worker name
    {ns}:{m@v#s}:leaving:{worker}      set by a worker that was asked to stop (TTL)
    {ns}:{m@v#s}:workers               set of worker names that may own a processing list
    {ns}:{m@v#s}:card                  model card published by the version's workers
    {ns}:{m@v#s}:dead                  dead letters: messages that failed max_attempts times
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from protocol.errors import SettingsError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Model names and versions: no ``{}``, ``@``, ``#`` or ``:``, which shape the keys."""


def model_name(variable: str, raw: str) -> str:
    """A model name or version as a setting or argument gives it; the error names ``variable``."""
    if not _NAME_RE.match(raw):
        raise SettingsError(
            f"{variable}={raw!r}: use 1 to 64 letters, digits, '_', '.', '-' (starting with a "
            "letter or digit)"
        )
    return raw


def is_model_name(value: str) -> bool:
    return bool(_NAME_RE.match(value))


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace. ``spread_shards`` (a Redis Cluster's shard count; 0
    otherwise) spreads each version's shards over the slot space."""

    namespace: str = "queuenet"
    spread_shards: int = 0

    def versions(self) -> str:
        return f"{self.namespace}:{{catalog}}:versions"

    def routing(self) -> str:
        return f"{self.namespace}:{{catalog}}:routing"

    def default_model(self) -> str:
        return f"{self.namespace}:{{catalog}}:default-model"

    def version(self, model: str, version: str, shard: int = 0) -> VersionKeys:
        salt = spread_salt(model, version, shard, self.spread_shards) if self.spread_shards else ""
        return VersionKeys(self.namespace, model, version, shard, salt)

    def pattern(self) -> str:
        """Glob that matches every key of the namespace (for inspection and clean-up)."""
        return f"{self.namespace}:*"


@dataclass(frozen=True)
class VersionKeys:
    """The keys of one model version (one shard of its queue)."""

    namespace: str
    model: str
    version: str
    shard: int = 0
    salt: str = ""
    """Redis Cluster only: the tag's suffix that places this shard's slot (see spread_salt)."""

    @property
    def tag(self) -> str:
        """The Redis Cluster hash tag every key of this shard carries."""
        return f"{{{_tag_body(self.model, self.version, self.shard, self.salt)}}}"

    @property
    def _prefix(self) -> str:
        return f"{self.namespace}:{self.tag}"

    def queue(self) -> str:
        return f"{self._prefix}:queue"

    def processing(self, worker_name: str) -> str:
        return f"{self._prefix}:processing:{worker_name}"

    def result(self, job_id: str) -> str:
        return f"{self._prefix}:result:{job_id}"

    def heartbeat(self, worker_name: str) -> str:
        return f"{self._prefix}:heartbeat:{worker_name}"

    def owner(self, worker_name: str) -> str:
        return f"{self._prefix}:owner:{worker_name}"

    def leaving(self, worker_name: str) -> str:
        return f"{self._prefix}:leaving:{worker_name}"

    def workers(self) -> str:
        return f"{self._prefix}:workers"

    def card(self) -> str:
        return f"{self._prefix}:card"

    def dead(self) -> str:
        return f"{self._prefix}:dead"

    def pattern(self) -> str:
        """Glob that matches every key of this version (shard)."""
        return f"{self._prefix}:*"  # braces are not special in Redis glob patterns


def _tag_body(model: str, version: str, shard: int, salt: str) -> str:
    return f"{model}@{version}#{shard}" + (f"~{salt}" if salt else "")


def spread_salt(model: str, version: str, shard: int, shards: int) -> str:
    """The smallest suffix (``""``, ``"1"``, ``"2"``, ...) that puts the slot of shard ``shard``
    of ``shards`` into the ``shard``-th ``shards``-th of the slot space. Deterministic, so every
    process finds the same keys without asking the cluster."""
    low = shard * REDIS_CLUSTER_HASH_SLOTS // shards
    high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    n = 0
    while True:
        salt = str(n) if n else ""
        slot = key_slot(_tag_body(model, version, shard, salt).encode())
        if low <= slot < high:
            return salt
        n += 1

"""The Redis servers one process talks to, as ``QUEUENET_REDIS_URL`` names them (see
:mod:`protocol.topology`), with finite timeouts and a short reconnect policy.

A model version's queue is split into ``shards`` (each a group of keys under its own hash
tag): on independent servers shard ``i`` lives on server ``i mod servers``; in a Redis Cluster
the cluster places each shard's slot; with Sentinel every shard is on the master of the day.
The catalog of models and routes lives on every independent server (written to all, read
from any that answers), on the Sentinel master, or on the cluster slot of its tag.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from protocol import topology
from protocol.keys import Keys
from protocol.settings import RedisSettings

logger = logging.getLogger(__name__)

REFRESH_MIN_INTERVAL_S = 1.0
CLUSTER_DEFAULT_SHARDS = 3
"""Queue shards per version in a Redis Cluster when QUEUENET_SHARDS does not say: the
smallest cluster has 3 masters, and the shards' tags spread them over the slot space."""

Client = redis.Redis
"""What callers use: a plain client, or a RedisCluster (which routes every command by its
keys' slot, and every script by its keys, which share one hash tag)."""


@dataclass
class Backend:
    """Clients for the shards and the catalog of one process."""

    topology: topology.Topology
    servers: list[Any]
    """One client per independent server (one, for Sentinel and Cluster)."""
    shards: int
    clusters: bool = False
    _closed: bool = field(default=False, repr=False)
    _refreshed_at: float = field(default=0.0, repr=False)

    def keys(self, namespace: str) -> Keys:
        """The key builder for this backend (in a cluster, spreading the shards' slots)."""
        return Keys(namespace, spread_shards=self.shards if self.clusters else 0)

    def for_shard(self, shard: int) -> Any:
        """The client for the keys of ``shard``."""
        return self.servers[shard % len(self.servers)]

    def for_catalog(self) -> list[Any]:
        """The clients that hold the catalog: every independent server, or the one."""
        return list(self.servers)

    def node_for(self, client: Any, key: str) -> Any:
        """A plain client for the server that holds ``key`` (in a cluster: its master now),
        for what must go to that very server: a blocking claim and its CLIENT UNBLOCK."""
        if not self.clusters:
            return client
        return client.get_node_from_key(key).redis_connection

    def refresh(self) -> None:
        """After a failure: in a cluster, learn the slot map again (at most once a second),
        so a promoted replica is used without a restart. Sentinel and plain clients find
        their server again on their own."""
        if not self.clusters:
            return
        now = time.monotonic()
        if now - self._refreshed_at < REFRESH_MIN_INTERVAL_S:
            return
        self._refreshed_at = now
        try:
            self.servers[0].nodes_manager.initialize()
        except redis.RedisError as exc:
            logger.warning("could not refresh the cluster's slot map: %s", exc)

    def close(self) -> None:
        if not self._closed:
            for client in self.servers:
                client.close()
            self._closed = True


def _retry() -> Retry:
    # One quick retry lets a pooled connection that went stale across a Redis restart
    # reconnect without failing the request; beyond that, errors surface at once so the web
    # tier can answer 503 instead of hanging.
    return Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1)


def connect_backend(settings: RedisSettings, *, blocking_timeout_s: float = 0.0) -> Backend:
    """Clients for every server ``settings.url`` names.

    ``blocking_timeout_s`` is the longest server-side block (BLPOP/BLMOVE) the caller will ask
    for; the socket read timeout is raised above it so a legitimate wait is never cut, while a
    dead server is still noticed.
    """
    shape = topology.parse(settings.url)
    common: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s + blocking_timeout_s,
        "retry": _retry(),
        "health_check_interval": 30,
    }
    if shape.kind in ("single", "shards"):
        servers: list[Any] = [redis.Redis.from_url(url, **common) for url in shape.urls]
        return Backend(shape, servers, settings.shards or len(servers))
    if shape.kind == "sentinel":
        return Backend(shape, [_sentinel_master(shape, common)], settings.shards or 1)
    return Backend(
        shape, [_cluster(shape, common)], settings.shards or CLUSTER_DEFAULT_SHARDS, clusters=True
    )


def _auth_and_tls(shape: topology.Topology) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if shape.password is not None:
        kwargs["password"] = shape.password
    if shape.username is not None:
        kwargs["username"] = shape.username
    if shape.tls:
        kwargs["ssl"] = True
        for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if option in shape.options:
                kwargs[option] = shape.options[option]
    return kwargs


def _sentinel_master(shape: topology.Topology, common: dict[str, Any]) -> Any:
    auth = _auth_and_tls(shape)
    sentinel_auth = dict(auth)
    if "sentinel_password" in shape.options:
        sentinel_auth["password"] = shape.options["sentinel_password"]
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [(node.host, node.port) for node in shape.nodes],
        sentinel_kwargs={
            "socket_connect_timeout": common["socket_connect_timeout"],
            "socket_timeout": common["socket_connect_timeout"] * 2,
            **sentinel_auth,
        },
        **common,
        **auth,
    )
    return sentinel.master_for(shape.service_name, db=shape.db)  # type: ignore[no-untyped-call]


def _cluster(shape: topology.Topology, common: dict[str, Any]) -> Any:
    return RedisCluster(
        startup_nodes=[
            ClusterNode(node.host, node.port)  # type: ignore[no-untyped-call]
            for node in shape.nodes
        ],
        socket_connect_timeout=common["socket_connect_timeout"],
        socket_timeout=common["socket_timeout"],
        retry=_retry(),
        **_auth_and_tls(shape),
    )

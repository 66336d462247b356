"""What ``QUEUENET_REDIS_URL`` names: one Redis, several independent ones (shards), a Redis
Sentinel set, or a Redis Cluster. Pure parsing; :mod:`protocol.backend` connects.

- ``redis://[:password@]host:port/db`` (``rediss://`` for TLS, ``unix:///path``): one server;
- the same, several times, separated by commas: independent servers, one queue shard each;
- ``redis+sentinel://[:password@]host:port[,host:port...]/SERVICE_NAME[?db=N]``
  (``rediss+sentinel://`` for TLS): the master of ``SERVICE_NAME`` as the sentinels report it,
  found again after a failover; the password is the master's (and the sentinels', unless the
  query gives ``sentinel_password``);
- ``redis+cluster://[:password@]host:port[,host:port...]`` (``rediss+cluster://``): a Redis
  Cluster, found from any of the nodes given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = {"sentinel": 26379, "cluster": 6379}


class TopologyError(ValueError):
    """The URL cannot be used; the message says why (without the password)."""


@dataclass(frozen=True)
class Node:
    host: str
    port: int


@dataclass(frozen=True)
class Topology:
    kind: str
    """``single``, ``shards``, ``sentinel`` or ``cluster``."""
    urls: tuple[str, ...] = ()
    """``single``/``shards``: each server's own URL."""
    nodes: tuple[Node, ...] = ()
    """``sentinel``: the sentinels; ``cluster``: the startup nodes."""
    service_name: str = ""
    password: str | None = None
    username: str | None = None
    tls: bool = False
    db: int = 0
    options: dict[str, str] = field(default_factory=dict)
    """The query string's other options (``ssl_ca_certs``, ``sentinel_password``, ...)."""

    @property
    def servers(self) -> int:
        """Independent servers (1 for Sentinel and Cluster, whose queues the cluster spreads)."""
        return len(self.urls) if self.kind in ("single", "shards") else 1


def parse(raw: str) -> Topology:
    """The topology ``raw`` names; :class:`TopologyError` says what is wrong with it."""
    text = raw.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in SENTINEL_SCHEMES or scheme in CLUSTER_SCHEMES:
        return _multi_host(text, scheme)
    urls = tuple(part.strip() for part in text.split(","))
    for url in urls:
        if urlsplit(url).scheme not in SINGLE_SCHEMES:
            raise TopologyError(
                "each URL must start with redis://, rediss:// or unix://; or use "
                "redis+sentinel://host:port,.../SERVICE or redis+cluster://host:port,..."
            )
    if len(set(urls)) != len(urls):
        raise TopologyError("the same server is named twice")
    return Topology(kind="single" if len(urls) == 1 else "shards", urls=urls)


def _multi_host(text: str, scheme: str) -> Topology:
    kind = "sentinel" if scheme in SENTINEL_SCHEMES else "cluster"
    rest = text.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, password = _credentials(userinfo)
    nodes = tuple(_node(part, DEFAULT_PORT[kind]) for part in hosts.split(",") if part.strip())
    if not nodes:
        raise TopologyError(f"{scheme}:// needs at least one host:port")
    options = dict(parse_qsl(query))
    db = _db(options.pop("db", "0"))
    service = unquote(path.strip("/"))
    if kind == "sentinel" and not service:
        raise TopologyError(f"{scheme}://host:port,.../SERVICE_NAME: the service name is missing")
    if kind == "cluster" and path.strip("/"):
        raise TopologyError(f"{scheme}:// takes no path (Redis Cluster has only database 0)")
    return Topology(
        kind=kind,
        nodes=nodes,
        service_name=service,
        password=password,
        username=username,
        tls=scheme.startswith("rediss"),
        db=db,
        options=options,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _node(part: str, default_port: int) -> Node:
    host, colon, port = part.strip().rpartition(":")
    if not colon:
        return Node(part.strip(), default_port)
    try:
        return Node(host.strip("[]"), int(port))
    except ValueError:
        raise TopologyError(f"{part.strip()!r} is not host:port") from None


def _db(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise TopologyError(f"db={raw!r} is not a number") from None

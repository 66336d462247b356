"""deploy/k8s-sentinel/sentinel-set.sh, the script every Redis and Sentinel of the Sentinel
variants runs (the Kubernetes overlay and docker-compose.sentinel.yml), run as they run it but
with real redis-server and redis-sentinel processes on loopback ports: the set forms from
nothing; a master killed and started again at once (empty: nothing is persisted) waits for the
sentinels to promote its replica instead of making the replica copy its empty data set; a
sentinel restarted from nothing keeps its identity, so the others do not count it twice, and
takes part in the next failover."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import ROOT, free_port, stop, wait_until
from tests.redis_servers import require_redis_tools

SCRIPT = ROOT / "deploy" / "k8s-sentinel" / "sentinel-set.sh"
SERVICE = "queuenet"
PASSWORD = "test-only-password"
QUEUE = "queuenet:{efficientnet-lite0@1#0}:queue"
WAIT_S = 30.0


@dataclass
class Member:
    """One Redis or Sentinel of the set, started by the script like a pod or a container."""

    role: str
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD, socket_timeout=2)

    def log(self) -> Path:
        return self.directory / f"{self.role}-{self.starts}.log"

    def kill(self) -> None:
        """``kill -9`` (the script has exec'd the server by now)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout_s=10)


@dataclass
class ScriptedSet:
    """Two Redis and three sentinels, each started by sentinel-set.sh with the environment the
    manifests give it (loopback addresses instead of host names; fast failure detection)."""

    directory: Path
    nodes: list[Member] = field(default_factory=list)
    sentinels: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [Member("redis", self.directory / f"redis-{i}") for i in range(2)]
        self.sentinels = [Member("sentinel", self.directory / f"sentinel-{i}") for i in range(3)]

    def env(self, member: Member) -> dict[str, str]:
        port = "REDIS_PORT" if member.role == "redis" else "SENTINEL_PORT"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "REDIS_PASSWORD": PASSWORD,
            "REDISCLI_AUTH": PASSWORD,
            "SENTINEL_MASTER": SERVICE,
            "REDIS_NODES": " ".join(node.address for node in self.nodes),
            "SENTINELS": " ".join(sentinel.address for sentinel in self.sentinels),
            "ANNOUNCE_HOST": "127.0.0.1",
            "SENTINEL_QUORUM": "2",
            "SENTINEL_DOWN_AFTER_MS": "1000",
            "SENTINEL_FAILOVER_TIMEOUT_MS": "5000",
            "FAILOVER_WAIT_S": "20",
            "BIND_ADDRESS": "127.0.0.1",
            "DATA_DIR": str(member.directory),
            port: str(member.port),
        }

    def start(self, member: Member) -> None:
        member.directory.mkdir(parents=True, exist_ok=True)
        member.starts += 1
        with member.log().open("wb") as log:  # the child keeps its own descriptor
            member.process = subprocess.Popen(
                ["sh", str(SCRIPT), member.role],
                env=self.env(member),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        for member in self.sentinels + self.nodes:
            member.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
            for path in sorted(self.directory.glob("*/*.log"))
        )

    def wait(self, predicate: Any, what: str) -> None:
        try:
            wait_until(predicate, WAIT_S, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def watched(self, master: Member) -> bool:
        """Every sentinel names ``master``, knows the two others and sees a replica up."""
        try:
            for sentinel in self.sentinels:
                state: Any = sentinel.client().sentinel_master(SERVICE)
                if f"{state['ip']}:{state['port']}" != master.address:
                    return False
                if int(state["num-other-sentinels"]) != 2:
                    return False
                replicas: Any = sentinel.client().sentinel_slaves(SERVICE)
                if not any(r["flags"] == "slave" for r in replicas):
                    return False
            return True
        except (redis.RedisError, KeyError):
            return False


def replica_of(node: Member, master: Member) -> bool:
    try:
        info: Any = node.client().info("replication")
    except redis.RedisError:
        return False
    return bool(
        info["role"] == "slave"
        and info["master_port"] == master.port
        and info["master_link_status"] == "up"
    )


def named_master(sentinel: Member) -> str:
    """host:port of the master ``sentinel`` names to clients."""
    address: Any = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
    return f"{address[0].decode()}:{address[1]}"


def other_sentinels(sentinel: Member) -> int:
    """How many other sentinels ``sentinel`` counts (a failover needs a majority of all)."""
    state: Any = sentinel.client().sentinel_master(SERVICE)
    return int(state["num-other-sentinels"])


@pytest.fixture
def scripted_set(tmp_path: Path) -> Any:
    require_redis_tools()
    the_set = ScriptedSet(tmp_path)
    try:
        yield the_set
    finally:
        the_set.stop()


def test_the_set_forms_fails_over_and_takes_restarts_back(scripted_set: ScriptedSet) -> None:
    first, second = scripted_set.nodes
    for member in scripted_set.nodes + scripted_set.sentinels:
        scripted_set.start(member)

    # From nothing: the first Redis is the master, the second its replica, and every sentinel
    # watches the master (under its name, SENTINEL_MASTER) and knows the other two.
    scripted_set.wait(lambda: scripted_set.watched(first), "the set to form around the first")
    scripted_set.wait(lambda: replica_of(second, first), "the second to replicate the first")
    queued = [b"request-1", b"request-2", b"request-3"]
    first.client().rpush(QUEUE, *queued)
    scripted_set.wait(lambda: second.client().lrange(QUEUE, 0, -1) == queued, "replication")

    # The master dies and its container comes back at once, empty, before the sentinels have
    # seen it down: it must wait for them to promote the replica, then copy the replica.
    first.kill()
    scripted_set.start(first)
    scripted_set.wait(lambda: scripted_set.watched(second), "the sentinels to promote the second")
    assert second.client().lrange(QUEUE, 0, -1) == queued, "the queue was wiped"
    scripted_set.wait(lambda: replica_of(first, second), "the first to replicate the second")
    assert first.client().lrange(QUEUE, 0, -1) == queued
    assert "waiting" in first.log().read_text()

    # A sentinel replaced from nothing (a new pod: no sentinel.conf) takes the master from the
    # others, not from its settings, and keeps its identity: the others still count three
    # sentinels, not four.
    restarted = scripted_set.sentinels[0]
    myid = restarted.client().execute_command("SENTINEL", "MYID")
    restarted.kill()
    (restarted.directory / "sentinel.conf").unlink()
    scripted_set.start(restarted)
    scripted_set.wait(lambda: scripted_set.watched(second), "the new sentinel to join")
    assert f"watching {SERVICE} at {second.address}" in restarted.log().read_text()
    assert restarted.client().execute_command("SENTINEL", "MYID") == myid
    assert [other_sentinels(s) for s in scripted_set.sentinels] == [2, 2, 2]
    # (redis-py's sentinel_ckquorum reads this reply as False.)
    reply = restarted.client().execute_command("SENTINEL", "CKQUORUM", SERVICE)
    assert reply.startswith(b"OK 3 usable Sentinels"), reply

    # And the set fails over again, back to the first.
    second.kill()
    scripted_set.wait(
        lambda: all(named_master(s) == first.address for s in scripted_set.sentinels),
        "the sentinels to promote the first again",
    )
    assert first.client().lrange(QUEUE, 0, -1) == queued

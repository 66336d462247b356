"""A model version's queue over three independent Redis servers: where the web tier puts a
request, how a worker waits on every shard at once and claims fairly, and what a shard that
is down costs. Real servers on loopback ports."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from protocol.backend import Backend, connect_backend
from protocol.keys import Keys
from protocol.queue import Answer, Registration
from protocol.settings import RedisSettings
from protocol.shards import DOWN_S, ShardedQueue, ShardedRegistry, ShardHealth
from protocol.topology import Node, TopologyError, parse
from queuenet.embedded_redis import EmbeddedRedis
from tests.helpers import free_port

UNBOUNDED = 10**9


# --- QUEUENET_REDIS_URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "servers"),
    [
        ("redis://h:6379/0", "single", 1),
        ("rediss://:pw@h:6380/0", "single", 1),
        ("unix:///tmp/r.sock", "single", 1),
        ("redis://a:1/0,redis://b:2/0, redis://c:3/0", "shards", 3),
        ("redis+sentinel://:pw@s1:26379,s2,s3:26381/mymaster?db=2", "sentinel", 1),
        ("redis+cluster://n1:7000,n2:7001", "cluster", 1),
        ("rediss+cluster://:pw@n1:7000", "cluster", 1),
    ],
)
def test_the_url_names_a_topology(url: str, kind: str, servers: int) -> None:
    shape = parse(url)
    assert shape.kind == kind and shape.servers == servers


def test_sentinel_and_cluster_urls_carry_hosts_credentials_and_options() -> None:
    sentinel = parse("rediss+sentinel://:p%40ss@s1:26379,s2/mymaster?db=2&sentinel_password=x")
    assert sentinel.nodes == (Node("s1", 26379), Node("s2", 26379))
    assert (sentinel.service_name, sentinel.password, sentinel.db, sentinel.tls) == (
        "mymaster",
        "p@ss",
        2,
        True,
    )
    assert sentinel.options == {"sentinel_password": "x"}
    cluster = parse("redis+cluster://n1:7000,n2")
    assert cluster.nodes == (Node("n1", 7000), Node("n2", 6379)) and cluster.password is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://h:1", "must start with redis://"),
        ("redis://a:1/0,http://b", "must start with redis://"),
        ("redis://a:1/0,redis://a:1/0", "named twice"),
        ("redis+sentinel://s1:26379", "service name is missing"),
        ("redis+sentinel:///mymaster", "at least one host"),
        ("redis+cluster://n1:x", "is not host:port"),
        ("redis+cluster://n1:7000/3", "takes no path"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(TopologyError, match=words):
        parse(url)


def test_cluster_shards_spread_over_the_slot_space() -> None:
    """Shard i of N hashes into the i-th N-th of the 16384 slots: on an evenly split cluster
    of N masters, one shard per master (the same keys in every process: no cluster asked)."""
    from redis.crc import key_slot

    for shards in (3, 4, 6):
        keys = Keys("queuenet", spread_shards=shards)
        for i in range(shards):
            slot = key_slot(keys.version("efficientnet-lite0", "1", i).queue().encode())
            assert i * 16384 // shards <= slot < (i + 1) * 16384 // shards
    assert Keys("queuenet").version("m", "1", 2).queue() == "queuenet:{m@1#2}:queue"


# --- three servers -----------------------------------------------------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[EmbeddedRedis]]:
    started = [EmbeddedRedis(tmp_path / f"s{i}", port=free_port()) for i in range(3)]
    for server in started:
        server.start()
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def backend(servers: list[EmbeddedRedis]) -> Iterator[Backend]:
    url = ",".join(server.url for server in servers)
    connected = connect_backend(RedisSettings(url=url, namespace="shards"), blocking_timeout_s=2)
    yield connected
    connected.close()


def sharded(backend: Backend, seed: int = 0) -> ShardedQueue:
    return ShardedQueue(
        backend, Keys("shards"), "m", "1", health=ShardHealth(3), rng=random.Random(seed)
    )


def test_three_servers_make_three_shards_one_each(backend: Backend) -> None:
    queue = sharded(backend)
    assert backend.shards == queue.shards == 3
    for shard in range(3):
        assert queue.queues[shard].client is backend.servers[shard]
        assert queue.queues[shard].keys.tag == f"{{m@1#{shard}}}"


def test_a_request_goes_to_the_shorter_of_two_shards(backend: Backend) -> None:
    queue = sharded(backend)
    queue.queues[0].push([b"x"] * 5, max_queue=UNBOUNDED)
    queue.queues[1].push([b"x"] * 3, max_queue=UNBOUNDED)
    placed = Counter(queue.push([b"req"], max_queue=UNBOUNDED) for _ in range(30))
    # Shard 2 starts empty: it wins every pair it is in until it is as long as the others,
    # and the shards end within a request or two of each other.
    depths = [d or 0 for d in queue.depths()]
    assert placed[2] >= 10 and max(depths) - min(depths) <= 2, (placed, depths)
    assert sum(depths) == 5 + 3 + 30


def test_a_full_shard_sends_the_request_to_another_and_all_full_is_none(backend: Backend) -> None:
    queue = sharded(backend)
    for shard in (0, 1):
        queue.queues[shard].push([b"x"] * 10, max_queue=UNBOUNDED)
    assert all(queue.push([b"req"], max_queue=30) == 2 for _ in range(10))  # 10 per shard
    assert queue.push([b"req"], max_queue=30) is None
    assert queue.depths() == [10, 10, 10]


def test_a_shard_that_is_down_is_left_out_and_tried_again(
    backend: Backend, servers: list[EmbeddedRedis]
) -> None:
    queue = sharded(backend)
    servers[1].stop()
    shards = [queue.push([b"req"], max_queue=UNBOUNDED) for _ in range(20)]
    assert set(shards) <= {0, 2} and len(set(shards)) == 2
    assert queue.depths()[1] is None
    servers[1].start()
    time.sleep(DOWN_S + 0.1)
    later = Counter(queue.push([b"req"], max_queue=UNBOUNDED) for _ in range(30))
    assert later[1] > 0  # it answers again, so it takes requests again


def test_every_shard_down_is_an_error_not_a_full_queue(
    backend: Backend, servers: list[EmbeddedRedis]
) -> None:
    import redis

    for server in servers:
        server.stop()
    with pytest.raises(redis.ConnectionError):
        sharded(backend).push([b"req"], max_queue=UNBOUNDED)


def test_a_worker_waits_on_every_shard_at_once_and_wakes_for_any(backend: Backend) -> None:
    """No polling: an empty queue costs the block timeout; an item on any shard wakes the
    worker at once."""
    queue = sharded(backend)
    started = time.monotonic()
    assert queue.block_claim("w", 8, block_timeout_s=0.3, batch_wait_s=0.0) == []
    assert 0.25 <= time.monotonic() - started < 2.0  # generous upper bound: a busy machine

    def later() -> None:
        time.sleep(0.3)
        queue.queues[2].push([b"late"], max_queue=UNBOUNDED)

    pusher = threading.Thread(target=later)
    pusher.start()
    started = time.monotonic()
    claimed = queue.block_claim("w", 8, block_timeout_s=5.0, batch_wait_s=0.0, busy=False)
    woke_s = time.monotonic() - started
    pusher.join()
    assert [(c.shard, c.raw) for c in claimed] == [(2, b"late")]
    assert woke_s < 2.0  # not the 5 s block timeout
    registry = ShardedRegistry(backend, Keys("shards"), "m", "1", queue.health)
    assert registry.held_items("w") == [b"late"]  # held in Redis, on its shard


def test_a_batch_takes_from_every_shard_fairly(backend: Backend) -> None:
    queue = sharded(backend)
    for shard, count in ((0, 20), (1, 2), (2, 20)):
        queue.queues[shard].push([f"{shard}-{i}".encode() for i in range(count)], max_queue=99)
    claimed = queue.block_claim("w", 12, block_timeout_s=1.0, batch_wait_s=0.0)
    assert len(claimed) == 12
    per_shard = Counter(c.shard for c in claimed)
    assert per_shard == {0: 5, 1: 2, 2: 5}  # shard 1's two, the rest shared evenly


def test_answers_go_back_to_each_items_shard(backend: Backend) -> None:
    queue = sharded(backend)
    registry = ShardedRegistry(backend, Keys("shards"), "m", "1", queue.health)
    registry.take_over("w", "token")
    for shard in range(3):
        queue.queues[shard].push([f'{{"n":{shard}}}'.encode()], max_queue=99)
    claimed = queue.block_claim("w", 8, block_timeout_s=1.0, batch_wait_s=0.0)
    assert sorted(c.shard for c in claimed) == [0, 1, 2]
    answers = [Answer(c.raw, f"{c.shard:032x}", f"answer-{c.shard}".encode()) for c in claimed]
    acked, unsure = queue.answer("w", claimed, answers, owner_token="token", result_ttl_s=9)
    assert (acked, unsure) == (3, set())
    for shard in range(3):
        assert queue.wait_result(shard, f"{shard:032x}", 1.0) == f"answer-{shard}".encode()
        assert queue.wait_result((shard + 1) % 3, f"{shard:032x}", 0.05) is None
    assert registry.held("w") == 0


def test_a_claim_on_several_shards_registers_the_worker_on_each(backend: Backend) -> None:
    """The all-shard wait registers the worker with its claim on every shard (a Redis that
    lost its data forgets a worker until its next beat): its answers are acknowledged there,
    and once its heartbeat expires the sweep finds what it holds on each shard."""
    queue = sharded(backend)
    registry = ShardedRegistry(backend, Keys("shards"), "m", "1", queue.health)
    registration = Registration("token", b"{}", ttl_s=1)
    for shard in range(3):
        queue.queues[shard].push([f"{shard}".encode()], max_queue=UNBOUNDED)
    claimed = queue.block_claim(
        "w", 8, block_timeout_s=1.0, batch_wait_s=0.0, registration=registration
    )
    assert sorted(c.raw for c in claimed) == [b"0", b"1", b"2"]
    for shard_registry in registry.registries:
        assert shard_registry.registered() == ["w"] and shard_registry.owner("w") == b"token"
        assert shard_registry.live_workers() == ["w"]
    assert registry.requeue_dead_workers(exclude="other") == 0  # alive
    time.sleep(1.1)  # w dies without a beat
    assert registry.requeue_dead_workers(exclude="other") == 3
    assert registry.held("w") == 0
    # The sweep dropped w's name and owner token; claiming its items again registers it anew.
    claimed = queue.block_claim(
        "w", 8, block_timeout_s=1.0, batch_wait_s=0.0, registration=registration
    )
    answers = [Answer(c.raw, f"{c.shard:032x}", b"ok") for c in claimed]
    acked, _ = queue.answer("w", claimed, answers, owner_token="token", result_ttl_s=9)
    assert acked == 3


def test_a_reconnected_shard_wait_is_still_unblocked_at_once(backend: Backend) -> None:
    """Every claim blocks on all shards and unblocks the idle ones (CLIENT UNBLOCK by client
    id) once one has an item. After a connection is dropped and made again (a failover makes
    redis-py reconnect), the id must be the new connection's: a stale one unblocks nothing,
    and every claim then waits out the BLMOVE's server-side bound (2 s here) on the idle
    shards, which stalled the whole service after a Redis Cluster failover. (CPython hands
    the new socket object the freed one's address, so its ``id()`` is no sign of a new
    connection.)"""
    queue = sharded(backend)
    for attempt in range(4):
        queue.queues[0].push([f"{attempt}".encode()], max_queue=UNBOUNDED)
        started = time.monotonic()
        claimed = queue.block_claim("w", 8, block_timeout_s=0.3, batch_wait_s=0.0, busy=False)
        took_s = time.monotonic() - started
        assert [c.raw for c in claimed] == [f"{attempt}".encode()]
        assert took_s < 1.0, f"claim {attempt} took {took_s:.2f}s after a reconnection"
        for server in backend.servers:  # each connection dropped and made again, one by one
            for conn in list(server.connection_pool._available_connections):
                conn.disconnect()
                conn.connect()


def fail_the_next_ping_once(conn: Any) -> None:
    """The connection's next PING raises as if the peer had gone silently."""
    ping: Callable[[], None] = conn._send_ping
    failed: list[bool] = []

    def once() -> None:
        if not failed:
            failed.append(True)
            raise redis.ConnectionError("the PING got no answer")
        ping()

    conn._send_ping = once


def test_a_connection_remade_by_the_health_check_gets_its_new_client_id(backend: Backend) -> None:
    """redis-py PINGs a connection idle for its health-check interval inside the next send and
    reconnects quietly when the PING fails (a peer gone silently: no EOF for the pool to see).
    The wait runs that check first, so its client id is the new connection's: no 2 s stall on
    a stale CLIENT UNBLOCK, and no shard left out for it."""
    queue = sharded(backend)
    assert queue.block_claim("w", 8, block_timeout_s=0.2, batch_wait_s=0.0) == []
    for server in backend.servers:  # each wait's connection: PING due, and its PING fails once
        for conn in list(server.connection_pool._available_connections):
            if getattr(conn, "_queuenet_client_id", None) is None:
                continue
            fail_the_next_ping_once(conn)
            conn.next_health_check = 0
    queue.queues[0].push([b"after"], max_queue=UNBOUNDED)
    started = time.monotonic()
    claimed = queue.block_claim("w", 8, block_timeout_s=0.3, batch_wait_s=0.0, busy=False)
    took_s = time.monotonic() - started
    assert [c.raw for c in claimed] == [b"after"]
    assert took_s < 1.0, f"the claim took {took_s:.2f}s"
    assert queue.health.usable() == [0, 1, 2]


def test_an_error_reply_in_the_wait_leaves_no_connection_checked_out(backend: Backend) -> None:
    """A shard answering the wait's commands with an error (here WRONGTYPE: the worker set is
    a string) raises, and every connection the wait took goes back to its pool, closed."""
    queue = sharded(backend)
    registration = Registration("token", b"{}", ttl_s=5)
    queue.queues[1].client.set(queue.queues[1].keys.workers(), b"not a set")
    with pytest.raises(redis.ResponseError):
        queue.block_claim("w", 8, block_timeout_s=0.3, batch_wait_s=0.0, registration=registration)
    for server in backend.servers:
        assert not server.connection_pool._in_use_connections
    queue.queues[1].client.delete(queue.queues[1].keys.workers())
    queue.queues[2].push([b"x"], max_queue=UNBOUNDED)
    claimed = queue.block_claim(
        "w", 8, block_timeout_s=0.3, batch_wait_s=0.0, registration=registration
    )
    assert [c.raw for c in claimed] == [b"x"]

"""The queue of a model version, as both sides use it; every request stays in Redis at all times.

At-least-once delivery without loss: a worker moves messages from ``queue`` into its own
``processing`` list one atomic LMOVE/BLMOVE at a time, and an item leaves that list only in
the same script that writes its answer. A worker that dies leaves its items in Redis; once
its heartbeat expires, any other worker puts them back at the head of the queue.

The 200 KB request messages never pass through a Lua script on the hot path: plain RPUSH,
BLMOVE and LMOVE carry them. Redis 7 spends about 0.25 ms of its single thread per such
string handed to or returned from Lua (6.2 about 0.03 ms), once per request for the push,
again for the claim and again for the acknowledgement (bench/redis_ops.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis

from protocol.keys import VersionKeys

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CLAIM = 1024
"""Upper bound on items claimed at once."""


@dataclass(frozen=True)
class Registration:
    """What a worker's claim writes first, where missing, on the server it claims from.

    Heartbeats register a worker (its name in the version's set, its owner token, its
    heartbeat key), but a Redis that lost its data (a restart without persistence, a failover
    to a lagging replica) forgets all three until the worker's next beat, up to a third of
    the heartbeat TTL later. A claim in between would go wrong twice over without this: the
    acknowledgement is refused for want of the owner token, so every item is retried and at
    last dead-lettered (a 500 for a healthy service), and a worker that died before its beat
    leaves a processing list the sweep (``WorkerRegistry.requeue_dead_workers``) never sees.
    So the claim sends, on its own connection just before the BLMOVE, ``SET ... NX`` of the
    heartbeat (with its TTL) and of the owner token, and ``SADD`` of the name: a no-op on a
    server that has them; a name another process owns stays its (NX), and a heartbeat is
    never extended by a claim (a dead worker is still found when its TTL runs out).
    """

    owner_token: str
    heartbeat: bytes
    """The payload of the worker's last beat."""
    ttl_s: int

    def commands(self, keys: VersionKeys, worker_name: str) -> list[tuple[str | bytes | int, ...]]:
        # Heartbeat first, name last: a sweep in between (the commands are not one
        # transaction) then finds a live worker, or none, never a registered one that it
        # would presume dead.
        return [
            ("SET", keys.heartbeat(worker_name), self.heartbeat, "EX", self.ttl_s, "NX"),
            ("SET", keys.owner(worker_name), self.owner_token, "NX"),
            ("SADD", keys.workers(), worker_name),
        ]


FILL_SAFETY_MARGIN_S = 1
"""Seconds a batch-fill BLMOVE's server-side bound lies beyond the wait asked for, should its
CLIENT UNBLOCK ever not arrive."""

# Ack and answer a whole batch in one step, and only while it is still ours: the processing
# list must be as we claimed it (its length) and the worker name must still be ours (the owner
# token: a process that took over the name, or a requeue, changes or removes it). If another
# worker requeued the items (we were presumed dead), the list is gone and nothing is written,
# so a request is never answered twice. Per answer: publish a result, dead-letter the item
# (the only place a 200 KB item is read into Lua, and a rare one), and/or push a retry copy
# back to the queue head.
# KEYS = processing, dead, queue, owner, one result key per answer;
# ARGV = ttl_s, n, owner token, then (position, payload, dead_flag, retry_message) per answer.
_ANSWER = """
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
if redis.call('GET', KEYS[4]) ~= ARGV[3] then return 0 end
if redis.call('LLEN', KEYS[1]) ~= n then return 0 end
for j = 1, #KEYS - 4 do
  local at = 3 + 4 * (j - 1)
  local payload = ARGV[at + 2]
  if payload ~= '' then
    redis.call('LPUSH', KEYS[j + 4], payload)
    redis.call('EXPIRE', KEYS[j + 4], ttl)
  end
  if ARGV[at + 3] == '1' then
    redis.call('RPUSH', KEYS[2], redis.call('LINDEX', KEYS[1], tonumber(ARGV[at + 1])))
  end
  if ARGV[at + 4] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[at + 4]) end
end
redis.call('DEL', KEYS[1])
return n
"""


@dataclass(frozen=True)
class Answer:
    """What to do with one claimed item: its raw bytes, the result to publish, dead-lettering."""

    raw: bytes
    job_id: str | None
    payload: bytes
    """Encoded result, or empty to publish none (expired, or retried)."""
    dead: bool = False
    """Also move the raw item to the dead-letter list."""
    retry: bytes = b""
    """A new message to put back at the head of the queue (a retry with attempts raised)."""


def fill_batch(
    items: list[T],
    max_items: int,
    *,
    batch_wait_s: float,
    busy: bool,
    claim_within: Callable[[int, float], list[T]],
) -> list[T]:
    """The batch-fill policy of every queue: ``items`` were claimed at once; unless that is
    nothing, or a lone item on an idle queue (not ``busy``), claim more with
    ``claim_within(room, left_s)`` until the batch is full, a claim comes back empty or
    ``batch_wait_s`` has passed."""
    if not items or (not busy and len(items) == 1):
        return items
    fill_deadline = time.monotonic() + batch_wait_s
    while len(items) < max_items:
        left_s = fill_deadline - time.monotonic()
        if left_s < 0.001:
            break
        more = claim_within(max_items - len(items), left_s)
        if not more:
            break
        items.extend(more)
    return items


class Queue:
    """The queue of one model version: push and wait (web), claim and answer (workers).

    Workers' heartbeats, name ownership, take-over and model cards are the
    :class:`protocol.workers.WorkerRegistry`'s.
    """

    def __init__(self, client: redis.Redis, keys: VersionKeys) -> None:
        self.client = client
        self.keys = keys
        self._answer = client.register_script(_ANSWER)
        self.observed: tuple[float, int] | None = None
        """(monotonic time, length) of the queue as the last push saw it: free, as RPUSH
        answers the new length; a sharded queue chooses shards by it."""

    # --- web side ----------------------------------------------------------------------------

    def push(self, messages: Sequence[bytes], *, max_queue: int) -> bool:
        """Append requests; False (nothing enqueued) when they would not fit in ``max_queue``.

        Optimistic: one RPUSH, whose reply is the new length. Over the bound, the messages
        are taken back (LREM from the tail, where they are). One that a worker claimed in
        the meantime cannot be taken back: then the request is in after all, and whatever
        was taken back goes in again, so a multi-image request is queued whole or not at
        all. The queue may pass ``max_queue`` by what concurrent pushes add at that moment.
        """
        length = int(self.client.rpush(self.keys.queue(), *messages))
        self.observed = (time.monotonic(), length)
        if length <= max_queue:
            return True
        removed = self._take_back(messages)
        if all(removed):
            return False
        taken_back = [m for m, gone in zip(messages, removed, strict=True) if gone]
        if taken_back:  # at the head: they waited already
            self.client.lpush(self.keys.queue(), *reversed(taken_back))
        return True

    def _take_back(self, messages: Sequence[bytes]) -> list[bool]:
        """Remove each message from the queue; whether it was still there."""
        with self.client.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.lrem(self.keys.queue(), -1, message)  # type: ignore[arg-type]  # bytes work
            return [bool(n) for n in pipe.execute()]

    def depth(self) -> int:
        return int(self.client.llen(self.keys.queue()))

    def items(self) -> list[bytes]:
        """Everything waiting, head first (for inspection and tests; never on a hot path)."""
        return [as_bytes(item) for item in self.client.lrange(self.keys.queue(), 0, -1)]

    def peek_result(self, job_id: str) -> tuple[list[bytes], int]:
        """The result list of ``job_id`` without taking it, and its TTL in seconds (-2: no
        such key); for inspection and tests."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.result(job_id), 0, -1)
            pipe.ttl(self.keys.result(job_id))
            items, ttl_s = pipe.execute()
        return [as_bytes(item) for item in items], int(ttl_s)

    def wait_result(self, job_id: str, timeout_s: float) -> bytes | None:
        """Block until the result for ``job_id`` arrives, at most ``timeout_s`` seconds."""
        if timeout_s <= 0:
            return None
        # BLPOP takes the timeout in seconds with millisecond resolution; 0 would mean forever.
        reply = self.client.blpop([self.keys.result(job_id)], timeout=max(timeout_s, 0.001))
        return None if reply is None else as_bytes(reply[1])

    # --- worker side -------------------------------------------------------------------------

    def claim(self, worker_name: str, max_items: int) -> list[bytes]:
        """Move up to ``max_items`` queued messages into the worker's processing list.

        One LMOVE per item, all in one round trip; each move is atomic, so two workers never
        get the same item and a claimed item is never only in a worker's memory.
        """
        count = min(max_items, MAX_CLAIM)
        if count <= 0:
            return []
        keys = self.keys.queue(), self.keys.processing(worker_name)
        with self.client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                pipe.lmove(*keys, "LEFT", "RIGHT")
            moved = pipe.execute()
        return [as_bytes(item) for item in moved if item is not None]

    def block_claim(
        self,
        worker_name: str,
        max_items: int,
        *,
        block_timeout_s: float,
        batch_wait_s: float,
        busy: bool = True,
        registration: Registration | None = None,
    ) -> list[bytes]:
        """Wait up to ``block_timeout_s`` for work, then claim a batch of up to ``max_items``.

        Everything already queued is taken at once. If the batch is not full and there is
        traffic (``busy``, or more than one item was waiting), wait at most ``batch_wait_s``
        more for further items (blocking on Redis, never sleeping). A lone request on an idle
        queue is not held back waiting for company. A worker passes its ``registration``
        (:class:`Registration`); inspectors and benchmarks claim without one.
        """
        items = self._move_and_claim(worker_name, max_items, block_timeout_s, registration)
        return fill_batch(
            items,
            max_items,
            batch_wait_s=batch_wait_s,
            busy=busy,
            claim_within=lambda room, left_s: self._move_and_claim_within(
                worker_name, room, left_s
            ),
        )

    def _move_and_claim(
        self,
        worker_name: str,
        max_items: int,
        timeout_s: float,
        registration: Registration | None = None,
    ) -> list[bytes]:
        """BLMOVE one item (waiting up to ``timeout_s``), then claim up to ``max_items - 1``
        more that were queued behind it.

        The BLMOVE goes out with an LLEN of the queue: Redis holds the LLEN in this
        connection's input until the BLMOVE is served and then answers it at once, so an idle
        queue costs one round trip, and the claim of the rest a second one only when there is
        a rest.
        """
        keys = self.keys.queue(), self.keys.processing(worker_name)
        registering = registration.commands(self.keys, worker_name) if registration else []
        with self.client.pipeline(transaction=False) as pipe:
            for command in registering:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            # redis-py types the timeout as int; the server takes seconds with millisecond
            # resolution, and redis-py passes a float through.
            pipe.blmove(*keys, round(timeout_s, 3), "LEFT", "RIGHT")  # type: ignore[arg-type]
            pipe.llen(keys[0])
            *_, first, queued = pipe.execute()
        return self._and_the_rest(worker_name, first, int(queued), max_items)

    def _move_and_claim_within(
        self, worker_name: str, max_items: int, wait_s: float
    ) -> list[bytes]:
        """:meth:`_move_and_claim`, giving up after ``wait_s`` with millisecond precision.

        Redis checks blocking timeouts only on its event-loop ticks (``hz``, 10 per second by
        default), so ``BLMOVE ... 0.002`` on an empty list returns after up to 100 ms. Here
        the command blocks with a safe server-side timeout; if no reply came within
        ``wait_s``, another connection sends ``CLIENT UNBLOCK``, and Redis answers nil at
        once, exactly as for a timeout (the LLEN behind it then runs). An item that arrives
        in between is still returned.
        """
        keys = self.keys.queue(), self.keys.processing(worker_name)
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("CLIENT", "ID")  # type: ignore[no-untyped-call]
            conn.send_command(  # type: ignore[no-untyped-call]
                "BLMOVE", *keys, "LEFT", "RIGHT", math.ceil(wait_s) + FILL_SAFETY_MARGIN_S
            )
            conn.send_command("LLEN", keys[0])  # type: ignore[no-untyped-call]
            client_id = int(conn.read_response())
            if not conn.can_read(timeout=wait_s):
                self.client.client_unblock(client_id)
            first = conn.read_response()
            queued = int(conn.read_response())
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # its reply state is unknown: never hand it back half-read
            raise
        finally:
            pool.release(conn)
        return self._and_the_rest(worker_name, first, queued, max_items)

    def _and_the_rest(
        self, worker_name: str, first: bytes | str | None, queued: int, max_items: int
    ) -> list[bytes]:
        """The item a BLMOVE returned (if any) and up to ``max_items`` in all, claiming the
        ``queued`` items that were behind it (some may go to other workers meanwhile)."""
        items = [] if first is None else [as_bytes(first)]
        room = max_items - len(items)
        if queued > 0 and room > 0:
            items.extend(self.claim(worker_name, min(queued, room)))
        return items

    def answer(
        self,
        worker_name: str,
        claimed: Sequence[bytes],
        answers: Sequence[Answer],
        *,
        owner_token: str,
        result_ttl_s: int,
    ) -> int:
        """Publish the answers of a claimed batch and ack it in one step.

        ``claimed`` is the batch as :meth:`block_claim` returned it (the processing list, in
        order); ``answers`` holds one answer per claimed item (the same bytes objects).
        ``owner_token`` is the one this process set with :meth:`take_over`. Returns the
        number of items acknowledged: all of them, or 0 when the batch was no longer ours.
        """
        if not claimed:
            return 0
        position = {id(raw): i for i, raw in enumerate(claimed)}
        keys = [
            self.keys.processing(worker_name),
            self.keys.dead(),
            self.keys.queue(),
            self.keys.owner(worker_name),
        ]
        args: list[bytes | int | str] = [result_ttl_s, len(claimed), owner_token]
        for answer in answers:
            # A message with no usable id gets no result key; the key slot is a harmless dummy.
            keys.append(self.keys.result(answer.job_id or "-"))
            args.extend(
                [
                    position[id(answer.raw)],
                    answer.payload,
                    "1" if answer.dead else "0",
                    answer.retry,
                ]
            )
        return int(self._answer(keys=keys, args=args))


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes (redis-py types its replies as ``bytes | str``)."""
    return value if isinstance(value, bytes) else value.encode("utf-8")

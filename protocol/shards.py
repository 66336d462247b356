"""A model version's queue and worker registry over its shards.

Each shard is a group of keys under its own hash tag (``protocol.keys``), on its own server
(independent servers), on the master its slot maps to (Redis Cluster) or on the one master
(Sentinel). The web tier pushes a request onto one shard (the shorter of two random ones that
answer) and waits for the answer on that shard; a worker claims from every shard at once,
blocking on all of them together (no polling), fairly, and answers each item on its own shard.

A shard that fails is skipped for :data:`DOWN_S` and tried again after: it costs only the
requests that were on it, and the service heals when it answers again.
"""

from __future__ import annotations

import logging
import math
import random
import select
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from protocol.backend import Backend
from protocol.keys import Keys
from protocol.messages import ModelCard
from protocol.queue import (
    FILL_SAFETY_MARGIN_S,
    Answer,
    Queue,
    Registration,
    as_bytes,
    fill_batch,
)
from protocol.routing import ModelDirectory
from protocol.workers import WorkerRegistry

logger = logging.getLogger(__name__)

DOWN_S = 1.0
"""Seconds a shard that failed is left out before it is tried again."""
SEEN_LENGTH_TTL_S = 1.0
"""How long the queue length a push saw counts when choosing a shard."""
SHARD_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError)
"""What a shard that is down (or failing over) raises."""

T = TypeVar("T")


class ShardHealth:
    """Which shards failed recently, for one process (thread-safe)."""

    def __init__(self, shards: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.shards = shards
        self.clock = clock
        self._down_until = [0.0] * shards
        self._lock = threading.Lock()
        self.recovered: set[int] = set()
        """Shards that answered again after failing (a worker checks what it held there)."""

    def usable(self) -> list[int]:
        """Shards not left out; all of them when every one is (one may be back)."""
        now = self.clock()
        with self._lock:
            up = [s for s in range(self.shards) if self._down_until[s] <= now]
        return up or list(range(self.shards))

    def failed(self, shard: int, exc: Exception) -> None:
        with self._lock:
            was_up = self._down_until[shard] <= self.clock()
            self._down_until[shard] = self.clock() + DOWN_S
        if was_up:
            logger.warning("shard %d failed (%s); left out for %.0fs", shard, exc, DOWN_S)

    def ok(self, shard: int) -> None:
        with self._lock:
            was_down = self._down_until[shard] > 0.0
            self._down_until[shard] = 0.0
            if was_down:
                self.recovered.add(shard)
        if was_down:
            logger.info("shard %d answers again", shard)

    def take_recovered(self) -> set[int]:
        with self._lock:
            recovered, self.recovered = self.recovered, set()
        return recovered


@dataclass(frozen=True)
class Claimed:
    """One claimed item and the shard it was claimed on."""

    shard: int
    raw: bytes


@dataclass
class _Wait:
    """A blocking claim sent on one shard's connection, not yet read."""

    shard: int
    queue: Queue
    node: Any
    conn: Any
    client_id: int = 0
    registration_replies: int = 0
    """Replies to the registration sent ahead of the BLMOVE, still to be read."""


class ShardedQueue:
    """The queue of one model version over its shards."""

    def __init__(
        self,
        backend: Backend,
        keys: Keys,
        model: str,
        version: str,
        *,
        health: ShardHealth | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.version = version
        self.queues = [
            Queue(backend.for_shard(i), keys.version(model, version, i))
            for i in range(backend.shards)
        ]
        self.health = health or ShardHealth(backend.shards)
        self.rng = rng or random.Random()
        self._turn = 0

    @property
    def shards(self) -> int:
        return len(self.queues)

    # --- web side ----------------------------------------------------------------------------

    def push(self, messages: Sequence[bytes], *, max_queue: int) -> int | None:
        """Queue a request's messages, whole, on one shard; the shard, or None when the
        shards tried were all full. Raises a Redis error when no shard answers."""
        bound = max(1, math.ceil(max_queue / self.shards))
        last_error: Exception | None = None
        answered = False
        for shard in self._choices():
            try:
                pushed = self.queues[shard].push(messages, max_queue=bound)
            except SHARD_ERRORS as exc:
                self.health.failed(shard, exc)
                self.backend.refresh()
                last_error = exc
                continue
            answered = True
            self.health.ok(shard)
            if pushed:
                return shard
        if not answered and last_error is not None:
            raise last_error
        return None

    def _choices(self) -> list[int]:
        """Shards to try, in order: the shorter of two random usable ones (by the lengths
        this process's pushes saw, no extra round trip), then the rest."""
        usable = self.health.usable()
        self.rng.shuffle(usable)
        if len(usable) > 1 and self._seen_length(usable[1]) < self._seen_length(usable[0]):
            usable[0], usable[1] = usable[1], usable[0]
        return usable

    def _seen_length(self, shard: int) -> int:
        """The length the last push on ``shard`` saw, if recent; else 0, so that a shard not
        pushed to for a while is tried (and seen) again."""
        observed = self.queues[shard].observed
        if observed is None or time.monotonic() - observed[0] > SEEN_LENGTH_TTL_S:
            return 0
        return observed[1]

    def wait_result(self, shard: int, job_id: str, timeout_s: float) -> bytes | None:
        return self.queues[shard].wait_result(job_id, timeout_s)

    def depths(self) -> list[int | None]:
        """Each shard's queue length (None: the shard does not answer)."""
        out: list[int | None] = []
        for shard, queue in enumerate(self.queues):
            try:
                out.append(queue.depth())
            except SHARD_ERRORS as exc:
                self.health.failed(shard, exc)
                out.append(None)
        return out

    def depth(self) -> int:
        return sum(d for d in self.depths() if d is not None)

    # --- worker side -------------------------------------------------------------------------

    def block_claim(
        self,
        worker_name: str,
        max_items: int,
        *,
        block_timeout_s: float,
        batch_wait_s: float,
        busy: bool = True,
        registration: Registration | None = None,
    ) -> list[Claimed]:
        """Wait up to ``block_timeout_s`` for work on any shard, then claim a batch of up to
        ``max_items`` from every shard that has some, fairly; fill it for up to
        ``batch_wait_s`` when there is traffic (see :meth:`Queue.block_claim`)."""
        if self.shards == 1:
            items = self.queues[0].block_claim(
                worker_name,
                max_items,
                block_timeout_s=block_timeout_s,
                batch_wait_s=batch_wait_s,
                busy=busy,
                registration=registration,
            )
            return [Claimed(0, raw) for raw in items]
        claimed = self._wait_and_claim(worker_name, max_items, block_timeout_s, registration)
        return fill_batch(
            claimed,
            max_items,
            batch_wait_s=batch_wait_s,
            busy=busy,
            claim_within=lambda room, left_s: self._wait_and_claim(worker_name, room, left_s),
        )

    def _wait_and_claim(
        self,
        worker_name: str,
        max_items: int,
        wait_s: float,
        registration: Registration | None = None,
    ) -> list[Claimed]:
        """Block on every usable shard at once (one BLMOVE each, on its own connection) until
        one has an item or ``wait_s`` passed; then unblock the others and claim, fairly, what
        each shard has queued (every claim is an atomic LMOVE into the worker's processing
        list on that shard: an item is never only in memory)."""
        waits = self._send_waits(worker_name, wait_s, registration)
        if not waits:
            raise redis.ConnectionError("no shard of the queue answers")
        self._wait_readable(waits, wait_s)
        firsts: dict[int, bytes] = {}
        queued: dict[int, int] = {}
        for wait in waits:
            try:
                first, depth = self._read_wait(wait)
            except SHARD_ERRORS as exc:
                self.health.failed(wait.shard, exc)
                continue
            if first is not None:
                firsts[wait.shard] = first
            queued[wait.shard] = depth
        items = [Claimed(shard, raw) for shard, raw in firsts.items()]
        room = max_items - len(items)
        for shard, count in self._fair_shares(queued, room).items():
            try:
                more = self.queues[shard].claim(worker_name, count)
            except SHARD_ERRORS as exc:
                self.health.failed(shard, exc)
                continue
            items.extend(Claimed(shard, raw) for raw in more)
        return items

    def _send_waits(
        self, worker_name: str, wait_s: float, registration: Registration | None
    ) -> list[_Wait]:
        waits: list[_Wait] = []
        timeout = math.ceil(wait_s) + FILL_SAFETY_MARGIN_S
        for shard in self.health.usable():
            queue = self.queues[shard]
            try:
                node = self.backend.node_for(queue.client, queue.keys.queue())
                conn = node.connection_pool.get_connection()
            except SHARD_ERRORS as exc:
                self.health.failed(shard, exc)
                self.backend.refresh()
                continue
            wait = _Wait(shard, queue, node, conn)
            try:
                conn.connect()  # a no-op when connected; the client id belongs to the socket
                # redis-py PINGs a connection idle for its health-check interval inside the
                # next send and reconnects quietly if that fails: do it now, before the
                # client id is read, not in the middle of the wait's commands.
                conn.check_health()
                # Kept with the socket object itself, compared by identity: a reconnected
                # socket often gets the freed one's address, so an id() would match a stale
                # client id and CLIENT UNBLOCK would miss.
                known = getattr(conn, "_queuenet_client_id", None)
                if known is None or known[0] is not conn._sock:
                    conn.send_command("CLIENT", "ID")
                    conn._queuenet_client_id = (conn._sock, int(conn.read_response()))
                wait.client_id = conn._queuenet_client_id[1]
                # Registration on claim (protocol.queue.Registration), sent ahead of the
                # BLMOVE; Redis answers it before the BLMOVE blocks. Its replies are read once
                # every shard's wait is sent (one round trip for all of them), so that the
                # next reply on each connection is the BLMOVE's.
                registering = registration.commands(queue.keys, worker_name) if registration else []
                for command in registering:
                    conn.send_command(*command)
                wait.registration_replies = len(registering)
                conn.send_command(
                    "BLMOVE",
                    queue.keys.queue(),
                    queue.keys.processing(worker_name),
                    "LEFT",
                    "RIGHT",
                    timeout,
                )
                conn.send_command("LLEN", queue.keys.queue())
                if conn._queuenet_client_id[0] is not conn._sock:
                    raise redis.ConnectionError("the connection was remade under the wait")
            except SHARD_ERRORS as exc:
                self._drop(wait, exc)
                continue
            except BaseException:
                self._drop_all([*waits, wait])
                raise
            waits.append(wait)
        return self._read_registrations(waits)

    def _read_registrations(self, waits: list[_Wait]) -> list[_Wait]:
        """Read each wait's registration replies (sent ahead of its BLMOVE); a shard that
        fails now is dropped like one that failed to take the wait."""
        kept = []
        for wait in waits:
            try:
                for _ in range(wait.registration_replies):
                    wait.conn.read_response()
            except SHARD_ERRORS as exc:
                self._drop(wait, exc)
                continue
            except BaseException:
                self._drop_all(waits)
                raise
            wait.registration_replies = 0
            kept.append(wait)
        return kept

    def _drop_all(self, waits: list[_Wait]) -> None:
        """An error reply (WRONGTYPE, NOPERM, MOVED...) or an interruption: no connection goes
        back to the pool half-read, none stays checked out."""
        for wait in waits:
            self._drop(wait, None)

    def _wait_readable(self, waits: list[_Wait], wait_s: float) -> None:
        """Until one shard's reply is there or ``wait_s`` passed; then unblock the rest (Redis
        answers an unblocked BLMOVE with nil at once; one that found an item keeps it)."""
        pending = {w.conn._sock: w for w in waits if w.conn._sock is not None}
        if not any(w.conn.can_read(timeout=0) for w in waits):
            select.select(list(pending), [], [], max(wait_s, 0.0))
        for wait in waits:
            if not wait.conn.can_read(timeout=0):
                try:
                    wait.node.client_unblock(wait.client_id)
                except SHARD_ERRORS as exc:
                    self._drop(wait, exc)

    def _read_wait(self, wait: _Wait) -> tuple[bytes | None, int]:
        if wait.conn is None:
            raise redis.ConnectionError(f"shard {wait.shard} was dropped")
        try:
            first = wait.conn.read_response()
            depth = int(wait.conn.read_response())
        except BaseException:
            self._drop(wait, None)
            raise
        wait.node.connection_pool.release(wait.conn)
        self.health.ok(wait.shard)
        return (None if first is None else as_bytes(first)), depth

    def _drop(self, wait: _Wait, exc: Exception | None) -> None:
        """A connection whose replies are unknown is never handed back half-read."""
        if wait.conn is not None:
            wait.conn.disconnect()
            wait.node.connection_pool.release(wait.conn)
            wait.conn = None
        if exc is not None:
            self.health.failed(wait.shard, exc)
            self.backend.refresh()

    def _fair_shares(self, queued: dict[int, int], room: int) -> dict[int, int]:
        """Split ``room`` between the shards with items queued: round robin, one at a time,
        starting from a shard that turns with each call."""
        shares: dict[int, int] = defaultdict(int)
        order = sorted(queued, key=lambda s: (s - self._turn) % self.shards)
        self._turn = (self._turn + 1) % self.shards
        left = dict(queued)
        while room > 0 and any(left.values()):
            for shard in order:
                if room > 0 and left[shard] > 0:
                    shares[shard] += 1
                    left[shard] -= 1
                    room -= 1
        return dict(shares)

    def answer(
        self,
        worker_name: str,
        claimed: Sequence[Claimed],
        answers: Sequence[Answer],
        *,
        owner_token: str,
        result_ttl_s: int,
    ) -> tuple[int, set[int]]:
        """Answer and acknowledge each shard's part of the batch: the number acknowledged, and
        the shards whose part was not (the shard failed, or the part was no longer the
        worker's there: it must look at what it holds on them)."""
        by_raw = {id(c.raw): c.shard for c in claimed}
        parts: dict[int, tuple[list[bytes], list[Answer]]] = defaultdict(lambda: ([], []))
        for item in claimed:
            parts[item.shard][0].append(item.raw)
        for answer in answers:
            parts[by_raw[id(answer.raw)]][1].append(answer)
        acked = 0
        unsure: set[int] = set()
        for shard, (raws, shard_answers) in parts.items():
            try:
                done = self.queues[shard].answer(
                    worker_name,
                    raws,
                    shard_answers,
                    owner_token=owner_token,
                    result_ttl_s=result_ttl_s,
                )
            except SHARD_ERRORS as exc:
                self.health.failed(shard, exc)
                logger.warning(
                    "could not answer %d item(s) on shard %d (%s); they stay in %s's "
                    "processing list there",
                    len(raws),
                    shard,
                    exc,
                    worker_name,
                )
                done = 0
            acked += done
            if done != len(raws):
                unsure.add(shard)
        return acked, unsure


class ShardedRegistry:
    """The worker registry of one model version on every shard: a worker beats, owns its
    name, publishes its model card and takes dead workers' items back on each."""

    def __init__(
        self, backend: Backend, keys: Keys, model: str, version: str, health: ShardHealth
    ) -> None:
        self.backend = backend
        self.health = health
        self.registries = [
            WorkerRegistry(backend.for_shard(i), keys.version(model, version, i))
            for i in range(backend.shards)
        ]

    def _each(
        self, action: Callable[[WorkerRegistry], T], shards: Iterable[int] | None = None
    ) -> list[T]:
        """``action`` on every shard (of ``shards``) that answers; raises only when none does."""
        results: list[T] = []
        error: Exception | None = None
        for shard in range(len(self.registries)) if shards is None else sorted(shards):
            registry = self.registries[shard]
            try:
                results.append(action(registry))
            except SHARD_ERRORS as exc:
                self.health.failed(shard, exc)
                error = exc
                continue
            self.health.ok(shard)
        if error is not None and not results:
            self.backend.refresh()
            raise error
        return results

    def take_over(self, worker_name: str, owner_token: str) -> int:
        return sum(self._each(lambda r: r.take_over(worker_name, owner_token)))

    def beat(self, worker_name: str, payload: bytes, *, ttl_s: int, owner_token: str) -> None:
        self._each(lambda r: r.beat(worker_name, payload, ttl_s=ttl_s, owner_token=owner_token))

    def requeue(self, worker_name: str, *, force: bool = False) -> int:
        return sum(max(n, 0) for n in self._each(lambda r: r.requeue(worker_name, force=force)))

    def take_back(self, worker_name: str, shards: set[int]) -> tuple[int, set[int]]:
        """Requeue what ``worker_name`` holds on ``shards``: the items moved, and the shards
        that did not answer (to try again)."""
        moved = 0
        missed: set[int] = set()
        for shard in sorted(shards):
            try:
                moved += max(self.registries[shard].requeue(worker_name, force=True), 0)
            except SHARD_ERRORS as exc:
                self.health.failed(shard, exc)
                missed.add(shard)
        return moved, missed

    def requeue_dead_workers(self, *, exclude: str) -> int:
        return sum(self._each(lambda r: r.requeue_dead_workers(exclude=exclude)))

    def retire(self, worker_name: str) -> None:
        self._each(lambda r: r.retire(worker_name))

    def live_workers(self) -> list[str]:
        return sorted({name for names in self._each(WorkerRegistry.live_workers) for name in names})

    def staying_workers(self) -> list[str]:
        staying = self._each(WorkerRegistry.staying_workers)
        return sorted({name for names in staying for name in names})

    def mark_leaving(self, worker_name: str, *, ttl_s: int) -> None:
        self._each(lambda r: r.mark_leaving(worker_name, ttl_s=ttl_s))

    def held(self, worker_name: str) -> int:
        return sum(self._each(lambda r: r.held(worker_name)))

    def held_items(self, worker_name: str) -> list[bytes]:
        return [item for items in self._each(lambda r: r.held_items(worker_name)) for item in items]

    def publish_card(self, card: ModelCard) -> None:
        self._each(lambda r: r.publish_card(card))

    def card(self) -> ModelCard | None:
        """The model card, from the first shard that has one."""
        for card in self._each(WorkerRegistry.card):
            if card is not None:
                return card
        return None

    def dead_letters(self) -> int:
        return sum(self._each(WorkerRegistry.dead_letters))

    def registered(self) -> list[str]:
        return sorted({n for names in self._each(WorkerRegistry.registered) for n in names})

    def forget_card(self) -> None:
        self._each(WorkerRegistry.forget_card)


def directory_for(backend: Backend, keys: Keys) -> ModelDirectory:
    """The catalog on this backend's catalog servers, checking workers on every shard."""
    health = ShardHealth(backend.shards)
    return ModelDirectory(
        backend.for_catalog(),
        keys,
        registry_of=lambda model, version: ShardedRegistry(backend, keys, model, version, health),
    )

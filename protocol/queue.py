"""The queue operations both sides use, each one atomic in Redis.

At-least-once delivery without loss: a worker moves messages from ``queue`` into its own
``processing`` list in one step (BLMOVE, then the claim script), and an item leaves that list
only in the same script that writes its answer. A worker that dies leaves its items in
Redis; once its heartbeat expires, any other worker puts them back at the head of the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from protocol.keys import Keys

logger = logging.getLogger(__name__)

MAX_CLAIM = 1024
"""Upper bound on items claimed at once (Lua ``unpack`` and reply size stay small)."""
ACK_PREFIX_BYTES = 64
"""Bytes of each claimed item sent back to identify it when acknowledging (they hold the id)."""
FILL_SAFETY_TIMEOUT_S = 1
"""Server-side bound of a batch-fill BLMOVE, should its CLIENT UNBLOCK ever not arrive."""

# Enqueue only while all the messages fit under the bound: a full queue enqueues nothing, and
# a multi-image request is queued whole or not at all.
_PUSH_IF_ROOM = """
if redis.call('LLEN', KEYS[1]) + #ARGV - 1 > tonumber(ARGV[1]) then return -1 end
return redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
"""

# LRANGE + LTRIM + RPUSH in one step: two workers never get the same item, and a claimed item
# is never only in a worker's memory.
_CLAIM = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('RPUSH', KEYS[2], unpack(items))
return items
"""

# Ack and answer a whole batch in one step, and only while it is still ours: the processing
# list must hold exactly the claimed items, in claim order (checked by a prefix of each, which
# holds the job id; the 200 KB items themselves never travel back). If another worker
# requeued them (we were presumed dead), the list is gone and nothing is written, so a request
# is never answered twice. Per answer: publish a result, dead-letter the item, and/or push a
# retry copy back to the queue head.
# KEYS = processing, dead, queue, one result key per answer;
# ARGV = ttl_s, n, n prefixes, then (position, payload, dead_flag, retry_message) per answer.
_ANSWER = """
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
if redis.call('LLEN', KEYS[1]) ~= n then return 0 end
local items = {}
for i = 1, n do
  local item = redis.call('LINDEX', KEYS[1], i - 1)
  local prefix = ARGV[2 + i]
  if string.sub(item, 1, #prefix) ~= prefix then return 0 end
  items[i] = item
end
for j = 1, #KEYS - 3 do
  local at = 2 + n + 4 * (j - 1)
  local payload = ARGV[at + 2]
  if payload ~= '' then
    redis.call('LPUSH', KEYS[j + 3], payload)
    redis.call('EXPIRE', KEYS[j + 3], ttl)
  end
  if ARGV[at + 3] == '1' then redis.call('RPUSH', KEYS[2], items[tonumber(ARGV[at + 1]) + 1]) end
  if ARGV[at + 4] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[at + 4]) end
end
redis.call('DEL', KEYS[1])
return n
"""

# Give a dead worker's items back to the head of the queue, oldest first, each with its
# attempt count raised. KEYS = processing, queue, heartbeat, workers; ARGV = name, force.
_REQUEUE = """
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #items, 1, -1 do
  local item = items[i]
  local ok, msg = pcall(cjson.decode, item)
  if ok and type(msg) == 'table' then
    msg['attempts'] = (tonumber(msg['attempts']) or 0) + 1
    item = cjson.encode(msg)
  end
  redis.call('LPUSH', KEYS[2], item)
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[4], ARGV[1])
return #items
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


class Queue:
    """Queue operations on one Redis client and one namespace."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._push_if_room = client.register_script(_PUSH_IF_ROOM)
        self._claim = client.register_script(_CLAIM)
        self._answer = client.register_script(_ANSWER)
        self._requeue = client.register_script(_REQUEUE)

    # --- web side ----------------------------------------------------------------------------

    def push(self, messages: Sequence[bytes], *, max_queue: int) -> bool:
        """Append requests; False (nothing enqueued) when they would not fit in ``max_queue``."""
        args: list[bytes | int] = [max_queue, *messages]
        return int(self._push_if_room(keys=[self.keys.queue()], args=args)) >= 0

    def depth(self) -> int:
        return int(self.client.llen(self.keys.queue()))

    def wait_result(self, job_id: str, timeout_s: float) -> bytes | None:
        """Block until the result for ``job_id`` arrives, at most ``timeout_s`` seconds."""
        if timeout_s <= 0:
            return None
        # BLPOP takes the timeout in seconds with millisecond resolution; 0 would mean forever.
        reply = self.client.blpop([self.keys.result(job_id)], timeout=max(timeout_s, 0.001))
        return None if reply is None else _as_bytes(reply[1])

    # --- worker side -------------------------------------------------------------------------

    def claim(self, worker_name: str, max_items: int) -> list[bytes]:
        """Move up to ``max_items`` queued messages into the worker's processing list."""
        if max_items <= 0:
            return []
        count = min(max_items, MAX_CLAIM)
        keys = [self.keys.queue(), self.keys.processing(worker_name)]
        return [_as_bytes(item) for item in self._claim(keys=keys, args=[count])]

    def block_claim(
        self,
        worker_name: str,
        max_items: int,
        *,
        block_timeout_s: float,
        batch_wait_s: float,
        busy: bool = True,
    ) -> list[bytes]:
        """Wait up to ``block_timeout_s`` for work, then claim a batch of up to ``max_items``.

        Everything already queued is taken at once. If the batch is not full and there is
        traffic (``busy``, or more than one item was waiting), wait at most ``batch_wait_s``
        more for further items (blocking on Redis, never sleeping). A lone request on an idle
        queue is not held back waiting for company.
        """
        first = self._move_one(worker_name, block_timeout_s)
        if first is None:
            return []
        items = [first, *self.claim(worker_name, max_items - 1)]
        if not busy and len(items) == 1:
            return items
        fill_deadline = time.monotonic() + batch_wait_s
        while len(items) < max_items:
            left_s = fill_deadline - time.monotonic()
            if left_s < 0.001:
                break
            more = self._move_one_within(worker_name, left_s)
            if more is None:
                break
            items.append(more)
            items.extend(self.claim(worker_name, max_items - len(items)))
        return items

    def _move_one(self, worker_name: str, timeout_s: float) -> bytes | None:
        """BLMOVE one item from the queue head to the processing list; None on timeout."""
        # redis-py types the timeout as int; the server takes seconds with millisecond
        # resolution, which the batch-fill wait needs, and redis-py passes a float through.
        item = self.client.blmove(
            self.keys.queue(),
            self.keys.processing(worker_name),
            round(timeout_s, 3),  # type: ignore[arg-type]
            "LEFT",
            "RIGHT",
        )
        return None if item is None else _as_bytes(item)

    def _move_one_within(self, worker_name: str, wait_s: float) -> bytes | None:
        """BLMOVE one item, giving up after ``wait_s`` with millisecond precision.

        Redis checks blocking timeouts only on its event-loop ticks (``hz``, 10 per second by
        default), so ``BLMOVE ... 0.002`` on an empty list returns after up to 100 ms. Here
        the command blocks with a safe server-side timeout; if no reply came within
        ``wait_s``, another connection sends ``CLIENT UNBLOCK``, and Redis answers nil at
        once, exactly as for a timeout. An item that arrives in between is still returned.
        """
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("CLIENT", "ID")  # type: ignore[no-untyped-call]
            conn.send_command(  # type: ignore[no-untyped-call]
                "BLMOVE",
                self.keys.queue(),
                self.keys.processing(worker_name),
                "LEFT",
                "RIGHT",
                FILL_SAFETY_TIMEOUT_S,
            )
            client_id = int(conn.read_response())
            if not conn.can_read(timeout=wait_s):
                self.client.client_unblock(client_id)
            item = conn.read_response()
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # its reply state is unknown: never hand it back half-read
            raise
        finally:
            pool.release(conn)
        return None if item is None else _as_bytes(item)

    def answer(
        self,
        worker_name: str,
        claimed: Sequence[bytes],
        answers: Sequence[Answer],
        *,
        result_ttl_s: int,
    ) -> int:
        """Publish the answers of a claimed batch and ack it in one step.

        ``claimed`` is the batch as :meth:`block_claim` returned it (the processing list, in
        order); ``answers`` holds one answer per claimed item (the same bytes objects).
        Returns the number of items acknowledged: all of them, or 0 when the batch was no
        longer ours.
        """
        if not claimed:
            return 0
        position = {id(raw): i for i, raw in enumerate(claimed)}
        keys = [self.keys.processing(worker_name), self.keys.dead(), self.keys.queue()]
        args: list[bytes | int | str] = [result_ttl_s, len(claimed)]
        args.extend(raw[:ACK_PREFIX_BYTES] for raw in claimed)
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

    def beat(self, worker_name: str, payload: bytes, *, ttl_s: int) -> None:
        """Mark the worker alive for ``ttl_s`` seconds."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.workers(), worker_name)
            pipe.set(self.keys.heartbeat(worker_name), payload, ex=ttl_s)
            pipe.execute()

    def requeue(self, worker_name: str, *, force: bool = False) -> int:
        """Return a worker's claimed items to the queue head if its heartbeat has expired.

        ``force`` skips the heartbeat check (a worker restarting under its old name). Returns
        the number of items moved, or -1 when the worker is alive.
        """
        keys = [
            self.keys.processing(worker_name),
            self.keys.queue(),
            self.keys.heartbeat(worker_name),
            self.keys.workers(),
        ]
        return int(self._requeue(keys=keys, args=[worker_name, "1" if force else "0"]))

    def requeue_dead_workers(self, *, exclude: str) -> int:
        """Requeue the items of every registered worker whose heartbeat is gone."""
        moved = 0
        for name in self._registered_workers():
            if name == exclude:
                continue
            count = self.requeue(name)
            if count > 0:
                logger.warning("requeued %d item(s) of dead worker %s", count, name)
                moved += count
        return moved

    def retire(self, worker_name: str) -> None:
        """Unregister a worker that stops cleanly with nothing left in its processing list."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.heartbeat(worker_name))
            pipe.srem(self.keys.workers(), worker_name)
            pipe.execute()

    def _registered_workers(self) -> list[str]:
        return [_as_bytes(n).decode() for n in self.client.smembers(self.keys.workers())]

    def live_workers(self) -> list[str]:
        """Registered workers whose heartbeat has not expired."""
        names = self._registered_workers()
        if not names:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.heartbeat(name))
            alive = pipe.execute()
        return sorted(name for name, up in zip(names, alive, strict=True) if up)

    def held(self, worker_name: str) -> int:
        return int(self.client.llen(self.keys.processing(worker_name)))


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")

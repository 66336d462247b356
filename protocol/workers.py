"""The worker registry of one model version: heartbeats, name ownership, take-over of a dead
worker's items, the model card and the dead letters.

Each worker process owns a name (its ``owner`` token says which process); it refreshes a
heartbeat key with a TTL and keeps its claimed items in its own processing list. When a
heartbeat expires, any other worker of the version puts that worker's items back at the head
of the queue (``requeue``), each with its attempt count raised; a process that restarts under
the same name takes its own leftovers back first (``take_over``).
"""

from __future__ import annotations

import logging

import redis

from protocol.errors import MessageDecodeError
from protocol.keys import VersionKeys
from protocol.messages import ModelCard, decode_model_card, encode_model_card
from protocol.queue import as_bytes

logger = logging.getLogger(__name__)

# Give a dead worker's items back to the head of the queue, oldest first, each with its
# attempt count raised, and (unless forced by the name's new owner) drop its owner token.
# KEYS = processing, queue, heartbeat, workers, owner; ARGV = name, force.
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
if ARGV[2] ~= '1' then redis.call('DEL', KEYS[5]) end
return #items
"""


class WorkerRegistry:
    """Workers, model card and dead letters of one model version."""

    def __init__(self, client: redis.Redis, keys: VersionKeys) -> None:
        self.client = client
        self.keys = keys
        self._requeue = client.register_script(_REQUEUE)

    def take_over(self, worker_name: str, owner_token: str) -> int:
        """Claim the worker name for this process: requeue what a previous process of that
        name left, and set our owner token, so that process can no longer acknowledge.
        Returns the number of items requeued."""
        moved = self.requeue(worker_name, force=True)
        self.client.set(self.keys.owner(worker_name), owner_token)
        return moved

    def beat(self, worker_name: str, payload: bytes, *, ttl_s: int, owner_token: str) -> None:
        """Mark the worker alive for ``ttl_s`` seconds (and own its name again, should Redis
        have lost the owner token in a restart; a name owned by another process stays its)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.workers(), worker_name)
            pipe.set(self.keys.heartbeat(worker_name), payload, ex=ttl_s)
            pipe.set(self.keys.owner(worker_name), owner_token, nx=True)
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
            self.keys.owner(worker_name),
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
            pipe.delete(
                self.keys.heartbeat(worker_name),
                self.keys.owner(worker_name),
                self.keys.leaving(worker_name),
            )
            pipe.srem(self.keys.workers(), worker_name)
            pipe.execute()

    def _registered_workers(self) -> list[str]:
        return [as_bytes(n).decode() for n in self.client.smembers(self.keys.workers())]

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

    def mark_leaving(self, worker_name: str, *, ttl_s: int) -> None:
        """Say that this worker was asked to stop, so that workers stopping at the same time
        do not count on each other to answer the queue."""
        self.client.set(self.keys.leaving(worker_name), b"1", ex=max(1, ttl_s))

    def staying_workers(self) -> list[str]:
        """Live workers that were not asked to stop."""
        live = self.live_workers()
        if not live:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for name in live:
                pipe.exists(self.keys.leaving(name))
            leaving = pipe.execute()
        return [name for name, gone in zip(live, leaving, strict=True) if not gone]

    def held(self, worker_name: str) -> int:
        return int(self.client.llen(self.keys.processing(worker_name)))

    def held_items(self, worker_name: str) -> list[bytes]:
        """The items a worker holds, in claim order (for inspection and tests)."""
        items = self.client.lrange(self.keys.processing(worker_name), 0, -1)
        return [as_bytes(item) for item in items]

    def dead_items(self) -> list[bytes]:
        return [as_bytes(item) for item in self.client.lrange(self.keys.dead(), 0, -1)]

    def owner(self, worker_name: str) -> bytes | None:
        """The owner token of a worker name (None: nobody owns it)."""
        token = self.client.get(self.keys.owner(worker_name))
        return None if token is None else as_bytes(token)

    def registered(self) -> list[str]:
        """Worker names that may own a processing list, alive or not."""
        return sorted(self._registered_workers())

    def publish_card(self, card: ModelCard) -> None:
        self.client.set(self.keys.card(), encode_model_card(card))

    def forget_card(self) -> None:
        self.client.delete(self.keys.card())

    def card(self) -> ModelCard | None:
        """The published model card, None when none is (or it cannot be read)."""
        raw = self.client.get(self.keys.card())
        if raw is None:
            return None
        try:
            return decode_model_card(raw)
        except MessageDecodeError as exc:
            logger.warning("unreadable model card at %s: %s", self.keys.card(), exc)
            return None

    def dead_letters(self) -> int:
        return int(self.client.llen(self.keys.dead()))

"""Looking into a namespace from outside the service: what waits, what is held, what was left
behind. For operators' tools, the benchmarks and the tests, which must not format QueueNet's
keys themselves. Scans (``SCAN``), so never on a request path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import redis

from protocol.keys import Keys

SCAN_COUNT = 1000
_KINDS = (
    "queue",
    "processing",
    "result",
    "heartbeat",
    "owner",
    "leaving",
    "workers",
    "card",
    "dead",
)
_PER_WORKER = ("processing", "result", "heartbeat", "owner", "leaving")


@dataclass(frozen=True)
class Footprint:
    """What a namespace holds, by kind of key: work and answers (which must drain to zero
    when the service is idle) apart from the bookkeeping of live workers."""

    queued: int
    """Requests waiting in every version's queue."""
    held: int
    """Items in workers' processing lists."""
    results: int
    """Result keys nobody has read yet."""
    dead_letters: int
    bookkeeping_keys: int
    """Heartbeats, owner tokens, leaving marks, worker sets, model cards and the catalog."""

    @property
    def work(self) -> int:
        """Items and answers in flight: 0 once everything was answered and read."""
        return self.queued + self.held + self.results


class Inspector:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def _scan(self, kind: str) -> Iterator[str]:
        pattern = f"{self.keys.namespace}:{{*}}:{kind}" + (":*" if kind in _PER_WORKER else "")
        for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
            yield key.decode() if isinstance(key, bytes) else key

    def keys_of(self, kind: str) -> list[str]:
        """Every key of ``kind`` (one of queue, processing, result, heartbeat, owner, workers,
        card, dead) in every model version of the namespace."""
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(_KINDS)}")
        return sorted(self._scan(kind))

    def result_job_ids(self) -> list[str]:
        """The job ids of results nobody has read yet."""
        return [key.rsplit(":", 1)[1] for key in self.keys_of("result")]

    def heartbeats(self) -> int:
        """Workers with a fresh heartbeat, in every version."""
        return len(self.keys_of("heartbeat"))

    def _total_length(self, kind: str) -> int:
        keys = self.keys_of(kind)
        if not keys:
            return 0
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())

    def footprint(self) -> Footprint:
        results = len(self.keys_of("result"))
        bookkeeping = sum(
            len(self.keys_of(kind)) for kind in ("heartbeat", "owner", "leaving", "workers", "card")
        )
        bookkeeping += sum(
            int(self.client.exists(k))
            for k in (self.keys.versions(), self.keys.routing(), self.keys.default_model())
        )
        return Footprint(
            queued=self._total_length("queue"),
            held=self._total_length("processing"),
            results=results,
            dead_letters=self._total_length("dead"),
            bookkeeping_keys=bookkeeping,
        )

    def delete_all(self) -> int:
        """Remove every key of the namespace (tests and benchmarks clean up after themselves)."""
        doomed = list(self.client.scan_iter(match=self.keys.pattern(), count=SCAN_COUNT))
        if doomed:
            self.client.delete(*doomed)
        return len(doomed)

"""Looking into a namespace from outside the service: what waits, what is held, what was left
behind. For operators' tools, the benchmarks and the tests, which must not format QueueNet's
keys themselves. Scans (``SCAN``), so never on a request path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    """One namespace on every server of a deployment (``clients``: a client, a list of them
    (independent shards), or a Redis Cluster client, whose scans cover every master)."""

    def __init__(self, clients: Any, keys: Keys) -> None:
        self.clients: list[Any] = list(clients) if isinstance(clients, (list, tuple)) else [clients]
        self.keys = keys

    def _scan(self, kind: str) -> Iterator[tuple[Any, str]]:
        pattern = f"{self.keys.namespace}:{{*}}:{kind}" + (":*" if kind in _PER_WORKER else "")
        for client in self.clients:
            for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
                yield client, key.decode() if isinstance(key, bytes) else key

    def keys_of(self, kind: str) -> list[str]:
        """Every key of ``kind`` (one of queue, processing, result, heartbeat, owner, workers,
        card, dead) in every model version (and shard) of the namespace."""
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(_KINDS)}")
        return sorted(key for _, key in self._scan(kind))

    def result_job_ids(self) -> list[str]:
        """The job ids of results nobody has read yet."""
        return [key.rsplit(":", 1)[1] for key in self.keys_of("result")]

    def heartbeats(self) -> int:
        """Workers with a fresh heartbeat, in every version."""
        return len(self.keys_of("heartbeat"))

    def _total_length(self, kind: str) -> int:
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        return sum(int(client.llen(key)) for client, key in self._scan(kind))

    def footprint(self) -> Footprint:
        results = len(self.keys_of("result"))
        bookkeeping = sum(
            len(self.keys_of(kind)) for kind in ("heartbeat", "owner", "leaving", "workers", "card")
        )
        bookkeeping += sum(
            int(client.exists(k))
            for client in self.clients
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
        removed = 0
        for client in self.clients:
            for key in list(client.scan_iter(match=self.keys.pattern(), count=SCAN_COUNT)):
                removed += int(client.delete(key))  # one at a time: keys of many slots
        return removed

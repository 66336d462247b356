"""Every Redis key QueueNet uses, built in one place.

Keys live under one namespace (``QUEUENET_NAMESPACE``, default ``queuenet``)::

    {ns}:queue                 list of pending request messages (RPUSH by web, claimed by workers)
    {ns}:processing:{worker}   list of messages a worker has claimed and not yet answered
    {ns}:result:{job_id}       list holding the one result message for a request (TTL)
    {ns}:worker:{worker}       heartbeat of a live worker (TTL)
    {ns}:owner:{worker}        token of the process that owns the worker name (and may ack)
    {ns}:workers               set of worker names that may own a processing list
    {ns}:model                 model card published by the workers
    {ns}:dead                  dead letters: messages that failed max_attempts times
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace."""

    namespace: str = "queuenet"

    def queue(self) -> str:
        return f"{self.namespace}:queue"

    def processing(self, worker_name: str) -> str:
        return f"{self.namespace}:processing:{worker_name}"

    def result(self, job_id: str) -> str:
        return f"{self.namespace}:result:{job_id}"

    def heartbeat(self, worker_name: str) -> str:
        return f"{self.namespace}:worker:{worker_name}"

    def owner(self, worker_name: str) -> str:
        return f"{self.namespace}:owner:{worker_name}"

    def workers(self) -> str:
        return f"{self.namespace}:workers"

    def model_card(self) -> str:
        return f"{self.namespace}:model"

    def dead(self) -> str:
        return f"{self.namespace}:dead"

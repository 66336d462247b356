"""The worker's I/O shell: claim -> plan -> predict -> write -> heartbeat, around the pure
decisions of :mod:`worker.plan`."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

import redis

from protocol.queue import Answer, Registration
from protocol.routing import ModelDirectory
from protocol.shards import SHARD_ERRORS, Claimed, ShardedQueue, ShardedRegistry
from worker import metrics
from worker.batching import Item, stack
from worker.plan import Context, Plan, after_failure, after_prediction, plan_batch
from worker.registry import LoadedModel
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
DRAIN_MARK_MARGIN_S = 5
"""Seconds a worker's "leaving" mark outlives its drain timeout."""
DRAIN_QUIET_S = 1.0
"""A draining worker stops once its queue has been empty this long: longer than the web tier
reuses a route (``app.routing.ROUTES_TTL_S``), so no request can still be on its way."""


class Worker:
    """Claims batches of one model version's queue, predicts and answers them until stopped."""

    def __init__(
        self,
        queue: ShardedQueue,
        registry: ShardedRegistry,
        directory: ModelDirectory,
        model: LoadedModel,
        settings: WorkerSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.directory = directory
        self.model = model
        self.settings = settings
        self.name = settings.name()
        self.owner_token = uuid.uuid4().hex
        """Identifies this process as the owner of ``name`` in Redis (see take_over)."""
        self.clock = clock
        self._stop = threading.Event()
        self._next_beat = 0.0
        self._registration: Registration | None = None
        """Sent with every claim (from the last beat): a Redis that lost its data knows the
        worker again before it takes anything."""
        self._backoff_s = BACKOFF_INITIAL_S
        self._started = False
        self.batches_done = 0
        self._last_batch_size = 0
        self._unsure_shards: set[int] = set()
        """Shards where what we hold may not be what we think (a failed or refused answer, an
        outage): before the next claim, our processing list there goes back to the queue."""
        self._drain_until = 0.0
        self._quiet_since = 0.0
        self.fatal_error = ""
        """Set when the loop stopped on an error that retrying cannot fix."""
        card = model.card
        self._metric_labels = (card.name, card.version)

    def request_stop(self) -> None:
        """Stop claiming; the batch in hand is finished and acknowledged first (and, for the
        last live worker of its version, the queue is drained: see ``QUEUENET_DRAIN_TIMEOUT_S``)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_batches: int | None = None, burst: bool = False) -> None:
        """Serve until stopped, ``max_batches`` are done, or (``burst``) the queue is empty."""
        while self._keep_going():
            if max_batches is not None and self.batches_done >= max_batches:
                break
            try:
                self._start_once()
                self._unsure_shards |= self.queue.health.take_recovered()
                if self._unsure_shards:
                    self._take_back_own()
                self.heartbeat()
                claimed = self.dequeue_batch()
                if claimed:
                    self.process(claimed)
                elif burst:
                    break
                self._backoff_s = BACKOFF_INITIAL_S
            except redis.AuthenticationError as exc:
                # Not an outage: retrying cannot help. Stop so the supervisor shows it.
                logger.error(
                    "worker %s: Redis refused the credentials in QUEUENET_REDIS_URL=%s (%s)",
                    self.name,
                    self.settings.redis.redacted_url(),
                    exc,
                )
                self.fatal_error = str(exc)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._wait_out_outage(exc)
            except Exception:  # the loop must survive anything one batch throws
                logger.exception("worker %s: unexpected error; continuing", self.name)
                self._unsure_shards = set(range(self.queue.shards))
                self._stop.wait(BACKOFF_INITIAL_S)
        self.shutdown()

    # --- the steps ---------------------------------------------------------------------------

    def dequeue_batch(self) -> list[Claimed]:
        items = self.queue.block_claim(
            self.name,
            self.settings.batch_size,
            block_timeout_s=self._block_timeout_s(),
            batch_wait_s=self.settings.batch_wait_ms / 1000.0,
            busy=self._last_batch_size > 1,
            registration=self._registration,
        )
        self._last_batch_size = len(items)
        return items

    def process(self, claimed: Sequence[Claimed]) -> None:
        """Answer every claimed item exactly once: claim -> plan -> predict -> write."""
        started = time.monotonic()
        ctx = Context(
            card=self.model.card,
            labels=self.model.labels,
            max_attempts=self.settings.max_attempts,
            now=self.clock(),
            batch_id=uuid.uuid4().hex[:12],
            worker=self.name,
        )
        plan = plan_batch([item.raw for item in claimed], ctx)
        self._observe_queue_wait(plan.predict, ctx.now)
        predicted = self.predict_batch(plan.predict, ctx)
        self.write_results(claimed, plan.answers + predicted.answers)
        outcomes = plan.outcomes + predicted.outcomes
        for outcome, count in outcomes.items():
            metrics.ITEMS.labels(*self._metric_labels, outcome).inc(count)
        self.batches_done += 1
        logger.info(
            "batch done batch_id=%s worker=%s size=%d predicted=%d failed=%d expired=%d "
            "dead=%d retried=%d ms=%.1f",
            ctx.batch_id,
            self.name,
            len(claimed),
            outcomes["predicted"],
            outcomes["failed"],
            outcomes["expired"],
            outcomes["dead"],
            outcomes["retried"],
            (time.monotonic() - started) * 1000.0,
        )

    def predict_batch(self, items: Sequence[Item], ctx: Context) -> Plan:
        """Predict ``items`` together; if the model raises, isolate the failing item(s)."""
        if not items:
            return Plan()
        try:
            inference_started = time.monotonic()
            probabilities = self.model.predictor.predict(stack(items))
            metrics.INFERENCE_SECONDS.labels(*self._metric_labels).observe(
                time.monotonic() - inference_started
            )
            metrics.BATCH_SIZE.labels(*self._metric_labels).observe(len(items))
        except Exception as exc:  # a poison input must not take its batch-mates down with it
            if len(items) > 1:
                logger.warning("batch of %d failed (%s); predicting one by one", len(items), exc)
                plans = [self.predict_batch([item], ctx) for item in items]
                return Plan(
                    answers=[a for p in plans for a in p.answers],
                    outcomes=sum((p.outcomes for p in plans), Counter()),
                )
            logger.exception("prediction failed job_id=%s", items[0].request.id)
            failed = after_failure(items[0], str(exc), ctx)
            self._log_failures(items, failed)
            return failed
        predicted = after_prediction(items, probabilities, ctx)
        self._log_failures(items, predicted)
        return predicted

    def _log_failures(self, items: Sequence[Item], plan: Plan) -> None:
        """One line per item the model failed on: retried (at the queue head) or given up."""
        for item, answer in zip(items, plan.answers, strict=True):
            attempts = item.request.attempts + 1
            if answer.retry:
                logger.warning(
                    "retrying job_id=%s attempt=%d of max_attempts=%d",
                    item.request.id,
                    attempts,
                    self.settings.max_attempts,
                )
            elif answer.dead:
                logger.error(
                    "giving up job_id=%s after %d attempts; dead-lettered",
                    item.request.id,
                    attempts,
                )

    def write_results(self, claimed: Sequence[Claimed], answers: Sequence[Answer]) -> None:
        acked, unsure = self.queue.answer(
            self.name,
            claimed,
            answers,
            owner_token=self.owner_token,
            result_ttl_s=self.settings.result_ttl_s,
        )
        if acked != len(claimed):
            logger.warning(
                "%d of the batch's %d item(s) were not acknowledged (taken back while we worked, "
                "or their shard failed); their answers were not written; what we still hold "
                "there goes back to the queue",
                len(claimed) - acked,
                len(claimed),
            )
            self._unsure_shards |= unsure

    def heartbeat(self) -> None:
        """Refresh our heartbeat and model card and take back the items of dead workers,
        every ttl/3 s."""
        now = time.monotonic()
        if now < self._next_beat:
            return
        payload = json.dumps(
            {
                "name": self.name,
                "pid": os.getpid(),
                "model": self.model.card.name,
                "version": self.model.card.version,
                "ts": self.clock(),
            }
        ).encode()
        self.registry.beat(
            self.name, payload, ttl_s=self.settings.heartbeat_ttl_s, owner_token=self.owner_token
        )
        self._registration = Registration(self.owner_token, payload, self.settings.heartbeat_ttl_s)
        self.registry.requeue_dead_workers(exclude=self.name)
        # Card and catalog entry may have been lost with a Redis restart; both are cheap.
        self.registry.publish_card(self.model.card)
        try:
            self.directory.announce(self.model.card.name, self.model.card.version)
        except SHARD_ERRORS as exc:  # the catalog's server is failing over: serve on, retry
            logger.warning("worker %s: could not announce its version (%s)", self.name, exc)
        self._next_beat = now + self.settings.heartbeat_ttl_s / 3.0

    # --- start, stop, outages ----------------------------------------------------------------

    def _start_once(self) -> None:
        if self._started:
            return
        # Our own leftovers (a previous process with this name died) go back to the queue.
        moved = self.registry.take_over(self.name, self.owner_token)
        if moved:
            logger.warning("requeued %d item(s) left by a previous %s", moved, self.name)
        # The model card and the catalog entry go out with the first heartbeat, at once.
        self._started = True
        logger.info(
            "worker %s ready model=%s version=%s card=%s batch_size=%d",
            self.name,
            self.model.card.name,
            self.model.card.version,
            self.model.card.fingerprint,
            self.settings.batch_size,
        )

    def _keep_going(self) -> bool:
        """True until a stop is requested; then, for the last live worker of its version,
        until its queue has been empty for ``DRAIN_QUIET_S`` or the drain timeout passed."""
        if not self._stop.is_set():
            return True
        now = time.monotonic()
        if self._drain_until == 0.0:
            self._drain_until = now + self._drain_budget_s()
            if self._drain_until > now:
                logger.info(
                    "worker %s is the last of %s version %s: answering its queue before it "
                    "stops (at most %.0fs)",
                    self.name,
                    self.model.card.name,
                    self.model.card.version,
                    self.settings.drain_timeout_s,
                )
        if now >= self._drain_until:
            return False
        try:
            if self.queue.depth() > 0:
                self._quiet_since = 0.0
                return True
        except redis.RedisError:
            return False
        if self._quiet_since == 0.0:
            self._quiet_since = now
        return now - self._quiet_since < DRAIN_QUIET_S

    def _drain_budget_s(self) -> float:
        """Seconds to drain: the drain timeout when no other worker of the version stays
        (workers asked to stop together all drain, sharing the queue)."""
        if self.settings.drain_timeout_s <= 0 or not self._started:
            return 0.0
        try:
            self.registry.mark_leaving(
                self.name, ttl_s=math.ceil(self.settings.drain_timeout_s) + DRAIN_MARK_MARGIN_S
            )
            others = [n for n in self.registry.staying_workers() if n != self.name]
        except redis.RedisError:
            return 0.0
        return 0.0 if others else self.settings.drain_timeout_s

    def _block_timeout_s(self) -> float:
        """While draining, wait for work only briefly, to notice a quiet queue in time."""
        if self._stop.is_set():
            return min(self.settings.block_timeout_s, DRAIN_QUIET_S / 4)
        return self.settings.block_timeout_s

    def _observe_queue_wait(self, items: Sequence[Item], now: float) -> None:
        for item in items:
            if item.request.enqueued > 0:
                metrics.QUEUE_WAIT_SECONDS.labels(*self._metric_labels).observe(
                    max(0.0, now - item.request.enqueued)
                )

    def _take_back_own(self) -> None:
        """After a failure mid-batch, whatever is left in our processing lists goes back (on
        the shards that answer; the others are tried again before the next claim)."""
        moved, self._unsure_shards = self.registry.take_back(self.name, self._unsure_shards)
        if moved > 0:
            logger.warning("requeued %d item(s) of our own unfinished batch", moved)

    def _wait_out_outage(self, exc: Exception) -> None:
        logger.warning(
            "worker %s: redis unreachable (%s); retrying in %.1fs", self.name, exc, self._backoff_s
        )
        self._stop.wait(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        self._next_beat = 0.0  # beat as soon as Redis is back
        # A batch may have been claimed but not acknowledged.
        self._unsure_shards = set(range(self.queue.shards))

    def shutdown(self) -> None:
        """Unregister if nothing is held; otherwise leave the items for recovery."""
        try:
            held = self.registry.held(self.name)
            if held == 0:
                self.registry.retire(self.name)
                # Retired: a later run() takes the name over again, as a new process would.
                self._started = False
                self._next_beat = 0.0
            else:
                logger.warning(
                    "worker %s stops holding %d item(s); they will be requeued", self.name, held
                )
        except redis.RedisError as exc:
            logger.warning("worker %s: could not unregister: %s", self.name, exc)
        logger.info("worker %s stopped after %d batch(es)", self.name, self.batches_done)

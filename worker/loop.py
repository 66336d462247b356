"""The worker's I/O shell: a short loop over named steps around the pure batch logic."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import redis

from protocol.messages import PredictResult, encode_model_card, encode_request, encode_result
from protocol.queue import Answer, Queue
from worker import metrics
from worker.batching import Item, stack, top_k, triage
from worker.registry import LoadedModel
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0


class Worker:
    """Claims batches from the queue, predicts and answers them until asked to stop."""

    def __init__(
        self,
        queue: Queue,
        model: LoadedModel,
        settings: WorkerSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.model = model
        self.settings = settings
        self.name = settings.name()
        self.owner_token = uuid.uuid4().hex
        """Identifies this process as the owner of ``name`` in Redis (see Queue.take_over)."""
        self.clock = clock
        self._stop = threading.Event()
        self._next_beat = 0.0
        self._backoff_s = BACKOFF_INITIAL_S
        self._started = False
        self.batches_done = 0
        self._last_batch_size = 0
        self._own_items_unsure = False
        self.fatal_error = ""
        """Set when the loop stopped on an error that retrying cannot fix."""

    def request_stop(self) -> None:
        """Stop claiming; the batch in hand is finished and acknowledged first."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_batches: int | None = None, burst: bool = False) -> None:
        """Serve until stopped, ``max_batches`` are done, or (``burst``) the queue is empty."""
        while not self._stop.is_set():
            if max_batches is not None and self.batches_done >= max_batches:
                break
            try:
                self._start_once()
                if self._own_items_unsure:
                    self._take_back_own()
                self.heartbeat()
                raw_items = self.dequeue_batch()
                if raw_items:
                    self.process(raw_items)
                elif burst:
                    break
                self._backoff_s = BACKOFF_INITIAL_S
            except redis.AuthenticationError as exc:
                # Not an outage: retrying cannot help. Stop so the supervisor shows it.
                logger.error(
                    "worker %s: Redis refused the credentials in QUEUENET_REDIS_URL (%s)",
                    self.name,
                    exc,
                )
                self.fatal_error = str(exc)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._wait_out_outage(exc)
            except Exception:  # the loop must survive anything one batch throws
                logger.exception("worker %s: unexpected error; continuing", self.name)
                self._own_items_unsure = True
                self._stop.wait(BACKOFF_INITIAL_S)
        self.shutdown()

    def _start_once(self) -> None:
        if self._started:
            return
        # Our own leftovers (a previous process with this name died) go back to the queue.
        moved = self.queue.take_over(self.name, self.owner_token)
        if moved:
            logger.warning("requeued %d item(s) left by a previous %s", moved, self.name)
        # The model card goes out with the first heartbeat, which follows at once.
        self._started = True
        logger.info(
            "worker %s ready model=%s version=%s batch_size=%d",
            self.name,
            self.model.card.name,
            self.model.card.version,
            self.settings.batch_size,
        )

    def publish_model_card(self) -> None:
        self.queue.client.set(self.queue.keys.model_card(), encode_model_card(self.model.card))

    def heartbeat(self) -> None:
        """Refresh our heartbeat and take back the items of dead workers, every ttl/3 s."""
        now = time.monotonic()
        if now < self._next_beat:
            return
        payload = json.dumps(
            {
                "name": self.name,
                "pid": os.getpid(),
                "model": self.model.card.name,
                "ts": self.clock(),
            }
        ).encode()
        self.queue.beat(
            self.name, payload, ttl_s=self.settings.heartbeat_ttl_s, owner_token=self.owner_token
        )
        self.queue.requeue_dead_workers(exclude=self.name)
        # The card may have been lost with a Redis restart; it is cheap to set again.
        self.publish_model_card()
        self._next_beat = now + self.settings.heartbeat_ttl_s / 3.0

    def dequeue_batch(self) -> list[bytes]:
        items = self.queue.block_claim(
            self.name,
            self.settings.batch_size,
            block_timeout_s=self.settings.block_timeout_s,
            batch_wait_s=self.settings.batch_wait_ms / 1000.0,
            busy=self._last_batch_size > 1,
        )
        self._last_batch_size = len(items)
        return items

    def process(self, raw_items: Sequence[bytes]) -> None:
        """Answer every claimed item exactly once: predicted, failed, expired or dead."""
        started = time.monotonic()
        meta = {"batch_id": uuid.uuid4().hex[:12], "worker": self.name}
        sorted_items = triage(
            raw_items,
            card=self.model.card,
            now=self.clock(),
            max_attempts=self.settings.max_attempts,
            meta=meta,
        )
        # A message without a usable id cannot be answered: it is only acknowledged.
        answers = [
            Answer(raw, r.id, encode_result(r)) if r.id else Answer(raw, None, b"")
            for raw, r in sorted_items.failed
        ]
        answers += [Answer(raw, r.id, encode_result(r), dead=True) for raw, r in sorted_items.dead]
        answers += [Answer(raw, None, b"") for raw in sorted_items.expired]
        now = self.clock()
        for item in sorted_items.ready:
            if item.request.enqueued > 0:
                metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, now - item.request.enqueued))
        metrics.ITEMS.labels("failed").inc(len(sorted_items.failed))
        metrics.ITEMS.labels("dead").inc(len(sorted_items.dead))
        metrics.ITEMS.labels("expired").inc(len(sorted_items.expired))
        answers += self.predict_batch(sorted_items.ready, meta)
        self.write_results(raw_items, answers)
        self.batches_done += 1
        logger.info(
            "batch done batch_id=%s worker=%s size=%d predicted=%d failed=%d expired=%d dead=%d "
            "ms=%.1f",
            meta["batch_id"],
            self.name,
            len(raw_items),
            len(sorted_items.ready),
            len(sorted_items.failed),
            len(sorted_items.expired),
            len(sorted_items.dead),
            (time.monotonic() - started) * 1000.0,
        )

    def predict_batch(self, items: Sequence[Item], meta: dict[str, str]) -> list[Answer]:
        """Predict ``items`` together; if the batch fails, isolate the failing item(s)."""
        if not items:
            return []
        try:
            inference_started = time.monotonic()
            probabilities = self.model.predictor.predict(stack(items))
            metrics.INFERENCE_SECONDS.observe(time.monotonic() - inference_started)
            metrics.BATCH_SIZE.observe(len(items))
        except Exception as exc:  # a poison input must not take its batch-mates down with it
            if len(items) > 1:
                logger.warning("batch of %d failed (%s); predicting one by one", len(items), exc)
                return [a for item in items for a in self.predict_batch([item], meta)]
            logger.exception("prediction failed job_id=%s", items[0].request.id)
            return [self._failed(items[0], exc, meta)]
        answers = []
        finite = np.isfinite(probabilities).all(axis=1)
        for item, row, ok in zip(items, probabilities, finite, strict=True):
            if not ok:  # NaN/inf: the model broke on this input; never serve it as a ranking
                answers.append(self._failed(item, ValueError("non-finite model output"), meta))
                continue
            metrics.ITEMS.labels("predicted").inc()
            ranked = top_k(row, item.request.top_k, self.model.labels)
            result = PredictResult(id=item.request.id, ok=True, predictions=ranked, **meta)
            answers.append(Answer(item.raw, item.request.id, encode_result(result)))
        return answers

    def _failed(self, item: Item, exc: Exception, meta: dict[str, str]) -> Answer:
        """Retry a failed item (at the queue head) until ``max_attempts``, then give up."""
        request = item.request
        attempts = request.attempts + 1
        if attempts < self.settings.max_attempts:
            logger.warning(
                "retrying job_id=%s attempt=%d of max_attempts=%d",
                request.id,
                attempts,
                self.settings.max_attempts,
            )
            metrics.ITEMS.labels("retried").inc()
            retry = encode_request(dataclasses.replace(request, attempts=attempts))
            return Answer(item.raw, request.id, b"", retry=retry)
        logger.error("giving up job_id=%s after %d attempts; dead-lettered", request.id, attempts)
        metrics.ITEMS.labels("dead").inc()
        result = PredictResult.failure(
            request.id,
            "prediction_failed",
            f"the model failed on this image {attempts} times; last error: {exc}",
            **meta,
        )
        return Answer(item.raw, request.id, encode_result(result), dead=True)

    def write_results(self, claimed: Sequence[bytes], answers: Sequence[Answer]) -> None:
        acked = self.queue.answer(
            self.name,
            claimed,
            answers,
            owner_token=self.owner_token,
            result_ttl_s=self.settings.result_ttl_s,
        )
        if acked != len(claimed):
            logger.warning(
                "the batch of %d item(s) was taken back while we worked (heartbeat expired); "
                "its answers were not written, another worker answers them",
                len(claimed),
            )

    def _take_back_own(self) -> None:
        """After a failure mid-batch, whatever is left in our processing list goes back."""
        moved = self.queue.requeue(self.name, force=True)
        if moved > 0:
            logger.warning("requeued %d item(s) of our own unfinished batch", moved)
        self._own_items_unsure = False

    def _wait_out_outage(self, exc: Exception) -> None:
        logger.warning(
            "worker %s: redis unreachable (%s); retrying in %.1fs", self.name, exc, self._backoff_s
        )
        self._stop.wait(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        self._next_beat = 0.0  # beat as soon as Redis is back
        self._own_items_unsure = True  # a batch may have been claimed but not acknowledged

    def shutdown(self) -> None:
        """Unregister if nothing is held; otherwise leave the items for recovery."""
        try:
            held = self.queue.held(self.name)
            if held == 0:
                self.queue.retire(self.name)
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

"""The worker loop in-process, with a tiny real Keras model and a real Redis."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np

from protocol.messages import PredictRequest, decode_result, encode_request
from protocol.queue import Queue
from protocol.workers import WorkerRegistry
from tests.conftest import TINY_LABELS, TINY_NAME, TINY_SIZE, TINY_VERSION
from tests.helpers import wait_until
from worker.loop import Worker
from worker.model import Predictor
from worker.registry import LoadedModel

UNBOUNDED = 10**9


def enqueue(queue: Queue, colour: tuple[int, int, int], *, deadline_in_s: float = 30.0) -> str:
    """A request as the web tier makes it for the tiny model (version 1, its card)."""
    job_id = uuid.uuid4().hex
    array = np.empty((TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    array[...] = colour
    request = PredictRequest.from_array(
        job_id,
        array,
        top_k=2,
        deadline=time.time() + deadline_in_s,
        model=TINY_NAME,
        version=TINY_VERSION,
        card="tiny-colours",
    )
    assert queue.push([encode_request(request)], max_queue=UNBOUNDED)
    return job_id


def result(queue: Queue, job_id: str):
    raw = queue.wait_result(job_id, 1.0)
    assert isinstance(raw, bytes), f"no result for {job_id}"
    return decode_result(raw)


def test_one_batch_answers_everything_and_acks(
    make_worker: Callable[..., Worker], queue: Queue, registry: WorkerRegistry
) -> None:
    jobs = [enqueue(queue, (240, 5, 5)), enqueue(queue, (5, 240, 5)), enqueue(queue, (5, 5, 240))]
    worker = make_worker()
    worker.run(max_batches=1)
    answers = [result(queue, job) for job in jobs]
    assert [r.predictions[0].label for r in answers] == ["red", "green", "blue"]
    assert all((r.model, r.version) == ("tiny", "1") for r in answers)
    assert registry.held(worker.name) == 0 and queue.depth() == 0
    card = registry.card()
    assert card is not None
    assert card.input_size == TINY_SIZE and card.num_labels == len(TINY_LABELS)
    assert worker.name not in registry.registered()  # retired cleanly


def test_results_expire(make_worker: Callable[..., Worker], queue: Queue) -> None:
    job = enqueue(queue, (1, 2, 3))
    make_worker(result_ttl_s=7).run(max_batches=1)
    answer, ttl_s = queue.peek_result(job)
    assert len(answer) == 1 and 0 < ttl_s <= 7


def test_bad_item_does_not_stop_the_batch(make_worker: Callable[..., Worker], queue: Queue) -> None:
    good = enqueue(queue, (240, 5, 5))
    bad_id = uuid.uuid4().hex
    bad = {
        "v": 2,
        "id": bad_id,
        "shape": [3, 3, 3],
        "dtype": "uint8",
        "data": "AAAA",
        "top_k": 1,
        "deadline": time.time() + 30,
        "attempts": 0,
        "model": TINY_NAME,
        "version": TINY_VERSION,
        "card": "tiny-colours",
    }
    assert queue.push([json.dumps(bad).encode(), b"complete garbage"], max_queue=UNBOUNDED)
    worker = make_worker()
    worker.run(max_batches=1)
    assert result(queue, good).ok
    failed = result(queue, bad_id)
    assert failed.error_code == "invalid_input" and "shape" in failed.error_message
    assert worker.registry.held(worker.name) == 0 and queue.depth() == 0
    assert queue.peek_result("-") == ([], -2)  # garbage is acked, not answered


def test_expired_items_are_not_computed(make_worker: Callable[..., Worker], queue: Queue) -> None:
    job = enqueue(queue, (1, 2, 3), deadline_in_s=-1)
    worker = make_worker()
    worker.run(max_batches=1)
    assert queue.peek_result(job) == ([], -2)
    assert worker.registry.held(worker.name) == 0


def test_batches_are_capped_at_batch_size(make_worker: Callable[..., Worker], queue: Queue) -> None:
    jobs = [enqueue(queue, (9, 9, 9)) for _ in range(5)]
    worker = make_worker(batch_size=2)
    worker.run(max_batches=1)
    assert queue.depth() == 3
    worker.run(burst=True)
    assert all(result(queue, job).ok for job in jobs)
    assert worker.batches_done == 3


def test_items_of_a_dead_worker_are_answered_by_another(
    make_worker: Callable[..., Worker], queue: Queue, registry: WorkerRegistry
) -> None:
    jobs = [enqueue(queue, (240, 5, 5)) for _ in range(3)]
    registry.beat("crashed-worker", b"{}", ttl_s=1, owner_token="old")
    queue.claim("crashed-worker", 3)  # claimed, then the process died: no answer
    wait_until(lambda: registry.live_workers() == [], 5, "its heartbeat to expire")
    survivor = make_worker()
    survivor.run(max_batches=1)
    answered = [result(queue, job) for job in jobs]
    assert all(r.ok and r.worker == survivor.name for r in answered)
    assert registry.held("crashed-worker") == 0


class GatedPredictor:
    """A real predictor whose ``predict()`` waits until the test opens the gate, so the test
    can act while the worker holds a claimed, unanswered batch."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()

    @property
    def input_size(self) -> int:
        return self.inner.input_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        return self.inner.predict(batch)


def held_job_ids(worker: Worker) -> list[str]:
    return [json.loads(raw)["id"] for raw in worker.registry.held_items(worker.name)]


def assert_answered_by(queue: Queue, worker: Worker, jobs: list[str], label: str) -> None:
    answered = [result(queue, job) for job in jobs]
    assert all(r.ok and r.worker == worker.name for r in answered), answered
    assert all(r.predictions[0].label == label for r in answered), answered
    assert len({r.batch_id for r in answered}) == 1  # one batch, not re-claimed piecemeal


def test_stop_request_finishes_the_batch_in_hand(
    make_worker: Callable[..., Worker], queue: Queue, tiny_model: LoadedModel
) -> None:
    """The stop arrives while the model is working on a claimed batch: that batch is answered
    by this worker and acknowledged, and nothing more is claimed."""
    gated = GatedPredictor(tiny_model.predictor)
    jobs = [enqueue(queue, (5, 5, 240)) for _ in range(4)]
    worker = make_worker(dataclasses.replace(tiny_model, predictor=gated), batch_size=2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert gated.entered.wait(timeout=30), "the worker never called predict()"
        held = held_job_ids(worker)
        worker.request_stop()
    finally:
        gated.gate.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert held == jobs[:2]  # the batch in hand when the stop was requested
    assert_answered_by(queue, worker, held, "blue")
    assert worker.registry.held(worker.name) == 0 and worker.batches_done == 1
    assert queue.depth() == 2  # the rest was not claimed after the stop
    assert all(queue.peek_result(job) == ([], -2) for job in jobs[2:])


def test_stop_request_while_the_batch_fills_still_answers_it(
    make_worker: Callable[..., Worker], queue: Queue
) -> None:
    """The stop arrives after the claim, before the model ran: a worker that then dropped
    the claimed items (or left them for another worker to requeue) fails here."""
    jobs = [enqueue(queue, (240, 5, 5)) for _ in range(2)]
    # Two items waiting make the first claim wait for the batch to fill, up to batch_wait_ms.
    # That wait is the window in which the test requests the stop.
    worker = make_worker(batch_size=8, batch_wait_ms=1500.0)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(
            lambda: worker.registry.held(worker.name) == 2, 30, "the worker to claim both items"
        )
        held = held_job_ids(worker)
        worker.request_stop()
        assert worker.batches_done == 0, "the batch was done before the stop was requested"
    finally:
        worker.request_stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert held == jobs
    assert_answered_by(queue, worker, jobs, "red")
    assert worker.registry.held(worker.name) == 0 and worker.batches_done == 1


def test_a_restarted_worker_takes_back_its_own_leftovers(
    make_worker: Callable[..., Worker], queue: Queue
) -> None:
    """A worker that died mid-batch and comes back under the same name (a container restart)
    finds its unacknowledged items and answers them."""
    jobs = [enqueue(queue, (5, 240, 5)) for _ in range(2)]
    worker = make_worker()
    queue.claim(worker.name, 2)  # the previous life claimed them, then died
    # Not even expired:
    worker.registry.beat(worker.name, b"{}", ttl_s=60, owner_token="previous-life")
    worker.run(max_batches=1)
    assert all(result(queue, job).predictions[0].label == "green" for job in jobs)
    assert worker.registry.held(worker.name) == 0


def test_a_worker_answers_at_once_after_redis_lost_its_data(
    make_worker: Callable[..., Worker], queue: Queue, registry: WorkerRegistry
) -> None:
    """Redis restarted empty while the worker ran; its next beat is 10 s away. Its claims
    register it again (name, owner token, heartbeat), so the request is answered, not
    refused at acknowledgement, retried and dead-lettered."""
    worker = make_worker(heartbeat_ttl_s=30)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: registry.card() is not None, 10, "the model card")
        queue.client.flushdb()
        job = enqueue(queue, (5, 240, 5))
        answer = decode_result(queue.wait_result(job, 5.0) or b"no answer")
        assert answer.predictions and answer.predictions[0].label == "green", answer
        assert registry.owner(worker.name) == worker.owner_token.encode()
        assert registry.live_workers() == [worker.name] and registry.dead_letters() == 0
    finally:
        worker.request_stop()
        thread.join(timeout=10)

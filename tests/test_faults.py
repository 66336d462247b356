"""Faults against real processes and a real Redis: killed workers, poison items, deadlines,
backpressure, Redis outages and graceful stops. Nothing is lost, nothing hangs."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from protocol.messages import PredictRequest, encode_request
from tests.helpers import wait_until
from tests.live import LiveService, RestartableRedis
from worker.registry import LoadedModel


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def post(url: str, data: bytes, timeout_s: float = 30) -> requests.Response:
    return requests.post(f"{url}/predict", files={"image": ("x.png", data)}, timeout=timeout_s)


def test_live_service_answers(live: LiveService) -> None:
    live.start_worker()
    url = live.start_web()
    response = post(url, png((250, 5, 5)))
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "red"


def test_no_worker_gives_504_within_timeout(live: LiveService) -> None:
    worker = live.start_worker()
    url = live.start_web(QUEUENET_PREDICT_TIMEOUT_S="1.5")
    live.kill(worker)  # the model card stays; nobody answers
    started = time.monotonic()
    response = post(url, png((5, 5, 250)))
    elapsed_s = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "prediction_timeout"
    # The web's 1.5 s deadline, not the 10 s default: 2.5 s of margin for a busy machine.
    assert elapsed_s < 1.5 + 2.5


# --- worker death, graceful stop ---------------------------------------------------------------


def result_keys(live: LiveService) -> list[str]:
    return live.inspector().keys_of("result")


def processing_total(live: LiveService) -> int:
    return live.inspector().footprint().held


def lite0_service(live: LiveService, model_cache: Path) -> None:
    live.extra_env.update(
        {
            "QUEUENET_MODEL": "efficientnet-lite0",
            "QUEUENET_MODEL_CACHE_DIR": str(model_cache),
            "QUEUENET_BATCH_SIZE": "16",
            "QUEUENET_PREDICT_TIMEOUT_S": "60",
            "QUEUENET_WEB_PROCESSES": "2",
            "QUEUENET_WEB_THREADS": "64",
        }
    )


def post_many(url: str, count: int, photo: bytes) -> list[requests.Response]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: post(url, photo, timeout_s=90), range(count)))


@pytest.mark.e2e
def test_kill_9_a_worker_mid_batch_loses_nothing(
    live: LiveService, lite0: LoadedModel, model_cache: Path, data_dir: Path
) -> None:
    lite0_service(live, model_cache)
    victim = live.start_worker()
    survivor = live.start_worker()
    url = live.start_web()
    photo = (data_dir / "chelsea.png").read_bytes()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(post_many, url, 120, photo)
        # Frozen while it holds a batch, then killed: it dies with those items in hand.
        held = len(freeze_while_holding(live, victim))
        live.kill(victim)
        responses = future.result(timeout=120)
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 120, (statuses, live.logs())
    assert all(r.json()["predictions"][0]["index"] in range(281, 286) for r in responses)
    assert held > 0 and processing_total(live) == 0
    assert result_keys(live) == [], "a request was answered twice"
    assert "of dead worker" in live.logs(tail_chars=None)
    assert survivor.poll() is None


def process_log(live: LiveService, process: subprocess.Popen[bytes]) -> str:
    """The whole log of one worker process started by ``live``."""
    name = process.name  # type: ignore[attr-defined]
    return next(live.workdir.glob(f"*-{name}.log")).read_text(errors="replace")


REQUEST_LINE = re.compile(r"request POST /predict (.*)$", re.M)


def web_request_lines(live: LiveService) -> list[dict[str, str]]:
    """The ``key=value`` fields of every request line in the web logs (``worker=`` etc.)."""
    text = "".join(p.read_text(errors="replace") for p in live.workdir.glob("*-web.log"))
    return [dict(re.findall(r"(\w+)=(\S+)", line)) for line in REQUEST_LINE.findall(text)]


def freeze_while_holding(live: LiveService, worker: subprocess.Popen[bytes]) -> list[str]:
    """SIGSTOP ``worker`` at a moment it holds a claimed, unanswered batch; the job ids it
    holds (the batch may still grow when it runs on: a claim can be half done)."""
    name = worker.name  # type: ignore[attr-defined]
    registry = live.registry_of(worker)
    for _ in range(50):
        live.wait_until_holding(worker)
        worker.send_signal(signal.SIGSTOP)
        held = registry.held_items(name)
        if held:
            return [json.loads(raw)["id"] for raw in held]
        worker.send_signal(signal.SIGCONT)  # it answered in between: try the next batch
    raise AssertionError(f"could not catch {name} holding a batch")


@pytest.mark.e2e
def test_sigterm_under_load_finishes_the_batch_and_exits_0(
    live: LiveService, lite0: LoadedModel, model_cache: Path, data_dir: Path
) -> None:
    """The leaving worker answers the batch in hand itself: nobody requeues it."""
    lite0_service(live, model_cache)
    leaving = live.start_worker()
    live.start_worker()
    url = live.start_web()
    photo = (data_dir / "coffee.png").read_bytes()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(post_many, url, 60, photo)
        held_jobs = freeze_while_holding(live, leaving)
        leaving.send_signal(signal.SIGTERM)  # delivered as it runs on, the batch in hand
        leaving.send_signal(signal.SIGCONT)
        assert leaving.wait(timeout=60) == 0, live.logs()
        responses = future.result(timeout=120)
    assert [r.status_code for r in responses] == [200] * 60, live.logs()
    name = leaving.name  # type: ignore[attr-defined]
    assert live.registry_of(leaving).held(name) == 0
    assert processing_total(live) == 0 and result_keys(live) == []

    # Nobody took its items back: not the survivor, not the leaving worker itself.
    assert f"of dead worker {name}" not in live.logs(None)
    own_log = process_log(live, leaving)
    assert "requeued" not in own_log and "stops holding" not in own_log, own_log
    # It logged the batch in hand as done after the signal, and that was its last batch.
    assert "signal SIGTERM" in own_log, own_log
    after_signal = own_log.split("signal SIGTERM", 1)[1]
    done = re.findall(
        rf"batch done batch_id=(\w+) worker={re.escape(name)} size=(\d+)", after_signal
    )
    assert len(done) == 1, own_log
    batch_id, size = done[0][0], int(done[0][1])
    # Every answer of that batch came from the leaving worker, the held jobs among them.
    answered = [line for line in web_request_lines(live) if line.get("batch_id") == batch_id]
    assert len(answered) == size >= len(held_jobs) > 0, answered
    assert all(line["worker"] == name and line["status"] == "200" for line in answered)
    assert set(held_jobs) <= {line["job_id"] for line in answered}


def test_sigterm_to_gunicorn_lets_in_flight_requests_finish(live: LiveService) -> None:
    worker = live.start_worker()
    worker.send_signal(signal.SIGTERM)  # the model card stays, nobody answers for now
    assert worker.wait(timeout=30) == 0
    url = live.start_web()
    web, _ = live.webs[0]
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(post, url, png((250, 5, 5)))
        queue = live.queue_of(worker)
        wait_until(lambda: queue.depth() == 1, 10, "enqueue")
        web.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # gunicorn is now draining; the request must survive it
        live.start_worker()
        response = waiting.result(timeout=30)
    assert response.status_code == 200, response.text
    assert web.wait(timeout=30) == 0


# --- poison items, deadlines, backpressure --------------------------------------------------


@pytest.fixture(scope="module")
def poison_model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real model that breaks on bright images: exp() of a large logit overflows to inf, and
    softmax turns that into NaN. Standard layers only, so a worker process can load it."""
    import keras
    import numpy as np

    inputs = keras.Input(shape=(8, 8, 3), dtype="float32")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")(x)
    x = keras.layers.Activation("exponential")(x)  # mean 255 -> exp(765) = inf
    outputs = keras.layers.Softmax()(x)
    model = keras.Model(inputs, outputs)
    assert np.isnan(model(np.full((1, 8, 8, 3), 255, np.float32)).numpy()).all()
    directory = tmp_path_factory.mktemp("poison")
    model.save(directory / "poison.keras")
    (directory / "labels.txt").write_text("dark\nalso dark\n")
    return directory / "poison.keras", directory / "labels.txt"


def test_poison_item_is_retried_then_dead_lettered(
    live: LiveService, poison_model_files: tuple[Path, Path]
) -> None:
    model_path, labels_path = poison_model_files
    live.extra_env.update(
        {
            "QUEUENET_MODEL": str(model_path),
            "QUEUENET_LABELS": str(labels_path),
            "QUEUENET_MAX_ATTEMPTS": "3",
        }
    )
    worker = live.start_worker()
    url = live.start_web()
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [
            pool.submit(post, url, png(c))
            for c in [(1, 2, 3), (4, 5, 6), (255, 255, 255), (7, 8, 9), (10, 11, 12)]
        ]
        responses = [f.result(timeout=30) for f in futures]
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200]
    error = responses[2].json()["error"]
    assert error["code"] == "prediction_failed" and "3 times" in error["message"]
    assert live.registry_of(worker).dead_letters() == 1
    assert live.logs(None).count("retrying job_id=") == 2
    assert processing_total(live) == 0


def test_expired_items_are_dropped_not_computed(live: LiveService) -> None:
    import numpy as np

    worker = live.start_worker()
    card = live.registry_of(worker).card()
    assert card is not None
    job = uuid.uuid4().hex
    request = PredictRequest.from_array(
        job,
        np.zeros((8, 8, 3), np.uint8),
        top_k=1,
        deadline=time.time() - 1,
        model=card.name,
        version=card.version,
        card=card.fingerprint,
    )
    queue = live.queue_of(worker)
    assert queue.push([encode_request(request)], max_queue=10)
    wait_until(lambda: "expired=1" in live.logs(None), 10, "the worker to drop the item")
    assert queue.peek_result(job) == ([], -2)
    assert processing_total(live) == 0 and worker.poll() is None


def test_full_queue_answers_503_and_enqueues_nothing(live: LiveService) -> None:
    worker = live.start_worker()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    url = live.start_web(QUEUENET_MAX_QUEUE="3")
    queue = live.queue_of(worker)
    assert queue.push([b"filler-1", b"filler-2", b"filler-3"], max_queue=3)
    response = post(url, png((5, 250, 5)))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "queue_full"
    assert queue.depth() == 3
    live.start_worker()  # drains the fillers (each gets an error result; no id, no answer)
    wait_until(lambda: queue.depth() == 0, 20, "the queue to drain")
    assert post(url, png((5, 250, 5))).status_code == 200


# --- Redis outage ----------------------------------------------------------------------------


def test_redis_outage_fails_fast_and_recovers_without_restarts(
    tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    server = RestartableRedis(tmp_path / "redis")
    server.start()
    live = LiveService(server.url, tmp_path, *tiny_model_files)
    try:
        worker = live.start_worker()
        url = live.start_web()
        assert post(url, png((250, 5, 5))).status_code == 200
        server.stop()
        for _ in range(3):
            started = time.monotonic()
            response = post(url, png((250, 5, 5)))
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "queue_unavailable"
            # Fails fast (refused at once); 3 s is margin for a busy machine, not a timeout.
            assert time.monotonic() - started < 3.0
        wait_until(lambda: "redis unreachable" in live.logs(None), 10, "the outage in the log")
        assert worker.poll() is None
        server.start()  # same address, empty data: the worker republishes its model card

        def answered() -> bool:
            return post(url, png((5, 5, 250))).status_code == 200

        wait_until(answered, 15, "requests to succeed again")
        assert worker.poll() is None and live.webs[0][0].poll() is None
    finally:
        live.close()
        server.stop()

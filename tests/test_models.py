"""Several versions of a model behind one endpoint, through the Flask app with real workers
(in threads): routes, explicit versions, 404s that name what exists, ``GET /models``, the
model and version on every answer, and the last worker of a version draining its queue."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from app.routing import ROUTES_TTL_S
from protocol.queue import Queue
from protocol.routing import ModelDirectory
from tests.helpers import spawn, wait_until
from worker.loop import Worker
from worker.registry import LoadedModel


def red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (250, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(client: FlaskClient, path: str = "/predict"):
    return client.post(path, data={"image": (io.BytesIO(red_png()), "red.png")})


@pytest.fixture
def two_versions(
    make_worker: Callable[..., Worker], tiny_model_v2: LoadedModel
) -> Iterator[tuple[Worker, Worker]]:
    """A worker of tiny version 1 (announced first: it serves) and one of version 2."""
    workers = [make_worker()]
    threads = [threading.Thread(target=workers[0].run, daemon=True)]
    threads[0].start()
    wait_until(lambda: workers[0].registry.card() is not None, 10, "version 1")
    workers.append(make_worker(tiny_model_v2))
    threads.append(threading.Thread(target=workers[1].run, daemon=True))
    threads[1].start()
    wait_until(lambda: workers[1].registry.card() is not None, 10, "version 2")
    yield workers[0], workers[1]
    for worker, thread in zip(workers, threads, strict=True):
        worker.request_stop()
        thread.join(timeout=10)


def test_every_answer_names_the_model_version(client: FlaskClient, running_worker: Worker) -> None:
    response = post(client)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["model"] == {"name": "tiny", "version": "1"}
    assert response.headers["X-Model-Name"] == "tiny"
    assert response.headers["X-Model-Version"] == "1"
    many = client.post(
        "/models/tiny/predict",
        data={"image": [(io.BytesIO(red_png()), "a.png"), (io.BytesIO(red_png()), "b.png")]},
    )
    assert many.get_json()["model"] == {"name": "tiny", "version": "1"}
    assert [r["predictions"][0]["label"] for r in many.get_json()["results"]] == ["red", "red"]


def test_a_new_version_takes_no_unversioned_traffic_until_promoted(
    client: FlaskClient, two_versions: tuple[Worker, Worker], directory: ModelDirectory
) -> None:
    for path in ("/predict", "/models/tiny/predict"):
        body = post(client, path).get_json()
        assert body["model"]["version"] == "1" and body["predictions"][0]["label"] == "red"
    explicit = post(client, "/models/tiny/versions/2/predict").get_json()
    assert explicit["model"]["version"] == "2" and explicit["predictions"][0]["label"] == "RED"
    directory.promote("tiny", "2")
    time.sleep(ROUTES_TTL_S + 0.1)
    body = post(client, "/models/tiny/predict").get_json()
    assert body["model"] == {"name": "tiny", "version": "2"}
    assert body["predictions"][0]["label"] == "RED"
    assert post(client, "/models/tiny/versions/1/predict").get_json()["model"]["version"] == "1"


def test_models_lists_versions_routes_and_the_default(
    client: FlaskClient, two_versions: tuple[Worker, Worker], directory: ModelDirectory
) -> None:
    directory.canary("tiny", "2", 10)
    body = client.get("/models").get_json()
    assert body["default"] == "tiny"
    (model,) = body["models"]
    assert (model["name"], model["serving"]) == ("tiny", "1")
    assert model["canary"] == {"version": "2", "percent": 10.0}
    v1, v2 = model["versions"]
    assert {k: v1[k] for k in ("version", "ready", "workers", "input_size", "labels")} == {
        "version": "1",
        "ready": True,
        "workers": 1,
        "input_size": 8,
        "labels": 4,
    }
    assert (v2["version"], v2["ready"], v2["input_size"], v2["card"]) == (
        "2",
        True,
        6,
        "tiny-colours-6px",
    )
    assert v1["recipe"] == {"resize": "center-crop", "crop_padding": 32, "resample": "bicubic"}
    assert client.get("/models/tiny").get_json() == model


def test_a_version_without_workers_is_listed_not_ready(
    client: FlaskClient, tiny_model: LoadedModel, publish_card: Callable[..., None]
) -> None:
    publish_card(tiny_model.card)
    (version,) = client.get("/models").get_json()["models"][0]["versions"]
    assert (version["ready"], version["workers"]) == (False, 0)


@pytest.mark.parametrize(
    ("path", "status", "code", "words"),
    [
        ("/models/nope/predict", 404, "model_not_found", "no model 'nope'; tiny (versions 1, 2)"),
        (
            "/models/tiny/versions/9/predict",
            404,
            "model_version_not_found",
            "no version '9' of tiny; its versions: 1, 2",
        ),
    ],
)
def test_unknown_models_and_versions_are_404_naming_what_exists(
    client: FlaskClient, two_versions: tuple[Worker, Worker], path: str, status: int, code: str,
    words: str,
) -> None:  # fmt: skip
    response = post(client, path)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code and words in error["message"]
    missing = client.get("/models/nope")
    assert (
        missing.status_code == 404
        and "tiny (versions 1, 2)" in missing.get_json()["error"]["message"]
    )


class SlowPredictor:
    """The tiny model taking 0.2 s per batch, so that requests queue up behind it."""

    def __init__(self, model: LoadedModel) -> None:
        self.inner = model.predictor

    @property
    def input_size(self) -> int:
        return self.inner.input_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.2)
        return self.inner.predict(batch)


def test_the_last_worker_of_a_version_drains_its_queue_on_stop(
    make_worker: Callable[..., Worker], queue: Queue, client: FlaskClient, tiny_model: LoadedModel
) -> None:
    """Requests queued for a version whose last worker is asked to stop are answered, not
    left to time out."""
    slow = dataclasses.replace(tiny_model, predictor=SlowPredictor(tiny_model))
    worker = make_worker(slow, drain_timeout_s=10.0, batch_size=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_until(lambda: worker.name in worker.registry.live_workers(), 10, "the worker")
    answers: list[int] = []
    posters = [
        threading.Thread(target=lambda: answers.append(post(client).status_code)) for _ in range(6)
    ]
    for poster in posters:
        poster.start()
    wait_until(lambda: queue.depth() >= 3, 10, "requests to queue up")
    worker.request_stop()
    for poster in posters:
        poster.join(timeout=20)
    thread.join(timeout=10)
    assert answers == [200] * 6 and queue.depth() == 0
    assert not thread.is_alive()


def test_a_worker_with_a_live_peer_stops_after_its_batch_in_hand(
    make_worker: Callable[..., Worker],
    queue: Queue,
    running_worker: Worker,
    tiny_model: LoadedModel,
) -> None:
    slow = dataclasses.replace(tiny_model, predictor=SlowPredictor(tiny_model))
    worker = make_worker(slow, drain_timeout_s=10.0)
    wait_until(lambda: bool(worker.registry.live_workers()), 10, "the peer")
    worker.request_stop()
    started = time.monotonic()
    worker.run()
    assert time.monotonic() - started < 2.0  # no drain: the peer serves the version


def test_worker_flags_set_the_model_name_and_version(live, tiny_model_files) -> None:
    """``queuenet worker --model SPEC --model-name NAME --model-version V``; flags win over
    the environment."""
    model, labels = tiny_model_files
    name = "flagged-worker"
    process = spawn(
        ["-m", "queuenet", "worker", "--model", str(model), "--model-name", "colours",
         "--model-version", "7"],
        live.env(QUEUENET_WORKER_NAME=name, QUEUENET_MODEL_VERSION="3"),
        live.log(name),
    )  # fmt: skip
    live.workers.append(process)
    registry = live.registry("colours", "7")
    wait_until(lambda: name in registry.live_workers() or process.poll() is not None, 60, name)
    assert process.poll() is None, live.logs()
    card = registry.card()
    assert card is not None and (card.name, card.version) == ("colours", "7")


def test_workers_stopped_together_drain_the_queue_between_them(
    make_worker: Callable[..., Worker], queue: Queue, client: FlaskClient, tiny_model: LoadedModel
) -> None:
    """A Deployment deleted (every worker of the version gets SIGTERM at once): none counts
    on the others, all drain, the queued requests are answered."""
    slow = dataclasses.replace(tiny_model, predictor=SlowPredictor(tiny_model))
    workers = [
        make_worker(slow, drain_timeout_s=10.0, batch_size=1, worker_name=f"w{i}") for i in (1, 2)
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(workers[0].registry.live_workers()) == 2, 10, "both workers")
    answers: list[int] = []
    posters = [
        threading.Thread(target=lambda: answers.append(post(client).status_code)) for _ in range(8)
    ]
    for poster in posters:
        poster.start()
    wait_until(lambda: queue.depth() >= 3, 10, "requests to queue up")
    for worker in workers:
        worker.request_stop()
    for poster in posters:
        poster.join(timeout=20)
    for thread in threads:
        thread.join(timeout=10)
    assert answers == [200] * 8 and queue.depth() == 0

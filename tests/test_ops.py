"""Operations: readiness, Prometheus metrics (gunicorn multiprocess and worker port), JSON
logs, ``worker --check``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import requests
from flask.testing import FlaskClient
from PIL import Image

from app import create_app
from app.settings import AppSettings
from protocol.queue import Queue
from protocol.settings import RedisSettings
from tests.helpers import ROOT, free_port, wait_until
from tests.live import LiveService
from worker.loop import Worker


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (5, 240, 5)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def test_readyz_names_each_failing_check(client: FlaskClient, tiny_model, publish_card) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["ready"] is False
    assert body["checks"] == {
        "redis": {"ok": True},
        "model": {"ok": False, "error": "no model is served yet (no worker announced one)"},
    }
    publish_card(tiny_model.card)  # the version is announced and has a card, but no worker
    body = client.get("/readyz").get_json()
    assert body["checks"]["model"] == {"ok": True, "name": "tiny", "version": "1"}
    assert body["checks"]["workers"] == {
        "ok": False,
        "live": 0,
        "error": "no worker of tiny version 1 is alive",
    }
    assert body["checks"]["model_card"] == {"ok": True}
    assert body["checks"]["queue"]["ok"] is True


def test_readyz_ok_with_a_worker(client: FlaskClient, running_worker: Worker) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"]["workers"]["live"] == 1


def test_readyz_when_the_queue_is_full(
    redis_settings: RedisSettings, queue: Queue, tiny_model, publish_card
) -> None:
    client = create_app(AppSettings(redis=redis_settings, max_queue=1)).test_client()
    publish_card(tiny_model.card)
    assert queue.push([b"x"], max_queue=1)
    checks = client.get("/readyz").get_json()["checks"]
    assert checks["queue"] == {"ok": False, "depth": 1, "max": 1, "error": "the queue is full"}


def test_readyz_and_metrics_without_redis() -> None:
    dead = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")
    client = create_app(AppSettings(redis=dead)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"]["ok"] is False
    metrics = client.get("/metrics")
    assert (
        metrics.status_code == 200
        and sample(metrics.get_data(as_text=True), "queuenet_redis_up") == 0
    )


def test_metrics_count_requests_and_show_the_queue(
    client: FlaskClient, running_worker: Worker
) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    labels = {"endpoint": "/predict", "status": "200", "code": "ok"}
    count_before = sample(before, "queuenet_http_requests_total", **labels)
    for _ in range(3):
        client.post("/predict", data={"image": (io.BytesIO(png()), "g.png")})
    client.post("/predict", data={"image": (io.BytesIO(b"text"), "t.png")})
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "queuenet_http_requests_total", **labels) == count_before + 3
    assert sample(text, "queuenet_rejections_total", reason="invalid_image") >= 1
    version = {"model": "tiny", "version": "1"}
    assert sample(text, "queuenet_predict_duration_seconds_count", status="200", **version) >= 3
    assert sample(text, "queuenet_live_workers", **version) == 1
    assert sample(text, "queuenet_model_card_published", **version) == 1
    assert sample(text, "queuenet_serving_share", **version) == 1
    assert sample(text, "queuenet_redis_up") == 1
    assert 'queuenet_queue_depth{model="tiny",version="1"} 0.0' in text


def test_metrics_add_up_across_gunicorn_processes_and_workers(live: LiveService) -> None:
    worker_metrics_port = free_port()
    live.start_worker(QUEUENET_METRICS_PORT=str(worker_metrics_port))
    url = live.start_web(QUEUENET_WEB_PROCESSES="3", QUEUENET_LOG_FORMAT="json")
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(
            pool.map(
                lambda _: requests.post(f"{url}/predict", files={"image": png()}, timeout=30),
                range(40),
            )
        )
    assert [r.status_code for r in responses] == [200] * 40
    assert len({r.headers["X-Request-ID"] for r in responses}) == 40
    text = requests.get(f"{url}/metrics", timeout=5).text
    labels = {"endpoint": "/predict", "status": "200", "code": "ok"}
    assert sample(text, "queuenet_http_requests_total", **labels) == 40  # all 3 processes
    worker_text = requests.get(f"http://127.0.0.1:{worker_metrics_port}/metrics", timeout=5).text
    assert sample(worker_text, "queuenet_worker_batch_size_count") >= 1
    assert sample(worker_text, "queuenet_worker_batch_size_sum") == 40
    assert sample(worker_text, "queuenet_worker_queue_wait_seconds_count") == 40
    assert (
        sample(worker_text, "queuenet_worker_items_total", outcome="predicted", model="tiny") == 40
    )
    assert sample(worker_text, "queuenet_worker_inference_seconds_count") >= 1
    # JSON logs: one object per line; each request line names its job, batch and worker.
    web_log = next(p for p in sorted(live.workdir.glob("*web.log")))
    records = [
        json.loads(line) for line in web_log.read_text().splitlines() if line.startswith("{")
    ]
    request_lines = [r for r in records if r["message"].startswith("request POST /predict")]
    assert len(request_lines) == 40
    assert all("job_id=" in r["message"] and "batch_id=" in r["message"] for r in request_lines)


def test_worker_check_exit_codes(live: LiveService) -> None:
    def check(**extra: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "worker", "--check"],
            env=live.env(**extra), cwd=ROOT, capture_output=True, timeout=60,
        ).returncode  # fmt: skip

    assert check(QUEUENET_WORKER_NAME="nobody") == 1
    worker = live.start_worker()
    assert check(QUEUENET_WORKER_NAME=worker.name) == 0  # type: ignore[attr-defined]
    live.kill(worker)
    wait_until(lambda: check(QUEUENET_WORKER_NAME=worker.name) == 1, 10, "heartbeat expiry")  # type: ignore[attr-defined]

"""Faults against real processes and a real Redis: killed workers, poison items, deadlines,
backpressure, Redis outages and graceful stops. Nothing is lost, nothing hangs."""

from __future__ import annotations

import io
import time

import requests
from PIL import Image

from tests.live import LiveService


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
    assert elapsed_s < 1.5 + 0.5

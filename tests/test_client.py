"""The client library and ``queuenet predict`` against a live gunicorn and worker."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from client import (
    APIError,
    ConnectError,
    Prediction,
    QueueNetClient,
    ServiceUnavailableError,
    TimeoutError,
)
from tests.helpers import ROOT, free_port, python_env
from tests.live import LiveService


def red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (250, 5, 5)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def served(live: LiveService) -> Iterator[str]:
    live.start_worker()
    yield live.start_web()


def test_predict_accepts_path_bytes_file_and_pil(served: str, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(red_png())
    with QueueNetClient(served) as client, path.open("rb") as handle, Image.open(path) as pil:
        inputs: list[object] = [str(path), path, red_png(), handle, pil]
        for image in inputs:
            predictions = client.predict(image, top_k=2)  # type: ignore[arg-type]
            assert predictions[0] == Prediction("red", predictions[0].probability, 0)
            assert len(predictions) == 2 and predictions[0].probability > 0.5


def test_api_error_carries_status_and_code(served: str) -> None:
    with pytest.raises(APIError) as info:
        QueueNetClient(served).predict(b"this is text")
    assert info.value.status_code == 400 and info.value.code == "invalid_image"
    assert "not an image" in info.value.message


def test_connect_error() -> None:
    with pytest.raises(ConnectError, match="cannot reach"):
        QueueNetClient(f"http://127.0.0.1:{free_port()}").predict(red_png())


def test_timeout(live: LiveService) -> None:
    worker = live.start_worker()
    worker.send_signal(signal.SIGTERM)  # card stays, nobody answers
    worker.wait(timeout=30)
    url = live.start_web(QUEUENET_PREDICT_TIMEOUT_S="5")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        QueueNetClient(url, timeout_s=0.5).predict(red_png())
    assert time.monotonic() - started < 2


def test_503_is_retried_honouring_retry_after(live: LiveService) -> None:
    url = live.start_web()  # no worker yet: 503 model_unavailable, Retry-After: 1
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        QueueNetClient(url, max_retries=2).predict(red_png())
    assert info.value.code == "model_unavailable"
    assert 2.0 <= time.monotonic() - started < 5.0  # two waits of Retry-After = 1 s

    starter = threading.Thread(target=live.start_worker)
    starter.start()  # the worker comes up while the client is retrying
    predictions = QueueNetClient(url, max_retries=30).predict(red_png())
    starter.join()
    assert predictions[0].label == "red"


def test_queuenet_predict_cli(served: str, tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(data_dir / "chelsea.png", folder / "chelsea.png")
    shutil.copy(data_dir / "coffee.png", folder / "nested" / "coffee.png")
    (folder / "broken.png").write_bytes(b"not really a png")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    command = [sys.executable, "-m", "queuenet", "predict", "--url", served, "--concurrency", "2"]
    out = subprocess.run(
        [*command, str(folder)], env=python_env({}), cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1  # one file failed
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["file", "top", "label"]
    assert any("chelsea.png" in line for line in lines)
    assert any("broken.png" in line and "ERROR: HTTP 400 invalid_image" in line for line in lines)
    assert "3 image(s), 1 failed" in out.stderr

    as_json = subprocess.run(
        [*command, "--json", str(folder / "*.png"), str(folder / "nested" / "coffee.png")],
        env=python_env({}), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows = json.loads(as_json.stdout)
    assert [Path(r["file"]).name for r in rows] == ["broken.png", "chelsea.png", "coffee.png"]
    assert rows[2]["predictions"][0]["index"] in range(4)  # the tiny model's classes
    assert "error" in rows[0]

    missing = subprocess.run(
        [*command, str(tmp_path / "nothing-here")], env=python_env({}), cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "no image matches" in missing.stderr

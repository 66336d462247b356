"""End to end with the shipped pretrained model on real photos, through real processes:
a worker (``python -m worker``), gunicorn (``queuenet web``) and ``queuenet serve``."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from protocol.keys import Keys
from protocol.workers import WorkerRegistry
from tests.helpers import ROOT, free_port, python_env, spawn, stop, wait_until
from tests.reference import photo_paths, reference_input
from worker.registry import LoadedModel

pytestmark = pytest.mark.e2e

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
PHOTOS = [p.name for p in photo_paths(Path(__file__).parent / "data")]


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    worker: subprocess.Popen[bytes]
    web: subprocess.Popen[bytes]
    logs: Path


@pytest.fixture(scope="module")
def stack(
    redis_url: str, lite0: LoadedModel, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    port = free_port()
    env = python_env(
        {
            "QUEUENET_REDIS_URL": redis_url,
            "QUEUENET_NAMESPACE": f"e2e-{uuid.uuid4().hex[:8]}",
            "QUEUENET_MODEL_CACHE_DIR": str(model_cache),
            "QUEUENET_BATCH_SIZE": "8",
            "QUEUENET_PORT": str(port),
            "QUEUENET_WEB_PROCESSES": "1",
        }
    )
    worker = spawn(["-m", "worker"], env, logs / "worker.log")
    web = spawn(["-m", "queuenet", "web"], env, logs / "web.log")
    url = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    registry = WorkerRegistry(
        client, Keys(env["QUEUENET_NAMESPACE"]).version("efficientnet-lite0", "1")
    )
    try:
        wait_until(lambda: bool(registry.live_workers()) and _healthy(url), 180, "worker and web")
        yield Stack(url, env, worker, web, logs)
    finally:
        assert stop(web) == 0, (logs / "web.log").read_text()
        assert stop(worker) == 0, (logs / "worker.log").read_text()
        client.close()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _post(url: str, path: Path, **params: int) -> requests.Response:
    with path.open("rb") as handle:
        return requests.post(f"{url}/predict", files={"image": handle}, params=params, timeout=30)


def test_cat_photo_top1_is_a_cat(stack: Stack, data_dir: Path) -> None:
    response = _post(stack.url, data_dir / "chelsea.png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and len(body["predictions"]) == 5
    assert body["predictions"][0]["index"] in CAT_CLASSES
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_the_readmes_example_answer_is_the_services(stack: Stack, data_dir: Path) -> None:
    """The answer "Using the API" shows for chelsea.png: the same model, labels, indices and
    probabilities (to its 4 decimals), so the example cannot go stale."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Using the API") :]
    shown = re.search(r"```json\n(.*?)\n```", section, flags=re.S)
    assert shown is not None
    text = shown.group(1)
    served = _post(stack.url, data_dir / "chelsea.png").json()
    assert f'"name": "{served["model"]["name"]}", "version": "{served["model"]["version"]}"' in text
    rows = re.findall(r'\{"label": "([^"]+)", "probability": ([0-9.]+), "index": (\d+)\}', text)
    assert len(rows) == 3
    for (label, probability, index), answer in zip(rows, served["predictions"], strict=False):
        assert (label, int(index)) == (answer["label"], answer["index"])
        assert float(probability) == round(answer["probability"], 4)


def test_coffee_photo_top1_is_espresso(stack: Stack, data_dir: Path) -> None:
    body = _post(stack.url, data_dir / "coffee.png", top_k=3).json()
    assert [p["index"] for p in body["predictions"]][0] == ESPRESSO
    assert body["predictions"][0]["label"] == "espresso"
    assert len(body["predictions"]) == 3


@pytest.mark.parametrize("photo", PHOTOS)
def test_http_equals_in_process_prediction_on_the_reference_input(
    stack: Stack, lite0: LoadedModel, data_dir: Path, photo: str
) -> None:
    """All 1000 probabilities served over HTTP equal the model run in this process on the
    reference preprocessing of the photo (tests/reference.py, not the web tier's code)."""
    data = (data_dir / photo).read_bytes()
    expected = lite0.predictor.predict(reference_input(data, 224)[np.newaxis])[0]
    served = _post(stack.url, data_dir / photo, top_k=1000).json()["predictions"]
    probabilities = np.zeros(1000)
    for p in served:
        probabilities[p["index"]] = p["probability"]
    assert served[0]["index"] == int(np.argmax(expected))
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)


def test_simple_request_prints_ranked_labels(stack: Stack, data_dir: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "client/simple_request.py",
            str(data_dir / "coffee.png"),
            "--url",
            f"{stack.url}/predict",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and re.fullmatch(r"1\. espresso: 0\.\d{4}", lines[0]), lines
    base_url = subprocess.run(
        [sys.executable, "client/simple_request.py", "--url", stack.url, "--top-k", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip  # a base URL works too; the default image is the cat
    assert base_url.returncode == 0, base_url.stderr
    assert re.fullmatch(
        r"1\. (tabby|tiger cat|Persian cat|Siamese cat|Egyptian cat): 0\.\d{4}\n", base_url.stdout
    )


def test_simple_request_reports_failure(stack: Stack, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    out = subprocess.run(
        [sys.executable, "client/simple_request.py", str(text), "--url", f"{stack.url}/predict"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("Request failed: field 'image': the data is not an image")


def test_status_codes_through_gunicorn(stack: Stack) -> None:
    too_big = requests.post(
        f"{stack.url}/predict", files={"image": io.BytesIO(b"\0" * (17 * 1024 * 1024))}, timeout=30
    )
    assert (
        too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_entity_too_large"
    )
    wrong_field = requests.post(f"{stack.url}/predict", files={"img": b"x"}, timeout=30)
    assert wrong_field.status_code == 400 and "'image'" in wrong_field.json()["error"]["message"]
    assert requests.get(f"{stack.url}/predict", timeout=5).status_code == 405
    assert requests.get(f"{stack.url}/missing", timeout=5).json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_starts_everything_and_stops_everything(
    model_cache: Path, lite0: LoadedModel, tmp_path: Path, data_dir: Path, stop_signal: int
) -> None:
    """The README's command: private Redis, gunicorn and a worker; Ctrl-C (SIGINT) or SIGTERM
    stops them all, and serve exits 0."""
    port = free_port()
    env = python_env({"QUEUENET_MODEL_CACHE_DIR": str(model_cache), "QUEUENET_BATCH_SIZE": "4"})
    log = tmp_path / "serve.log"
    serve = spawn(["-m", "queuenet", "serve", "--port", str(port)], env, log)
    try:
        wait_until(lambda: "QueueNet is ready at" in log.read_text(), 180, "queuenet serve")
        response = _post(f"http://127.0.0.1:{port}", data_dir / "chelsea.png")
        assert (
            response.status_code == 200
            and response.json()["predictions"][0]["index"] in CAT_CLASSES
        )
        pids = [int(p) for p in re.findall(r"pid[= ](\d+)", log.read_text())]
        assert len(pids) >= 3, log.read_text()  # redis, worker, web
        serve.send_signal(stop_signal)
        assert serve.wait(timeout=60) == 0, log.read_text()
        left = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        assert not left, f"processes left behind: {left}\n{log.read_text()}"
    finally:
        stop(serve)

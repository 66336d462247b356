"""The standard protocols proven with their own clients, as their users run them: tritonclient
(binary tensors, ``class_count=5``, health, readiness, metadata) and the kserve SDK's REST
client (V2 health and inference, V1 ``:predict``), from their own environment
(tests/clients_venv.py), through ``examples/protocol_clients.py``, against a live
``queuenet serve`` with the shipped model on every photo in tests/data: each protocol's top-1
equals ``/predict``'s."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.clients_venv import DEMO, clients_python
from tests.helpers import ROOT, free_port, python_env, spawn, stop, wait_until
from tests.reference import photo_paths
from worker.registry import LoadedModel

pytestmark = pytest.mark.e2e

PHOTOS = photo_paths(Path(__file__).parent / "data")


def run_demo(url: str, images: list[Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(clients_python()), str(DEMO), "--url", url, *args, *map(str, images)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def serve_url(
    model_cache: Path, lite0: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``queuenet serve`` (private Redis, gunicorn, one worker with the shipped model)."""
    clients_python()  # before the service starts, so making it is not charged to a request
    port = free_port()
    log = tmp_path_factory.mktemp("protocol-clients") / "serve.log"
    env = python_env({"QUEUENET_MODEL_CACHE_DIR": str(model_cache)})
    serve = spawn(["-m", "queuenet", "serve", "--port", str(port)], env, log)
    try:
        wait_until(lambda: "QueueNet is ready at" in log.read_text(), 180, "queuenet serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        assert stop(serve) == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def report(serve_url: str) -> dict[str, Any]:
    out = run_demo(serve_url, PHOTOS, "--json")
    assert out.returncode in (0, 1), out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_every_client_gets_predicts_top1_on_every_photo(report: dict[str, Any]) -> None:
    reference = report["predict_top1"]
    assert len(reference) == len(PHOTOS) == 12
    assert reference[report["images"].index("coffee.png")] == 967  # espresso
    assert 281 <= reference[report["images"].index("chelsea.png")] <= 285  # a cat
    triton, kserve = report["tritonclient"], report["kserve"]
    assert triton["top1"] == reference, "tritonclient, FP32 probabilities (binary)"
    assert triton["top1_classification"] == reference, "tritonclient, class_count=5"
    assert triton["top1_gzip"] == reference, "tritonclient, gzip-compressed request"
    assert kserve["v2_top1"] == reference, "kserve SDK, V2 binary"
    assert kserve["v2_base64_top1"] == reference, "kserve SDK, V2 base64 JSON"
    assert kserve["v1_top1"] == reference, "kserve SDK, V1 :predict"
    assert report["plain_http"]["v2_top1"] == reference, "plain HTTP, V2 classification"
    labels = [result[0][0] for result in report["plain_http"]["tfserving_classify"]]
    assert labels[report["images"].index("coffee.png")] == "espresso"


def test_tritonclient_health_metadata_ids_and_classification(
    report: dict[str, Any], serve_url: str
) -> None:
    triton = report["tritonclient"]
    assert (triton["live"], triton["ready"], triton["model_ready"]) == (True, True, True)
    assert {"binary_tensor_data", "classification"} <= set(triton["server_extensions"])
    assert triton["model_outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}
    ]
    assert triton["id"] == "triton-1" and triton["shape"] == [12, 1000]
    # class_count=5: "score:index:label", the scores /predict gives, as Triton prints them.
    first = triton["classification"][report["images"].index("coffee.png")]
    photo = ROOT / "tests" / "data" / "coffee.png"
    expected = requests.post(
        f"{serve_url}/predict", files={"image": photo.read_bytes()}, timeout=60
    ).json()["predictions"]
    assert first == [f"{p['probability']:f}:{p['index']}:{p['label']}" for p in expected]


def test_kserve_sdk_health_readiness_and_ids(report: dict[str, Any]) -> None:
    kserve = report["kserve"]
    assert (kserve["v2_live"], kserve["v2_ready"], kserve["v2_model_ready"]) == (True,) * 3
    assert kserve["v2_id"] == "kserve-1"


def test_demo_script_prints_what_each_client_got(serve_url: str) -> None:
    photos = [p for p in PHOTOS if p.name in ("chelsea.png", "coffee.png")]
    out = run_demo(serve_url, photos)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert sum(line.endswith("(same)") for line in lines) == 7, out.stdout
    assert "class_count=5, first image: ['0." in out.stdout
    assert "kserve SDK V2: live=True ready=True model_ready=True" in out.stdout

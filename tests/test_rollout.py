"""Replacing a model version with no downtime, and a canary, with live processes under load.

The rollout: 8 clients ask ``/models/classifier/predict`` the whole time; version 1
(EfficientNet-Lite0, 224 px) serves; a worker of version 2 (EfficientNet-Lite1, 240 px) starts,
``GET /models`` shows it ready, ``queuenet models promote`` promotes it, version 1's worker gets
SIGTERM. Every request must be answered 200, the answers must move from version 1 to 2, none
may come from version 1 once its worker is gone, and nothing may be left in any queue.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, wait_until
from tests.live import LiveService
from worker.registry import LoadedModel

CLIENTS = 8
CAT_CLASSES = range(281, 286)


@dataclass
class Answer:
    at_s: float
    status: int
    version: str
    top1: int


@dataclass
class Load:
    """Clients posting one photo in a closed loop until stopped."""

    url: str
    photo: bytes
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)

    def client(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            response = session.post(self.url, files={"image": self.photo}, timeout=60)
            body = response.json()
            self.answers.append(
                Answer(
                    time.monotonic() - self.started,
                    response.status_code,
                    response.headers.get("X-Model-Version", "?"),
                    body["predictions"][0]["index"] if response.ok else -1,
                )
            )

    def run(self, clients: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        return threads


def models_cli(live: LiveService, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "queuenet", "models", *args],
        env=live.env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def version_ready(url: str, name: str, version: str) -> bool:
    (model,) = [
        m for m in requests.get(f"{url}/models", timeout=10).json()["models"] if m["name"] == name
    ]
    return any(v["version"] == version and v["ready"] for v in model["versions"])


@pytest.mark.e2e
def test_rollout_to_another_model_under_load_answers_everything(
    live: LiveService, lite0: LoadedModel, model_cache: Path, data_dir: Path
) -> None:
    real = {"QUEUENET_MODEL_CACHE_DIR": str(model_cache), "QUEUENET_MODEL_NAME": "classifier"}
    live.extra_env |= real | {"QUEUENET_PREDICT_TIMEOUT_S": "60", "QUEUENET_BATCH_SIZE": "8"}
    v1 = live.start_worker(
        model="classifier", QUEUENET_MODEL="efficientnet-lite0", QUEUENET_MODEL_VERSION="1"
    )
    url = live.start_web()
    load = Load(f"{url}/models/classifier/predict", (data_dir / "chelsea.png").read_bytes())
    clients = load.run(CLIENTS)
    time.sleep(3)
    v2 = live.start_worker(
        model="classifier",
        version="2",
        QUEUENET_MODEL="efficientnet-lite1",
        QUEUENET_MODEL_VERSION="2",
    )
    wait_until(lambda: version_ready(url, "classifier", "2"), 60, "version 2 ready")
    ready_at = time.monotonic() - load.started
    time.sleep(2)  # version 2 is ready but takes no unversioned traffic yet
    promoting_at = time.monotonic() - load.started
    assert "classifier: version 2 serves" in models_cli(live, "promote", "classifier", "2")
    promoted_at = time.monotonic() - load.started
    v1.send_signal(15)
    assert v1.wait(timeout=60) == 0, live.logs()
    v1_gone_at = time.monotonic() - load.started
    time.sleep(3)
    load.stop.set()
    for thread in clients:
        thread.join(timeout=90)

    answers = sorted(load.answers, key=lambda a: a.at_s)
    by_second = Counter((int(a.at_s), a.version) for a in answers)
    print(f"version 2 ready at {ready_at:.1f}s, promoted at {promoted_at:.1f}s, version 1's worker "
          f"gone at {v1_gone_at:.1f}s; {len(answers)} requests")  # fmt: skip
    for second in range(int(answers[-1].at_s) + 1):
        print(
            f"  t={second:3d}s  v1={by_second[(second, '1')]:3d}  v2={by_second[(second, '2')]:3d}"
        )
    statuses = Counter(a.status for a in answers)
    assert statuses == {200: len(answers)}, statuses
    assert all(a.top1 in CAT_CLASSES for a in answers)
    versions = [a.version for a in answers]
    assert versions[0] == "1" and versions[-1] == "2"
    early_v2 = [a for a in answers if a.version == "2" and a.at_s < promoting_at]
    assert not early_v2, early_v2
    late_v1 = [a for a in answers if a.version == "1" and a.at_s > v1_gone_at]
    assert not late_v1, late_v1
    assert v2.poll() is None
    footprint = live.inspector().footprint()
    print(f"left behind: {footprint}")
    assert (footprint.queued, footprint.held, footprint.results) == (0, 0, 0)


def test_a_ten_percent_canary_takes_five_to_fifteen_percent(
    live: LiveService, tiny_model_files: tuple[Path, Path], tiny6_model_file: Path
) -> None:
    live.start_worker(QUEUENET_MODEL_VERSION="1")
    live.start_worker(
        version="2",
        QUEUENET_MODEL_VERSION="2",
        QUEUENET_MODEL=str(tiny6_model_file),
        QUEUENET_MODEL_NAME="tiny",
    )
    url = live.start_web()
    wait_until(lambda: version_ready(url, "tiny", "2"), 30, "version 2 ready")
    out = models_cli(live, "canary", "tiny", "2", "10")
    assert "canary: version 2 takes 10 %" in out
    listing = models_cli(live, "list")
    assert "serving 90%" in listing and "canary 10%" in listing, listing
    load = Load(f"{url}/models/tiny/predict", (ROOT / "tests" / "data" / "coffee.png").read_bytes())
    threads = load.run(8)
    wait_until(lambda: len(load.answers) >= 1000, 180, "1000 answers")
    load.stop.set()
    for thread in threads:
        thread.join(timeout=30)
    answers = load.answers[:1000]
    assert Counter(a.status for a in answers) == {200: 1000}
    share = sum(a.version == "2" for a in answers) / len(answers)
    print(f"canary share of 1000 requests: {share:.1%}")
    assert 0.05 <= share <= 0.15

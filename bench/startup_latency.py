"""Start-up time and idle latency of ``queuenet serve`` against the bare in-process pipeline.

    python -m bench.startup_latency [--requests 50] [--cold]

Measures, in one run:
  1. baseline: decode + resize + model on one image at a time, in this process (the floor
     for a request on an idle service);
  2. ``queuenet serve`` (private Redis, gunicorn, one worker): seconds from the command to
     "ready" and to the first answer (``--cold`` starts with an empty model cache, so the
     model is built from the weight package first);
  3. sequential requests on the idle service: p50/p95 latency, and the service's p50 as a
     ratio of, and milliseconds above, the baseline's p50.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.run import free_port

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = [ROOT / "tests" / "data" / "chelsea.png", ROOT / "tests" / "data" / "coffee.png"]
logger = logging.getLogger("bench.startup_latency")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def baseline_ms(cache_dir: Path, rounds: int) -> list[float]:
    from app.preprocess import image_to_input
    from worker.model import warm_up
    from worker.registry import load_model
    from worker.settings import WorkerSettings

    # The runtime the service's worker serves with (QUEUENET_RUNTIME, default auto).
    runtime = WorkerSettings.from_env(os.environ).runtime_options()
    model = load_model("efficientnet-lite0", cache_dir=cache_dir, runtime=runtime)
    warm_up(model.predictor, [1])
    blobs = [path.read_bytes() for path in PHOTOS]
    timings = []
    for i in range(rounds):
        started = time.perf_counter()
        array = image_to_input(blobs[i % len(blobs)], model.card, max_pixels=40_000_000)
        model.predictor.predict(array[None])
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def service_ms(cache_dir: Path, rounds: int, log_path: Path) -> tuple[float, float, list[float]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUENET_")}
    env |= {"QUEUENET_MODEL_CACHE_DIR": str(cache_dir), "QUEUENET_LOG_LEVEL": "warning"}
    url = f"http://127.0.0.1:{port}/predict"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "queuenet", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        ready_s = first_s = 0.0
        session = requests.Session()
        while True:
            if serve.poll() is not None:
                raise RuntimeError(f"queuenet serve exited: {log_path.read_text()[-2000:]}")
            try:
                with PHOTOS[0].open("rb") as handle:
                    response = session.post(url, files={"image": handle}, timeout=30)
                if not ready_s and response.status_code in (200, 503):
                    ready_s = time.perf_counter() - started
                if response.status_code == 200:
                    first_s = time.perf_counter() - started
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.05)  # start-up polling only
        timings = []
        blobs = [path.read_bytes() for path in PHOTOS]
        for i in range(rounds):
            t0 = time.perf_counter()
            response = session.post(url, files={"image": ("x.png", blobs[i % 2])}, timeout=30)
            timings.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
        return ready_s, first_s, timings
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--cold", action="store_true", help="start with an empty model cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        base = baseline_ms(cache, args.requests)
        if args.cold:
            for path in cache.glob("*.keras"):
                path.unlink()
        http_ready_s, first_s, served = service_ms(cache, args.requests, Path(tmp) / "serve.log")
    b50, s50 = statistics.median(base), statistics.median(served)
    rows = [
        ("baseline in-process p50 ms", f"{b50:.1f}"),
        ("baseline in-process p95 ms", f"{percentile(base, 0.95):.1f}"),
        ("service idle p50 ms", f"{s50:.1f}"),
        ("service idle p95 ms", f"{percentile(served, 0.95):.1f}"),
        ("service p50 / baseline p50", f"{s50 / b50:.2f}x"),
        ("service p50 - baseline p50 ms", f"{s50 - b50:.1f}"),
        ("start -> HTTP answers s", f"{http_ready_s:.1f}"),
        (
            f"start -> first prediction s ({'cold' if args.cold else 'cached'} model)",
            f"{first_s:.1f}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        sys.stdout.write(f"{name:<{width}}  {value}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency of one request against the bare in-process pipeline, measured in pairs.

    python -m bench.paired_latency --url http://127.0.0.1:5000 [--pairs 150]

This machine's speed drifts by tens of percent from one minute to the next, more than the
few milliseconds the service adds, so two medians taken a minute apart compare mostly the
drift. Here each pair is one image through the bare pipeline in this process (decode +
resize + the model under the worker's runtime, batch 1) and the same image posted to the
service, back to back, alternating which goes first; both see the same moment of the
machine. Reports both medians and the median of the per-pair differences.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.photos import PHOTOS, multipart
from bench.raw_model import measure_and_report

SETTLE_S = 0.02
"""Pause between the two halves of a pair, so that neither starts while the other's
TensorFlow threads still spin on the cores after their last call."""


@dataclass
class PairedLatency:
    pairs: int
    bare_p50_ms: float
    service_p50_ms: float
    difference_p50_ms: float
    """Median over the pairs of (service - bare)."""


def measure(url: str, pairs: int, cache_dir: Path) -> PairedLatency:
    from app.preprocess import image_to_input
    from worker.model import warm_up
    from worker.registry import load_model
    from worker.settings import WorkerSettings

    # The runtime the service's worker serves with (QUEUENET_RUNTIME, default auto).
    runtime = WorkerSettings.from_env(os.environ).runtime_options()
    model = load_model("efficientnet-lite0", cache_dir=cache_dir, runtime=runtime)
    warm_up(model.predictor, [1])
    blobs = [photo.read_bytes() for photo in PHOTOS]
    bodies = [multipart(photo) for photo in PHOTOS]
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80)

    def bare(i: int) -> float:
        started = time.perf_counter()
        array = image_to_input(blobs[i % len(blobs)], model.card, max_pixels=10**8)
        model.predictor.predict(array[None])
        return (time.perf_counter() - started) * 1000

    def service(i: int) -> float:
        body, boundary = bodies[i % len(bodies)]
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        started = time.perf_counter()
        connection.request("POST", "/predict", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"the service answered {response.status}")
        return elapsed_ms

    for i in range(4):  # warm both paths: connection, caches, the worker's first batch
        bare(i)
        service(i)
    bare_ms, service_ms = [], []
    for i in range(pairs):
        first, second = (bare, service) if i % 2 == 0 else (service, bare)
        a = first(i)
        time.sleep(SETTLE_S)
        b = second(i)
        time.sleep(SETTLE_S)
        bare_ms.append(a if first is bare else b)
        service_ms.append(b if first is bare else a)
    connection.close()
    return PairedLatency(
        pairs=pairs,
        bare_p50_ms=statistics.median(bare_ms),
        service_p50_ms=statistics.median(service_ms),
        difference_p50_ms=statistics.median(
            s - b for s, b in zip(service_ms, bare_ms, strict=True)
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--cache-dir", default="", help="model cache (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    measure_and_report(
        lambda cache: asdict(measure(args.url, args.pairs, cache)),
        cache_dir=args.cache_dir,
        as_json=args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Closed-loop load generator: C clients post real photos for D seconds after a warm-up.

    python -m bench.load --url http://127.0.0.1:5000 --concurrency 32 --duration-s 20

Each client keeps one HTTP/1.1 connection (stdlib ``http.client``, pre-encoded multipart
bodies of the 12 test photos, so the generator itself stays cheap) and sends the next request
as soon as the last is answered. Prints req/s, p50/p95/p99 latency, errors by status, the
generator's own CPU use (in cores), which competes with the service on a small machine, and,
given the workers' ``--metrics-url``, their mean batch size within the measured window. With
``--expect`` (``python -m bench.photos``) it checks every answer's top-1 class against the
exact one and reports the share that was right. ``--path`` posts elsewhere than ``/predict``
(the same request shape: the BentoML peer takes it too).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import re
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.photos import PHOTOS, multipart

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int]
    client_cpu_cores: float
    mean_batch: float
    """Mean batch size of the worker(s) within the measured window, from their metrics
    (``--metrics-url``); 0 when not asked for."""
    top1_checked: int = 0
    top1_correct: int = 0

    @property
    def correct_share(self) -> float:
        return self.top1_correct / self.top1_checked if self.top1_checked else float("nan")


def is_correct(body: bytes, expected: dict[str, Any]) -> bool:
    """The answer's top-1 is the exact one: by class index when the answer has it, else by
    label (QueueNet's label or the clean name, as the peer answers)."""
    top = json.loads(body)["predictions"][0]
    if "index" in top:
        return bool(top["index"] == expected["index"])
    return top["label"] in expected["labels"]


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape_batches(metrics_urls: list[str]) -> tuple[float, float]:
    """(images, batches) the workers behind ``metrics_urls`` have predicted so far (every
    model version they serve)."""
    images = batches = 0.0
    for url in metrics_urls:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for name in ("queuenet_worker_batch_size_sum", "queuenet_worker_batch_size_count"):
            found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M)
            value = sum(float(v) for v in found)
            if name.endswith("_sum"):
                images += value
            else:
                batches += value
    return images, batches


def run(
    url: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    metrics_urls: list[str] | None = None,
    *,
    path: str = "/predict",
    expected: dict[str, dict[str, Any]] | None = None,
) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    bodies = [multipart(photo) for photo in PHOTOS]
    answers = [expected.get(photo.name) if expected else None for photo in PHOTOS]
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    top1 = collections.Counter[str]()
    start_at = time.monotonic() + warmup_s
    stop_at = start_at + duration_s

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        n = index
        while (now := time.monotonic()) < stop_at:
            body, boundary = bodies[n % len(bodies)]
            answer = answers[n % len(bodies)]
            n += 1
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=60)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if now >= start_at:  # requests sent during the warm-up do not count
                right = status == "200" and answer is not None and is_correct(content, answer)
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(elapsed_ms)
                        if answer is not None:
                            top1["checked"] += 1
                            top1["correct"] += right
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    # The batch sizes are read at the edges of the measured window, so that the ramp-up of
    # the warm-up and the drain after the last request do not count.
    time.sleep(max(0.0, start_at - time.monotonic()))
    cpu_warm = time.process_time()
    batches_at_start = scrape_batches(metrics_urls or [])
    time.sleep(max(0.0, stop_at - time.monotonic()))
    batches_at_stop = scrape_batches(metrics_urls or [])
    for thread in threads:
        thread.join()
    cpu_used = time.process_time() - cpu_warm
    images = batches_at_stop[0] - batches_at_start[0]
    batches = batches_at_stop[1] - batches_at_start[1]
    total = sum(statuses.values())
    return LoadResult(
        concurrency=concurrency,
        duration_s=duration_s,
        requests=total,
        requests_per_s=statuses["200"] / duration_s,
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        p95_ms=quantile(latencies, 0.95),
        p99_ms=quantile(latencies, 0.99),
        errors={k: v for k, v in statuses.items() if k != "200"},
        client_cpu_cores=cpu_used / duration_s,
        mean_batch=images / batches if batches else 0.0,
        top1_checked=top1["checked"],
        top1_correct=top1["correct"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=20)
    parser.add_argument("--warmup-s", type=float, default=3)
    parser.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        help="a worker's /metrics (QUEUENET_METRICS_PORT); repeat for several workers",
    )
    parser.add_argument("--path", default="/predict", help="where to post (default /predict)")
    parser.add_argument("--expect", default="", help="expected answers (python -m bench.photos)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    expected = json.loads(Path(args.expect).read_text()) if args.expect else None
    result = run(
        args.url,
        args.concurrency,
        args.duration_s,
        args.warmup_s,
        args.metrics_url,
        path=args.path,
        expected=expected,
    )
    figures = asdict(result) | {"correct_share": result.correct_share}
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        for name, value in figures.items():
            sys.stdout.write(f"{name:<18} {value}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

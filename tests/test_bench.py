"""The benchmark tools run and report what they claim: the load generator against a live
service (gunicorn + a worker with metrics), the codec comparison and the Redis-ops one."""

from __future__ import annotations

import json
import subprocess
import sys

import redis

from tests.helpers import ROOT, free_port, python_env
from tests.live import LiveService


def run_module(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], env=python_env({}), cwd=ROOT, capture_output=True,
        text=True, timeout=timeout_s,
    )  # fmt: skip


def test_load_generator_reports_throughput_latency_and_the_workers_batches(
    live: LiveService,
) -> None:
    metrics_port = free_port()
    live.start_worker(QUEUENET_METRICS_PORT=str(metrics_port), QUEUENET_BATCH_WAIT_MS="20")
    url = live.start_web()
    out = run_module(
        "bench.load", "--url", url, "--concurrency", "4", "--duration-s", "3",
        "--warmup-s", "1", "--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics",
        "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["requests"] > 0 and result["requests_per_s"] > 0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    # Four clients in a closed loop: each batch holds 1 to 4 of their requests.
    assert 1.0 <= result["mean_batch"] <= 4.0
    assert result["client_cpu_cores"] >= 0


def test_load_generator_counts_refusals_by_status(live: LiveService) -> None:
    url = live.start_web()  # no worker: no model card, so every request is refused with 503
    out = run_module(
        "bench.load", "--url", url, "--concurrency", "2", "--duration-s", "1", "--warmup-s",
        "0", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["errors"]) == {"503"} and result["errors"]["503"] > 0
    assert result["requests_per_s"] == 0 and result["mean_batch"] == 0


def test_codec_bench_checks_wire_compatibility_and_prints_ratios() -> None:
    out = run_module("bench.codec", "--rounds", "20")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| encode")]
    rows += [line for line in out.stdout.splitlines() if line.startswith("| decode")]
    assert len(rows) == 2
    for row in rows:
        speed_up = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert speed_up.endswith("x") and float(speed_up[:-1]) > 0


def test_redis_ops_bench_runs_both_shapes_and_cleans_up(redis_url: str) -> None:
    out = run_module(
        "bench.redis_ops", "--requests", "40", "--rounds", "2", "--redis-url", redis_url
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:5]
        for line in out.stdout.splitlines()
        if line.startswith("| Redis CPU") or line.startswith("| round trips")
    }
    assert set(rows) == {"Redis CPU, us", "round trips, ms"}
    for baseline, ours, ratio in rows.values():
        assert float(baseline) > 0 and float(ours) > 0 and ratio.strip().endswith("x")
    assert not redis.Redis.from_url(redis_url).keys("bench-*")  # its namespace is gone

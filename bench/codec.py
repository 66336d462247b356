"""The queue message codec against the standard library, measured in the same run.

    python -m bench.codec [--rounds 300]

Every request crosses Redis as JSON holding the base64 of a 224x224x3 ``uint8`` array
(200 KB). The web tier encodes it and the worker decodes it, once per image. This times
both directions with the standard library (``json`` + ``base64``: the baseline) and with
what ``protocol.messages`` and ``worker.batching`` use, on the same array, and prints the
medians and their ratio.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from protocol.messages import VERSION, PredictRequest, decode_request, encode_request
from worker.batching import decode_array

SHAPE = (224, 224, 3)


def median_ms(fn: Callable[[], Any], rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def stdlib_encode(job_id: str, array: np.ndarray) -> bytes:
    body = {
        "v": VERSION,
        "id": job_id,
        "shape": list(array.shape),
        "dtype": "uint8",
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
        "top_k": 5,
        "deadline": 1e10,
        "attempts": 0,
        "enqueued": 1e9,
        "model": "m",
        "version": "1",
        "card": "c",
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


def stdlib_decode(raw: bytes) -> np.ndarray:
    obj = json.loads(raw)
    buffer = base64.b64decode(obj["data"], validate=True)
    return np.frombuffer(buffer, dtype=np.uint8).reshape(obj["shape"])


def ours_encode(job_id: str, array: np.ndarray) -> bytes:
    request = PredictRequest.from_array(
        job_id, array, top_k=5, deadline=1e10, enqueued=1e9, model="m", version="1", card="c"
    )
    return encode_request(request)


def ours_decode(raw: bytes) -> np.ndarray:
    return decode_array(decode_request(raw), SHAPE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args(argv)
    array = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    job_id = uuid.uuid4().hex
    raw = ours_encode(job_id, array)
    # Same wire format both ways: each side reads what the other writes.
    assert np.array_equal(stdlib_decode(raw), array)
    assert np.array_equal(ours_decode(stdlib_encode(job_id, array)), array)
    a = array
    rows: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("encode (web)", partial(stdlib_encode, job_id, a), partial(ours_encode, job_id, a)),
        ("decode (worker)", partial(stdlib_decode, raw), partial(ours_decode, raw)),
    ]  # fmt: skip
    sys.stdout.write(f"message: {len(raw)} bytes\n")
    sys.stdout.write("| step | stdlib json+base64 ms | queuenet ms | speed-up |\n")
    sys.stdout.write("| --- | --- | --- | --- |\n")
    for name, baseline, ours in rows:
        base_ms = median_ms(baseline, args.rounds)
        ours_ms = median_ms(ours, args.rounds)
        sys.stdout.write(f"| {name} | {base_ms:.3f} | {ours_ms:.3f} | {base_ms / ours_ms:.1f}x |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

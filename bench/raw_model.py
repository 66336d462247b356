"""The bare model: the physical limit of the service on this machine.

    python -m bench.raw_model [--batch-size 32] [--rounds 30]

Measures, in this process, the default model called through the worker's ``tf.function``:
images/s at batch 1 and at ``--batch-size``, and the bare in-process pipeline (decode + resize
+ model, one image at a time, the same photos the load generator sends).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "tests" / "data").glob("*.png"))


@dataclass
class RawFigures:
    batch1_ms: float
    batch1_images_per_s: float
    batch_size: int
    batchn_ms: float
    batchn_images_per_s: float
    pipeline_p50_ms: float
    decode_resize_p50_ms: float


def _median_ms(fn: object, rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def measure(batch_size: int, rounds: int, cache_dir: Path) -> RawFigures:
    from app.preprocess import image_to_input
    from worker.model import warm_up
    from worker.registry import load_model

    model = load_model("efficientnet-lite0", cache_dir=cache_dir)
    warm_up(model.predictor, [1, batch_size])
    size = model.card.input_size
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    many = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    batch1_ms = _median_ms(lambda: model.predictor.predict(one), rounds)
    batchn_ms = _median_ms(lambda: model.predictor.predict(many), max(5, rounds // 4))
    blobs = [path.read_bytes() for path in PHOTOS]
    index = iter(range(10**9))

    def decode_resize() -> np.ndarray:
        return image_to_input(blobs[next(index) % len(blobs)], model.card, max_pixels=10**8)

    decode_ms = _median_ms(decode_resize, rounds)
    pipeline_ms = _median_ms(lambda: model.predictor.predict(decode_resize()[None]), rounds)
    return RawFigures(
        batch1_ms=batch1_ms,
        batch1_images_per_s=1000 / batch1_ms,
        batch_size=batch_size,
        batchn_ms=batchn_ms,
        batchn_images_per_s=batch_size * 1000 / batchn_ms,
        pipeline_p50_ms=pipeline_ms,
        decode_resize_p50_ms=decode_ms,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cache-dir", default="", help="model cache (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    measure_and_report(
        lambda cache: asdict(measure(args.batch_size, args.rounds, cache)),
        cache_dir=args.cache_dir,
        as_json=args.json,
    )
    return 0


def measure_and_report(
    measure_in: Callable[[Path], dict[str, Any]], *, cache_dir: str, as_json: bool
) -> None:
    """Quiet TensorFlow's logs, run ``measure_in`` with a model cache (``cache_dir``, or a
    temporary one) and print its figures: the common ``main`` of the model benches."""
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure_in(Path(cache_dir or tmp))
    report(figures, as_json=as_json)


def report(figures: dict[str, float], *, as_json: bool) -> None:
    """One JSON line (read by ``bench.run``), or one aligned line per figure."""
    if as_json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        for name, value in figures.items():
            sys.stdout.write(f"{name:<24} {value:.2f}\n")


if __name__ == "__main__":
    sys.exit(main())

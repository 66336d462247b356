"""Exact decoding and resizing, each cheaper variant against the reference order, one run.

    python -m bench.decode [--rounds 30] [--json]

On the 12 test photos (and separately on the grey ones), the CPU time per photo of:

- ``reference order``: decode, RGB, crop, resize (what the model's reference recipe does);
- ``served``: :func:`app.preprocess.image_to_input` as the web tier runs it (an 8-bit grey
  image is resized in one channel and made RGB afterwards).

Every variant's arrays must equal the reference order's byte for byte (else it stops with
an error); the rounds alternate the variants, so the machine's drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.preprocess import decode_image, image_to_input, prepare
from bench.photos import PHOTOS
from protocol.messages import ModelCard

ROOT = Path(__file__).resolve().parent.parent
MAX_PIXELS = 10**9


CARD = ModelCard("efficientnet-lite0", "1", input_size=224, num_labels=1000)
"""EfficientNet-Lite0's recipe: centre crop (padding 32), bicubic to 224."""


def variants(card: ModelCard) -> dict[str, Callable[[bytes], np.ndarray]]:
    def reference_order(data: bytes) -> np.ndarray:
        return prepare(decode_image(data, max_pixels=MAX_PIXELS), card)

    def served(data: bytes) -> np.ndarray:
        return image_to_input(data, card, max_pixels=MAX_PIXELS)

    return {"reference order": reference_order, "served": served}


def cpu_ms_per_photo(
    calls: dict[str, Callable[[bytes], np.ndarray]], blobs: list[bytes], rounds: int
) -> dict[str, float]:
    timings: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            started = time.thread_time()
            for data in blobs:
                calls[name](data)
            timings[name].append((time.thread_time() - started) * 1000 / len(blobs))
    return {name: statistics.median(values) for name, values in timings.items()}


def measure(rounds: int) -> dict[str, object]:
    calls = variants(CARD)
    blobs = [p.read_bytes() for p in PHOTOS]
    reference = calls["reference order"]
    for name, call in calls.items():
        for photo, data in zip(PHOTOS, blobs, strict=True):
            if not np.array_equal(call(data), reference(data)):
                raise AssertionError(f"{name} changes the pixels of {photo.name}")
    grey = [d for p, d in zip(PHOTOS, blobs, strict=True) if Image.open(p).mode == "L"]
    return {
        "photos": len(blobs),
        "grey_photos": len(grey),
        "all": cpu_ms_per_photo(calls, blobs, rounds),
        "grey": cpu_ms_per_photo(calls, grey, rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.rounds)
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return 0
    base_all = figures["all"]["reference order"]  # type: ignore[index]
    base_grey = figures["grey"]["reference order"]  # type: ignore[index]
    sys.stdout.write(
        f"CPU ms per photo (medians of {args.rounds} alternating rounds; identical bytes "
        "checked)\n| variant | all 12 photos | x reference | grey photos | x reference |\n"
        "| --- | --- | --- | --- | --- |\n"
    )
    for name, ms in figures["all"].items():  # type: ignore[attr-defined]
        grey_ms = figures["grey"][name]  # type: ignore[index]
        sys.stdout.write(
            f"| {name} | {ms:.2f} | {ms / base_all:.3f} | {grey_ms:.2f} | "
            f"{grey_ms / base_grey:.3f} |\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

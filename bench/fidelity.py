"""What the opt-in reduced-scale JPEG decoding (``QUEUENET_JPEG_DRAFT``) costs in fidelity
and what it saves in time, against the exact (default) path, in one run.

    python -m bench.fidelity [--large-short-side-px 2000] [--rounds 5] [--json]

The images: every test photo (tests/data), plus a large JPEG made from each (resized so its
short side is ``--large-short-side-px``, saved at quality 90): the uploads of a phone camera,
where draft decoding matters most. For each image the default model predicts on both inputs.
Printed: top-1 agreement and max |dp| (any class) between the two paths, per set; the
median decode + resize time per image of each path and their ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTO_DIR = ROOT / "tests" / "data"
PHOTO_SUFFIXES = (".png", ".jpg")
LARGE_JPEG_QUALITY = 90


@dataclass
class SetFigures:
    images: int
    draft_changed_inputs: int
    """Images whose input array differs between the paths (PNGs and small JPEGs never do)."""
    top1_agreement: float
    """Share of images with the same top-1 class on both paths."""
    max_abs_dp: float
    """Largest |p_draft - p_exact| over every class of every image."""
    exact_ms: float
    """Median decode + resize time per image, exact path."""
    draft_ms: float
    """The same with reduced-scale JPEG decoding."""


def photos() -> list[bytes]:
    return [p.read_bytes() for p in sorted(PHOTO_DIR.iterdir()) if p.suffix in PHOTO_SUFFIXES]


def large_jpeg(data: bytes, short_side_px: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = short_side_px / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(
        buffer, format="JPEG", quality=LARGE_JPEG_QUALITY
    )
    return buffer.getvalue()


def _median_ms(fn: Any, blobs: list[bytes], rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        for blob in blobs:
            started = time.perf_counter()
            fn(blob)
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def compare(model: Any, blobs: list[bytes], rounds: int) -> SetFigures:
    from app.preprocess import image_to_input

    def exact(blob: bytes) -> np.ndarray:
        return image_to_input(blob, model.card, max_pixels=10**9)

    def draft(blob: bytes) -> np.ndarray:
        return image_to_input(blob, model.card, max_pixels=10**9, jpeg_draft=True)

    exact_inputs = np.stack([exact(b) for b in blobs])
    draft_inputs = np.stack([draft(b) for b in blobs])
    p_exact = model.predictor.predict(exact_inputs)
    p_draft = model.predictor.predict(draft_inputs)
    changed = int((exact_inputs != draft_inputs).reshape(len(blobs), -1).any(axis=1).sum())
    return SetFigures(
        images=len(blobs),
        draft_changed_inputs=changed,
        top1_agreement=float((p_exact.argmax(1) == p_draft.argmax(1)).mean()),
        max_abs_dp=float(np.abs(p_exact - p_draft).max()),
        exact_ms=_median_ms(exact, blobs, rounds),
        draft_ms=_median_ms(draft, blobs, rounds),
    )


def measure(cache_dir: Path, *, large_short_side_px: int, rounds: int) -> dict[str, Any]:
    from worker.registry import load_model

    model = load_model("efficientnet-lite0", cache_dir=cache_dir)
    originals = photos()
    large = [large_jpeg(b, large_short_side_px) for b in originals]
    return {
        "photos": asdict(compare(model, originals, rounds)),
        f"large_jpegs_{large_short_side_px}px": asdict(compare(model, large, rounds)),
    }


def print_table(figures: dict[str, dict[str, float]]) -> None:
    out = sys.stdout
    out.write(
        "| images | n | inputs changed by draft | top-1 agreement | max abs dp "
        "| exact ms | draft ms | draft time / exact |\n| --- | --- | --- | --- | --- | --- "
        "| --- | --- |\n"
    )
    for name, f in figures.items():
        out.write(
            f"| {name} | {f['images']:.0f} | {f['draft_changed_inputs']:.0f} "
            f"| {100 * f['top1_agreement']:.1f} % | {f['max_abs_dp']:.4f} "
            f"| {f['exact_ms']:.2f} | {f['draft_ms']:.2f} | {f['draft_ms'] / f['exact_ms']:.2f} |\n"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-short-side-px", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds over each set")
    parser.add_argument("--cache-dir", default="", help="model cache (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(
            Path(args.cache_dir or tmp),
            large_short_side_px=args.large_short_side_px,
            rounds=args.rounds,
        )
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        print_table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

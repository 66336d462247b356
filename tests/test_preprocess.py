"""Decoding and preparing uploads with Pillow: modes, orientation, crop, hostile input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.preprocess import ImageDecodeError, crop_box, decode_image, image_to_input, prepare
from protocol.messages import ModelCard
from tests.helpers import image_bytes, png_header_only

CARD = ModelCard("m", "1", input_size=224, num_labels=10, crop_fraction=224 / 256)
LIMIT = 10_000_000


@pytest.mark.parametrize(
    ("size", "fraction", "box"),
    [
        ((256, 256), 0.875, (16.0, 16.0, 240.0, 240.0)),
        ((400, 200), 0.5, (150.0, 50.0, 250.0, 150.0)),
        ((200, 400), 1.0, (0.0, 100.0, 200.0, 300.0)),
        ((1, 1), 1.0, (0.0, 0.0, 1.0, 1.0)),
    ],
)
def test_crop_box(size: tuple[int, int], fraction: float, box: tuple[float, ...]) -> None:
    assert crop_box(*size, fraction) == pytest.approx(box)


def test_prepare_is_the_centre_crop_when_no_scaling_is_needed() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = prepare(Image.fromarray(pixels), CARD)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pixels[16:240, 16:240])


def test_prepare_matches_crop_then_bicubic_resize() -> None:
    image = Image.open(io.BytesIO(image_bytes((451, 300), seed=3)))
    out = prepare(image.convert("RGB"), CARD)
    side = 300 * 224 / 256
    left, top = (451 - side) / 2, (300 - side) / 2
    reference = image.resize(
        (224, 224), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    np.testing.assert_array_equal(out, np.asarray(reference))


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue(), max_pixels=LIMIT).size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "I", "F"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    image = Image.open(io.BytesIO(image_bytes((30, 20)))).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    out = image_to_input(buffer.getvalue(), CARD, max_pixels=LIMIT)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")  # uint16 -> mode I;16
    rgb = np.asarray(decode_image(buffer.getvalue(), max_pixels=LIMIT))
    assert rgb.max() == 255 and rgb.min() == 0
    assert len(np.unique(rgb[..., 0])) > 200  # a ramp, not a white square


def test_transparent_pixels_become_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert np.asarray(decode_image(buffer.getvalue(), max_pixels=LIMIT)).min() == 255


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    rgb = np.asarray(decode_image(buffer.getvalue(), max_pixels=LIMIT))
    assert tuple(rgb[8, 8]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"GIF89a but then nothing useful", "not an image"),
        (image_bytes((64, 64), fmt="GIF")[:40], "not an image"),
        (b"plain text is not an image", "not an image"),
        (image_bytes((300, 300))[:400], "truncated"),
        (image_bytes((300, 300), fmt="JPEG")[:600], "truncated|corrupt"),
        (image_bytes((300, 300), fmt="WEBP")[:300], "truncated|corrupt"),
        (png_header_only(30_000, 30_000), "over the limit"),
    ],
)
def test_bad_input_is_refused_with_a_reason(data: bytes, words: str) -> None:
    with pytest.raises(ImageDecodeError, match=words):
        decode_image(data, max_pixels=LIMIT)


def test_tiny_and_elongated_images_are_prepared() -> None:
    for size in ((1, 1), (1000, 2), (3, 900)):
        out = image_to_input(image_bytes(size), CARD, max_pixels=LIMIT)
        assert out.shape == (224, 224, 3)


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    """Pillow's draft mode: a 2400x1600 JPEG decodes at 1/4 scale, still large enough for a
    224 crop of 0.875, and the model input barely changes."""
    big = Image.open(io.BytesIO(image_bytes((300, 200), seed=5))).resize((2400, 1600))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    assert decode_image(data, max_pixels=LIMIT, min_short_side=256).size == (600, 400)
    assert decode_image(data, max_pixels=LIMIT).size == (2400, 1600)
    reduced = image_to_input(data, CARD, max_pixels=LIMIT).astype(np.int16)
    full = prepare(decode_image(data, max_pixels=LIMIT), CARD).astype(np.int16)
    assert np.abs(reduced - full).mean() < 2.0

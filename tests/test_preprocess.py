"""Decoding and preparing uploads with Pillow: modes, orientation, crop, hostile input."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from app.preprocess import ImageDecodeError, crop_box, decode_image, image_to_input, prepare
from protocol.messages import RESIZE_STRETCH, ModelCard
from tests.helpers import image_bytes, png_header_only

CARD = ModelCard("m", "1", input_size=224, num_labels=10)  # centre crop, padding 32, bicubic
LIMIT = 10_000_000


@pytest.mark.parametrize(
    ("size", "padding", "side", "box"),
    [
        # int(224 / 256 * 256) = 224 at ((256 - 224 + 1) // 2) = 16
        ((256, 256), 32, 224, (16, 16, 240, 240)),
        # chelsea: int(0.875 * 300) = 262, top (300 - 262 + 1) // 2 = 19, left (451 - 262 + 1) // 2
        ((451, 300), 32, 224, (95, 19, 357, 281)),
        # an odd margin rounds the offset up: (11 - 8 + 1) // 2 = 2
        ((11, 10), 32, 224, (2, 1, 10, 9)),
        ((200, 400), 0, 224, (0, 100, 200, 300)),
        ((1, 1), 32, 224, (0, 0, 1, 1)),  # never an empty crop
        ((300, 272), 32, 240, (30, 16, 270, 256)),  # Lite1: int(240 / 272 * 272) = 240
    ],
)
def test_crop_box_is_the_integer_reference_square(
    size: tuple[int, int], padding: int, side: int, box: tuple[int, ...]
) -> None:
    assert crop_box(*size, padding, side) == box


def test_prepare_is_the_centre_crop_when_no_scaling_is_needed() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = prepare(Image.fromarray(pixels), CARD)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pixels[16:240, 16:240])


def test_prepare_crops_first_then_resizes_the_square() -> None:
    """Resizing with ``box=`` would let the bicubic filter read pixels just outside the crop,
    which the reference pipeline (crop, then resize) never sees."""
    pixels = np.random.default_rng(3).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    out = prepare(Image.fromarray(pixels), CARD)
    square = Image.fromarray(np.ascontiguousarray(pixels[19:281, 95:357]))
    np.testing.assert_array_equal(
        out, np.asarray(square.resize((224, 224), Image.Resampling.BICUBIC))
    )
    with_box = Image.fromarray(pixels).resize(
        (224, 224), Image.Resampling.BICUBIC, box=(95, 19, 357, 281)
    )
    assert not np.array_equal(out, np.asarray(with_box))


def test_stretch_recipe_is_keras_load_img() -> None:
    card = dataclasses.replace(CARD, resize=RESIZE_STRETCH, resample="nearest")
    data = image_bytes((451, 300), seed=4)
    expected = (
        Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.NEAREST)
    )
    np.testing.assert_array_equal(image_to_input(data, card, max_pixels=LIMIT), expected)


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


def test_alpha_is_dropped_as_the_reference_pipeline_drops_it() -> None:
    """TensorFlow's decode_png(channels=3) and Pillow's convert("RGB") both keep the colour of
    a transparent pixel; so does serving, or the model would see another image."""
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (200, 10, 30, 0)).save(buffer, format="PNG")
    rgb = np.asarray(decode_image(buffer.getvalue(), max_pixels=LIMIT))
    assert (rgb == (200, 10, 30)).all()


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


def large_jpeg() -> bytes:
    big = Image.open(io.BytesIO(image_bytes((300, 200), seed=5))).resize((2400, 1600))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_large_jpeg_is_decoded_in_full_by_default() -> None:
    data = large_jpeg()
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decode_image(data, max_pixels=LIMIT).size == (2400, 1600)
    square = Image.fromarray(np.ascontiguousarray(full[100:1500, 500:1900]))  # int(0.875*1600)
    expected = np.asarray(square.resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(image_to_input(data, CARD, max_pixels=LIMIT), expected)


def test_reduced_scale_jpeg_decoding_is_an_opt_in() -> None:
    """Pillow's draft mode (the opt-in QUEUENET_JPEG_DRAFT): a 2400x1600 JPEG decodes at 1/4
    scale, still large enough for the crop, and the input changes a little."""
    data = large_jpeg()
    assert decode_image(data, max_pixels=LIMIT, min_short_side=256).size == (600, 400)
    drafted = image_to_input(data, CARD, max_pixels=LIMIT, jpeg_draft=True).astype(np.int16)
    exact = image_to_input(data, CARD, max_pixels=LIMIT).astype(np.int16)
    assert 0 < np.abs(drafted - exact).mean() < 2.0


@pytest.mark.parametrize("resample", ["bicubic", "bilinear", "lanczos", "nearest"])
@pytest.mark.parametrize("resize", ["center-crop", "stretch"])
def test_grey_resized_before_it_becomes_rgb_gives_the_reference_bytes(
    resample: str, resize: str
) -> None:
    """Greys are resized in one channel, then made RGB (a third of the work): byte for byte
    what the reference order (RGB first, then crop and resize) gives, for every filter,
    shrinking, enlarging and odd sizes."""
    card = dataclasses.replace(CARD, resample=resample, resize=resize)
    rng = np.random.default_rng(7)
    for width, height in [(512, 512), (451, 300), (1411, 997), (37, 250), (100, 3), (224, 224)]:
        grey = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L")
        reference = prepare(grey.convert("RGB"), card)
        assert np.array_equal(prepare(grey, card), reference), (width, height)
        assert prepare(grey, card).shape == (224, 224, 3)


def test_grey_uploads_take_the_one_channel_path() -> None:
    """A grey PNG and a 16-bit grey PNG stay grey until resized, and come out as the RGB path
    makes them."""
    rng = np.random.default_rng(8)
    grey = Image.fromarray(rng.integers(0, 256, (300, 400), dtype=np.uint8), mode="L")
    data = _png(grey)
    assert decode_image(data, max_pixels=LIMIT, keep_grey=True).mode == "L"
    assert decode_image(data, max_pixels=LIMIT).mode == "RGB"
    expected = prepare(decode_image(data, max_pixels=LIMIT), CARD)
    assert np.array_equal(image_to_input(data, CARD, max_pixels=LIMIT), expected)
    deep = Image.fromarray(rng.integers(0, 65536, (300, 400), dtype=np.uint16))
    deep_data = _png(deep)
    assert decode_image(deep_data, max_pixels=LIMIT, keep_grey=True).mode == "L"
    expected = prepare(decode_image(deep_data, max_pixels=LIMIT), CARD)
    assert np.array_equal(image_to_input(deep_data, CARD, max_pixels=LIMIT), expected)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

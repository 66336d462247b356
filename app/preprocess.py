"""Turning uploaded bytes into the model's input array. Pure code: no I/O, no Flask.

The recipe comes from the model card, so the web tier prepares each image exactly as the
model's own reference pipeline does, byte for byte (serving must not change the answers):

- a full decode (never a reduced-scale JPEG decode, unless ``jpeg_draft`` opts in), EXIF
  orientation, then RGB;
- ``center-crop`` (the TF EfficientNet(-Lite) evaluation recipe): the centred integer square
  ``crop = int(S / (S + crop_padding) * min(h, w))`` at ``top = (h - crop + 1) // 2``,
  ``left = (w - crop + 1) // 2``, resized to ``S x S`` with the card's filter (bicubic);
- ``stretch`` (Keras applications' documented ``keras.utils.load_img(path,
  target_size=(S, S))``): the whole image resized to ``S x S`` (nearest, as ``load_img``).

The result is ``uint8`` ``[S, S, 3]``, C-contiguous.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from protocol.messages import RESIZE_CENTER_CROP, RESIZE_STRETCH, ModelCard

logger = logging.getLogger(__name__)

# Pillow's own bomb guard is a process-wide setting that warns at one size and raises at
# twice that. We check the pixel count of every image ourselves, right after reading the header
# and before decoding, with the limit from the settings, so the global guard is switched off.
Image.MAX_IMAGE_PIXELS = None

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


# Formats Pillow can identify but that must not be decoded from an upload. EPS is rendered by
# running Ghostscript on the file: an upload must never reach an external interpreter.
_REFUSED_FORMATS = {
    "EPS": "PostScript (EPS) is not accepted; send a raster image (PNG, JPEG, WebP, GIF, ...)",
}


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why, in words for the client."""


def decode_image(
    data: bytes, *, max_pixels: int, min_short_side: int = 0, keep_grey: bool = False
) -> Image.Image:
    """Decode ``data`` into an upright RGB image, refusing empty, corrupt and oversized input.

    ``keep_grey`` returns an 8-bit grey image (mode ``L``) as it is: :func:`prepare` resizes
    it and makes RGB of the result, the same bytes as from the RGB image at a third of the
    resizing (see :func:`prepare`).

    ``min_short_side`` (0: off, the default and the exact path) lets a JPEG decode at a
    reduced DCT scale (1/2, 1/4, 1/8, several times cheaper) as long as its short side stays
    at least that long. That changes pixels and so the model's answers: only the opt-in
    ``QUEUENET_JPEG_DRAFT`` uses it (bench/fidelity.py measures what it costs).
    """
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "the data is not an image we can read (unknown format or damaged header)"
        ) from None
    except Exception as exc:  # Pillow raises many types on hostile headers; all mean "bad image".
        raise ImageDecodeError(
            f"the image header is truncated or corrupt ({type(exc).__name__})"
        ) from None
    if image.format in _REFUSED_FORMATS:
        raise ImageDecodeError(_REFUSED_FORMATS[image.format])
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})")
    try:
        if image.format == "JPEG" and 0 < min_short_side < min(width, height):
            scale = min_short_side / min(width, height)
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
        return _to_rgb(image, keep_grey=keep_grey)
    except Exception as exc:  # truncated or corrupt pixel data surfaces as assorted errors
        raise ImageDecodeError(
            f"the {image.format or 'image'} data is truncated or corrupt ({type(exc).__name__})"
        ) from None


def _to_rgb(image: Image.Image, *, keep_grey: bool = False) -> Image.Image:
    """RGB as the reference pipeline makes it: Pillow's ``convert("RGB")``, which drops an
    alpha channel the way TensorFlow's ``decode_png(channels=3)`` does (the hidden colour of a
    transparent pixel is what the model sees).

    The one exception is high bit depth: ``convert`` would clip 16-bit and float images to
    white, so they are scaled to 8 bits first. Float and signed images may hold NaN,
    infinities and negatives: those become 0, so the cast to uint8 is always in range.
    """
    if image.mode == "RGB" or (keep_grey and image.mode == "L"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # In place: one float64 copy of the image, no more.
        array = np.array(image, dtype=np.float64)
        np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(array, 0.0, None, out=array)
        top = float(array.max()) or 1.0
        array *= 255.0 / top
        np.round(array, out=array)
        image = Image.fromarray(array.astype(np.uint8), mode="L")
        if keep_grey:
            return image
    return image.convert("RGB")


def crop_box(width: int, height: int, crop_padding: int, size: int) -> tuple[int, int, int, int]:
    """The centred integer square of the TF EfficientNet evaluation recipe, as a Pillow box:
    side ``int(size / (size + crop_padding) * min(height, width))`` (at least 1 pixel), top
    ``(height - side + 1) // 2``, left ``(width - side + 1) // 2``."""
    side = max(1, int(size / (size + crop_padding) * min(height, width)))
    top = (height - side + 1) // 2
    left = (width - side + 1) // 2
    return (left, top, left + side, top + side)


def prepare(image: Image.Image, card: ModelCard) -> np.ndarray:
    """Resize ``image`` (RGB, or 8-bit grey ``L``) to the card's input by the card's recipe:
    ``uint8`` ``[S, S, 3]``.

    A grey image is resized as it is and made RGB afterwards. The bytes are those of
    converting first (the reference's order): RGB of grey repeats the value in each channel,
    and Pillow resizes each channel of an 8-bit image alone with the same coefficients and
    rounding as a one-channel image (tests/test_preprocess.py checks every filter). It skips
    a full-size copy and two thirds of the resizing.
    """
    resample = _RESAMPLE.get(card.resample)
    if resample is None:
        raise ValueError(f"model card asks for unknown resampling {card.resample!r}")
    size = card.input_size
    if card.resize == RESIZE_CENTER_CROP:
        # Crop first, then resize the square: resize(box=...) would let the filter read
        # pixels outside the box, which the reference (crop, then resize) never sees.
        image = image.crop(crop_box(image.width, image.height, card.crop_padding, size))
    elif card.resize != RESIZE_STRETCH:
        raise ValueError(f"model card asks for unknown resize recipe {card.resize!r}")
    resized = image.resize((size, size), resample=resample)
    if resized.mode != "RGB":
        resized = resized.convert("RGB")
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def draft_short_side(card: ModelCard) -> int:
    """The shortest short side a reduced-scale JPEG decode may leave (opt-in only): enough
    that the crop (or the whole image) still holds ``input_size`` pixels."""
    if card.resize == RESIZE_CENTER_CROP:
        return card.input_size + card.crop_padding
    return card.input_size


def image_to_input(
    data: bytes, card: ModelCard, *, max_pixels: int, jpeg_draft: bool = False
) -> np.ndarray:
    """Bytes of an uploaded image to the model's input array, by the card's recipe.

    ``jpeg_draft`` (opt-in, off by default) decodes large JPEGs at a reduced scale: faster,
    but not the reference pixels.
    """
    min_short_side = draft_short_side(card) if jpeg_draft else 0
    image = decode_image(data, max_pixels=max_pixels, min_short_side=min_short_side, keep_grey=True)
    return prepare(image, card)

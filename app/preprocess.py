"""Turning uploaded bytes into the model's input array. Pure code: no I/O, no Flask.

The recipe comes from the model card so the web tier prepares images exactly as the model
was trained: EXIF orientation, RGB, centre crop of ``crop_fraction`` of the short side,
resize to ``input_size`` square with the card's resampling filter, ``uint8`` ``[S, S, 3]``.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from protocol.messages import ModelCard

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


def decode_image(data: bytes, *, max_pixels: int, min_short_side: int = 0) -> Image.Image:
    """Decode ``data`` into an upright RGB image, refusing empty, corrupt and oversized input.

    ``min_short_side`` lets a JPEG decode at a reduced scale (1/2, 1/4, 1/8, done by the
    decoder, several times cheaper) as long as its short side stays at least that long.
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
        return _to_rgb(image)
    except Exception as exc:  # truncated or corrupt pixel data surfaces as assorted errors
        raise ImageDecodeError(
            f"the {image.format or 'image'} data is truncated or corrupt ({type(exc).__name__})"
        ) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit depth: scale to 8 bits instead of letting convert() clip to white. Float and
        # signed images may hold NaN, infinities and negatives: those become 0, so the cast to
        # uint8 below is always in range. In place: one float64 copy of the image, no more.
        array = np.array(image, dtype=np.float64)
        np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(array, 0.0, None, out=array)
        top = float(array.max()) or 1.0
        array *= 255.0 / top
        np.round(array, out=array)
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels go on white, as a viewer shows them, not on their hidden colour.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def crop_box(width: int, height: int, crop_fraction: float) -> tuple[float, float, float, float]:
    """The centred square of side ``crop_fraction`` x the short side, as a Pillow box."""
    side = min(width, height) * crop_fraction
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return (left, top, left + side, top + side)


def prepare(image: Image.Image, card: ModelCard) -> np.ndarray:
    """Centre-crop and resize ``image`` (RGB) to the card's input: ``uint8`` ``[S, S, 3]``."""
    resample = _RESAMPLE.get(card.resample)
    if resample is None:
        raise ValueError(f"model card asks for unknown resampling {card.resample!r}")
    size = (card.input_size, card.input_size)
    box = crop_box(image.width, image.height, card.crop_fraction)
    resized = image.resize(size, resample=resample, box=box)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def image_to_input(data: bytes, card: ModelCard, *, max_pixels: int) -> np.ndarray:
    """Bytes of an uploaded image to the model's input array."""
    # The crop must still hold input_size pixels: a short side of input_size / crop_fraction.
    min_short_side = math.ceil(card.input_size / card.crop_fraction)
    return prepare(decode_image(data, max_pixels=max_pixels, min_short_side=min_short_side), card)

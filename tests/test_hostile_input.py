"""Hostile input never gives a 5xx and never stops a worker.

Against real processes and a real Redis: one model worker (``python -m worker`` with the tiny
8x8 model, 4 classes) and one gunicorn, started once for the whole module. Every hostile upload
gets a 4xx JSON error that says what was wrong, or a correct answer where the image is valid;
every hostile message pushed straight onto the queue gets an error result, never a crash or a
huge allocation. The decoding path is also checked in-process with hypothesis.

Warnings: pyproject turns every warning into an error, but Pillow reports some damage as a
``UserWarning`` ("Corrupt EXIF data", "Truncated File Read", ...) and carries on. Under gunicorn
warnings are only printed, so decoding goes on and ends in an image or an ``ImageDecodeError``.
The app does not silence them with ``warnings.catch_warnings()``: that swaps process-wide state
and is not thread-safe under gunicorn's threaded workers. The property-based tests ignore exactly
Pillow's ``UserWarning`` s, so they run the production path; as errors, the warnings would be
caught by ``decode_image`` and turned into ``ImageDecodeError``, hiding that path.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
import struct
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.preprocess import ImageDecodeError, decode_image, image_to_input
from protocol.inspection import Inspector
from protocol.keys import Keys
from protocol.messages import (
    RESAMPLE_FILTERS,
    RESIZE_RECIPES,
    ModelCard,
    PredictRequest,
    decode_result,
    encode_request,
)
from protocol.queue import Queue
from tests.conftest import TINY_LABELS, TINY_SIZE
from tests.helpers import image_bytes, png_header_only, wait_until
from tests.live import LiveService

MAX_UPLOAD_BYTES = 1024 * 1024
"""The live web server's body limit (QUEUENET_MAX_UPLOAD_BYTES); the pixel limit is the default."""
MAX_IMAGE_PIXELS = 40_000_000
RED, GREEN, BLUE = (250, 10, 10), (10, 250, 10), (10, 10, 250)
PILLOW_WARNINGS_AS_IN_PRODUCTION = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


# --- the live service -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_service(
    redis_url: str, tiny_model_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """One worker and one gunicorn for the module (a worker takes ~5 s to start)."""
    service = LiveService(redis_url, tmp_path_factory.mktemp("hostile"), *tiny_model_files)
    try:
        service.start_worker()
        service.start_web(QUEUENET_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES))
        yield service
    finally:
        service.close()
        _delete_namespace(redis_url, service.namespace)


def _delete_namespace(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    Inspector(client, Keys(namespace)).delete_all()
    client.close()


@pytest.fixture(scope="module")
def url(live_service: LiveService) -> str:
    return live_service.webs[0][1]


def post_file(
    url: str, data: bytes, *, content_type: str = "application/octet-stream"
) -> requests.Response:
    files = {"image": ("upload.bin", data, content_type)}
    return requests.post(f"{url}/predict", files=files, timeout=30)


def assert_error(response: requests.Response, status: int, code: str, words: str) -> str:
    """The JSON error body of ``response``; its message must match the regex ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert re.search(words, message), f"{message!r} does not match {words!r}"
    return message


def assert_prediction(response: requests.Response, label: str | None = None) -> None:
    """A correct-looking answer of the tiny model: 4 distinct classes, ranked, summing to 1."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    predictions = body["predictions"]
    assert len(predictions) == len(TINY_LABELS)
    assert sorted(p["index"] for p in predictions) == list(range(len(TINY_LABELS)))
    assert all(p["label"] == TINY_LABELS[p["index"]] for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    if label is not None:
        assert predictions[0]["label"] == label, predictions


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# --- images as bytes --------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


def noise(fmt: str) -> bytes:
    return image_bytes((96, 64), fmt=fmt, seed=7)


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def flip_middle(data: bytes, count: int = 16) -> bytes:
    """``count`` bytes in the middle of the file (the pixel data) inverted."""
    out = bytearray(data)
    middle = len(out) // 2
    for i in range(middle, middle + count):
        out[i] ^= 0xFF
    return bytes(out)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def break_png_crc(data: bytes, kind: bytes) -> bytes:
    """The PNG with the CRC of its first ``kind`` chunk wrong (the chunk data is intact)."""
    out = bytearray(data)
    at = out.index(kind)
    (length,) = struct.unpack(">I", out[at - 4 : at])
    out[at + 4 + length] ^= 0xFF
    return bytes(out)


@functools.cache
def black_bomb_png(width: int = 15_000, height: int = 15_000) -> bytes:
    """A real, complete PNG of ``width`` x ``height`` black greyscale pixels (225 megapixels),
    compressed row block by row block so the whole image is never in memory: ~220 kB."""
    compressor = zlib.compressobj(9)
    block = 256
    rows = bytes(width + 1) * block  # filter byte 0 + a row of zeros, 256 rows at a time
    parts = [compressor.compress(rows) for _ in range(height // block)]
    parts.append(compressor.compress(bytes(width + 1) * (height % block)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def gif_header_bomb() -> bytes:
    """A GIF of a few bytes whose screen and frame claim 65535 x 65535 pixels."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x08\x02\x4c\x01\x00"
    return b"GIF89a" + screen + frame + b";"


def jpeg_header_bomb() -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to claim 65500 x 65500."""
    data = bytearray(image_bytes((64, 48), fmt="JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def webp_header_bomb() -> bytes:
    """A lossless WebP whose VP8L header is patched to claim 16383 x 16383 (the maximum)."""
    data = bytearray(image_bytes((64, 48), fmt="WEBP", lossless=True))
    at = data.index(b"VP8L") + 9  # chunk id, chunk size, signature byte 0x2f
    flags = int.from_bytes(data[at : at + 4], "little") & ~((1 << 28) - 1)
    data[at : at + 4] = ((16383 - 1) | (16383 - 1) << 14 | flags).to_bytes(4, "little")
    return bytes(data)


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def palette_with_transparency(fmt: str) -> bytes:
    """Palette image: index 0 transparent (hidden colour green), index 1 red."""
    image = Image.new("P", (32, 24), 1)
    image.putpalette([0, 255, 0, 250, 10, 10] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 8, 24))
    return encode(image, fmt, transparency=0)


def animated(fmt: str) -> bytes:
    first, second = solid(RED), solid(BLUE)
    return encode(first, fmt, save_all=True, append_images=[second], duration=50, loop=0)


def cmyk(fmt: str) -> bytes:
    image = solid(RED).convert("CMYK")
    data = encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    return data


def one_bit() -> bytes:
    checker = (np.indices((24, 32)).sum(axis=0) % 2).astype(bool)
    return encode(Image.fromarray(checker), "PNG")


def exif_rotated_jpeg() -> bytes:
    image = solid(GREEN, (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


# --- the table of hostile uploads -------------------------------------------------------------

OK, BAD, EITHER = "ok", "bad", "either"
"""``EITHER``: a damaged file that may still decode (formats without checksums over the pixel
data: a bit flip in JPEG, WebP, GIF, TIFF or BMP pixels gives a wrong picture, not an error)."""
DAMAGED = r"truncated|corrupt|damaged"


@dataclass(frozen=True)
class Upload:
    name: str
    build: Callable[[], bytes]
    expect: str
    words: str = ""
    """Regex the error message must match (after "field 'image': ")."""
    label: str | None = None
    """Top label a valid image must get from the colour model."""
    content_type: str = "application/octet-stream"


def _uploads() -> list[Upload]:
    uploads = [
        Upload("zero bytes", lambda: b"", BAD, r"empty \(0 bytes\)"),
        Upload("text", lambda: b"hello, I am text and not a picture\n" * 20, BAD, "not an image"),
        Upload(
            "html",
            lambda: b"<!doctype html><html><body><img src=x></body></html>",
            BAD,
            "not an image",
        ),
        Upload(
            "pdf header",
            lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\n",
            BAD,
            "not an image",
        ),
        Upload(
            "svg",
            lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>',
            BAD,
            "not an image",
        ),
        Upload(
            "eps (would run Ghostscript)",
            lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
            BAD,
            "PostScript.*not accepted",
        ),
        Upload("json", lambda: json.dumps({"image": "aGVsbG8="}).encode(), BAD, "not an image"),
        Upload(
            "random bytes",
            lambda: np.random.default_rng(1).bytes(5000),
            BAD,
            "not an image",
        ),
        Upload("png signature only", lambda: b"\x89PNG\r\n\x1a\n", BAD, "not an image"),
        Upload(
            "text sent as image/jpeg",
            lambda: b"not a jpeg at all",
            BAD,
            "not an image",
            content_type="image/jpeg",
        ),
        Upload(
            "png sent as text/plain",
            lambda: encode(solid(RED), "PNG"),
            OK,
            label="red",
            content_type="text/plain",
        ),
        # Decompression bombs: refused from the header, before any pixel is decoded.
        Upload(
            "png header bomb 30000x30000",
            lambda: png_header_only(30_000, 30_000),
            BAD,
            "over the limit",
        ),
        Upload("real png bomb 225 MP", black_bomb_png, BAD, "15000x15000 .* over the limit"),
        Upload("gif header bomb 65535x65535", gif_header_bomb, BAD, "over the limit"),
        Upload("jpeg header bomb 65500x65500", jpeg_header_bomb, BAD, "over the limit"),
        Upload("webp header bomb 16383x16383", webp_header_bomb, BAD, "over the limit"),
        # Corrupt: checksums wrong, bytes flipped in the pixel data.
        Upload("png wrong IHDR crc", lambda: break_png_crc(noise("PNG"), b"IHDR"), BAD, DAMAGED),
        Upload("png wrong IDAT crc", lambda: break_png_crc(noise("PNG"), b"IDAT"), EITHER, DAMAGED),
        Upload("png bytes flipped", lambda: flip_middle(noise("PNG")), BAD, DAMAGED),
    ]
    for fmt in ("JPEG", "GIF", "WEBP", "TIFF", "BMP"):
        uploads.append(
            Upload(
                f"{fmt.lower()} bytes flipped", functools.partial(_flipped, fmt), EITHER, DAMAGED
            )
        )
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"):
        for fraction in (0.1, 0.5, 0.9, 0.99):
            uploads.append(
                Upload(
                    f"{fmt.lower()} truncated at {fraction:.0%}",
                    functools.partial(_truncated, fmt, fraction),
                    BAD,
                    DAMAGED,
                )
            )
    uploads += [
        # Valid images in every shape and mode: a correct answer.
        Upload("1x1", lambda: encode(solid(RED, (1, 1)), "PNG"), OK, label="red"),
        Upload("1x5000", lambda: encode(solid(GREEN, (1, 5000)), "PNG"), OK, label="green"),
        Upload("5000x1", lambda: encode(solid(BLUE, (5000, 1)), "PNG"), OK, label="blue"),
        Upload(
            "greyscale L png",
            lambda: encode(Image.new("L", (30, 20), 128), "PNG"),
            OK,
            label="grey",
        ),
        Upload(
            "greyscale L jpeg",
            lambda: encode(Image.new("L", (30, 20), 128), "JPEG"),
            OK,
            label="grey",
        ),
        Upload(
            "greyscale LA png",
            lambda: encode(Image.new("LA", (30, 20), (128, 200)), "PNG"),
            OK,
            label="grey",
        ),
        Upload("cmyk jpeg", functools.partial(cmyk, "JPEG"), OK, label="red"),
        Upload("cmyk tiff", functools.partial(cmyk, "TIFF"), OK, label="red"),
        Upload(
            "rgba png half transparent",
            lambda: encode(Image.new("RGBA", (30, 20), (250, 10, 10, 128)), "PNG"),
            OK,
            label="red",
        ),
        Upload(
            # The reference pipeline (convert("RGB"), decode_png(channels=3)) keeps the colour
            # of a transparent pixel; so does serving.
            "rgba png fully transparent (its hidden colour)",
            lambda: encode(Image.new("RGBA", (30, 20), (0, 0, 250, 0)), "PNG"),
            OK,
            label="blue",
        ),
        Upload(
            "rgba webp",
            lambda: encode(Image.new("RGBA", (30, 20), (10, 10, 250, 255)), "WEBP"),
            OK,
            label="blue",
        ),
        Upload("16-bit I;16 png", sixteen_bit_png, OK, label="grey"),
        Upload(
            "palette png with transparency",
            functools.partial(palette_with_transparency, "PNG"),
            OK,
            label="red",
        ),
        Upload(
            "palette gif with transparency",
            functools.partial(palette_with_transparency, "GIF"),
            OK,
            label="red",
        ),
        Upload(
            "animated gif (first frame red)", functools.partial(animated, "GIF"), OK, label="red"
        ),
        Upload(
            "animated webp (first frame red)", functools.partial(animated, "WEBP"), OK, label="red"
        ),
        Upload(
            "animated png (first frame red)", functools.partial(animated, "PNG"), OK, label="red"
        ),
        Upload("1-bit png", one_bit, OK, label="grey"),
        Upload("1-bit tiff", lambda: encode(Image.new("1", (30, 20), 1), "TIFF"), OK, label="grey"),
        Upload("bmp", lambda: encode(solid(BLUE), "BMP"), OK, label="blue"),
        Upload("jpeg with exif rotation", exif_rotated_jpeg, OK, label="green"),
    ]
    return uploads


def _flipped(fmt: str) -> bytes:
    return flip_middle(noise(fmt))


def _truncated(fmt: str, fraction: float) -> bytes:
    return cut(noise(fmt), fraction)


UPLOADS = _uploads()


@pytest.mark.parametrize("upload", UPLOADS, ids=[u.name for u in UPLOADS])
def test_hostile_upload(url: str, upload: Upload) -> None:
    data = upload.build()
    assert len(data) < MAX_UPLOAD_BYTES
    response = post_file(url, data, content_type=upload.content_type)
    assert response.status_code < 500, response.text
    if upload.expect == OK or (upload.expect == EITHER and response.status_code == 200):
        assert_prediction(response, upload.label)
    else:
        assert_error(response, 400, "invalid_image", rf"^field 'image': .*({upload.words})")


def test_real_bomb_is_small_and_never_decoded(live_service: LiveService, url: str) -> None:
    """225 megapixels in ~220 kB; the web process refuses it from the header, without growing."""
    data = black_bomb_png()
    assert len(data) < 300_000
    web_pid = child_pids(live_service.webs[0][0].pid)[0]
    before = rss_bytes(web_pid)
    for _ in range(3):
        assert_error(post_file(url, data), 400, "invalid_image", "225000000 pixels, over the limit")
    assert rss_bytes(web_pid) - before < 50 * 1024 * 1024


def test_worker_survived_the_uploads(live_service: LiveService, url: str) -> None:
    assert live_service.workers[0].poll() is None, live_service.logs()
    assert_prediction(post_file(url, encode(solid(BLUE), "PNG")), "blue")
    logs = "".join(p.read_text(errors="replace") for p in live_service.workdir.glob("*.log"))
    assert "Traceback" not in logs, live_service.logs()


# --- the shape of the request -----------------------------------------------------------------


def test_wrong_field_name(url: str) -> None:
    response = requests.post(f"{url}/predict", files={"file": ("a.png", b"x")}, timeout=30)
    assert_error(
        response,
        400,
        "invalid_request",
        r"missing multipart field 'image'.*received field\(s\): file",
    )


def test_two_image_fields_get_one_result_each(url: str) -> None:
    files = [("image", ("a.png", encode(solid(RED), "PNG"))), ("image", ("b.txt", b"text"))]
    response = requests.post(f"{url}/predict", files=files, timeout=30)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["success"] is True and first["predictions"][0]["label"] == "red"
    assert second["success"] is False and second["error"]["code"] == "invalid_image"
    assert "image 2" in second["error"]["message"] and second["error"]["status"] == 400


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"img": "x"}, "either 'image'"),
        ({"image": "a", "images": ["b"]}, "either 'image'"),
        ([1, 2], "either 'image'"),
        ({"image": 42}, "'image' must be a base64 string"),
        ({"image": "not base64!"}, "'image' is not valid base64"),
        ({"images": []}, "non-empty list"),
        ({"images": ["aGk=", 7]}, r"'images\[1\]' must be a base64 string"),
        ({"images": ["aGk="] * 40}, "40 images in one request; at most 32"),
    ],
)
def test_bad_json_bodies(url: str, body: object, words: str) -> None:
    response = requests.post(f"{url}/predict", json=body, timeout=30)
    assert_error(response, 400, "invalid_request", words)


def test_json_that_does_not_parse(url: str) -> None:
    response = requests.post(
        f"{url}/predict",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert_error(response, 400, "invalid_request", "not valid JSON")


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b"hello", "text/plain", "Content-Type 'text/plain'"),
        (b"\x89PNG\r\n\x1a\n", "image/png", "Content-Type 'image/png'"),
        (b"hello", None, "no Content-Type"),
        (b"", None, "no Content-Type"),
    ],
)
def test_non_multipart_body(url: str, body: bytes, content_type: str | None, words: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(f"{url}/predict", data=body, headers=headers, timeout=30)
    assert_error(response, 400, "invalid_request", f"{words}.*multipart field 'image'")


def test_image_as_a_plain_form_value(url: str) -> None:
    response = requests.post(f"{url}/predict", data={"image": "aGVsbG8="}, timeout=30)
    assert_error(
        response, 400, "invalid_request", "'image' arrived as a plain form value, not a file"
    )
    # The same in a multipart body: a part without a filename is a value, not a file.
    png = encode(solid(RED), "PNG")
    response = requests.post(f"{url}/predict", files={"image": (None, png)}, timeout=30)
    assert_error(response, 400, "invalid_request", "plain form value, not a file upload")


def test_body_over_the_limit_is_413(url: str) -> None:
    data = bytes(MAX_UPLOAD_BYTES + 512 * 1024)
    response = requests.post(f"{url}/predict", files={"image": ("big.png", data)}, timeout=30)
    assert_error(
        response, 413, "request_entity_too_large", rf"over the limit of {MAX_UPLOAD_BYTES} bytes"
    )


def test_chunked_body_over_the_limit_is_413(url: str) -> None:
    """No Content-Length: gunicorn passes the chunked body on, werkzeug stops reading at the
    limit."""
    head = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(3 * MAX_UPLOAD_BYTES // 65536):
            yield bytes(65536)
        yield b"\r\n--b0undary--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    response = requests.post(f"{url}/predict", data=chunks(), headers=headers, timeout=30)
    assert "Content-Length" not in response.request.headers
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert_error(response, 413, "request_entity_too_large", rf"at most {MAX_UPLOAD_BYTES} bytes")


def test_chunked_body_under_the_limit_is_answered(url: str) -> None:
    png = encode(solid(GREEN), "PNG")
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        + png
        + b"\r\n--b0undary--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    response = requests.post(f"{url}/predict", data=iter([body]), headers=headers, timeout=30)
    assert_prediction(response, "green")


def test_form_value_over_the_form_memory_limit_is_413(url: str) -> None:
    """Flask holds multipart values that are not files in memory, up to MAX_FORM_MEMORY_SIZE."""
    files = {"image": (None, b"A" * 600_000)}
    response = requests.post(f"{url}/predict", files=files, timeout=30)
    assert_error(response, 413, "request_entity_too_large", "form value that is not a file")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=other", "good"),
        ("multipart/form-data", "good"),
        ("multipart/form-data; boundary=b0undary", "unterminated"),
        ("multipart/form-data; boundary=b0undary", "garbage"),
    ],
)
def test_broken_multipart_body(url: str, content_type: str, body: str) -> None:
    good = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        + encode(solid(RED), "PNG")
        + b"\r\n--b0undary--\r\n"
    )
    data = {"good": good, "unterminated": good[:-40], "garbage": b"\x00garbage\r\n" * 50}[body]
    response = requests.post(
        f"{url}/predict", data=data, headers={"Content-Type": content_type}, timeout=30
    )
    assert_error(response, 400, "invalid_request", "missing multipart field 'image'")


def test_broken_boundary_is_named(url: str) -> None:
    good = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nx\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=other"}
    response = requests.post(f"{url}/predict", data=good, headers=headers, timeout=30)
    assert_error(response, 400, "invalid_request", "check its boundary")


# --- the decoding path, property-based --------------------------------------------------------

CARD = ModelCard("hostile", "1", input_size=TINY_SIZE, num_labels=len(TINY_LABELS))
PIXEL_LIMIT = 1_000_000
"""Smaller than the service's, so a mutated header cannot make one example decode for long."""

MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xdb",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
]

SAVABLE_MODES = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "GIF": ("L", "P", "RGB", "RGBA"),
    "WEBP": ("L", "P", "RGB", "RGBA"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"),
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
}
FORMAT_MODES = [(fmt, mode) for fmt, modes in SAVABLE_MODES.items() for mode in modes]


def make_image(mode: str, size: tuple[int, int], seed: int, kind: str) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        if kind == "solid":
            pixels = np.full((height, width), rng.integers(0, 65536), dtype=np.uint16)
        else:
            pixels = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        return Image.fromarray(pixels)
    if kind == "solid":
        rgb = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    else:
        rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return rgb.convert(mode)


def check_input(array: np.ndarray, side: int = TINY_SIZE) -> None:
    assert array.shape == (side, side, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous


def decode_or_refuse(data: bytes, card: ModelCard = CARD) -> None:
    """The property: a valid model input, or ImageDecodeError with a message; nothing else."""
    try:
        array = image_to_input(data, card, max_pixels=PIXEL_LIMIT)
    except ImageDecodeError as exc:
        assert str(exc)
    else:
        check_input(array, card.input_size)


@PILLOW_WARNINGS_AS_IN_PRODUCTION
@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_are_refused(data: bytes) -> None:
    decode_or_refuse(data)


@PILLOW_WARNINGS_AS_IN_PRODUCTION
@settings(max_examples=1000, deadline=None)
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=1024))
def test_magic_numbers_then_arbitrary_bytes(magic: bytes, tail: bytes) -> None:
    decode_or_refuse(magic + tail)


@PILLOW_WARNINGS_AS_IN_PRODUCTION
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    format_mode=st.sampled_from(FORMAT_MODES),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["noise", "solid"]),
    side=st.sampled_from([1, TINY_SIZE, 33]),
    resize=st.sampled_from(RESIZE_RECIPES),
    crop_padding=st.integers(0, 1000),
    resample=st.sampled_from(RESAMPLE_FILTERS),
)
def test_real_images_always_decode_to_the_right_shape(
    format_mode: tuple[str, str],
    width: int,
    height: int,
    seed: int,
    kind: str,
    side: int,
    resize: str,
    crop_padding: int,
    resample: str,
) -> None:
    fmt, mode = format_mode
    data = encode(make_image(mode, (width, height), seed, kind), fmt)
    decoded = decode_image(data, max_pixels=PIXEL_LIMIT)
    assert decoded.mode == "RGB" and decoded.size == (width, height)
    card = ModelCard("m", "1", side, 4, resize=resize, crop_padding=crop_padding, resample=resample)
    check_input(image_to_input(data, card, max_pixels=PIXEL_LIMIT), side)


@functools.cache
def mutation_bases() -> tuple[bytes, ...]:
    """Small valid files of every format and several modes, to damage."""
    bases = [encode(make_image(mode, (24, 16), 3, "noise"), fmt) for fmt, mode in FORMAT_MODES]
    bases += [animated("GIF"), animated("WEBP"), animated("PNG"), exif_rotated_jpeg()]
    bases += [palette_with_transparency("PNG"), image_bytes((24, 16), fmt="WEBP", lossless=True)]
    return tuple(bases)


MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.floats(0.0, 1.0), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0.0, 1.0), st.integers(1, 16)),
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    for mutation in mutations:
        at = min(int(mutation[1] * len(out)), max(len(out) - 1, 0))
        if mutation[0] == "truncate":
            del out[at:]
        elif mutation[0] == "flip" and out:
            out[at] ^= mutation[2]
        elif mutation[0] == "insert":
            out[at:at] = mutation[2]
        elif mutation[0] == "delete":
            del out[at : at + mutation[2]]
    return bytes(out)


@PILLOW_WARNINGS_AS_IN_PRODUCTION
@settings(max_examples=1000, deadline=None)
@given(base=st.integers(0, 10_000), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_images_decode_or_are_refused(base: int, mutations: list[tuple[Any, ...]]) -> None:
    bases = mutation_bases()
    decode_or_refuse(mutate(bases[base % len(bases)], mutations))


def test_pillow_warnings_are_warnings_not_crashes() -> None:
    """What production sees: Pillow warns about a damaged TIFF, then the upload is refused."""
    data = noise("TIFF")[:50]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError, match="not an image"):
            decode_image(data, max_pixels=PIXEL_LIMIT)
    assert any(issubclass(w.category, UserWarning) for w in caught)


@pytest.mark.parametrize(
    "values",
    [
        np.full((6, 5), np.nan, dtype=np.float32),
        np.array([[np.inf, -np.inf, 1.0, -5.0, 0.0]], dtype=np.float32),
        np.linspace(-100, 50, 30, dtype=np.float32).reshape(6, 5),
        np.linspace(-(2**31), 2**31 - 1, 30).astype(np.int32).reshape(6, 5),
    ],
    ids=["float-nan", "float-inf-negative", "float-negative", "int32-negative"],
)
def test_float_and_signed_tiffs_scale_into_range(values: np.ndarray) -> None:
    """NaN, infinities and negatives become 0 (no out-of-range cast to uint8)."""
    rgb = np.asarray(decode_image(encode(Image.fromarray(values), "TIFF"), max_pixels=PIXEL_LIMIT))
    finite = np.nan_to_num(values.astype(np.float64), nan=0, posinf=0, neginf=0).clip(0, None)
    top = finite.max() or 1.0
    np.testing.assert_array_equal(rgb[..., 0], np.round(finite * 255.0 / top).astype(np.uint8))


# --- hostile messages straight onto the queue -------------------------------------------------


@dataclass(frozen=True)
class Message:
    name: str
    raw: bytes
    job_id: str | None
    """None: the message has no usable id, so nobody can be answered; it is only acknowledged."""
    code: str = ""
    words: str = ""


def new_id() -> str:
    return uuid.uuid4().hex


def valid_request(
    colour: tuple[int, int, int], job_id: str, model_card: ModelCard, **fields: Any
) -> dict[str, Any]:
    """A message as the web tier makes it for ``card``, with ``fields`` changed."""
    array = np.full((TINY_SIZE, TINY_SIZE, 3), colour, dtype=np.uint8)
    request = PredictRequest.from_array(
        job_id,
        array,
        top_k=4,
        deadline=time.time() + 30,
        model=model_card.name,
        version=model_card.version,
        card=model_card.fingerprint,
    )
    return json.loads(encode_request(request)) | fields  # type: ignore[no-any-return]


def as_raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def hostile_messages(card: ModelCard) -> list[Message]:
    out: list[Message] = []

    def add(name: str, code: str, words: str, **fields: Any) -> None:
        job_id = new_id()
        raw = as_raw(valid_request(RED, job_id, card, **fields))
        out.append(Message(name, raw, job_id, code, words))

    size = TINY_SIZE * TINY_SIZE * 3
    add("huge shape", "invalid_input", r"shape must be \[8, 8, 3\]", shape=[100_000, 100_000, 3])
    add("wrong rank", "invalid_input", "shape must be", shape=[TINY_SIZE, TINY_SIZE])
    add("four channels", "invalid_input", "shape must be", shape=[TINY_SIZE, TINY_SIZE, 4])
    add("float32", "invalid_input", "dtype must be uint8", dtype="float32")
    add("object dtype", "invalid_input", "dtype must be uint8", dtype="object")
    add("short data", "invalid_input", "base64 characters, expected", data="AAAA")
    add(
        "long data",
        "invalid_input",
        "base64 characters, expected",
        data=base64.b64encode(bytes(size * 50)).decode(),
    )
    add("bad base64", "invalid_input", "not valid base64", data="!" * (4 * ((size + 2) // 3)))
    add("huge top_k", "invalid_input", "top_k=1000000000000 exceeds", top_k=10**12)
    add("zero top_k", "invalid_message", "top_k must be an integer >= 1", top_k=0)
    add("string top_k", "invalid_message", "top_k must be an integer", top_k="5")
    add("negative shape", "invalid_message", "shape must be a list of positive", shape=[-8, 8, 3])
    add("shape of floats", "invalid_message", "shape must be a list", shape=[8.0, 8, 3])
    add("data not a string", "invalid_message", "data must be a str", data=[1, 2, 3])
    add("deadline a string", "invalid_message", "deadline must be a finite number", deadline="x")
    add("unknown version", "invalid_message", "unsupported message version 3", v=3)
    add("no version", "invalid_message", "unsupported message version None", v=None)
    add("another model", "wrong_model", "prepared for other version 1", model="other")
    add("another model version", "wrong_model", "prepared for tiny version 9", version="9")
    add("another model card", "wrong_model", "model card 'old-card'", card="old-card")
    job_id = new_id()
    without_data = {k: v for k, v in valid_request(RED, job_id, card).items() if k != "data"}
    out.append(
        Message(
            "missing data", as_raw(without_data), job_id, "invalid_message", "'data' is missing"
        )
    )
    out += [
        Message("json array", b"[1, 2, 3]", None),
        Message("json string", b'"hello"', None),
        Message("garbage bytes", b"\xff\xfe\x00\x81garbage\x00", None),
        Message("empty", b"", None),
        Message("id not uuid hex", as_raw(valid_request(RED, "../../etc/passwd", card)), None),
    ]
    return out


def push(queue: Queue, *raws: bytes) -> None:
    assert queue.push(list(raws), max_queue=10**9)


def result_of(queue: Queue, job_id: str, timeout_s: float = 10) -> Any:
    raw = queue.wait_result(job_id, timeout_s)
    assert raw is not None, f"no result for job {job_id} within {timeout_s}s"
    return decode_result(raw)


def test_hostile_queue_messages_get_error_results(live_service: LiveService) -> None:
    queue, registry = live_service.queue(), live_service.registry()
    card = registry.card()
    assert card is not None
    worker = live_service.workers[0]
    first, last = new_id(), new_id()
    messages = hostile_messages(card)
    push(
        queue,
        as_raw(valid_request(RED, first, card)),
        *(m.raw for m in messages),
        as_raw(valid_request(BLUE, last, card)),
    )
    for job_id, label in ((first, "red"), (last, "blue")):
        result = result_of(queue, job_id)
        assert result.ok and len(result.predictions) == 4, result
        assert result.predictions[0].label == label
    for message in messages:
        if message.job_id is None:
            continue
        result = result_of(queue, message.job_id)
        assert not result.ok, (message.name, result)
        assert result.error_code == message.code, (message.name, result)
        assert re.search(message.words, result.error_message), (message.name, result)
    name = worker.name  # type: ignore[attr-defined]
    wait_until(lambda: registry.held(name) == 0, 10, "the processing list to empty")
    assert queue.depth() == 0
    assert worker.poll() is None, live_service.logs()


def test_huge_shape_allocates_nothing(live_service: LiveService) -> None:
    """The shape is checked against the model card before anything is decoded."""
    queue, card = live_service.queue(), live_service.registry().card()
    assert card is not None
    worker = live_service.workers[0]
    warm = new_id()
    push(queue, as_raw(valid_request(GREEN, warm, card)))
    assert result_of(queue, warm).ok
    before = rss_bytes(worker.pid)
    shapes = [[100_000, 100_000, 3], [2**31 - 1, 2**31 - 1, 3], [10**18, 10**18, 3], [10**9]]
    ids = [new_id() for _ in shapes]
    push(
        queue,
        *(as_raw(valid_request(RED, i, card, shape=s)) for i, s in zip(ids, shapes, strict=True)),
    )
    for job_id in ids:
        result = result_of(queue, job_id)
        assert not result.ok and result.error_code == "invalid_input", result
        assert "shape must be [8, 8, 3]" in result.error_message
    growth = rss_bytes(worker.pid) - before
    assert growth < 50 * 1024 * 1024, f"worker RSS grew by {growth / 2**20:.1f} MiB"
    assert worker.poll() is None, live_service.logs()


def test_deeply_nested_json_is_answered_and_acknowledged(
    redis_url: str, tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # Its own worker: were items ever stuck, they would spoil the module's shared worker.
    service = LiveService(redis_url, tmp_path, *tiny_model_files)
    try:
        worker = service.start_worker()
        queue, registry = service.queue(), service.registry()
        card = registry.card()
        assert card is not None
        nested, first, last = new_id(), new_id(), new_id()
        poison = (
            b'{"v": 2, "id": "'
            + nested.encode()
            + b'", "x": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}"
        )
        push(
            queue,
            as_raw(valid_request(RED, first, card)),
            poison,
            as_raw(valid_request(BLUE, last, card)),
        )
        for job_id in (first, last):
            assert result_of(queue, job_id, timeout_s=3).ok
        name = worker.name  # type: ignore[attr-defined]
        wait_until(lambda: registry.held(name) == 0, 3, "the processing list to empty")
    finally:
        service.close()
        _delete_namespace(redis_url, service.namespace)

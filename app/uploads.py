"""Reading the images of a ``POST /predict`` request, in any of its accepted shapes.

- ``multipart/form-data`` with one or more file fields ``image``;
- ``application/json`` ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}``;
- ``top_k`` as a query parameter, a form field or a JSON field.

A single image (one ``image`` field, JSON ``image``) is answered with ``predictions``; several
(repeated fields, JSON ``images``) with ``results``, one entry per image, in order.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

import pybase64
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import InvalidRequestError

IMAGE_FIELD = "image"
IMAGES_FIELD = "images"


@dataclass(frozen=True)
class Uploads:
    images: list[bytes]
    many: bool
    """True when the client asked for a list of results (several fields, JSON ``images``)."""
    top_k: str | None
    """The raw ``top_k`` as sent, checked later against the model's number of classes."""


def read_uploads(request: Request, *, max_images: int) -> Uploads:
    """The request's images; :class:`InvalidRequestError` says what is wrong with its shape."""
    if request.mimetype == "application/json":
        uploads = _from_json(request)
    else:
        uploads = _from_multipart(request)
    if len(uploads.images) > max_images:
        raise InvalidRequestError(
            f"{len(uploads.images)} images in one request; at most {max_images} "
            "(QUEUENET_MAX_IMAGES_PER_REQUEST)"
        )
    return uploads


def _from_multipart(request: Request) -> Uploads:
    try:
        files = request.files.getlist(IMAGE_FIELD)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(too_large_message(request)) from None
    if not files:
        raise InvalidRequestError(missing_image_message(request))
    top_k = request.args.get("top_k")
    if top_k is None:
        top_k = request.form.get("top_k")
    return Uploads([f.read() for f in files], many=len(files) > 1, top_k=top_k)


def _from_json(request: Request) -> Uploads:
    try:
        body = request.get_json(force=True, silent=False)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(too_large_message(request)) from None
    except Exception:  # werkzeug raises BadRequest subclasses for undecodable JSON
        raise InvalidRequestError("the body is not valid JSON") from None
    if not isinstance(body, dict) or (IMAGE_FIELD in body) == (IMAGES_FIELD in body):
        raise InvalidRequestError(
            f"a JSON body must be an object with either '{IMAGE_FIELD}' (base64 of one image) "
            f"or '{IMAGES_FIELD}' (a list of base64 images)"
        )
    top_k = request.args.get("top_k")
    if top_k is None and "top_k" in body:
        value = body["top_k"]
        # JSON has one number type: 2.0 is the integer 2.
        top_k = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if IMAGE_FIELD in body:
        return Uploads([_base64(body[IMAGE_FIELD], IMAGE_FIELD)], many=False, top_k=top_k)
    items = body[IMAGES_FIELD]
    if not isinstance(items, list) or not items:
        raise InvalidRequestError(f"'{IMAGES_FIELD}' must be a non-empty list of base64 strings")
    images = [_base64(item, f"{IMAGES_FIELD}[{i}]") for i, item in enumerate(items)]
    return Uploads(images, many=True, top_k=top_k)


def _base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{where}' must be a base64 string")
    text = value
    if value.startswith("data:"):  # a data: URL: the base64 follows the first comma
        _, comma, text = value.partition(",")
        if not comma:
            raise InvalidRequestError(f"'{where}' is a data: URL without ',' before its data")
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"'{where}' is not valid base64") from None


def missing_image_message(request: Request) -> str:
    """Why no file field 'image' arrived, in terms of what the client actually sent."""
    usage = (
        f"send the image as a file in multipart field '{IMAGE_FIELD}' "
        f"(`curl -F {IMAGE_FIELD}=@photo.jpg`, multipart/form-data), or as JSON "
        f'{{"{IMAGE_FIELD}": "<base64>"}}'
    )
    if IMAGE_FIELD in request.form:
        return f"field '{IMAGE_FIELD}' arrived as a plain form value, not a file upload; {usage}"
    received = sorted(set(request.files) | set(request.form))
    if received:
        fields = ", ".join(_printable(name) for name in received[:10])
        if len(received) > 10:
            fields += f" and {len(received) - 10} more"
        return f"missing multipart field '{IMAGE_FIELD}'; received field(s): {fields}; {usage}"
    if request.mimetype != "multipart/form-data":
        got = f"Content-Type {request.mimetype!r}" if request.mimetype else "no Content-Type"
        return f"missing multipart field '{IMAGE_FIELD}': the body has {got}; {usage}"
    return (
        f"missing multipart field '{IMAGE_FIELD}': no field could be read from the "
        f"multipart body (check its boundary and framing); {usage}"
    )


def _printable(name: str) -> str:
    """A client-sent field name, shortened and with unprintable characters escaped."""
    shown = name if len(name) <= 40 else name[:40] + "…"
    return shown if shown.isprintable() else repr(shown)


def too_large_message(request: Request) -> str:
    limit = request.max_content_length
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        return f"the request body is {length} bytes, over the limit of {limit} bytes"
    # A chunked body (no Content-Length) over the limit, or a non-file form value over
    # Flask's MAX_FORM_MEMORY_SIZE.
    message = f"the request is too large: the body may hold at most {limit} bytes"
    form_limit = request.max_form_memory_size
    if form_limit is not None:
        message += f", and a form value that is not a file at most {form_limit} bytes"
    return message

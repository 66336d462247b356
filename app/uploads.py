"""Reading the images of a ``POST /predict`` request, in any of its accepted shapes.

- ``multipart/form-data`` with one or more file fields ``image``;
- ``application/json`` ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}``;
- ``top_k`` as a query parameter, a form field or a JSON field.

A single image (one ``image`` field, JSON ``image``) is answered with ``predictions``; several
(repeated fields, JSON ``images``) with ``results``, one entry per image, in order.
"""

from __future__ import annotations

import binascii
import io
from dataclasses import dataclass
from typing import Any

import pybase64
from flask import Request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from app.errors import InvalidRequestError
from app.multipart import parse_simple_form

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
    body = _read_body(request) if request.mimetype == "multipart/form-data" else None
    if body is not None:
        fast = _from_simple_multipart(request, body)
        if fast is not None:
            return fast
    try:
        form, files = _werkzeug_form(request, body)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(too_large_message(request)) from None
    images = files.getlist(IMAGE_FIELD)
    if not images:
        raise InvalidRequestError(missing_image_message(request, form, files))
    return _form_uploads(request, [f.read() for f in images], form.get("top_k"))


def _form_uploads(request: Request, images: list[bytes], form_top_k: str | None) -> Uploads:
    """The images of a form, with ``top_k`` from the query string or else the form."""
    top_k = request.args.get("top_k")
    return Uploads(images, many=len(images) > 1, top_k=form_top_k if top_k is None else top_k)


def _read_body(request: Request) -> bytes | None:
    """The whole body in one read when its length is known (never over MAX_CONTENT_LENGTH).

    One read of ``Content-Length`` bytes: reading in werkzeug's 64 KiB steps made gunicorn
    copy the rest of the body it had already received on every step. None for a chunked
    body, which werkzeug's parser then streams.
    """
    length = request.content_length
    if length is None:
        return None
    try:
        body: bytes = request.stream.read(length)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(too_large_message(request)) from None
    return body


def _from_simple_multipart(request: Request, body: bytes) -> Uploads | None:
    """The uploads of a plain multipart body with an ``image`` file; None leaves the body to
    werkzeug's parser (unusual framing, no image file: its verdict and our messages)."""
    form = parse_simple_form(
        body,
        request.mimetype_params.get("boundary", ""),
        max_parts=request.max_form_parts,
        max_field_bytes=request.max_form_memory_size,
    )
    if form is None or not form.files.get(IMAGE_FIELD):
        return None
    return _form_uploads(request, form.files[IMAGE_FIELD], form.fields.get("top_k", [None])[0])


def _werkzeug_form(
    request: Request, body: bytes | None
) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
    """werkzeug's form and files: parsed from ``body`` when it was read already (its files
    kept in memory too: no spool files), else streamed from the request (a chunked body)."""
    if body is None:
        return request.form, request.files
    parser = FormDataParser(
        stream_factory=_in_memory,
        max_form_memory_size=request.max_form_memory_size,
        max_content_length=request.max_content_length,
        max_form_parts=request.max_form_parts,
        cls=request.parameter_storage_class,
    )
    _, form, files = parser.parse(
        io.BytesIO(body), request.mimetype, len(body), request.mimetype_params
    )
    return form, files


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


def _in_memory(*_args: object, **_kwargs: object) -> io.BytesIO:
    return io.BytesIO()


def missing_image_message(
    request: Request, form: MultiDict[str, str], files: MultiDict[str, FileStorage]
) -> str:
    """Why no file field 'image' arrived, in terms of what the client actually sent."""
    usage = (
        f"send the image as a file in multipart field '{IMAGE_FIELD}' "
        f"(`curl -F {IMAGE_FIELD}=@photo.jpg`, multipart/form-data), or as JSON "
        f'{{"{IMAGE_FIELD}": "<base64>"}}'
    )
    if IMAGE_FIELD in form:
        return f"field '{IMAGE_FIELD}' arrived as a plain form value, not a file upload; {usage}"
    received = sorted(set(files) | set(form))
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

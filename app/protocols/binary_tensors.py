"""Triton's binary tensor data extension (part of the Open Inference Protocol's REST binding
as Triton, KServe and their clients speak it). Pure code: no I/O, no Flask.

A body is the JSON inference header followed by the raw bytes of the tensors whose
``parameters.binary_data_size`` says so, in the order they appear in the header; the
``Inference-Header-Content-Length`` HTTP header gives the JSON's length. A BYTES tensor's raw
form is its elements in row-major order, each a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The HTTP header that gives the JSON part's length in a body with binary tensors."""
BINARY_CONTENT_TYPE = "application/octet-stream"
"""The content type of a response that carries binary tensors (Triton's)."""

_LENGTH = struct.Struct("<I")


class BinaryTensorError(ValueError):
    """The binary part of a body does not hold what its header says; the message says why."""


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON header, the binary part) of a request body; without the header all of it is
    JSON."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length.strip())
    except ValueError:
        raise BinaryTensorError(
            f"{HEADER_LENGTH} must be a whole number of bytes, got {header_length[:40]!r}"
        ) from None
    if not 0 <= length <= len(body):
        raise BinaryTensorError(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return body[:length], body[length:]


def decode_bytes_elements(raw: bytes) -> list[bytes]:
    """The elements of a BYTES tensor in its binary form."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise BinaryTensorError(
                f"BYTES element {len(elements) + 1} has a truncated length prefix"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise BinaryTensorError(
                f"BYTES element {len(elements) + 1} claims {length} bytes, but only "
                f"{len(raw) - offset} follow"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def encode_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """A BYTES tensor's binary form: each element as its length (uint32 LE) and bytes."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)

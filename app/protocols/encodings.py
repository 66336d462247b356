"""Request bodies sent compressed (``Content-Encoding: gzip`` or ``deflate``, as tritonclient's
``request_compression_algorithm`` sends them). Pure code: no I/O, no Flask.

The decompressed body is bounded like any body (``QUEUENET_MAX_UPLOAD_BYTES``): a small
compressed body cannot expand into a large one (a decompression bomb)."""

from __future__ import annotations

import zlib

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib's window bits for each encoding: gzip's header, or zlib's (HTTP's "deflate")."""


class ContentEncodingError(ValueError):
    """An unknown encoding, or data that is not what its encoding says (a 400)."""


class DecodedTooLargeError(ValueError):
    """The body decompresses to more than the limit (a 413)."""


def decode_body(body: bytes, encoding: str | None, *, max_bytes: int) -> bytes:
    """``body`` decompressed by ``encoding`` (none or ``identity``: as it is)."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in _WBITS:
        raise ContentEncodingError(
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none"
        )
    decompressor = zlib.decompressobj(_WBITS[name])
    try:
        decoded = decompressor.decompress(body, max_bytes + 1)
    except zlib.error:
        raise ContentEncodingError(f"the body is not valid {name} data") from None
    if len(decoded) > max_bytes:
        raise DecodedTooLargeError(
            f"the {name} body decompresses to more than the limit of {max_bytes} bytes"
        )
    if not decompressor.eof:
        raise ContentEncodingError(f"the {name} body is truncated")
    return decoded

"""A fast path for the common ``multipart/form-data`` upload, parsed from the body in memory.

Werkzeug's streaming parser walks the body in 64 KiB pieces in Python and spools files over
500 KB to temporary files; for one photo that cost about 1 ms per request, a fifth of what the
service adds to the model (README, Performance). Here the whole body, already bounded by
``MAX_CONTENT_LENGTH``, is split with ``bytes.find``.

Only the plain, well-formed shape is handled: CRLF line ends, parts with a
``Content-Disposition: form-data`` header (and for files an optional ``Content-Type``), a
closing delimiter. Anything else returns ``None`` and the caller lets werkzeug parse the same
body, so unusual but valid bodies keep working and malformed ones get werkzeug's verdict and
our usual error messages. Field names and file names are read with werkzeug's own
``parse_options_header``, so both paths agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from werkzeug.http import parse_options_header

_ALLOWED_HEADERS = {"content-disposition", "content-type"}


@dataclass
class SimpleForm:
    """The parts of a body, by field name, in the order they came."""

    files: dict[str, list[bytes]] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)


def parse_simple_form(
    body: bytes, boundary: str, *, max_parts: int | None, max_field_bytes: int | None
) -> SimpleForm | None:
    """The files and text fields of ``body``, or None when werkzeug must parse it.

    ``max_parts`` and ``max_field_bytes`` are Flask's ``MAX_FORM_PARTS`` and
    ``MAX_FORM_MEMORY_SIZE``: a body over either is left to werkzeug, which refuses it.
    """
    if not boundary.isascii():
        return None
    separator = b"\r\n--" + boundary.encode("ascii")
    position = _first_part(body, separator)
    form = SimpleForm()
    parts = 0
    while position is not None:
        headers_end = body.find(b"\r\n\r\n", position)
        if headers_end < 0:
            return None
        content_start = headers_end + 4
        # The CRLF that ends the blank line may also open a delimiter: a content that starts
        # with the delimiter is one (werkzeug reads it so); such a body is declined.
        content_end = body.find(separator, headers_end + 2)
        if content_end < content_start:
            return None
        parts += 1
        if max_parts is not None and parts > max_parts:
            return None
        disposition = _disposition(body[position:headers_end])
        if disposition is None:
            return None
        name, filename = disposition
        if filename is not None:
            form.files.setdefault(name, []).append(body[content_start:content_end])
        elif max_field_bytes is not None and content_end - content_start > max_field_bytes:
            return None
        else:
            text = body[content_start:content_end].decode("utf-8", "replace")
            form.fields.setdefault(name, []).append(text)
        after = content_end + len(separator)
        ending = body[after : after + 2]
        if ending == b"--":
            return form  # the closing delimiter; whatever follows is the epilogue
        position = after + 2 if ending == b"\r\n" else None
    return None


def _first_part(body: bytes, separator: bytes) -> int | None:
    """Where the first part's headers start: after the first delimiter and its CRLF."""
    delimiter = separator[2:]
    if len(delimiter) <= 2:  # an empty boundary
        return None
    if body.startswith(delimiter):
        start = 0
    else:  # a preamble (often one empty line) before the first delimiter is ignored
        start = body.find(separator) + 2
        if start < 2:
            return None
    position = start + len(delimiter)
    return position + 2 if body[position : position + 2] == b"\r\n" else None


def _disposition(block: bytes) -> tuple[str, str | None] | None:
    """(field name, file name or None) from a part's headers; None if they are unusual."""
    name: str | None = None
    filename: str | None = None
    has_disposition = False
    has_type = False
    for line in block.split(b"\r\n"):
        if not line or line[:1] in (b" ", b"\t"):  # blank or folded header lines
            return None
        try:
            header, colon, value = line.decode("utf-8").partition(":")
        except UnicodeDecodeError:
            return None
        header = header.strip(" \t").lower()
        if not colon or header not in _ALLOWED_HEADERS:
            return None
        if header == "content-type":
            has_type = True
            continue
        if has_disposition:
            return None
        has_disposition = True
        kind, options = parse_options_header(value.strip(" \t"))
        if kind != "form-data" or not options.get("name"):
            return None
        name = options["name"]
        filename = options.get("filename")
    if name is None or (has_type and filename is None):
        return None  # a text field with its own Content-Type (charset): werkzeug decides
    return name, filename

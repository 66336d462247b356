"""The multipart fast path (app/multipart.py) against werkzeug's parser, which it stands in for.

For every body it either gives exactly what werkzeug gives, or declines (None) so that werkzeug
parses it. The bodies come from the encoders clients really use (urllib3/requests, werkzeug's
test client, the hand-built body of bench/load.py, as curl sends it) and from hypothesis,
including contents that hold the boundary and bodies cut short. The end of the file goes
through the Flask app: a body the fast path declines still gets the same answer.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata
from werkzeug.formparser import FormDataParser
from werkzeug.test import EnvironBuilder

from app.multipart import SimpleForm, parse_simple_form
from bench.photos import PHOTOS, multipart
from tests.test_api import post_image, solid_png
from worker.loop import Worker

MAX_PARTS = 1000
MAX_FIELD_BYTES = 500_000


def werkzeug_parse(body: bytes, boundary: str) -> SimpleForm:
    """What werkzeug makes of ``body``, in the fast path's shape."""
    parser = FormDataParser(max_form_memory_size=MAX_FIELD_BYTES, max_form_parts=MAX_PARTS)
    _, form, files = parser.parse(
        io.BytesIO(body), "multipart/form-data", len(body), {"boundary": boundary}
    )
    parsed = SimpleForm()
    for name, upload in files.items(multi=True):
        parsed.files.setdefault(name, []).append(upload.read())
        upload.close()
    for name, value in form.items(multi=True):
        parsed.fields.setdefault(name, []).append(value)
    return parsed


def fast_parse(body: bytes, boundary: str) -> SimpleForm | None:
    return parse_simple_form(body, boundary, max_parts=MAX_PARTS, max_field_bytes=MAX_FIELD_BYTES)


def urllib3_body(fields: list[tuple[str, Any]], boundary: str | None = None) -> tuple[bytes, str]:
    body, content_type = encode_multipart_formdata(fields, boundary=boundary)
    return body, content_type.split("boundary=", 1)[1]


# --- what clients send: taken by the fast path, same as werkzeug ------------------------------


def test_requests_urllib3_body() -> None:
    photo = PHOTOS[0].read_bytes()
    body, boundary = urllib3_body(
        [("image", ("a.png", photo, "image/png")), ("top_k", "3"), ("image", ("b.png", b"xy"))]
    )
    fast = fast_parse(body, boundary)
    assert fast is not None
    assert fast == werkzeug_parse(body, boundary)
    assert fast.files == {"image": [photo, b"xy"]} and fast.fields == {"top_k": ["3"]}


def test_werkzeug_test_client_body_with_a_leading_empty_line() -> None:
    builder = EnvironBuilder(
        method="POST", data={"image": (io.BytesIO(b"\r\n--data\r\n"), "x.png"), "top_k": "2"}
    )
    environ = builder.get_environ()
    body = environ["wsgi.input"].read()
    boundary = environ["CONTENT_TYPE"].split("boundary=", 1)[1].strip('"')
    assert body.startswith(b"\r\n--")  # werkzeug's encoder opens with an empty preamble
    fast = fast_parse(body, boundary)
    assert fast is not None
    assert fast == werkzeug_parse(body, boundary)
    assert fast.files == {"image": [b"\r\n--data\r\n"]}


def test_curl_shaped_body_of_the_load_generator() -> None:
    body, boundary = multipart(PHOTOS[1])
    fast = fast_parse(body, boundary)
    assert fast is not None
    assert fast.files == {"image": [PHOTOS[1].read_bytes()]}
    assert fast == werkzeug_parse(body, boundary)


def test_quoted_and_non_ascii_names_read_as_werkzeug_reads_them() -> None:
    body, boundary = urllib3_body([('we"ird näme', ("fïle \\ name.png", b"\x00\xff"))])
    fast = fast_parse(body, boundary)
    assert fast is not None
    assert fast == werkzeug_parse(body, boundary)


def test_an_empty_filename_is_still_a_file() -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename=""\r\n\r\nxyz\r\n--b--'
    fast = fast_parse(body, "b")
    assert fast is not None and fast.files == {"image": [b"xyz"]}
    assert fast == werkzeug_parse(body, "b")


# --- unusual shapes: declined, werkzeug decides -----------------------------------------------

PART = b'Content-Disposition: form-data; name="image"; filename="x.png"'


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"--b\n" + PART + b"\n\nxyz\n--b--\n", "LF line ends"),
        (b"--b\r\n" + PART + b"\r\n\r\nxyz\r\n--b", "no closing delimiter"),
        (b"--b\r\n" + PART + b"\r\n\r\nxyz", "cut off in the content"),
        (b"--b\r\n" + PART, "cut off in the headers"),
        (b"--b  \r\n" + PART + b"\r\n\r\nxyz\r\n--b--", "transport padding after a delimiter"),
        (b"--b\r\n" + PART + b"\r\n\r\nxyz\r\n--bc\r\n--b--", "the boundary inside the data"),
        (
            b"--b\r\nContent-Disposition: form-data;\r\n" + b' name="image"; filename="x"\r\n\r\n'
            b"xyz\r\n--b--",
            "a folded header",
        ),
        (
            b"--b\r\n" + PART + b"\r\nContent-Transfer-Encoding: base64\r\n\r\neHl6\r\n--b--",
            "a header other than Content-Disposition and Content-Type",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n'
            b"Content-Type: text/plain; charset=latin-1\r\n\r\n\xe9\r\n--b--",
            "a text field with its own charset",
        ),
        (
            b'--b\r\nContent-Disposition: attachment; name="image"; filename="x"\r\n\r\n'
            b"xyz\r\n--b--",
            "not form-data",
        ),
        (b'--b\r\nContent-Disposition: form-data; filename="x"\r\n\r\nxyz\r\n--b--', "no name"),
        (b"--b\r\nContent-Type: image/png\r\n\r\nxyz\r\n--b--", "no Content-Disposition"),
        (b"--b\r\n" + PART + b"\r\n" + PART + b"\r\n\r\nxyz\r\n--b--", "two dispositions"),
        (b"--b\r\n" + PART + b"\r\n\xff\xfe: x\r\n\r\nxyz\r\n--b--", "undecodable header"),
        (b"preamble without the delimiter", "no delimiter at all"),
        (b"", "empty body"),
    ],
)
def test_unusual_bodies_are_left_to_werkzeug(body: bytes, why: str) -> None:
    assert fast_parse(body, "b") is None, why


def test_a_boundary_that_is_not_ascii_is_left_to_werkzeug() -> None:
    assert fast_parse(b"--\xc3\xa9\r\n" + PART + b"\r\n\r\nx\r\n--\xc3\xa9--", "é") is None


def test_limits_leave_the_body_to_werkzeug_which_refuses_it() -> None:
    body, boundary = urllib3_body([("image", ("x.png", b"x"))] + [("f", "v")] * 5)
    assert parse_simple_form(body, boundary, max_parts=6, max_field_bytes=None) is not None
    assert parse_simple_form(body, boundary, max_parts=5, max_field_bytes=None) is None
    big, boundary = urllib3_body([("image", ("x.png", b"x" * 100)), ("top_k", "1" * 101)])
    assert parse_simple_form(big, boundary, max_parts=None, max_field_bytes=101) is not None
    assert parse_simple_form(big, boundary, max_parts=None, max_field_bytes=100) is None


# --- property: never a different answer from werkzeug's ---------------------------------------

names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1)
contents = st.binary(max_size=200) | st.sampled_from(
    [b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"--B0UND", b"\r\n--B0UND", b"\r\n--B0UNDx"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(names, st.one_of(st.none(), names), st.lists(contents, max_size=4)),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=0, max_value=400),
)
def test_fast_path_agrees_with_werkzeug_or_declines(
    parts: list[tuple[str, str | None, list[bytes]]], cut: int
) -> None:
    fields: list[tuple[str, Any]] = []
    for name, filename, pieces in parts:
        data = b"".join(pieces)
        if filename is None:
            fields.append((name, data.decode("utf-8", "replace")))
        else:
            fields.append((name, (filename, data, "application/octet-stream")))
    body, boundary = urllib3_body(fields, boundary="B0UND")
    for candidate in (body, body[: len(body) - cut]):  # whole, and cut short
        fast = fast_parse(candidate, boundary)
        if fast is None:
            continue
        assert fast == werkzeug_parse(candidate, boundary)


# --- through the app ---------------------------------------------------------------------------


def test_a_body_the_fast_path_declines_gets_the_same_answer(
    client: FlaskClient, running_worker: Worker
) -> None:
    png = solid_png((250, 10, 10))
    plain = post_image(client, png)
    assert plain.status_code == 200, plain.get_data(as_text=True)
    body = (
        b'--b\nContent-Disposition: form-data; name="image"; filename="x.png"\n\n'
        + png
        + b'\n--b\nContent-Disposition: form-data; name="top_k"\n\n4\n--b--\n'
    )
    assert fast_parse(body, "b") is None  # LF line ends: werkzeug's parser reads it
    declined = client.post("/predict", data=body, content_type="multipart/form-data; boundary=b")
    assert declined.status_code == 200, declined.get_data(as_text=True)
    assert declined.get_json()["predictions"] == plain.get_json()["predictions"]


def test_a_form_field_over_the_form_memory_limit_is_still_413(
    client: FlaskClient, running_worker: Worker
) -> None:
    png = solid_png((10, 250, 10))
    limit = client.application.config["MAX_FORM_MEMORY_SIZE"]
    body, boundary = urllib3_body(
        [("image", ("x.png", png, "image/png")), ("top_k", "1" * (limit + 1))]
    )
    response = client.post(
        "/predict", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 413, response.get_data(as_text=True)
    assert "form value" in response.get_json()["error"]["message"]

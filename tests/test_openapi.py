"""``GET /openapi.json``: a valid OpenAPI document that names every route, and that a live
service (real gunicorn, real worker with the tiny model) obeys under schemathesis: no 5xx,
and every status code, content type, header and body as documented."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.auth import EXEMPT_PATHS
from app.openapi import EXAMPLE_PNG_BASE64, openapi_document
from app.settings import AppSettings
from tests.live import LiveService

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
API_KEY = "k" * 24
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def routes(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every URL rule but Flask's static files."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        found |= {(m, path) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    return found


def png(colour: tuple[int, int, int], size: tuple[int, int] = (12, 9)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def image_fields(*files: bytes) -> dict[str, Any]:
    """A multipart body: one file field ``image`` per file."""
    return {"image": list(files)}


# --- the document ----------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [(), (API_KEY,)])
def test_document_is_valid_openapi(keys: tuple[str, ...]) -> None:
    document = openapi_document(AppSettings(api_keys=keys))
    validate(document)  # raises OpenAPIValidationError with the path of the first problem
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document)  # and schemathesis reads it


def test_every_route_is_documented_and_nothing_else(app: Flask) -> None:
    served = routes(app)
    documented = operations(openapi_document(app.extensions["queuenet.settings"]))
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented operations that no route serves"
    assert ("GET", "/openapi.json") in served


def test_served_document_is_the_built_one(app: Flask) -> None:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == openapi_document(app.extensions["queuenet.settings"])


def test_settings_appear_in_the_document() -> None:
    settings = AppSettings(max_upload_bytes=123_456, max_images_per_request=7, default_top_k=3)
    document = openapi_document(settings)
    body = document["paths"]["/predict"]["post"]["requestBody"]
    assert "123456 bytes" in body["description"]
    images = document["components"]["schemas"]["PredictJSONRequest"]["oneOf"][1]
    assert images["properties"]["images"]["maxItems"] == 7
    assert body["content"]["multipart/form-data"]["schema"]["properties"]["image"]["maxItems"] == 7
    assert document["components"]["schemas"]["TopK"]["default"] == 3
    assert [server["url"] for server in document["servers"]] == ["/"]  # relative


@pytest.mark.parametrize("keys", [(), (API_KEY,)])
def test_security_follows_the_key_setting_and_the_exempt_paths(keys: tuple[str, ...]) -> None:
    document = openapi_document(AppSettings(api_keys=keys))
    assert ({} in document["security"]) is not bool(keys)  # optional only without keys
    for path, item in document["paths"].items():
        for operation in item.values():
            if path in EXEMPT_PATHS:
                assert operation["security"] == [] and "401" not in operation["responses"]
            else:
                assert "security" not in operation and "401" in operation["responses"]


# --- a live service under schemathesis -------------------------------------------------------


@pytest.fixture(scope="module")
def live_service(
    redis_url: str, tiny_model_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """One worker with the tiny 4-class model (8x8 input) for the whole module."""
    service = LiveService(redis_url, tmp_path_factory.mktemp("openapi-live"), *tiny_model_files)
    try:
        service.start_worker()
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def live_url(live_service: LiveService) -> str:
    """gunicorn with the default settings (no API keys)."""
    return live_service.start_web()


@pytest.fixture(scope="module")
def keyed_url(live_service: LiveService) -> str:
    """gunicorn with ``QUEUENET_API_KEYS`` set, on the same queue and worker."""
    return live_service.start_web(QUEUENET_API_KEYS=API_KEY)


@pytest.fixture(scope="module")
def live_schema(live_url: str) -> schemathesis.BaseSchema:
    """The document as the live service serves it."""
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json", timeout=10)


def test_documented_examples_are_answered_200(live_schema: schemathesis.BaseSchema) -> None:
    """The request examples (real PNGs, base64) get real predictions, as documented."""
    operation = live_schema["/predict"]["POST"]
    media = operation.definition.raw["requestBody"]["content"]["application/json"]
    bodies = {name: example["value"] for name, example in media["examples"].items()}
    single = operation.Case(body=bodies["one"], media_type="application/json")
    response = single.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions[0]["label"] == "red" and len(predictions) == 2
    several = operation.Case(body=bodies["several"], media_type="application/json")
    response = several.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200, response.text
    assert [r["predictions"][0]["label"] for r in response.json()["results"]] == ["red", "red"]
    assert EXAMPLE_PNG_BASE64 in bodies["one"]["image"]


def test_multipart_upload_and_partial_failure_match_the_document(
    live_schema: schemathesis.BaseSchema,
) -> None:
    operation = live_schema["/predict"]["POST"]
    one = operation.Case(
        body=image_fields(png((5, 240, 5))), query={"top_k": 1}, media_type="multipart/form-data"
    )
    response = one.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "green"
    mixed = operation.Case(
        body=image_fields(png((5, 5, 240)), b"not an image"), media_type="multipart/form-data"
    )
    response = mixed.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["success"] is True and second["error"]["code"] == "invalid_image"


@pytest.mark.parametrize("body", [{"image": "data:"}, {"images": ["data:image/png;base64"]}])
def test_data_url_without_a_comma_is_a_documented_400(
    live_schema: schemathesis.BaseSchema, body: dict[str, Any]
) -> None:
    case = live_schema["/predict"]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 400, response.text


def test_protocol_examples_are_answered_200(live_schema: schemathesis.BaseSchema) -> None:
    """The Open Inference Protocol's and TF Serving's documented examples (the same red PNG)
    get real answers, as documented."""

    def example(path: str) -> Any:
        media = live_schema[path]["POST"].definition.raw["requestBody"]["content"][
            "application/json"
        ]
        (value,) = (e["value"] for e in media["examples"].values())
        return value

    for path in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        case = live_schema[path]["POST"].Case(
            path_parameters={"model": "tiny", "version": "1"},
            body=example(path),
            media_type="application/json",
        )
        response = case.call_and_validate(checks=CHECKS, timeout=30)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert (output["datatype"], output["shape"]) == ("BYTES", [1, 2])
        assert output["data"][0].endswith(":0:red") and response.json()["id"] == "example-1"
    predict = live_schema["/v1/models/{model}:predict"]["POST"].Case(
        path_parameters={"model": "tiny"},
        body=example("/v1/models/{model}:predict"),
        media_type="application/json",
    )
    response = predict.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]) == 4
    classify = live_schema["/v1/models/{model}:classify"]["POST"].Case(
        path_parameters={"model": "tiny"},
        body=example("/v1/models/{model}:classify"),
        media_type="application/json",
    )
    response = classify.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200 and response.json()["result"][0][0][0] == "red"


def test_binary_tensor_request_and_answer_match_the_document(
    live_schema: schemathesis.BaseSchema,
) -> None:
    """Triton's binary tensor extension: a JSON header, then the image; the answer is binary
    too (application/octet-stream with Inference-Header-Content-Length), as documented."""
    image = png((240, 5, 5))
    raw = len(image).to_bytes(4, "little") + image
    header = (
        '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], '
        f'"parameters": {{"binary_data_size": {len(raw)}}}}}], '
        '"parameters": {"binary_data_output": true}}'
    ).encode()
    case = live_schema["/v2/models/{model}/infer"]["POST"].Case(
        path_parameters={"model": "tiny"},
        body=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
        media_type="application/octet-stream",
    )
    response = case.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200, response.text
    headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in response.headers.items()}
    assert headers["content-type"] == "application/octet-stream"
    length = int(headers["inference-header-content-length"])
    assert len(response.content) == length + 4 * 4  # FP32 [1, 4]


# Loaded at import so schemathesis can make one test per operation: schemathesis 4.32's
# fixture-based loader (`schemathesis.pytest.from_fixture`) fails on pytest 9.2 (it sets
# `Node._nodeid`, which pytest 9.2 no longer has). The live service has the default settings,
# so it serves this same document (test_live_service_serves_the_tested_document).
LIVE_SETTINGS = AppSettings()
schema = schemathesis.openapi.from_dict(openapi_document(LIVE_SETTINGS))


def test_live_service_serves_the_tested_document(live_schema: schemathesis.BaseSchema) -> None:
    assert live_schema.raw_schema == schema.raw_schema


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_live_service_matches_the_document(case: schemathesis.Case[Any], live_url: str) -> None:
    case.call_and_validate(base_url=live_url, checks=CHECKS, timeout=30)


# --- with API keys: the 401s as documented ---------------------------------------------------


keyed = schemathesis.openapi.from_dict(openapi_document(AppSettings(api_keys=(API_KEY,))))


@keyed.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_keyed_service_without_a_key_matches_the_document(
    case: schemathesis.Case[Any], keyed_url: str
) -> None:
    """No key, or a made-up one: 401 + WWW-Authenticate on every path but the open ones."""
    response = case.call_and_validate(base_url=keyed_url, checks=CHECKS, timeout=30)
    if case.path not in EXEMPT_PATHS:
        assert response.status_code == 401, response.text


def test_keyed_service_serves_the_keyed_document(keyed_url: str) -> None:
    document = keyed.raw_schema
    anonymous = requests.get(f"{keyed_url}/openapi.json", timeout=10)
    assert anonymous.status_code == (200 if "/openapi.json" in EXEMPT_PATHS else 401)
    served = requests.get(f"{keyed_url}/openapi.json", headers={"X-API-Key": API_KEY}, timeout=10)
    assert served.status_code == 200 and served.json() == document

"""The Open Inference Protocol (KServe V2, with Triton's binary tensor, classification and
timeout extensions) and TF Serving's REST API, through the Flask app with a real Redis and a
real worker (the tiny colour model, in a thread): routes, bodies, errors in each protocol's
shape with /predict's statuses, deadlines, metrics and logs. The protocols' own client
libraries are driven against live processes in tests/test_protocol_clients.py."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app import create_app
from app.settings import AppSettings
from protocol.routing import ModelDirectory
from tests.conftest import TINY_LABELS
from worker.loop import Worker
from worker.registry import LoadedModel

COLOURS = {"red": (250, 5, 5), "green": (5, 250, 5), "blue": (5, 5, 250)}
HEADER = "Inference-Header-Content-Length"
API_KEY = "p" * 24


def png(colour: str, size: tuple[int, int] = (30, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_json(*colours: str, **extra: Any) -> dict[str, Any]:
    """A V2 request with the images as base64 in JSON, as MLServer marks them."""
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(colours)],
                "parameters": {"content_type": "base64"},
                "data": [b64(png(c)) for c in colours],
            }
        ],
        **extra,
    }


def bytes_tensor(*elements: bytes) -> bytes:
    """A BYTES tensor's binary form, written here independently of the app's codec."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def v2_binary(
    *colours: str, outputs: list[dict[str, Any]] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A request with the images as binary tensor data, as tritonclient sends it."""
    raw = bytes_tensor(*(png(c) for c in colours))
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(colours)],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    if outputs is None:
        header["parameters"] = {"binary_data_output": True}
    else:
        header["outputs"] = outputs
    text = json.dumps(header).encode()
    return text + raw, {HEADER: str(len(text)), "Content-Type": "application/octet-stream"}


def split_response(response) -> tuple[dict[str, Any], bytes]:
    body = response.get_data()
    length = int(response.headers[HEADER])
    return json.loads(body[:length]), body[length:]


@pytest.fixture
def worker(running_worker: Worker) -> Worker:
    return running_worker


# --- KServe V2: health, metadata, readiness --------------------------------------------------


def test_v2_health_server_and_model_metadata(client: FlaskClient, worker: Worker) -> None:
    assert client.get("/v2/health/live").get_json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.get_json() == {"ready": True}
    server = client.get("/v2").get_json()
    assert server["name"] == "queuenet"
    assert set(server["extensions"]) == {"binary_tensor_data", "classification", "schedule_policy"}
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
        meta = client.get(path).get_json()
        assert meta["name"] == "tiny" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(TINY_LABELS)]}
        ]
    for path in ("/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
        response = client.get(path)
        assert response.status_code == 200 and response.get_json()["ready"] is True


def test_v2_not_ready_is_503_with_a_reason_and_unknown_models_404(
    client: FlaskClient, tiny_model: LoadedModel, publish_card: Callable[..., None]
) -> None:
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
    assert "no model is served yet" in ready.get_json()["error"]
    publish_card(tiny_model.card)  # a card, but no live worker
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and "no worker of tiny version 1" in ready.get_json()["error"]
    model = client.get("/v2/models/tiny/ready")
    assert model.status_code == 503 and model.get_json()["ready"] is False
    assert "no live worker" in model.get_json()["error"]
    assert client.get("/v2/health/live").status_code == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/tiny/versions/9/ready"):
        missing = client.get(path)
        assert missing.status_code == 404, path
        assert set(missing.get_json()) == {"error"} and "tiny" in missing.get_json()["error"]


# --- KServe V2: inference --------------------------------------------------------------------


def test_v2_infer_json_base64_batch_answers_fp32_probabilities(
    client: FlaskClient, worker: Worker
) -> None:
    response = client.post("/v2/models/tiny/infer", json=v2_json("red", "blue", id="req-7"))
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/json" and HEADER not in response.headers
    body = response.get_json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("tiny", "1", "req-7")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "probabilities",
        "FP32",
        [2, 4],
    )
    table = np.array(output["data"], dtype=np.float32).reshape(2, 4)
    assert [TINY_LABELS[i] for i in table.argmax(axis=1)] == ["red", "blue"]
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-5)
    # The same probabilities as /predict gives for the same image, every class.
    predicted = client.post(
        "/predict", data={"image": (io.BytesIO(png("red")), "r.png"), "top_k": "4"}
    ).get_json()["predictions"]
    for p in predicted:
        assert table[0, p["index"]] == pytest.approx(p["probability"], abs=1e-6)
    assert response.headers["X-Model-Version"] == "1"


def test_v2_infer_binary_tensors_in_and_out(client: FlaskClient, worker: Worker) -> None:
    body, headers = v2_binary("green", "red", "blue")
    response = client.post("/v2/models/tiny/versions/1/infer", data=body, headers=headers)
    assert response.status_code == 200, response.get_data()
    assert response.mimetype == "application/octet-stream"
    header, raw = split_response(response)
    (output,) = header["outputs"]
    assert output["shape"] == [3, 4] and output["parameters"] == {"binary_data_size": 48}
    assert "data" not in output and len(raw) == 48
    table = np.frombuffer(raw, dtype="<f4").reshape(3, 4)
    assert [TINY_LABELS[i] for i in table.argmax(axis=1)] == ["green", "red", "blue"]


@pytest.mark.parametrize("binary", [False, True])
def test_v2_classification_extension_answers_score_index_label(
    client: FlaskClient, worker: Worker, binary: bool
) -> None:
    outputs = [
        {"name": "probabilities", "parameters": {"classification": 2, "binary_data": binary}}
    ]
    body, headers = v2_binary("blue", "green", outputs=outputs)
    response = client.post("/v2/models/tiny/infer", data=body, headers=headers)
    assert response.status_code == 200, response.get_data()
    if binary:
        header, raw = split_response(response)
        strings, offset = [], 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            strings.append(raw[offset + 4 : offset + 4 + length].decode())
            offset += 4 + length
    else:
        header = response.get_json()
        strings = header["outputs"][0]["data"]
    output = header["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 2])
    assert len(strings) == 4
    score, index, label = strings[0].split(":")
    assert (index, label) == ("2", "blue") and 0.5 < float(score) <= 1.0
    assert len(score.split(".")[1]) == 6  # printed as Triton prints it, %f
    assert strings[2].split(":")[1:] == ["1", "green"]
    assert float(strings[0].split(":")[0]) >= float(strings[1].split(":")[0])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (v2_json("red") | {"inputs": []}, "list of one tensor"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]},
         "unexpected input 'x'"),
        ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
         "must be BYTES"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["*"]}]},
         "not valid base64"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                      "data": [b64(png("red"))]}]}, "holds 1 image"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]},
         "not an image"),
        (v2_json("red", outputs=[{"name": "logits"}]), "unknown output 'logits'"),
        (v2_json("red", outputs=[{"name": "probabilities", "parameters": {"classification": 9}}]),
         "has 4"),
        (v2_json("red", parameters={"timeout": -1}), "parameters.timeout"),
        (v2_json("red", id=5), "'id' must be a string"),
        ([1, 2], "must be a JSON object"),
    ],
)  # fmt: skip
def test_v2_bad_requests_are_400_with_the_reason(
    client: FlaskClient, worker: Worker, body: Any, words: str
) -> None:
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 400, response.get_data()
    error = response.get_json()
    assert set(error) == {"error"} and words in error["error"], error


def test_v2_binary_framing_errors_are_400(client: FlaskClient, worker: Worker) -> None:
    body, headers = v2_binary("red")
    for header, payload in [("x", body), (str(len(body) + 1), body), (headers[HEADER], body[:-3])]:
        response = client.post(
            "/v2/models/tiny/infer", data=payload, headers=headers | {HEADER: header}
        )
        assert response.status_code == 400 and "error" in response.get_json(), header
    not_json = client.post("/v2/models/tiny/infer", data=b"{nope")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.get_json()["error"]


def test_v2_limits_and_routing_errors_take_the_protocols_shape(
    app_settings: AppSettings, worker: Worker
) -> None:
    settings = AppSettings(
        redis=app_settings.redis, max_images_per_request=2, max_upload_bytes=64 * 1024
    )
    client = create_app(settings).test_client()
    too_many = client.post("/v2/models/tiny/infer", json=v2_json("red", "red", "red"))
    assert too_many.status_code == 400
    assert "at most 2 (QUEUENET_MAX_IMAGES_PER_REQUEST)" in too_many.get_json()["error"]
    too_big = client.post("/v2/models/tiny/infer", data=b"x" * (65 * 1024))
    assert too_big.status_code == 413 and set(too_big.get_json()) == {"error"}
    assert "over the limit of 65536 bytes" in too_big.get_json()["error"]
    unknown = client.post("/v2/models/nope/infer", json=v2_json("red"))
    assert unknown.status_code == 404 and "there is no model 'nope'" in unknown.get_json()["error"]
    assert client.get("/v2/nowhere").get_json() == {
        "error": client.get("/v2/nowhere").get_json()["error"]
    }
    wrong_method = client.get("/v2/models/tiny/infer")
    assert wrong_method.status_code == 405 and set(wrong_method.get_json()) == {"error"}
    assert "POST" in wrong_method.headers["Allow"]
    # /predict keeps its own shape.
    assert client.get("/nowhere").get_json()["success"] is False


def test_v2_timeout_parameter_shortens_the_deadline(
    client: FlaskClient, tiny_model: LoadedModel, publish_card: Callable[..., None]
) -> None:
    """No worker: the request waits until its deadline. Triton's ``timeout`` (microseconds)
    of 0.3 s ends it long before QUEUENET_PREDICT_TIMEOUT_S (5 s here): a 504."""
    publish_card(tiny_model.card)
    started = time.monotonic()
    response = client.post(
        "/v2/models/tiny/infer", json=v2_json("red", parameters={"timeout": 300_000})
    )
    elapsed_s = time.monotonic() - started
    assert response.status_code == 504 and "no prediction within" in response.get_json()["error"]
    assert elapsed_s < 3.0, elapsed_s  # the server's own deadline would take 5 s


def test_v2_model_without_a_card_is_503_with_retry_after(
    client: FlaskClient, directory: ModelDirectory
) -> None:
    directory.announce("tiny", "1")  # a version is known, but its model card is not there
    response = client.post("/v2/models/tiny/infer", json=v2_json("red"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert set(response.get_json()) == {"error"}


# --- TF Serving ------------------------------------------------------------------------------


def test_tfserving_status_and_metadata(
    client: FlaskClient, worker: Worker, tiny_model_v2: LoadedModel, publish_card
) -> None:
    publish_card(tiny_model_v2.card)  # version 2: a card, no worker
    body = client.get("/v1/models/tiny").get_json()
    states = {s["version"]: s for s in body["model_version_status"]}
    assert states["1"] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    assert (
        states["2"]["state"] == "END" and "no live worker" in states["2"]["status"]["error_message"]
    )
    one = client.get("/v1/models/tiny/versions/1").get_json()["model_version_status"]
    assert [s["version"] for s in one] == ["1"]
    meta = client.get("/v1/models/tiny/metadata").get_json()
    assert meta["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image"]["dtype"] == "DT_STRING"
    dims = signature["outputs"]["probabilities"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "4"]
    assert (
        client.get("/v1/models/tiny/versions/2/metadata").get_json()["model_spec"]["version"] == "2"
    )


def test_tfserving_predict_rows_and_columns(client: FlaskClient, worker: Worker) -> None:
    rows = client.post(
        "/v1/models/tiny:predict",
        json={"instances": [{"b64": b64(png("green"))}, {"image": {"b64": b64(png("red"))}}]},
    )
    assert rows.status_code == 200, rows.get_json()
    predictions = np.array(rows.get_json()["predictions"])
    assert predictions.shape == (2, 4)
    assert [TINY_LABELS[i] for i in predictions.argmax(axis=1)] == ["green", "red"]
    columns = client.post(
        "/v1/models/tiny/versions/1:predict",
        json={
            "signature_name": "serving_default",
            "inputs": {"image": [{"b64": b64(png("blue"))}]},
        },
    )
    assert columns.status_code == 200, columns.get_json()
    assert TINY_LABELS[int(np.argmax(columns.get_json()["outputs"][0]))] == "blue"


def test_tfserving_classify_answers_labels_and_scores(client: FlaskClient, worker: Worker) -> None:
    response = client.post(
        "/v1/models/tiny:classify",
        json={"examples": [{"image": {"b64": b64(png("blue"))}}, {}],
              "context": {"image": {"b64": b64(png("red"))}}},
    )  # fmt: skip
    assert response.status_code == 200, response.get_json()
    blue, red = response.get_json()["result"]
    assert len(blue) == 4  # QUEUENET_DEFAULT_TOP_K (5), capped at the 4 classes
    assert blue[0][0] == "blue" and red[0][0] == "red"
    assert blue[0][1] >= blue[1][1] > 0


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/models/tiny:predict", {"instances": []}, 400, "non-empty list"),
        ("/v1/models/tiny:predict", {"instances": ["aGk="]}, 400, '{"b64": "<base64>"}'),
        ("/v1/models/tiny:predict", {"instances": [{"b64": "*"}]}, 400, "not valid base64"),
        ("/v1/models/tiny:predict", {"instances": [{"b64": "aGk="}]}, 400, "not an image"),
        ("/v1/models/tiny:predict", {"instances": [{"b64": "aGk="}], "signature_name": "x"},
         400, "unknown signature_name"),
        ("/v1/models/tiny:classify", {"examples": [{"img": {"b64": "aGk="}}]}, 400,
         "no feature 'image'"),
        ("/v1/models/nope:predict", {"instances": [{"b64": "aGk="}]}, 404, "no model 'nope'"),
        ("/v1/models/tiny/versions/3:classify", {"examples": [{"image": {"b64": "aGk="}}]}, 404,
         "no version '3'"),
        # No :regress here: the path reads as GET /v1/models/{m} ("tiny:regress"), hence 405.
        ("/v1/models/tiny:regress", {"examples": []}, 405, "not allowed"),
    ],
)  # fmt: skip
def test_tfserving_errors_are_error_objects(
    client: FlaskClient, worker: Worker, path: str, body: Any, status: int, words: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.get_data()
    error = response.get_json()
    assert set(error) == {"error"} and words in error["error"].lower() + error["error"], error


# --- shared with /predict: API keys, metrics, logs -------------------------------------------


def test_api_keys_guard_inference_but_not_the_v2_health_probes(
    app_settings: AppSettings, worker: Worker
) -> None:
    keyed = create_app(AppSettings(redis=app_settings.redis, api_keys=(API_KEY,))).test_client()
    assert keyed.get("/v2/health/live").status_code == 200
    assert keyed.get("/v2/health/ready").status_code == 200
    for method, path in [("POST", "/v2/models/tiny/infer"), ("GET", "/v2"),
                         ("GET", "/v2/models/tiny"), ("POST", "/v1/models/tiny:predict"),
                         ("GET", "/v1/models/tiny")]:  # fmt: skip
        refused = keyed.open(path, method=method, json=v2_json("red"))
        assert refused.status_code == 401, path
        assert set(refused.get_json()) == {"error"} and "API key" in refused.get_json()["error"]
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    allowed = keyed.post(
        "/v2/models/tiny/infer", json=v2_json("red"), headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert allowed.status_code == 200


def test_metrics_and_the_log_line_name_the_protocol(
    client: FlaskClient, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app"):
        assert client.post("/v2/models/tiny/infer", json=v2_json("red")).status_code == 200
        assert (
            client.post(
                "/v1/models/tiny:predict", json={"instances": [{"b64": b64(png("red"))}]}
            ).status_code
            == 200
        )
        client.post("/predict", data={"image": (io.BytesIO(png("red")), "r.png")})
        client.post("/v1/models/tiny:predict", json={"instances": [{"b64": "aGk="}]})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert any(
        line.startswith("request POST /v2/models/tiny/infer status=200")
        and line.endswith("protocol=kserve-v2")
        and "job_id=" in line
        for line in lines
    ), lines
    assert any(line.endswith("protocol=tfserving") for line in lines), lines
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'queuenet_http_requests_total{code="ok",endpoint="/v2/models/<model>/infer",'
        'protocol="kserve-v2",status="200"}' in text
    )
    assert 'code="invalid_image",endpoint="/v1/models/<model>:predict",protocol="tfserving"' in text
    assert 'endpoint="/predict",protocol="queuenet",status="200"' in text
    assert (
        'queuenet_predict_duration_seconds_count{model="tiny",protocol="kserve-v2",'
        'status="200",version="1"}' in text
    )


def test_every_protocol_route_is_registered(app: Flask) -> None:
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert {
        "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/<model>",
        "/v2/models/<model>/versions/<version>", "/v2/models/<model>/ready",
        "/v2/models/<model>/versions/<version>/ready", "/v2/models/<model>/infer",
        "/v2/models/<model>/versions/<version>/infer", "/v1/models/<model>",
        "/v1/models/<model>/versions/<version>", "/v1/models/<model>/metadata",
        "/v1/models/<model>/versions/<version>/metadata", "/v1/models/<model>:predict",
        "/v1/models/<model>/versions/<version>:predict", "/v1/models/<model>:classify",
        "/v1/models/<model>/versions/<version>:classify",
    } <= rules  # fmt: skip


def test_compressed_bodies_are_read_within_the_upload_limit(
    app_settings: AppSettings, worker: Worker
) -> None:
    """tritonclient's request_compression_algorithm: gzip or deflate bodies; one that would
    decompress past QUEUENET_MAX_UPLOAD_BYTES is a 413, however small it travels."""
    import gzip
    import zlib

    settings = AppSettings(redis=app_settings.redis, max_upload_bytes=256 * 1024)
    client = create_app(settings).test_client()
    body, headers = v2_binary("blue")
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        response = client.post(
            "/v2/models/tiny/infer", data=packed, headers=headers | {"Content-Encoding": encoding}
        )
        assert response.status_code == 200, (encoding, response.get_data())
        _, raw = split_response(response)
        assert TINY_LABELS[int(np.argmax(np.frombuffer(raw, dtype="<f4")))] == "blue"
    tf = client.post(
        "/v1/models/tiny:predict",
        data=gzip.compress(json.dumps({"instances": [{"b64": b64(png("red"))}]}).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert tf.status_code == 200 and np.argmax(tf.get_json()["predictions"][0]) == 0
    bomb = gzip.compress(b"{" + b" " * (1024 * 1024))  # 1 MiB of JSON in ~1 KiB
    response = client.post("/v2/models/tiny/infer", data=bomb, headers={"Content-Encoding": "gzip"})
    assert (
        response.status_code == 413 and "decompresses to more than" in response.get_json()["error"]
    )
    for encoding, data in (("br", b"x"), ("gzip", b"not gzip"), ("gzip", gzip.compress(body)[:-9])):
        response = client.post(
            "/v2/models/tiny/infer", data=data, headers={"Content-Encoding": encoding}
        )
        assert response.status_code == 400, (encoding, response.get_data())

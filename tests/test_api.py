"""The HTTP API through the Flask test client, with a real Redis and a real (tiny) model."""

from __future__ import annotations

import io

import pytest
from flask.testing import FlaskClient

from app import create_app
from app.settings import AppSettings
from protocol.queue import Queue
from protocol.settings import RedisSettings
from tests.helpers import free_port, image_bytes, wait_until
from worker.loop import Worker


def post_image(client: FlaskClient, data: bytes, field: str = "image", query: str = ""):
    return client.post(
        f"/predict{query}",
        data={field: (io.BytesIO(data), "photo.png")},
        content_type="multipart/form-data",
    )


def solid_png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    for word in words:
        assert word in body["error"]["message"]


def test_predict_answers_top5_highest_first(client: FlaskClient, running_worker: Worker) -> None:
    response = post_image(client, solid_png((250, 10, 10)))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is True
    predictions = body["predictions"]
    assert len(predictions) == 4  # top 5, capped at the model's 4 classes
    assert predictions[0]["label"] == "red" and predictions[0]["index"] == 0
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_top_k_query(client: FlaskClient, running_worker: Worker) -> None:
    response = post_image(client, solid_png((10, 10, 250)), query="?top_k=2")
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert [p["label"] for p in predictions][:1] == ["blue"]
    assert len(predictions) == 2


@pytest.mark.parametrize("value", ["0", "5", "-1", "two", "1.5", ""])
def test_top_k_out_of_range_is_400(client: FlaskClient, running_worker: Worker, value: str) -> None:
    response = post_image(client, solid_png((1, 2, 3)), query=f"?top_k={value}")
    assert_error(response, 400, "invalid_request", "top_k", "1 to 4")


def test_missing_field_names_the_field(client: FlaskClient, running_worker: Worker) -> None:
    response = post_image(client, solid_png((1, 2, 3)), field="file")
    assert_error(response, 400, "invalid_request", "'image'", "file")


def test_no_body_at_all(client: FlaskClient, running_worker: Worker) -> None:
    assert_error(client.post("/predict"), 400, "invalid_request", "'image'")


def test_not_an_image(client: FlaskClient, running_worker: Worker) -> None:
    response = post_image(client, b"hello, I am text, not a picture\n" * 10)
    assert_error(response, 400, "invalid_image", "field 'image'", "not an image")


def test_empty_file(client: FlaskClient, running_worker: Worker) -> None:
    assert_error(post_image(client, b""), 400, "invalid_image", "empty")


def test_truncated_png(client: FlaskClient, running_worker: Worker) -> None:
    data = image_bytes((200, 200))
    assert_error(post_image(client, data[: len(data) // 2]), 400, "invalid_image", "truncated")


def test_several_image_fields_get_results_in_order(
    client: FlaskClient, running_worker: Worker
) -> None:
    colours = [(250, 5, 5), (5, 250, 5), (5, 5, 250)]
    response = client.post(
        "/predict?top_k=1",
        data={"image": [(io.BytesIO(solid_png(c)), f"{i}.png") for i, c in enumerate(colours)]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert [r["predictions"][0]["label"] for r in results] == ["red", "green", "blue"]
    assert all(len(r["predictions"]) == 1 for r in results)
    assert len(response.headers["X-Request-ID"].split(",")) == 3


def test_json_single_image(client: FlaskClient, running_worker: Worker) -> None:
    import base64

    image = base64.b64encode(solid_png((5, 250, 5))).decode()
    response = client.post("/predict", json={"image": image, "top_k": 2})
    assert response.status_code == 200, response.get_data(as_text=True)
    predictions = response.get_json()["predictions"]
    assert predictions[0]["label"] == "green" and len(predictions) == 2


def test_json_images_with_a_data_url_and_a_bad_one(
    client: FlaskClient, running_worker: Worker
) -> None:
    import base64

    good = base64.b64encode(solid_png((5, 5, 250))).decode()
    response = client.post(
        "/predict?top_k=3",
        json={"images": [f"data:image/png;base64,{good}", base64.b64encode(b"txt").decode()]},
    )
    assert response.status_code == 200
    first, second = response.get_json()["results"]
    assert first["predictions"][0]["label"] == "blue" and len(first["predictions"]) == 3
    assert second == {
        "success": False,
        "error": {"code": "invalid_image", "status": 400, "message": second["error"]["message"]},
    }
    assert second["error"]["message"].startswith("image 2: ")


def test_multi_image_request_is_queued_whole_or_not_at_all(
    redis_settings: RedisSettings, running_worker: Worker, queue: Queue
) -> None:
    client = create_app(AppSettings(redis=redis_settings, max_queue=2)).test_client()
    running_worker.request_stop()  # nothing drains the queue now
    wait_until(lambda: running_worker.registry.live_workers() == [], 10, "the worker to stop")
    png = solid_png((1, 2, 3))
    response = client.post(
        "/predict", data={"image": [(io.BytesIO(png), f"{i}.png") for i in range(3)]}
    )
    assert_error(response, 503, "queue_full", "queue of tiny version 1 is full")
    assert queue.depth() == 0


def test_body_over_limit_is_413(client: FlaskClient, app_settings: AppSettings) -> None:
    # A hand-built multipart body: the test client would spool a big upload to a temp file.
    big = b"\0" * (app_settings.max_upload_bytes + 1)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        + big
        + b"\r\n--b--\r\n"
    )
    response = client.post("/predict", data=body, content_type="multipart/form-data; boundary=b")
    assert_error(response, 413, "request_entity_too_large")


def test_pixel_limit(redis_settings: RedisSettings, running_worker: Worker) -> None:
    settings = AppSettings(redis=redis_settings, max_image_pixels=1000)
    client = create_app(settings).test_client()
    response = post_image(client, image_bytes((50, 50)))
    assert_error(response, 400, "invalid_image", "2500 pixels", "limit of 1000")


def test_no_model_yet_is_503(client: FlaskClient) -> None:
    response = post_image(client, solid_png((1, 2, 3)))
    assert_error(response, 503, "model_unavailable", "no model is served yet")
    assert response.headers["Retry-After"] == "1"


def test_no_model_card_is_503(client: FlaskClient, directory) -> None:
    directory.announce("tiny", "1")  # a version is known, but its card is gone (Redis lost it)
    response = post_image(client, solid_png((1, 2, 3)))
    assert_error(response, 503, "model_unavailable", "no model card")
    assert response.headers["Retry-After"] == "1"


def test_no_worker_answers_504_within_deadline(
    redis_settings: RedisSettings, tiny_model, publish_card
) -> None:
    import time

    publish_card(tiny_model.card)
    client = create_app(AppSettings(redis=redis_settings, predict_timeout_s=0.5)).test_client()
    started = time.monotonic()
    response = post_image(client, solid_png((1, 2, 3)))
    elapsed_s = time.monotonic() - started
    assert_error(response, 504, "prediction_timeout", "deadline")
    # At the request's own 0.5 s deadline: far below the 10 s default a lost deadline would
    # wait; the 2 s of margin holds on a busy machine.
    assert 0.4 <= elapsed_s < 0.5 + 2.0


def test_redis_unreachable_is_503_fast() -> None:
    import time

    dead = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", namespace="nothing")
    client = create_app(AppSettings(redis=dead)).test_client()
    started = time.monotonic()
    response = post_image(client, solid_png((1, 2, 3)))
    assert_error(response, 503, "queue_unavailable", "unreachable")
    # Fails fast: a refused connection answers at once. 3 s is margin for a busy machine, far
    # below the 10 s predict timeout that waiting on a dead Redis would reach.
    assert time.monotonic() - started < 3.0


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")


def test_wrong_method_is_json_405(client: FlaskClient) -> None:
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}

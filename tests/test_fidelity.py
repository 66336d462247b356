"""Serving does not change the model's answers: on every test photo, the array the web tier
queues equals the reference preprocessing byte for byte, and the probabilities served over
HTTP equal an in-process prediction on those bytes."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient

from app.settings import AppSettings
from protocol.keys import Keys
from protocol.messages import decode_request
from protocol.queue import Queue
from protocol.settings import RedisSettings
from tests.reference import photo_paths, reference_input
from worker.batching import decode_array
from worker.registry import LoadedModel

pytestmark = pytest.mark.e2e

PHOTOS = [p.name for p in photo_paths(Path(__file__).parent / "data")]


@pytest.fixture
def app_settings(redis_settings: RedisSettings) -> AppSettings:
    """No worker answers here: each POST ends in a 504 after this short deadline."""
    return AppSettings(redis=redis_settings, predict_timeout_s=1.0)


def queued_input(client: FlaskClient, queue: Queue, data: bytes) -> np.ndarray:
    """POST ``data`` with no worker running and take the queued message off the queue."""
    answered: list[int] = []

    def post() -> None:
        # JSON, not multipart: werkzeug's test client spools a multipart body over 500 KB to
        # a temporary file that it never closes (a ResourceWarning).
        body = {"image": base64.b64encode(data).decode()}
        answered.append(client.post("/predict", json=body).status_code)

    poster = threading.Thread(target=post)
    poster.start()
    claimed: list[bytes] = []
    for _ in range(200):
        claimed = queue.block_claim("inspector", 1, block_timeout_s=0.05, batch_wait_s=0.0)
        if claimed or not poster.is_alive():
            break
    poster.join(timeout=30)
    assert len(claimed) == 1, f"nothing was queued; the POST answered {answered}"
    assert answered == [504]
    request = decode_request(claimed[0])
    return decode_array(request, tuple(request.shape))


@pytest.mark.parametrize("photo", PHOTOS)
def test_queued_input_is_the_reference_preprocessing(
    photo: str,
    client: FlaskClient,
    rclient: redis.Redis,
    keys: Keys,
    publish_card,
    lite0: LoadedModel,
    data_dir: Path,
) -> None:
    publish_card(lite0.card)
    queue = Queue(rclient, keys.version(lite0.card.name, lite0.card.version))
    data = (data_dir / photo).read_bytes()
    served = queued_input(client, queue, data)
    expected = reference_input(data, lite0.card.input_size)
    assert served.shape == expected.shape == (224, 224, 3)
    assert served.tobytes() == expected.tobytes()

"""Message encode/decode: round trips and every way a message can be malformed."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from protocol.errors import MessageDecodeError
from protocol.messages import (
    ModelCard,
    Prediction,
    PredictRequest,
    PredictResult,
    decode_model_card,
    decode_request,
    decode_result,
    encode_model_card,
    encode_request,
    encode_result,
    peek_job_id,
)

JOB = uuid.uuid4().hex


def valid_request() -> dict[str, object]:
    array = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    request = PredictRequest.from_array(
        JOB, array, top_k=5, deadline=1795000000.25, model="m", version="1", card="m-card"
    )
    return dict(json.loads(encode_request(request)))


def test_request_round_trip_keeps_the_array() -> None:
    array = np.random.default_rng(1).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    request = PredictRequest.from_array(
        JOB, array[:, ::-1], top_k=3, deadline=123.5, model="lite0", version="7", card="c"
    )
    decoded = decode_request(encode_request(request))
    assert decoded == request
    assert (decoded.model, decoded.version, decoded.card) == ("lite0", "7", "c")
    assert decoded.shape == (4, 3, 3) and decoded.dtype == "uint8"
    import base64

    restored = np.frombuffer(base64.b64decode(decoded.data), np.uint8).reshape(decoded.shape)
    np.testing.assert_array_equal(restored, array[:, ::-1])  # made C-contiguous first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 1}, "version"),
        ({"id": "not-hex"}, "uuid4"),
        ({"shape": [2, -2, 3]}, "shape"),
        ({"shape": "224x224"}, "shape"),
        ({"shape": [2, True, 3]}, "shape"),
        ({"dtype": 8}, "dtype"),
        ({"data": None}, "data"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": "5"}, "top_k"),
        ({"deadline": "soon"}, "deadline"),
        ({"attempts": -1}, "attempts"),
        ({"model": 3}, "model"),
        ({"version": None}, "version"),
        ({"card": []}, "card"),
    ],
)
def test_request_field_errors_say_which_field(change: dict[str, object], message: str) -> None:
    body = valid_request() | change
    with pytest.raises(MessageDecodeError, match=message):
        decode_request(json.dumps(body).encode())


def test_missing_field_is_named() -> None:
    body = valid_request()
    del body["deadline"]
    with pytest.raises(MessageDecodeError, match="'deadline' is missing"):
        decode_request(json.dumps(body))


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", b"[1,2]", b"null", b"{not json"])
def test_non_objects_are_refused(raw: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode_request(raw)


def test_peek_job_id() -> None:
    assert peek_job_id(json.dumps({"id": JOB, "shape": "junk"})) == JOB
    assert peek_job_id(b"junk") is None
    assert peek_job_id(json.dumps({"id": "../../etc"})) is None


def test_result_round_trip() -> None:
    ok = PredictResult(
        id=JOB,
        ok=True,
        predictions=(Prediction("tabby", 0.5, 281), Prediction("tiger cat", 0.25, 282)),
        batch_id="b1",
        worker="w1",
        model="efficientnet-lite0",
        version="2",
    )
    assert decode_result(encode_result(ok)) == ok
    failed = PredictResult.failure(JOB, "invalid_input", "bad shape", batch_id="b", worker="w")
    assert decode_result(encode_result(failed)) == failed


def test_malformed_result_is_refused() -> None:
    with pytest.raises(MessageDecodeError, match="malformed"):
        decode_result(json.dumps({"v": 2, "id": JOB, "ok": True, "predictions": [{"label": 1}]}))


def test_model_card_round_trip_and_range_checks() -> None:
    card = ModelCard("m", "1", input_size=224, num_labels=1000, crop_padding=32)
    assert decode_model_card(encode_model_card(card)) == card
    good = json.loads(encode_model_card(card))
    assert good["recipe"] == {"resize": "center-crop", "crop_padding": 32, "resample": "bicubic"}
    for wrong in ({"resize": "squash"}, {"resample": "box"}, {"crop_padding": -1}):
        bad = good | {"recipe": good["recipe"] | wrong}
        with pytest.raises(MessageDecodeError, match="out of range"):
            decode_model_card(json.dumps(bad))
    with pytest.raises(MessageDecodeError, match="malformed"):
        decode_model_card(json.dumps({k: v for k, v in good.items() if k != "recipe"}))

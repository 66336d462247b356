"""Each claimed item's fate (worker/plan.py), as a table: a message, and what must happen to it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pytest

from protocol.messages import (
    ModelCard,
    PredictRequest,
    decode_request,
    decode_result,
    encode_request,
)
from worker.plan import Context, after_failure, after_prediction, plan_batch

CARD = ModelCard("tiny", "1", input_size=4, num_labels=3, fingerprint="tiny-card-1")
NOW = 1_000_000.0
CTX = Context(card=CARD, labels=("a", "b", "c"), max_attempts=3, now=NOW, batch_id="b", worker="w")


def message(**change: Any) -> bytes:
    array = np.full((4, 4, 3), 7, dtype=np.uint8)
    request = PredictRequest.from_array(
        uuid.uuid4().hex,
        array,
        top_k=2,
        deadline=NOW + 10,
        model="tiny",
        version="1",
        card="tiny-card-1",
    )
    return json.dumps(json.loads(encode_request(request)) | change).encode()


# fate: "predict", "expired", or (error code, words, dead-lettered?)
FATES: list[tuple[str, dict[str, Any], Any]] = [
    ("a valid message", {}, "predict"),
    ("the deadline passed", {"deadline": NOW - 1}, "expired"),
    ("on its last allowed attempt", {"attempts": 2}, "predict"),
    ("attempts used up", {"attempts": 3}, ("prediction_failed", "max_attempts=3", True)),
    ("another model", {"model": "other"}, ("wrong_model", "prepared for other version 1", False)),
    ("another version", {"version": "2"}, ("wrong_model", "serves tiny version 1", False)),
    ("another card", {"card": "tiny-card-0"}, ("wrong_model", "model card 'tiny-card-0'", False)),
    ("wrong shape", {"shape": [5, 4, 3]}, ("invalid_input", "shape must be [4, 4, 3]", False)),
    ("huge shape", {"shape": [100000, 100000, 3]}, ("invalid_input", "shape must be", False)),
    ("wrong dtype", {"dtype": "float32"}, ("invalid_input", "dtype must be uint8", False)),
    ("short data", {"data": "AAAA"}, ("invalid_input", "base64 characters", False)),
    ("not base64", {"data": "!" * 64}, ("invalid_input", "not valid base64", False)),
    ("top_k over the classes", {"top_k": 4}, ("invalid_input", "exceeds the model's 3", False)),
    ("unknown message version", {"v": 9}, ("invalid_message", "version", False)),
    ("no model field", {"model": None}, ("invalid_message", "model must be a str", False)),
]


@pytest.mark.parametrize(("case", "change", "fate"), FATES, ids=[f[0] for f in FATES])
def test_each_message_gets_its_fate(case: str, change: dict[str, Any], fate: Any) -> None:
    raw = message(**change)
    good = message()
    plan = plan_batch([raw, good], CTX)
    assert plan.predict[-1].raw == good  # a bad item never takes its batch-mates down
    if fate == "predict":
        assert [item.raw for item in plan.predict] == [raw, good] and plan.answers == []
        return
    assert [item.raw for item in plan.predict] == [good]
    (answer,) = plan.answers
    assert answer.raw == raw and answer.retry == b""
    if fate == "expired":
        assert answer.payload == b"" and plan.outcomes == {"expired": 1}
        return
    code, words, dead = fate
    result = decode_result(answer.payload)
    assert not result.ok and result.error_code == code and words in result.error_message
    assert (result.batch_id, result.worker, result.model, result.version) == ("b", "w", "tiny", "1")
    assert answer.dead is dead
    assert plan.outcomes == {"dead" if dead else "failed": 1}


def test_garbage_without_an_id_is_only_acknowledged() -> None:
    plan = plan_batch([b"\x00garbage"], CTX)
    (answer,) = plan.answers
    assert answer.raw == b"\x00garbage" and answer.job_id is None and answer.payload == b""
    assert plan.outcomes == {"failed": 1}


def test_predicted_rows_are_ranked_and_a_non_finite_row_is_retried() -> None:
    items = plan_batch([message(), message(attempts=1)], CTX).predict
    rows = np.array([[0.1, 0.7, 0.2], [np.nan, 0.5, 0.5]], dtype=np.float32)
    plan = after_prediction(items, rows, CTX)
    first, second = plan.answers
    result = decode_result(first.payload)
    assert result.ok and [p.index for p in result.predictions] == [1, 2]  # top_k=2
    assert (result.model, result.version) == ("tiny", "1")
    assert second.payload == b"" and decode_request(second.retry).attempts == 2
    assert plan.outcomes == {"predicted": 1, "retried": 1}


@pytest.mark.parametrize(("attempts", "outcome"), [(0, "retried"), (1, "retried"), (2, "dead")])
def test_a_model_failure_is_retried_until_the_last_attempt(attempts: int, outcome: str) -> None:
    (item,) = plan_batch([message(attempts=attempts)], CTX).predict
    plan = after_failure(item, "boom", CTX)
    (answer,) = plan.answers
    assert plan.outcomes == {outcome: 1}
    if outcome == "retried":
        assert answer.payload == b"" and not answer.dead
        assert decode_request(answer.retry).attempts == attempts + 1
    else:
        result = decode_result(answer.payload)
        assert answer.dead and result.error_code == "prediction_failed"
        assert "3 times; last error: boom" in result.error_message

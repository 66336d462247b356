"""Pure batch logic: triage of claimed messages and top-k ranking."""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np
import pytest

from protocol.messages import ModelCard, PredictRequest, encode_request
from worker.batching import decode_array, stack, top_k, triage

CARD = ModelCard("tiny", "1", input_size=4, num_labels=3)
NOW = 1_000_000.0
META = {"batch_id": "b", "worker": "w"}


def message(**change: object) -> bytes:
    array = np.full((4, 4, 3), 7, dtype=np.uint8)
    request = PredictRequest.from_array(uuid.uuid4().hex, array, top_k=2, deadline=NOW + 10)
    return json.dumps(json.loads(encode_request(request)) | change).encode()


def test_valid_items_are_ready_with_their_arrays() -> None:
    sorted_items = triage([message(), message()], card=CARD, now=NOW, max_attempts=3, meta=META)
    assert len(sorted_items.ready) == 2
    batch = stack(sorted_items.ready)
    assert batch.shape == (2, 4, 4, 3) and batch.dtype == np.uint8 and int(batch.max()) == 7


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"shape": [5, 4, 3]}, "invalid_input", "shape must be [4, 4, 3]"),
        ({"shape": [100000, 100000, 3]}, "invalid_input", "shape must be"),
        ({"dtype": "float32"}, "invalid_input", "dtype must be uint8"),
        ({"data": "AAAA"}, "invalid_input", "base64 characters"),
        ({"data": "!" * 64}, "invalid_input", "not valid base64"),
        ({"top_k": 4}, "invalid_input", "exceeds the model's 3 classes"),
        ({"v": 9}, "invalid_message", "version"),
    ],
)
def test_bad_items_get_their_own_error(change: dict[str, object], code: str, words: str) -> None:
    good = message()
    sorted_items = triage([message(**change), good], card=CARD, now=NOW, max_attempts=3, meta=META)
    assert [item.raw for item in sorted_items.ready] == [good]
    [(_, result)] = sorted_items.failed
    assert result.ok is False and result.error_code == code and words in result.error_message
    assert result.batch_id == "b" and result.worker == "w"


def test_garbage_gets_an_error_without_an_id() -> None:
    sorted_items = triage([b"\x00garbage"], card=CARD, now=NOW, max_attempts=3, meta=META)
    [(raw, result)] = sorted_items.failed
    assert raw == b"\x00garbage" and result.id == "" and result.error_code == "invalid_message"


def test_expired_items_are_dropped() -> None:
    sorted_items = triage(
        [message(deadline=NOW - 1)], card=CARD, now=NOW, max_attempts=3, meta=META
    )
    assert len(sorted_items.expired) == 1 and not sorted_items.ready


def test_items_past_max_attempts_are_dead() -> None:
    sorted_items = triage([message(attempts=3)], card=CARD, now=NOW, max_attempts=3, meta=META)
    [(_, result)] = sorted_items.dead
    assert result.error_code == "prediction_failed" and "max_attempts=3" in result.error_message
    assert (
        len(triage([message(attempts=2)], card=CARD, now=NOW, max_attempts=3, meta=META).ready) == 1
    )


@pytest.mark.parametrize(
    ("nbytes", "words"), [(40, "56 base64 characters, expected 64"), (47, "47 bytes, expected 48")]
)
def test_decode_array_checks_sizes(nbytes: int, words: str) -> None:
    data = base64.b64encode(b"x" * nbytes).decode()
    request = PredictRequest("a" * 32, (4, 4, 3), "uint8", data, 1, 0)
    with pytest.raises(ValueError, match=words):
        decode_array(request, (4, 4, 3))


@pytest.mark.parametrize(
    ("row", "k", "order"),
    [
        ([0.1, 0.7, 0.2], 3, [1, 2, 0]),
        ([0.1, 0.7, 0.2], 1, [1]),
        ([0.25, 0.25, 0.5], 3, [2, 0, 1]),  # ties: lower index first
        ([0.3, 0.3, 0.3], 2, [0, 1]),
    ],
)
def test_top_k(row: list[float], k: int, order: list[int]) -> None:
    ranked = top_k(np.array(row, dtype=np.float32), k, ("a", "b", "c"))
    assert [p.index for p in ranked] == order
    assert [p.label for p in ranked] == ["abc"[i] for i in order]
    assert all(isinstance(p.probability, float) for p in ranked)

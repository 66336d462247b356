"""Pure batch helpers: checking a message's array before decoding it, and top-k ranking."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from protocol.messages import PredictRequest
from worker.batching import decode_array, top_k


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

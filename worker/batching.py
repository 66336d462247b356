"""Pure helpers of a batch: decode a message's array after checking its size, stack the
arrays, rank an output row. No I/O. (Which item goes where is :mod:`worker.plan`'s.)"""

from __future__ import annotations

import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pybase64

from protocol import error_codes as codes
from protocol.messages import ModelCard, Prediction, PredictRequest


class ItemError(ValueError):
    """A claimed message that cannot be predicted; ``code`` goes back to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Item:
    """A claimed message that passed every check, with its decoded array."""

    raw: bytes
    request: PredictRequest
    array: np.ndarray


def expected_shape(card: ModelCard) -> tuple[int, int, int]:
    return (card.input_size, card.input_size, 3)


def decode_array(request: PredictRequest, shape: tuple[int, ...]) -> np.ndarray:
    """The request's array, after checking shape, dtype and size *before* decoding anything."""
    if request.dtype != "uint8":
        raise ItemError(codes.INVALID_INPUT, f"dtype must be uint8, got {request.dtype!r}")
    if tuple(request.shape) != shape:
        raise ItemError(
            codes.INVALID_INPUT,
            f"shape must be {list(shape)} for this model, got {list(request.shape)}",
        )
    nbytes = math.prod(shape)
    b64_chars = 4 * math.ceil(nbytes / 3)
    if len(request.data) != b64_chars:
        raise ItemError(
            codes.INVALID_INPUT,
            f"data holds {len(request.data)} base64 characters, expected {b64_chars}",
        )
    try:
        buffer = pybase64.b64decode(request.data, validate=True)
    except (binascii.Error, ValueError):
        raise ItemError(codes.INVALID_INPUT, "data is not valid base64") from None
    if len(buffer) != nbytes:
        raise ItemError(
            codes.INVALID_INPUT, f"data decodes to {len(buffer)} bytes, expected {nbytes}"
        )
    return np.frombuffer(buffer, dtype=np.uint8).reshape(shape)


def stack(items: Sequence[Item]) -> np.ndarray:
    """One ``uint8`` ``[N, H, W, 3]`` batch from the items' arrays."""
    return np.stack([item.array for item in items])


def top_k(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> tuple[Prediction, ...]:
    """The ``k`` most probable classes of one output row, highest first."""
    k = min(k, probabilities.shape[0])
    # argpartition is O(n); sort only the k winners. Ties break by lower index, stably.
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    order = candidates[np.lexsort((candidates, -probabilities[candidates]))]
    return tuple(
        Prediction(label=labels[i], probability=float(probabilities[i]), index=int(i))
        for i in order
    )

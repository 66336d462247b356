"""Pure batch logic: check and decode claimed messages, stack them, rank the outputs. No I/O.

Every claimed item ends in exactly one of: predicted, answered with an error (malformed,
wrong shape), dropped (deadline passed) or dead-lettered (too many attempts).
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pybase64

from protocol.errors import MessageDecodeError
from protocol.messages import (
    ModelCard,
    Prediction,
    PredictRequest,
    PredictResult,
    decode_request,
    peek_job_id,
)


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


@dataclass
class Triage:
    """A claimed batch sorted by what happens to each item."""

    ready: list[Item] = field(default_factory=list)
    failed: list[tuple[bytes, PredictResult]] = field(default_factory=list)
    """Items answered at once with an error result."""
    expired: list[bytes] = field(default_factory=list)
    """Items whose deadline passed: acknowledged without computing or answering."""
    dead: list[tuple[bytes, PredictResult]] = field(default_factory=list)
    """Items that exhausted ``max_attempts``: error result and the dead-letter list."""


def expected_shape(card: ModelCard) -> tuple[int, int, int]:
    return (card.input_size, card.input_size, 3)


def decode_array(request: PredictRequest, shape: tuple[int, ...]) -> np.ndarray:
    """The request's array, after checking shape, dtype and size *before* decoding anything."""
    if request.dtype != "uint8":
        raise ItemError("invalid_input", f"dtype must be uint8, got {request.dtype!r}")
    if tuple(request.shape) != shape:
        raise ItemError(
            "invalid_input",
            f"shape must be {list(shape)} for this model, got {list(request.shape)}",
        )
    nbytes = math.prod(shape)
    b64_chars = 4 * math.ceil(nbytes / 3)
    if len(request.data) != b64_chars:
        raise ItemError(
            "invalid_input",
            f"data holds {len(request.data)} base64 characters, expected {b64_chars}",
        )
    try:
        buffer = pybase64.b64decode(request.data, validate=True)
    except (binascii.Error, ValueError):
        raise ItemError("invalid_input", "data is not valid base64") from None
    if len(buffer) != nbytes:
        raise ItemError("invalid_input", f"data decodes to {len(buffer)} bytes, expected {nbytes}")
    return np.frombuffer(buffer, dtype=np.uint8).reshape(shape)


def triage(
    raw_items: Sequence[bytes],
    *,
    card: ModelCard,
    now: float,
    max_attempts: int,
    meta: dict[str, str],
) -> Triage:
    """Sort claimed messages into ready, failed, expired and dead."""
    out = Triage()
    shape = expected_shape(card)
    for raw in raw_items:
        try:
            request = decode_request(raw)
        except MessageDecodeError as exc:
            job_id = peek_job_id(raw) or ""
            out.failed.append(
                (raw, PredictResult.failure(job_id, "invalid_message", str(exc), **meta))
            )
            continue
        if request.deadline < now:
            out.expired.append(raw)
            continue
        if request.attempts >= max_attempts:
            message = (
                f"job {request.id} failed {request.attempts} times (its worker died or the "
                f"model raised); giving up after max_attempts={max_attempts}"
            )
            out.dead.append(
                (raw, PredictResult.failure(request.id, "prediction_failed", message, **meta))
            )
            continue
        if request.top_k > card.num_labels:
            message = f"top_k={request.top_k} exceeds the model's {card.num_labels} classes"
            out.failed.append(
                (raw, PredictResult.failure(request.id, "invalid_input", message, **meta))
            )
            continue
        try:
            out.ready.append(Item(raw, request, decode_array(request, shape)))
        except ItemError as exc:
            out.failed.append(
                (raw, PredictResult.failure(request.id, exc.code, exc.message, **meta))
            )
    return out


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

"""Each claimed item's fate, decided in one place. Pure code: no I/O, no model, no clock.

Every claimed item ends in exactly one answer (:class:`protocol.queue.Answer`):

- **predict**: it passed every check; its answer comes from :func:`after_prediction`;
- **error result**: a malformed message, one prepared for another model, version or model
  card, a wrong shape, dtype or size, ``top_k`` over the classes;
- **expired**: its deadline passed; acknowledged, never computed, no result (nobody waits);
- **dead-lettered**: it already failed ``max_attempts`` times (its worker died, or the model
  raised on it); an error result and the dead-letter list;
- after a model failure (:func:`after_failure`): **retried** at the queue head with its
  attempt count raised, or dead-lettered on its last attempt.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from protocol import error_codes as codes
from protocol.errors import MessageDecodeError
from protocol.messages import (
    ModelCard,
    PredictRequest,
    PredictResult,
    decode_request,
    encode_request,
    encode_result,
    peek_job_id,
)
from protocol.queue import Answer
from worker.batching import Item, ItemError, decode_array, expected_shape, top_k


@dataclass(frozen=True)
class Context:
    """What the decisions depend on besides the items."""

    card: ModelCard
    labels: Sequence[str]
    max_attempts: int
    now: float
    """Unix time in seconds, for deadlines."""
    batch_id: str
    worker: str

    def meta(self) -> dict[str, str]:
        return {
            "batch_id": self.batch_id,
            "worker": self.worker,
            "model": self.card.name,
            "version": self.card.version,
        }


@dataclass
class Plan:
    """A claimed batch: what to predict, and the answers already decided."""

    predict: list[Item] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    """How many items went each way: failed, expired, dead (predicted ones come later)."""


def plan_batch(raw_items: Sequence[bytes], ctx: Context) -> Plan:
    """Sort claimed messages: the ones to predict, and an answer for every other one."""
    plan = Plan()
    for raw in raw_items:
        fate = _check(raw, ctx)
        if isinstance(fate, Item):
            plan.predict.append(fate)
        else:
            outcome, answer = fate
            plan.answers.append(answer)
            plan.outcomes[outcome] += 1
    return plan


def _check(raw: bytes, ctx: Context) -> Item | tuple[str, Answer]:
    try:
        request = decode_request(raw)
    except MessageDecodeError as exc:
        job_id = peek_job_id(raw)
        if job_id is None:  # no usable id: nobody can be answered, only acknowledged
            return "failed", Answer(raw, None, b"")
        return "failed", _error(raw, job_id, codes.INVALID_MESSAGE, str(exc), ctx)
    if request.deadline < ctx.now:
        return "expired", Answer(raw, None, b"")
    if request.attempts >= ctx.max_attempts:
        message = (
            f"job {request.id} failed {request.attempts} times (its worker died or the model "
            f"raised); giving up after max_attempts={ctx.max_attempts}"
        )
        return "dead", _error(raw, request.id, codes.PREDICTION_FAILED, message, ctx, dead=True)
    try:
        _check_target(request, ctx.card)
        return Item(raw, request, decode_array(request, expected_shape(ctx.card)))
    except ItemError as exc:
        return "failed", _error(raw, request.id, exc.code, exc.message, ctx)


def _check_target(request: PredictRequest, card: ModelCard) -> None:
    """The item was prepared for this worker's model, version and card, and asks what it can."""
    if (request.model, request.version) != (card.name, card.version):
        raise ItemError(
            codes.WRONG_MODEL,
            f"this image was prepared for {request.model or '?'} version "
            f"{request.version or '?'}, but this worker serves {card.name} version {card.version}",
        )
    if request.card != card.fingerprint:
        raise ItemError(
            codes.WRONG_MODEL,
            f"this image was prepared for model card {request.card!r}, but {card.name} version "
            f"{card.version} is now {card.fingerprint!r}; send it again",
        )
    if request.top_k > card.num_labels:
        raise ItemError(
            codes.INVALID_INPUT,
            f"top_k={request.top_k} exceeds the model's {card.num_labels} classes",
        )


def after_prediction(items: Sequence[Item], probabilities: np.ndarray, ctx: Context) -> Plan:
    """Answers for items the model predicted together: a ranking for each finite row; a row
    with NaN or infinities (the model broke on that input) is a failure, never a ranking."""
    plan = Plan()
    finite = np.isfinite(probabilities).all(axis=1)
    for item, row, ok in zip(items, probabilities, finite, strict=True):
        if not ok:
            plan.answers.append(_failed(item, "non-finite model output", ctx, plan))
            continue
        ranked = top_k(row, item.request.top_k, ctx.labels)
        result = PredictResult(id=item.request.id, ok=True, predictions=ranked, **ctx.meta())
        plan.answers.append(Answer(item.raw, item.request.id, encode_result(result)))
        plan.outcomes["predicted"] += 1
    return plan


def after_failure(item: Item, error: str, ctx: Context) -> Plan:
    """The answer for an item the model raised on, predicted alone."""
    plan = Plan()
    plan.answers.append(_failed(item, error, ctx, plan))
    return plan


def _failed(item: Item, error: str, ctx: Context, plan: Plan) -> Answer:
    """Retry at the queue head until ``max_attempts``, then dead-letter with an error result."""
    request = item.request
    attempts = request.attempts + 1
    if attempts < ctx.max_attempts:
        plan.outcomes["retried"] += 1
        retry = encode_request(dataclasses.replace(request, attempts=attempts))
        return Answer(item.raw, request.id, b"", retry=retry)
    plan.outcomes["dead"] += 1
    message = f"the model failed on this image {attempts} times; last error: {error}"
    return _error(item.raw, request.id, codes.PREDICTION_FAILED, message, ctx, dead=True)


def _error(
    raw: bytes, job_id: str, code: str, message: str, ctx: Context, *, dead: bool = False
) -> Answer:
    result = PredictResult.failure(job_id, code, message, **ctx.meta())
    return Answer(raw, job_id, encode_result(result), dead=dead)

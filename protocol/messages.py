"""Wire formats: request, result and model-card messages as JSON. Pure code, no I/O.

A request carries one image as the base64 of a C-contiguous ``uint8`` array of shape
``[H, W, 3]``, and names the model, version and model card (its fingerprint) it was prepared
for, so a worker never computes an item prepared for another card. Every message has a
version field ``v``; a reader refuses versions it does not know instead of guessing. JSON
(never pickle) keeps the two sides independent of each other's Python objects and safe
against hostile queue contents.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pybase64

from protocol.errors import MessageDecodeError

VERSION = 2
_JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class PredictRequest:
    """One image waiting for a prediction."""

    id: str
    shape: tuple[int, ...]
    dtype: str
    data: str
    """base64 of the array's bytes; decoded only after the shape was checked."""
    top_k: int
    deadline: float
    """Unix time in seconds after which nobody waits for the answer."""
    attempts: int = 0
    """How many times the message failed: its worker died, or the model raised on it."""
    enqueued: float = 0.0
    """Unix time in seconds when the web tier queued it (0 when unknown); for queue-wait metrics."""
    model: str = ""
    """The model name the image was prepared for."""
    version: str = ""
    """The model version it was prepared for."""
    card: str = ""
    """The fingerprint of the model card whose recipe prepared it."""

    @classmethod
    def from_array(
        cls,
        job_id: str,
        array: np.ndarray,
        *,
        top_k: int,
        deadline: float,
        enqueued: float = 0.0,
        model: str = "",
        version: str = "",
        card: str = "",
    ) -> PredictRequest:
        contiguous = np.ascontiguousarray(array)
        return cls(
            id=job_id,
            shape=tuple(int(n) for n in contiguous.shape),
            dtype=str(contiguous.dtype),
            data=pybase64.b64encode(contiguous.data).decode("ascii"),
            top_k=top_k,
            deadline=deadline,
            enqueued=enqueued,
            model=model,
            version=version,
            card=card,
        )


@dataclass(frozen=True)
class Prediction:
    """One ranked class."""

    label: str
    probability: float
    index: int


@dataclass(frozen=True)
class PredictResult:
    """A worker's answer to one request: predictions, or an error code and message."""

    id: str
    ok: bool
    predictions: tuple[Prediction, ...] = ()
    error_code: str = ""
    error_message: str = ""
    batch_id: str = ""
    worker: str = ""
    model: str = ""
    """The model that answered."""
    version: str = ""
    """The version of that model that answered."""

    @classmethod
    def failure(
        cls,
        job_id: str,
        code: str,
        message: str,
        *,
        batch_id: str = "",
        worker: str = "",
        model: str = "",
        version: str = "",
    ) -> PredictResult:
        return cls(
            id=job_id,
            ok=False,
            error_code=code,
            error_message=message,
            batch_id=batch_id,
            worker=worker,
            model=model,
            version=version,
        )


RESIZE_CENTER_CROP = "center-crop"
"""The TF EfficientNet(-Lite) evaluation recipe: the centred integer square of side
``int(S / (S + crop_padding) * short side)``, resized to ``S x S``."""
RESIZE_STRETCH = "stretch"
"""Keras applications' documented recipe (``keras.utils.load_img(target_size=(S, S))``): the
whole image resized to ``S x S``."""
RESIZE_RECIPES = (RESIZE_CENTER_CROP, RESIZE_STRETCH)
RESAMPLE_FILTERS = ("bicubic", "bilinear", "lanczos", "nearest")


@dataclass(frozen=True)
class ModelCard:
    """What the web tier must know to prepare images exactly as the model's reference
    pipeline does (see app/preprocess.py)."""

    name: str
    version: str
    """The version this card describes (``QUEUENET_MODEL_VERSION``)."""
    input_size: int
    """Side of the square input in pixels."""
    num_labels: int
    fingerprint: str = ""
    """What the model is (its weights, or its file's digest): requests carry it, and a worker
    refuses an item prepared for another card."""
    resize: str = RESIZE_CENTER_CROP
    """One of :data:`RESIZE_RECIPES`."""
    crop_padding: int = 32
    """``center-crop`` only: the crop side is ``int(S / (S + crop_padding) * short side)``."""
    resample: str = "bicubic"
    """Pillow filter of the resize: one of :data:`RESAMPLE_FILTERS`."""
    extra: dict[str, Any] = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        """The preprocessing recipe, as published (and shown by ``GET /models``)."""
        return {
            "resize": self.resize,
            "crop_padding": self.crop_padding,
            "resample": self.resample,
        }


# --- requests --------------------------------------------------------------------------------


def encode_request(request: PredictRequest) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "id": request.id,
            "shape": list(request.shape),
            "dtype": request.dtype,
            "data": request.data,
            "top_k": request.top_k,
            "deadline": request.deadline,
            "attempts": request.attempts,
            "enqueued": request.enqueued,
            "model": request.model,
            "version": request.version,
            "card": request.card,
        }
    )


def decode_request(raw: bytes | str) -> PredictRequest:
    """Parse and check a request message; :class:`MessageDecodeError` says what is wrong."""
    obj = _loads_versioned(raw)
    job_id = _job_id(obj)
    try:
        shape = obj["shape"]
        if not isinstance(shape, list) or not all(_is_int(n) and n > 0 for n in shape):
            raise MessageDecodeError(f"job {job_id}: shape must be a list of positive integers")
        return PredictRequest(
            id=job_id,
            shape=tuple(shape),
            dtype=_typed(obj, "dtype", str, job_id),
            data=_typed(obj, "data", str, job_id),
            top_k=_positive_int(obj, "top_k", job_id),
            deadline=_finite_number(obj, "deadline", job_id),
            attempts=_positive_int(obj, "attempts", job_id, minimum=0),
            enqueued=_optional_number(obj, "enqueued", job_id),
            model=_typed(obj, "model", str, job_id),
            version=_typed(obj, "version", str, job_id),
            card=_typed(obj, "card", str, job_id),
        )
    except KeyError as exc:
        raise MessageDecodeError(f"job {job_id}: field {exc.args[0]!r} is missing") from None


def peek_job_id(raw: bytes | str) -> str | None:
    """The job id of a message that may be malformed, so it can still get an error answer."""
    try:
        obj = _loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    job_id = obj.get("id") if isinstance(obj, dict) else None
    return job_id if isinstance(job_id, str) and _JOB_ID_RE.match(job_id) else None


# --- results ---------------------------------------------------------------------------------


def encode_result(result: PredictResult) -> bytes:
    body: dict[str, Any] = {"v": VERSION, "id": result.id, "ok": result.ok}
    if result.ok:
        body["predictions"] = [
            {"label": p.label, "probability": p.probability, "index": p.index}
            for p in result.predictions
        ]
    else:
        body["error"] = {"code": result.error_code, "message": result.error_message}
    body["batch_id"] = result.batch_id
    body["worker"] = result.worker
    body["model"] = result.model
    body["version"] = result.version
    return _dumps(body)


def decode_result(raw: bytes | str) -> PredictResult:
    obj = _loads_versioned(raw)
    job_id = _job_id(obj)
    try:
        meta = {name: str(obj.get(name, "")) for name in ("batch_id", "worker", "model", "version")}
        if obj["ok"] is True:
            predictions = tuple(
                Prediction(
                    label=str(p["label"]),
                    probability=float(p["probability"]),
                    index=int(p["index"]),
                )
                for p in obj["predictions"]
            )
            return PredictResult(id=job_id, ok=True, predictions=predictions, **meta)
        error = obj["error"]
        return PredictResult.failure(job_id, str(error["code"]), str(error["message"]), **meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageDecodeError(f"job {job_id}: malformed result ({exc!r})") from None


# --- model card ------------------------------------------------------------------------------


def encode_model_card(card: ModelCard) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "name": card.name,
            "version": card.version,
            "fingerprint": card.fingerprint,
            "input_size": card.input_size,
            "num_labels": card.num_labels,
            "recipe": card.recipe(),
            "extra": card.extra,
        }
    )


def decode_model_card(raw: bytes | str) -> ModelCard:
    obj = _loads_versioned(raw)
    try:
        recipe = obj["recipe"]
        card = ModelCard(
            name=str(obj["name"]),
            version=str(obj["version"]),
            fingerprint=str(obj["fingerprint"]),
            input_size=int(obj["input_size"]),
            num_labels=int(obj["num_labels"]),
            resize=str(recipe["resize"]),
            crop_padding=int(recipe["crop_padding"]),
            resample=str(recipe["resample"]),
            extra=dict(obj.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageDecodeError(f"malformed model card ({exc!r})") from None
    if (
        card.input_size < 1
        or card.num_labels < 1
        or card.crop_padding < 0
        or card.resize not in RESIZE_RECIPES
        or card.resample not in RESAMPLE_FILTERS
    ):
        raise MessageDecodeError(f"model card out of range: {card}")
    return card


# --- helpers ---------------------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> bytes:
    """Compact JSON. orjson writes NaN and infinities as ``null``; none reach here: requests
    carry clock times, results only finite probabilities (the worker fails non-finite rows),
    and a ``null`` where a number belongs is refused by the reader anyway."""
    return orjson.dumps(obj)


def _loads(raw: bytes | str) -> Any:
    # orjson: 2-3x faster than json on the 200 KB requests; strict JSON (no NaN literals),
    # invalid UTF-8 and nesting past 1024 levels raise its JSONDecodeError (a ValueError).
    return orjson.loads(raw)


def _loads_versioned(raw: bytes | str) -> dict[str, Any]:
    try:
        obj = _loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MessageDecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageDecodeError("message is not a JSON object")
    if obj.get("v") != VERSION:
        raise MessageDecodeError(
            f"unsupported message version {obj.get('v')!r} (expected {VERSION})"
        )
    return obj


def _job_id(obj: dict[str, Any]) -> str:
    job_id = obj.get("id")
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise MessageDecodeError("id must be a uuid4 hex string")
    return job_id


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(obj: dict[str, Any], name: str, kind: type[str], job_id: str) -> str:
    value = obj[name]
    if not isinstance(value, kind):
        raise MessageDecodeError(f"job {job_id}: {name} must be a {kind.__name__}")
    return value


def _positive_int(obj: dict[str, Any], name: str, job_id: str, *, minimum: int = 1) -> int:
    value = obj[name]
    if not _is_int(value) or value < minimum:
        raise MessageDecodeError(f"job {job_id}: {name} must be an integer >= {minimum}")
    return int(value)


def _optional_number(obj: dict[str, Any], name: str, job_id: str) -> float:
    return _finite_number(obj, name, job_id) if name in obj else 0.0


def _finite_number(obj: dict[str, Any], name: str, job_id: str) -> float:
    value = obj[name]
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
        raise MessageDecodeError(f"job {job_id}: {name} must be a finite number")
    return float(value)

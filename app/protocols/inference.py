"""The path every protocol shares with ``POST /predict``: resolve the model version, check the
limits, prepare each image by the model card's recipe, queue them all (or none) and wait for
their answers until the deadline.

The standard protocols answer a request as a whole (a batch tensor has no per-image error), so
the first image that fails fails the request, with that image's status and a message naming it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.components import router, service, settings
from app.errors import APIError, InvalidImageError, InvalidRequestError
from app.preprocess import ImageDecodeError, image_to_input
from app.protocols.encodings import ContentEncodingError, DecodedTooLargeError, decode_body
from app.redis_errors import redis_errors_as_503
from app.routing import Target
from app.uploads import too_large_message
from protocol.messages import ModelCard, PredictResult
from protocol.status import VersionStatus, version_status


@dataclass(frozen=True)
class Answer:
    """The model version that answered and one result per image, in request order."""

    target: Target
    results: list[PredictResult]


def resolve(model: str | None, version: str | None) -> Target:
    """The version a request for ``model`` (None: the default model) goes to (``version``
    None: by the model's route, canary included), with its card; records it for the log line
    and the headers."""
    target = router().resolve(model, version)
    g.model, g.version = target.model, target.version
    return target


def describe(model: str, version: str | None) -> Target:
    """The version whose metadata describes ``model`` (``version`` None: its serving version,
    never the canary): 404 for an unknown model or version, 503 without a model card."""
    if version is None:
        route = router().catalog().routes.get(model)
        version = None if route is None else route.serving
    return router().resolve(model, version)


def status(model: str, version: str | None) -> tuple[list[str], list[VersionStatus]]:
    """Every version of ``model`` and the status of ``version`` (None: of all of them)."""
    catalog = router().catalog()
    if not catalog.has(model):
        router().resolve(model, None)  # raises the 404 that names what exists
    versions = list(catalog.versions[model])
    if version is not None and version not in versions:
        router().resolve(model, version)  # likewise, for the version
    wanted = versions if version is None else [version]
    found = router()
    with redis_errors_as_503():
        statuses = [
            version_status(found.backend, found.keys, model, v, found.health) for v in wanted
        ]
    return versions, statuses


def read_body() -> bytes:
    """The request body, decompressed when it says so (gzip, deflate), within
    ``QUEUENET_MAX_UPLOAD_BYTES`` either way (413 over it)."""
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(too_large_message(request)) from None
    encoding = request.headers.get("Content-Encoding")
    try:
        return decode_body(body, encoding, max_bytes=settings().max_upload_bytes)
    except DecodedTooLargeError as exc:
        raise RequestEntityTooLarge(str(exc)) from None
    except ContentEncodingError as exc:
        raise InvalidRequestError(str(exc)) from None


def deadline_from(timeout_s: float | None) -> float:
    """Unix seconds by which the request must be answered: ``QUEUENET_PREDICT_TIMEOUT_S``
    from now, shortened (never lengthened) by a client's own ``timeout_s``."""
    limit_s = settings().predict_timeout_s
    if timeout_s is not None and 0 < timeout_s < limit_s:
        limit_s = timeout_s
    return time.time() + limit_s


def classify(target: Target, images: list[bytes], *, top_k: int, deadline: float) -> Answer:
    """Prepare every image (the first that cannot be read is a 400 naming it), queue them all
    and wait for their results; the first image that failed fails the request."""
    check_image_count(len(images))
    arrays = [_prepare(data, i, len(images), target) for i, data in enumerate(images)]
    outcomes = service().predict(target, arrays, top_k=top_k, deadline=deadline)
    results = []
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, APIError):
            if len(images) > 1:
                outcome.message = f"image {i + 1} of {len(images)}: {outcome.message}"
            raise outcome
        results.append(outcome)
    return Answer(target, results)


def check_image_count(count: int) -> None:
    """At least one image and at most ``QUEUENET_MAX_IMAGES_PER_REQUEST`` (400 otherwise)."""
    most = settings().max_images_per_request
    if count < 1:
        raise InvalidRequestError("the request holds no image")
    if count > most:
        raise InvalidRequestError(
            f"{count} images in one request; at most {most} (QUEUENET_MAX_IMAGES_PER_REQUEST)"
        )


def prepare_image(data: bytes, card: ModelCard) -> np.ndarray:
    """One image as ``card``'s model takes it, within this server's limits (pixel count,
    opt-in JPEG draft); raises ``ImageDecodeError``. ``POST /predict`` prepares by it too."""
    limits = settings()
    return image_to_input(
        data, card, max_pixels=limits.max_image_pixels, jpeg_draft=limits.jpeg_draft
    )


def _prepare(data: bytes, index: int, count: int, target: Target) -> np.ndarray:
    try:
        return prepare_image(data, target.card)
    except ImageDecodeError as exc:
        where = f"image {index + 1} of {count}" if count > 1 else "the image"
        raise InvalidImageError(f"{where}: {exc}") from None


def probabilities(results: list[PredictResult], num_classes: int) -> np.ndarray:
    """``[N, num_classes]`` float32: each result's probabilities laid out by class index
    (the results answer ``top_k = num_classes``, so every class is there)."""
    table = np.zeros((len(results), num_classes), dtype=np.float32)
    for row, result in enumerate(results):
        for p in result.predictions:
            table[row, p.index] = p.probability
    return table

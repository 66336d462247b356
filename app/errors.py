"""API errors and the handlers that turn every error into JSON.

``{"success": false, "error": {"code": "...", "message": "..."}}`` with the matching status,
for our own errors, for Werkzeug's routing errors (404, 405, 413) and for anything unexpected.
Inside the URL space of a standard protocol (``/v2``, ``/v1``: ``app.protocols``) the same
errors, with the same status and headers, take that protocol's shape: ``{"error": "..."}``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.protocols import QUEUENET, protocol_of
from protocol import error_codes as codes

logger = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 500
    code = codes.INTERNAL_ERROR

    def __init__(
        self, message: str, *, retry_after_s: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        if code is not None:
            self.code = code


class InvalidRequestError(APIError):
    status_code = 400
    code = codes.INVALID_REQUEST


class InvalidImageError(APIError):
    status_code = 400
    code = codes.INVALID_IMAGE


class ModelNotFoundError(APIError):
    """An unknown model (or, with ``code=MODEL_VERSION_NOT_FOUND``, version); the message
    names what exists."""

    status_code = 404
    code = codes.MODEL_NOT_FOUND


class QueueFullError(APIError):
    status_code = 503
    code = codes.QUEUE_FULL


class QueueUnavailableError(APIError):
    status_code = 503
    code = codes.QUEUE_UNAVAILABLE


class ModelUnavailableError(APIError):
    status_code = 503
    code = codes.MODEL_UNAVAILABLE


class PredictionTimeoutError(APIError):
    status_code = 504
    code = codes.PREDICTION_TIMEOUT


class PredictionFailedError(APIError):
    """The worker answered with an error result; ``code`` is the worker's."""

    status_code = 500
    code = codes.PREDICTION_FAILED


def error_response(status: int, code: str, message: str) -> Response:
    """The error in the shape of the protocol whose URL space the request is in."""
    g.error_code = code  # for the request log line and the metrics
    if protocol_of(request.path) == QUEUENET:
        response = jsonify({"success": False, "error": {"code": code, "message": message}})
    else:  # the Open Inference Protocol and TF Serving: {"error": "<message>"}
        response = jsonify({"error": message})
    response.status_code = status
    return response


def _handle_api_error(error: APIError) -> Response:
    response = error_response(error.status_code, error.code, error.message)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def _handle_http_exception(error: HTTPException) -> Response:
    code = (error.name or "error").lower().replace(" ", "_")
    response = error_response(error.code or 500, code, error.description or str(error))
    valid_methods = getattr(error, "valid_methods", None)
    if error.code == 405 and valid_methods:
        response.headers["Allow"] = ", ".join(valid_methods)
    return response


def _handle_unexpected(error: Exception) -> Response:
    logger.exception("unhandled error: %s", error)
    return error_response(500, codes.INTERNAL_ERROR, "internal server error; see the server log")


def register_error_handlers(app: Flask) -> None:
    """On the app, not a blueprint, so routing errors (404/405) are JSON too."""
    app.register_error_handler(APIError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)

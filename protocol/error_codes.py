"""Every error code QueueNet answers with, named once. Codes travel in JSON bodies
(``{"error": {"code": ...}}``) and in the workers' error results; clients match on them."""

from __future__ import annotations

# Refused by the web tier before anything is queued.
INVALID_REQUEST = "invalid_request"
INVALID_IMAGE = "invalid_image"
UNAUTHORIZED = "unauthorized"
REQUEST_ENTITY_TOO_LARGE = "request_entity_too_large"
MODEL_NOT_FOUND = "model_not_found"
MODEL_VERSION_NOT_FOUND = "model_version_not_found"
QUEUE_FULL = "queue_full"
QUEUE_UNAVAILABLE = "queue_unavailable"
MODEL_UNAVAILABLE = "model_unavailable"
# After queueing.
PREDICTION_TIMEOUT = "prediction_timeout"
INTERNAL_ERROR = "internal_error"
# Answered by a worker (error results).
INVALID_MESSAGE = "invalid_message"
"""The queued message cannot be read at all."""
INVALID_INPUT = "invalid_input"
"""The message is readable but its array or top_k does not fit the model."""
WRONG_MODEL = "wrong_model"
"""The image was prepared for another model, version or model card."""
PREDICTION_FAILED = "prediction_failed"
"""The model failed on the image max_attempts times (or its worker died that often)."""

REJECTIONS = frozenset(
    {
        QUEUE_FULL,
        QUEUE_UNAVAILABLE,
        MODEL_UNAVAILABLE,
        MODEL_NOT_FOUND,
        MODEL_VERSION_NOT_FOUND,
        INVALID_REQUEST,
        INVALID_IMAGE,
        REQUEST_ENTITY_TOO_LARGE,
        UNAUTHORIZED,
    }
)
"""Codes of requests refused before reaching the queue (counted by reason)."""

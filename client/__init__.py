"""QueueNet HTTP client: ``QueueNetClient(base_url).predict(image, top_k=5)``.

Speaks HTTP only (``requests``) and imports nothing from app/worker/protocol.
"""

from client._client import DEFAULT_URL, Classification, Prediction, QueueNetClient
from client._exceptions import (
    APIError,
    ConnectError,
    PredictError,
    ServiceUnavailableError,
    TimeoutError,
    TransportError,
)

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "Classification",
    "ConnectError",
    "PredictError",
    "Prediction",
    "QueueNetClient",
    "ServiceUnavailableError",
    "TimeoutError",
    "TransportError",
]

"""Exceptions raised by :class:`client.QueueNetClient`.

PredictError                  anything that kept a prediction from coming back
├── TransportError            no HTTP answer
│   ├── ConnectError          the server could not be reached
│   └── TimeoutError          no answer within timeout_s
└── APIError                  the server answered with an error (status, code, message)
    └── ServiceUnavailableError   503 (queue full, Redis or model unavailable) after retries
"""

from __future__ import annotations


class PredictError(Exception):
    """Base class of every client error."""


class TransportError(PredictError):
    """The request did not get an HTTP answer."""


class ConnectError(TransportError):
    """The server could not be reached."""


class TimeoutError(TransportError):  # noqa: A001 - deliberately scoped to this package
    """No answer within the client's ``timeout_s``."""


class APIError(PredictError):
    """The server answered with an error body ``{"error": {"code", "message"}}``."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message


class ServiceUnavailableError(APIError):
    """503 even after the client's bounded retries."""

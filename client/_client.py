"""A small typed client for the QueueNet HTTP API. Depends on ``requests`` only (and Pillow
when a PIL image is passed)."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

import requests

from client._exceptions import (
    APIError,
    ConnectError,
    PredictError,
    ServiceUnavailableError,
    TimeoutError,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:5000"
ImageInput: TypeAlias = "str | Path | bytes | BinaryIO | PILImage"
"""A file path, the encoded bytes of an image, an open binary file, or a PIL image."""


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int


class QueueNetClient:
    """Posts images to ``{base_url}/predict``.

    ``max_retries`` bounds the retries of a 503 (full queue, Redis or model not ready); each
    waits for the server's ``Retry-After`` (at most ``max_retry_wait_s``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout_s: float = 30.0,
        api_key: str | None = None,
        max_retries: int = 3,
        max_retry_wait_s: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> QueueNetClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def predict(self, image: ImageInput, *, top_k: int | None = None) -> list[Prediction]:
        """The ``top_k`` most probable labels of ``image``, highest first (server default: 5)."""
        data = _image_bytes(image)
        for attempt in range(self.max_retries + 1):
            response = self._post(data, top_k)
            if response.status_code != 503 or attempt == self.max_retries:
                return _parse(response)
            wait_s = _retry_after_s(response, self.max_retry_wait_s)
            logger.info("503 from %s; retry %d in %.1fs", self.base_url, attempt + 1, wait_s)
            time.sleep(wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, data: bytes, top_k: int | None) -> requests.Response:
        try:
            return self.session.post(
                f"{self.base_url}/predict",
                files={"image": ("image", data)},
                params={} if top_k is None else {"top_k": top_k},
                timeout=self.timeout_s,
            )
        except requests.Timeout as exc:
            raise TimeoutError(f"no answer from {self.base_url} in {self.timeout_s}s") from exc
        except requests.ConnectionError as exc:
            raise ConnectError(f"cannot reach {self.base_url}: {exc}") from exc
        except requests.RequestException as exc:
            raise PredictError(f"request to {self.base_url} failed: {exc}") from exc


def _image_bytes(image: ImageInput) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("open the image file in binary mode ('rb')")
        return data
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(
        f"cannot send {type(image).__name__}: pass a path, bytes, a file or a PIL image"
    )


def _retry_after_s(response: requests.Response, cap_s: float) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.0), cap_s)
    except ValueError:
        return min(1.0, cap_s)


def _parse(response: requests.Response) -> list[Prediction]:
    try:
        body = response.json()
    except ValueError:
        raise APIError(response.status_code, "not_json", response.text[:200]) from None
    if response.ok and body.get("success"):
        return [
            Prediction(str(p["label"]), float(p["probability"]), int(p["index"]))
            for p in body["predictions"]
        ]
    error = body.get("error") or {}
    kind = ServiceUnavailableError if response.status_code == 503 else APIError
    raise kind(response.status_code, str(error.get("code", "unknown")), str(error.get("message")))

"""A small typed client for the QueueNet HTTP API. Depends on ``requests`` only (and Pillow
when a PIL image is passed)."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias
from urllib.parse import quote

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


@dataclass(frozen=True)
class Classification:
    """The predictions of one image and the model version that made them."""

    predictions: list[Prediction]
    model: str
    version: str


class QueueNetClient:
    """Posts images to ``{base_url}/predict``, or to a model (``model=``) and version
    (``version=``): ``/models/{model}[/versions/{version}]/predict``.

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

    def predict(
        self,
        image: ImageInput,
        *,
        top_k: int | None = None,
        model: str | None = None,
        version: str | None = None,
    ) -> list[Prediction]:
        """The ``top_k`` most probable labels of ``image``, highest first (server default: 5),
        from the default model, or ``model`` (its serving version, or ``version``)."""
        return self.classify(image, top_k=top_k, model=model, version=version).predictions

    def classify(
        self,
        image: ImageInput,
        *,
        top_k: int | None = None,
        model: str | None = None,
        version: str | None = None,
    ) -> Classification:
        """Like :meth:`predict`, and which model version answered."""
        data = _image_bytes(image)
        url = self._predict_url(model, version)
        for attempt in range(self.max_retries + 1):
            response = self._post(url, data, top_k)
            if response.status_code != 503 or attempt == self.max_retries:
                return _parse(response)
            wait_s = _retry_after_s(response, self.max_retry_wait_s)
            logger.info("503 from %s; retry %d in %.1fs", self.base_url, attempt + 1, wait_s)
            time.sleep(wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def models(self) -> dict[str, Any]:
        """``GET /models``: every model, its versions and routes, and the default model."""
        try:
            response = self.session.get(f"{self.base_url}/models", timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise _transport_error(self.base_url, self.timeout_s, exc) from exc
        body = _json(response)
        if not response.ok:
            raise _api_error(response, body)
        return body

    def _predict_url(self, model: str | None, version: str | None) -> str:
        if model is None:
            if version is not None:
                raise ValueError("version= needs model=")
            return f"{self.base_url}/predict"
        path = f"/models/{quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{quote(version, safe='')}"
        return f"{self.base_url}{path}/predict"

    def _post(self, url: str, data: bytes, top_k: int | None) -> requests.Response:
        try:
            return self.session.post(
                url,
                files={"image": ("image", data)},
                params={} if top_k is None else {"top_k": top_k},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise _transport_error(self.base_url, self.timeout_s, exc) from exc


def _transport_error(
    base_url: str, timeout_s: float, exc: requests.RequestException
) -> PredictError:
    """The one place ``requests`` errors become this package's exceptions."""
    if isinstance(exc, requests.Timeout):
        return TimeoutError(f"no answer from {base_url} in {timeout_s}s")
    if isinstance(exc, requests.ConnectionError):
        return ConnectError(f"cannot reach {base_url}: {exc}")
    return PredictError(f"request to {base_url} failed: {exc}")


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


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise APIError(response.status_code, "not_json", response.text[:200]) from None
    if not isinstance(body, dict):
        raise APIError(response.status_code, "not_json", response.text[:200])
    return body


def _api_error(response: requests.Response, body: dict[str, Any]) -> APIError:
    error = body.get("error") or {}
    kind = ServiceUnavailableError if response.status_code == 503 else APIError
    return kind(response.status_code, str(error.get("code", "unknown")), str(error.get("message")))


def _parse(response: requests.Response) -> Classification:
    body = _json(response)
    if response.ok and body.get("success"):
        model = body.get("model") or {}
        return Classification(
            predictions=[
                Prediction(str(p["label"]), float(p["probability"]), int(p["index"]))
                for p in body["predictions"]
            ],
            model=str(model.get("name", "")),
            version=str(model.get("version", "")),
        )
    raise _api_error(response, body)

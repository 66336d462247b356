"""Post one image to QueueNet and print the ranked labels.

    python client/simple_request.py [IMAGE] [--url http://localhost:5000/predict] [--top-k 5]
                                    [--model NAME]

Prints ``1. tabby: 0.9312`` lines, or ``Request failed: <message>`` and exits with 1.
Needs only ``requests``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import requests

DEFAULT_URL = "http://localhost:5000/predict"
DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "tests" / "data" / "chelsea.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify one image with a QueueNet server.")
    parser.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE), help="image file to send")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"server or predict endpoint ({DEFAULT_URL})"
    )
    parser.add_argument("--top-k", type=int, default=5, help="how many labels (default 5)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout in seconds")
    parser.add_argument("--model", help="ask this model (default: the server's default model)")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    if url.endswith("/predict"):
        url = url[: -len("/predict")]
    # A base URL, as the other clients take, works as well as the predict endpoint.
    url += f"/models/{args.model}/predict" if args.model else "/predict"

    try:
        with open(args.image, "rb") as handle:
            response = requests.post(
                url,
                files={"image": handle},
                params={"top_k": args.top_k},
                timeout=args.timeout_s,
            )
    except OSError as exc:  # file not found, connection refused, timeout...
        print(f"Request failed: {exc}", file=sys.stderr)
        return 1
    try:
        body = response.json()
    except ValueError:
        print(f"Request failed: HTTP {response.status_code}, not JSON", file=sys.stderr)
        return 1
    if not body.get("success"):
        error = body.get("error") or {}
        message = error.get("message", "unknown error")
        print(f"Request failed: {message} (HTTP {response.status_code})", file=sys.stderr)
        return 1
    for rank, prediction in enumerate(body["predictions"], start=1):
        print(f"{rank}. {prediction['label']}: {prediction['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

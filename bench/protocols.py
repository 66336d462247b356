"""What each protocol costs per request against ``POST /predict``, in the same run.

    python -m bench.protocols --url http://127.0.0.1:5000 [--model NAME] [--rounds 60]

One client, one request at a time, the same photos through every protocol. Each round sends
one request of every kind, in a rotating order, so that all kinds see the same moments of
this machine (whose speed drifts by tens of percent from one minute to the next); a kind's
cost is the median over the rounds of its latency minus ``/predict``'s in the same round,
and its ratio the median of the per-round ratios. Bodies are encoded once, before timing, as
each client library would send them; every answer is checked (status 200, the same top-1 as
``/predict``). Prints a table (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench.photos import PHOTOS, multipart

TOP_K = 5
"""What /predict and :classify answer by default; classification asks the same."""

Top1 = tuple[int | None, str | None]
"""The top-1 class index and label an answer gives (None where it does not say)."""
Decode = Callable[[bytes, dict[str, str]], Top1]
"""(body, lower-cased headers) -> the answer's top-1."""


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    bodies: list[tuple[bytes, dict[str, str]]]
    """One (body, headers) per photo."""
    top1: Decode


@dataclass
class Figures:
    kind: str
    p50_ms: float
    over_predict_ms: float
    """Median over rounds of (this kind's latency - /predict's in the same round)."""
    ratio: float
    """Median over rounds of this kind's latency / /predict's."""
    request_bytes: int
    response_bytes: int


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _predict_top1(body: bytes, headers: dict[str, str]) -> Top1:
    first = json.loads(body)["predictions"][0]
    return int(first["index"]), str(first["label"])


def _v2_top1(body: bytes, headers: dict[str, str]) -> Top1:
    length = int(headers.get("inference-header-content-length", len(body)))
    (output,) = json.loads(body[:length])["outputs"]
    raw = body[length:]
    if output["datatype"] == "BYTES":  # classification: "score:index:label"
        first = raw[4 : 4 + struct.unpack_from("<I", raw)[0]].decode() if raw else output["data"][0]
        _, index, label = first.split(":", 2)
        return int(index), label
    row = output["data"] if "data" in output else np.frombuffer(raw, dtype="<f4")
    return int(np.argmax(row[: output["shape"][1]])), None


def _tf_predict_top1(body: bytes, headers: dict[str, str]) -> Top1:
    return int(np.argmax(json.loads(body)["predictions"][0])), None


def _tf_classify_top1(body: bytes, headers: dict[str, str]) -> Top1:
    return None, str(json.loads(body)["result"][0][0][0])


def _v2_json(image: bytes) -> tuple[bytes, dict[str, str]]:
    request = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [_b64(image)],
            }
        ]
    }
    return json.dumps(request).encode(), {"Content-Type": "application/json"}


def _v2_binary(image: bytes, classification: int = 0) -> tuple[bytes, dict[str, str]]:
    """As tritonclient sends it: the image as binary tensor data, the output binary."""
    raw = struct.pack("<I", len(image)) + image
    output: dict[str, Any] = {"name": "probabilities", "parameters": {"binary_data": True}}
    if classification:
        output["parameters"]["classification"] = classification
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [output],
        }
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def num_classes(url: str, model: str) -> int:
    """The model's classes, from its Open Inference Protocol metadata."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    connection.request("GET", f"/v2/models/{model}")
    metadata = json.loads(connection.getresponse().read())
    connection.close()
    return int(metadata["outputs"][0]["shape"][1])


def kinds(model: str, top_k: int) -> list[Kind]:
    photos = [p.read_bytes() for p in PHOTOS]
    forms = [multipart(p) for p in PHOTOS]
    predict = [
        (body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        for body, boundary in forms
    ]
    v1 = f"/v1/models/{model}"
    v2 = f"/v2/models/{model}/infer"
    tf_json = {"Content-Type": "application/json"}

    def tf_predict(image: bytes) -> tuple[bytes, dict[str, str]]:
        return json.dumps({"instances": [{"b64": _b64(image)}]}).encode(), tf_json

    def tf_classify(image: bytes) -> tuple[bytes, dict[str, str]]:
        return json.dumps({"examples": [{"image": {"b64": _b64(image)}}]}).encode(), tf_json

    return [
        Kind(f"queuenet /predict (multipart, top {top_k})", f"/models/{model}/predict", predict,
             _predict_top1),
        Kind("kserve-v2 JSON base64 -> FP32 JSON", v2, [_v2_json(i) for i in photos], _v2_top1),
        Kind("kserve-v2 binary -> FP32 binary", v2, [_v2_binary(i) for i in photos], _v2_top1),
        Kind(f"kserve-v2 binary -> classification {top_k}", v2,
             [_v2_binary(i, classification=top_k) for i in photos], _v2_top1),
        Kind("tfserving :predict (b64 -> FP32 JSON)", f"{v1}:predict",
             [tf_predict(i) for i in photos], _tf_predict_top1),
        Kind(f"tfserving :classify (b64 -> top {top_k})", f"{v1}:classify",
             [tf_classify(i) for i in photos], _tf_classify_top1),
    ]  # fmt: skip


class Connection:
    """One kept-alive HTTP/1.1 connection per kind (as a client library keeps one)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=60
        )

    def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[float, bytes, dict[str, str]]:
        started = time.perf_counter()
        self.connection.request("POST", path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"POST {path} answered {response.status}: {data[:300]!r}")
        return elapsed_ms, data, {k.lower(): v for k, v in response.getheaders()}


def measure(url: str, model: str, rounds: int, warmup: int) -> list[Figures]:
    # /predict's and :classify's default top 5 (QUEUENET_DEFAULT_TOP_K), capped at the classes.
    all_kinds = kinds(model, min(TOP_K, num_classes(url, model)))
    connections = [Connection(url) for _ in all_kinds]
    times: list[list[float]] = [[] for _ in all_kinds]
    sizes = [(0, 0)] * len(all_kinds)
    for r in range(warmup + rounds):
        photo = r % len(PHOTOS)
        order = [(r + k) % len(all_kinds) for k in range(len(all_kinds))]
        answers: dict[int, Top1] = {}
        for k in order:
            kind = all_kinds[k]
            body, headers = kind.bodies[photo]
            elapsed_ms, answer, answer_headers = connections[k].post(kind.path, body, headers)
            answers[k] = kind.top1(answer, answer_headers)
            if r >= warmup:
                times[k].append(elapsed_ms)
                sizes[k] = (len(body), len(answer))
        check_agreement(all_kinds, answers)
    base = times[0]
    return [
        Figures(
            kind=kind.name,
            p50_ms=statistics.median(series),
            over_predict_ms=statistics.median(s - b for s, b in zip(series, base, strict=True)),
            ratio=statistics.median(s / b for s, b in zip(series, base, strict=True)),
            request_bytes=sizes[k][0],
            response_bytes=sizes[k][1],
        )
        for k, (kind, series) in enumerate(zip(all_kinds, times, strict=True))
    ]


def check_agreement(all_kinds: list[Kind], answers: dict[int, Top1]) -> None:
    """Every kind's top-1 (index and label, where it gives them) is /predict's (kind 0)."""
    index, label = answers[0]
    for k, (other_index, other_label) in answers.items():
        if other_index not in (None, index) or other_label not in (None, label):
            raise RuntimeError(
                f"{all_kinds[k].name}: top-1 {other_index} {other_label!r}; /predict's "
                f"{index} {label!r}"
            )


def table(figures: list[Figures], rounds: int) -> str:
    rows = [
        f"{rounds} rounds, one request of each kind per round (photos in turn), medians; "
        "bytes: the last photo",
        "| protocol | p50 ms | over /predict ms | x /predict | request bytes | answer bytes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        rows.append(
            f"| {f.kind} | {f.p50_ms:.1f} | {f.over_predict_ms:+.1f} | {f.ratio:.2f} | "
            f"{f.request_bytes} | {f.response_bytes} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.url.rstrip("/"), args.model, args.rounds, args.warmup)
    if args.json:
        sys.stdout.write(json.dumps([asdict(f) for f in figures]) + "\n")
    else:
        sys.stdout.write(table(figures, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

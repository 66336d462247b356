"""Each standard protocol's own client against a running QueueNet, as their users run them.

    .venv-clients/bin/python examples/protocol_clients.py [--url URL] [--model NAME]
        [--json] IMAGE...

Needs the clients' own environment (``examples/clients-requirements.txt``: tritonclient[http]
and the kserve SDK pin protobuf < 7 and ml-dtypes <= 0.5.4, which QueueNet's TensorFlow
environment does not have): ``python3 -m venv .venv-clients &&
.venv-clients/bin/pip install -r examples/clients-requirements.txt``.

For every image it prints the top-1 class index that each client got: QueueNet's own
``POST /predict`` (the reference), tritonclient (binary tensors both ways, FP32
probabilities, ``class_count=5``, a gzip-compressed request), the kserve SDK's REST client
over V2 (binary and base64 JSON) and V1 (TF Serving's ``:predict``), and plain HTTP
(``requests``, what curl sends) over V2 JSON and TF Serving's ``:classify``; then the
health, readiness and metadata calls. ``--json`` prints one JSON object instead
(tests/test_protocol_clients.py reads it). Exit status 0 when every client answered and
agreed with ``/predict``, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import requests
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

logger = logging.getLogger("protocol_clients")

CLASSES = 5
"""``class_count`` asked of tritonclient (fewer when the model has fewer classes)."""


def top1_predict(url: str, model: str, images: list[bytes]) -> list[int]:
    """QueueNet's own API: the reference."""
    found = []
    for image in images:
        reply = requests.post(
            f"{url}/models/{model}/predict", files={"image": image}, params={"top_k": 1}, timeout=60
        )
        reply.raise_for_status()
        found.append(reply.json()["predictions"][0]["index"])
    return found


def triton_calls(url: str, model: str, images: list[bytes]) -> dict[str, Any]:
    """tritonclient[http], with its defaults (binary tensor data both ways)."""
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    try:
        metadata = client.get_model_metadata(model)
        classes = min(CLASSES, metadata["outputs"][0]["shape"][1])
        batch = np.array(images, dtype=np.object_)
        image = triton.InferInput("image", [len(images)], "BYTES")
        image.set_data_from_numpy(batch)  # binary_data=True: the binary tensor extension
        probabilities = client.infer(model, [image], request_id="triton-1")
        table = probabilities.as_numpy("probabilities")
        gzipped = client.infer(model, [image], request_compression_algorithm="gzip")
        wanted = [triton.InferRequestedOutput("probabilities", class_count=classes)]
        classified = client.infer(model, [image], outputs=wanted).as_numpy("probabilities")
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "server_extensions": client.get_server_metadata()["extensions"],
            "model_outputs": metadata["outputs"],
            "id": probabilities.get_response()["id"],
            "shape": list(table.shape),
            "top1": [int(i) for i in table.argmax(axis=1)],
            "top1_gzip": [int(i) for i in gzipped.as_numpy("probabilities").argmax(axis=1)],
            "classification": [[s.decode() for s in row] for row in classified],
            "top1_classification": [int(row[0].split(b":")[1]) for row in classified],
        }
    finally:
        client.close()


async def kserve_calls(url: str, model: str, images: list[bytes]) -> dict[str, Any]:
    """The kserve SDK's REST client: V2 (health, readiness, binary and base64 JSON inference)
    and V1 (TF Serving's ``:predict``)."""
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=60))
    try:
        binary = InferInput("image", [len(images)], "BYTES")
        binary.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        response = await v2.infer(url, InferRequest(model, [binary], request_id="kserve-1"), model)
        table = response.outputs[0].as_numpy().reshape(len(images), -1)
        as_base64 = InferInput(
            "image",
            [len(images)],
            "BYTES",
            data=[base64.b64encode(i).decode() for i in images],
            parameters={"content_type": "base64"},
        )
        json_table = (
            (await v2.infer(url, InferRequest(model, [as_base64]), model))
            .outputs[0]
            .as_numpy()
            .reshape(len(images), -1)
        )
        instances = [{"b64": base64.b64encode(i).decode()} for i in images]
        predictions = (await v1.infer(url, {"instances": instances}, model))["predictions"]
        return {
            "v2_live": await v2.is_server_live(url),
            "v2_ready": await v2.is_server_ready(url),
            "v2_model_ready": await v2.is_model_ready(url, model),
            "v2_id": response.id,
            "v2_top1": [int(i) for i in table.argmax(axis=1)],
            "v2_base64_top1": [int(i) for i in json_table.argmax(axis=1)],
            "v1_top1": [int(np.argmax(p)) for p in predictions],
        }
    finally:
        await v2.close()
        await v1.close()


def plain_http_calls(url: str, model: str, images: list[bytes]) -> dict[str, Any]:
    """What curl sends: V2 with base64 JSON, TF Serving's ``:classify``."""
    encoded = [base64.b64encode(i).decode() for i in images]
    v2 = requests.post(
        f"{url}/v2/models/{model}/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"content_type": "base64"},
                    "data": encoded,
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
        },
        timeout=60,
    )
    v2.raise_for_status()
    classify = requests.post(
        f"{url}/v1/models/{model}:classify",
        json={"examples": [{"image": {"b64": e}} for e in encoded]},
        timeout=60,
    )
    classify.raise_for_status()
    return {
        "v2_top1": [int(s.split(":")[1]) for s in v2.json()["outputs"][0]["data"]],
        "tfserving_classify": classify.json()["result"],
    }


def run(url: str, model: str, paths: list[Path]) -> dict[str, Any]:
    images = [p.read_bytes() for p in paths]
    return {
        "images": [p.name for p in paths],
        "predict_top1": top1_predict(url, model, images),
        "tritonclient": triton_calls(url, model, images),
        "kserve": asyncio.run(kserve_calls(url, model, images)),
        "plain_http": plain_http_calls(url, model, images),
    }


def top1_lists(report: dict[str, Any]) -> dict[str, list[int]]:
    """Every client's top-1 indices, by client and call."""
    return {
        "tritonclient FP32": report["tritonclient"]["top1"],
        "tritonclient class_count": report["tritonclient"]["top1_classification"],
        "tritonclient gzip request": report["tritonclient"]["top1_gzip"],
        "kserve V2 binary": report["kserve"]["v2_top1"],
        "kserve V2 base64": report["kserve"]["v2_base64_top1"],
        "kserve V1 :predict": report["kserve"]["v1_top1"],
        "HTTP V2 classification": report["plain_http"]["v2_top1"],
    }


def print_report(report: dict[str, Any]) -> None:
    out = sys.stdout
    triton_info, kserve_info = report["tritonclient"], report["kserve"]
    out.write(f"images: {', '.join(report['images'])}\n")
    out.write(f"{'POST /predict (reference)':<28} top-1 {report['predict_top1']}\n")
    for name, top1 in top1_lists(report).items():
        same = "same" if top1 == report["predict_top1"] else "DIFFERENT"
        out.write(f"{name:<28} top-1 {top1} ({same})\n")
    out.write(
        f"tritonclient: live={triton_info['live']} ready={triton_info['ready']} "
        f"model_ready={triton_info['model_ready']} id={triton_info['id']} "
        f"shape={triton_info['shape']}\n"
        f"  extensions={triton_info['server_extensions']}\n"
        f"  outputs={triton_info['model_outputs']}\n"
        f"  class_count={len(triton_info['classification'][0])}, first image: "
        f"{triton_info['classification'][0]}\n"
    )
    out.write(
        f"kserve SDK V2: live={kserve_info['v2_live']} ready={kserve_info['v2_ready']} "
        f"model_ready={kserve_info['v2_model_ready']} id={kserve_info['v2_id']}\n"
    )
    first = report["plain_http"]["tfserving_classify"][0][:3]
    out.write(f"TF Serving :classify, first image: {first}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = run(args.url.rstrip("/"), args.model, args.images)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        print_report(report)
    agree = all(top1 == report["predict_top1"] for top1 in top1_lists(report).values())
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())

"""The standard inference protocols QueueNet speaks beside its own ``/predict``: the Open
Inference Protocol (KServe V2, with Triton's binary-tensor and classification extensions) under
``/v2`` and TF Serving's REST API under ``/v1``. Each is a thin adapter over the same decode ->
enqueue -> wait path as ``/predict`` (``app.protocols.inference``), with the same limits,
deadlines, API keys, metrics and logs.

This module only names the protocols and tells which one a path belongs to (the error
handlers, the request log line and the metrics ask); it imports nothing from the app.
"""

from __future__ import annotations

QUEUENET = "queuenet"
"""``/predict``, ``/models/...`` and every other path: QueueNet's own API."""
KSERVE_V2 = "kserve-v2"
"""``/v2`` and below: the Open Inference Protocol (KServe V2 / Triton)."""
TFSERVING = "tfserving"
"""``/v1`` and below: TF Serving's REST API."""

PREFIXES = {"/v2": KSERVE_V2, "/v1": TFSERVING}


def protocol_of(path: str) -> str:
    """The protocol whose URL space ``path`` is in (its errors take that protocol's shape)."""
    for prefix, protocol in PREFIXES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return protocol
    return QUEUENET

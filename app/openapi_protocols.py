"""The OpenAPI description of the standard protocols' routes (``app.protocols``): the Open
Inference Protocol (KServe V2) under ``/v2`` and TF Serving's REST API under ``/v1``.

``app.openapi`` merges these paths and components into the one document. Their errors are
``{"error": "<message>"}`` (``ProtocolError``), with the statuses ``/predict`` gives.
"""

from __future__ import annotations

from typing import Any

from app.protocols.binary_tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH
from app.protocols.v2_messages import INPUT_NAME, OUTPUT_NAME
from app.settings import AppSettings

JSON = "application/json"
Schema = dict[str, Any]
V2_TAG = "kserve-v2"
TF_TAG = "tfserving"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _model(version: bool) -> list[Schema]:
    parameters = [path_parameter("model", "A model name (`GET /models`).")]
    if version:
        parameters.append(path_parameter("version", "A version of that model."))
    return parameters


def path_parameter(name: str, description: str) -> Schema:
    """A required string parameter in the URL path (both documents use it)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _json(schema: Schema, description: str, **headers: Any) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def protocol_paths(settings: AppSettings, example_png_base64: str) -> dict[str, dict[str, Any]]:
    """Every path of the two protocols, keyed as Flask's rules are (``{model}``); the request
    examples hold ``example_png_base64``, which a contract test sends and expects a 200 for."""
    paths: dict[str, dict[str, Any]] = {
        "/v2/health/live": {"get": _v2_live()},
        "/v2/health/ready": {"get": _v2_ready()},
        "/v2": {"get": _v2_server()},
    }
    for version in (False, True):
        base = "/v2/models/{model}" + ("/versions/{version}" if version else "")
        paths[base] = {"get": _v2_model_metadata(version)}
        paths[base + "/ready"] = {"get": _v2_model_ready(version)}
        paths[base + "/infer"] = {"post": _v2_infer(settings, version, example_png_base64)}
        tf_base = "/v1/models/{model}" + ("/versions/{version}" if version else "")
        paths[tf_base] = {"get": _tf_status(version)}
        paths[tf_base + "/metadata"] = {"get": _tf_metadata(version)}
        paths[tf_base + ":predict"] = {"post": _tf_predict(settings, version, example_png_base64)}
        paths[tf_base + ":classify"] = {"post": _tf_classify(settings, version, example_png_base64)}
    return paths


# --- KServe V2 -------------------------------------------------------------------------------


def _v2_live() -> Schema:
    return {
        "operationId": "v2Live",
        "tags": [V2_TAG],
        "summary": "Server liveness (Open Inference Protocol)",
        "description": "200 while the web process serves HTTP, like `/healthz`. No API key.",
        "responses": {
            "200": _json(
                {"type": "object", "required": ["live"], "properties": {"live": {"const": True}}},
                "Live.",
            )
        },
    }


def _v2_ready() -> Schema:
    def body(ready: bool) -> Schema:
        schema: Schema = {
            "type": "object",
            "required": ["ready"] + ([] if ready else ["error"]),
            "properties": {"ready": {"const": ready}, "error": {"type": "string"}},
        }
        return schema

    return {
        "operationId": "v2Ready",
        "tags": [V2_TAG],
        "summary": "Server readiness (Open Inference Protocol)",
        "description": (
            "`/readyz`'s checks: the default model's serving version has a model card, a live "
            "worker and room in its queue. 503 names the failed checks. No API key."
        ),
        "responses": {
            "200": _json(body(True), "Ready."),
            "503": _json(body(False), "Not ready; `error` says why."),
        },
    }


def _v2_server() -> Schema:
    return {
        "operationId": "v2ServerMetadata",
        "tags": [V2_TAG],
        "summary": "Server metadata (Open Inference Protocol)",
        "description": "The server's name and version and the protocol extensions it speaks.",
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["name", "version", "extensions"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "extensions": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "The server metadata.",
            )
        },
    }


def _v2_model_metadata(version: bool) -> Schema:
    tensor = _ref("schemas", "V2TensorMetadata")
    return {
        "operationId": "v2ModelVersionMetadata" if version else "v2ModelMetadata",
        "tags": [V2_TAG],
        "summary": "Model metadata (Open Inference Protocol)",
        "description": (
            f"One BYTES input `{INPUT_NAME}` of encoded images, shape `[-1]`; one FP32 output "
            f"`{OUTPUT_NAME}`, shape `[-1, classes]`. Without a version: the serving one."
        ),
        "parameters": _model(version),
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["name", "versions", "platform", "inputs", "outputs"],
                    "properties": {
                        "name": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "platform": {"type": "string"},
                        "inputs": {"type": "array", "items": tensor},
                        "outputs": {"type": "array", "items": tensor},
                    },
                },
                "The model metadata.",
            ),
            "404": _ref("responses", "ProtocolNotFound"),
            "503": _ref("responses", "ProtocolUnavailable"),
        },
    }


def _v2_model_ready(version: bool) -> Schema:
    ready: Schema = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    not_ready = {"oneOf": [ready | {"required": ["name", "ready", "error"]}, _error()]}
    return {
        "operationId": "v2ModelVersionReady" if version else "v2ModelReady",
        "tags": [V2_TAG],
        "summary": "Model readiness (Open Inference Protocol)",
        "description": (
            "200 when the version (without one: the serving version) has a model card and a "
            "live worker; 503 with the reason when not (or when Redis is unreachable)."
        ),
        "parameters": _model(version),
        "responses": {
            "200": _json(ready, "Ready."),
            "404": _ref("responses", "ProtocolNotFound"),
            "503": _json(not_ready, "Not ready.", **{"Retry-After": _optional_retry_after()}),
        },
    }


def _v2_infer(settings: AppSettings, version: bool, example: str) -> Schema:
    most = settings.max_images_per_request
    return {
        "operationId": "v2ModelVersionInfer" if version else "v2ModelInfer",
        "tags": [V2_TAG],
        "summary": "Classify a batch of images (Open Inference Protocol)",
        "description": (
            f"The input `{INPUT_NAME}` (BYTES, shape `[N]`, 1 to {most} encoded images) as "
            'base64 strings in JSON (`"parameters": {"content_type": "base64"}`) or as '
            f"Triton's binary tensor data (`{HEADER_LENGTH}` gives the JSON's length; each "
            "element is `<uint32 LE length><bytes>`). The output "
            f"`{OUTPUT_NAME}` is FP32 `[N, classes]`; with "
            '`"parameters": {"classification": k}` on it, BYTES `[N, k]` of '
            '`"score:index:label"`. `"binary_data": true` on the output, or '
            '`"binary_data_output": true` on the request, answers it as binary tensor data '
            f"(`{BINARY_CONTENT_TYPE}`). `parameters.timeout` (microseconds) shortens the "
            f"deadline ({settings.predict_timeout_s:g} s). The request `id` is echoed. A body "
            "may be sent with `Content-Encoding: gzip` or `deflate`; the size limit applies "
            "after decompression."
        ),
        "parameters": _model(version)
        + [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "description": "Length of the JSON header when binary tensor data follows it.",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
        "requestBody": {
            "required": True,
            "description": f"At most {settings.max_upload_bytes} bytes.",
            "content": {
                JSON: {
                    "schema": _ref("schemas", "V2InferRequest"),
                    "examples": {
                        "base64": {
                            "summary": "One image (a 1x1 red PNG), base64 in JSON",
                            "value": v2_example(example),
                        }
                    },
                },
                BINARY_CONTENT_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "The JSON header, then the binary tensor data.",
                    }
                },
            },
        },
        "responses": {
            "200": {
                "description": "The outputs; the binary tensor data after the JSON if asked.",
                "headers": {
                    HEADER_LENGTH: {
                        "description": "Length of the JSON header (binary answers only).",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    "X-Request-ID": _ref("headers", "X-Request-ID"),
                    "X-Model-Name": _ref("headers", "X-Model-Name"),
                    "X-Model-Version": _ref("headers", "X-Model-Version"),
                },
                "content": {
                    JSON: {"schema": _ref("schemas", "V2InferResponse")},
                    BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_inference_errors(),
        },
    }


def v2_example(png_base64: str) -> Schema:
    """A V2 request with one image (``png_base64``), asking for its top 2 classes."""
    return {
        "id": "example-1",
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [png_base64],
            }
        ],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"classification": 2}}],
    }


def _inference_errors() -> dict[str, Any]:
    return {
        "400": _ref("responses", "ProtocolBadRequest"),
        "404": _ref("responses", "ProtocolNotFound"),
        "413": _ref("responses", "ProtocolTooLarge"),
        "500": _ref("responses", "ProtocolFailed"),
        "503": _ref("responses", "ProtocolUnavailable"),
        "504": _ref("responses", "ProtocolTimeout"),
    }


# --- TF Serving ------------------------------------------------------------------------------


def _tf_status(version: bool) -> Schema:
    return {
        "operationId": "tfModelVersionStatus" if version else "tfModelStatus",
        "tags": [TF_TAG],
        "summary": "Model status (TF Serving)",
        "description": (
            "Each version's state: `AVAILABLE` with a model card and a live worker, else `END`."
        ),
        "parameters": _model(version),
        "responses": {
            "200": _json(_ref("schemas", "TFModelStatus"), "The versions' states."),
            "404": _ref("responses", "ProtocolNotFound"),
            "503": _ref("responses", "ProtocolUnavailable"),
        },
    }


def _tf_metadata(version: bool) -> Schema:
    return {
        "operationId": "tfModelVersionMetadata" if version else "tfModelMetadata",
        "tags": [TF_TAG],
        "summary": "Model metadata (TF Serving)",
        "description": "The model spec and its one signature, `serving_default`.",
        "parameters": _model(version),
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["model_spec", "metadata"],
                    "properties": {
                        "model_spec": {"type": "object", "required": ["name", "version"]},
                        "metadata": {"type": "object", "required": ["signature_def"]},
                    },
                },
                "The metadata.",
            ),
            "404": _ref("responses", "ProtocolNotFound"),
            "503": _ref("responses", "ProtocolUnavailable"),
        },
    }


def _tf_predict(settings: AppSettings, version: bool, example: str) -> Schema:
    rows = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    return {
        "operationId": "tfModelVersionPredict" if version else "tfModelPredict",
        "tags": [TF_TAG],
        "summary": "Every class's probability for each image (TF Serving)",
        "description": (
            'Rows (`"instances"`: each `{"b64": ...}` or `{"image": {"b64": ...}}`) are '
            'answered as `"predictions"`, columns (`"inputs"`) as `"outputs"`: one list of '
            f"probabilities per image, by class index. 1 to {settings.max_images_per_request} "
            "images."
        ),
        "parameters": _model(version),
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": _ref("schemas", "TFPredictRequest"),
                    "examples": {
                        "instances": {
                            "summary": "One image (a 1x1 red PNG)",
                            "value": {"instances": [{"b64": example}]},
                        }
                    },
                }
            },
        },
        "responses": {
            "200": _json(
                {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["predictions"],
                            "properties": {"predictions": rows},
                        },
                        {
                            "type": "object",
                            "required": ["outputs"],
                            "properties": {"outputs": rows},
                        },
                    ]
                },
                "The probabilities.",
            ),
            **_inference_errors(),
        },
    }


def _tf_classify(settings: AppSettings, version: bool, example: str) -> Schema:
    pair = {  # [label, score]; schemathesis does not read prefixItems
        "type": "array",
        "items": {"type": ["string", "number"]},
        "minItems": 2,
        "maxItems": 2,
    }
    return {
        "operationId": "tfModelVersionClassify" if version else "tfModelClassify",
        "tags": [TF_TAG],
        "summary": "The most probable labels of each image (TF Serving)",
        "description": (
            f"The {settings.default_top_k} (`QUEUENET_DEFAULT_TOP_K`) most probable "
            '`[label, score]` pairs of each example\'s `image` feature (`{"b64": ...}`; '
            "`context` features apply to every example), highest first."
        ),
        "parameters": _model(version),
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": _ref("schemas", "TFClassifyRequest"),
                    "examples": {
                        "examples": {
                            "summary": "One image (a 1x1 red PNG)",
                            "value": {"examples": [{"image": {"b64": example}}]},
                        }
                    },
                }
            },
        },
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["result"],
                    "properties": {
                        "result": {"type": "array", "items": {"type": "array", "items": pair}}
                    },
                },
                "The labels and scores.",
            ),
            **_inference_errors(),
        },
    }


# --- components ------------------------------------------------------------------------------


def _error() -> Schema:
    return _ref("schemas", "ProtocolError")


def _optional_retry_after() -> Schema:
    return {
        "description": "Seconds to wait before retrying (when the cause is temporary).",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    }


def protocol_responses() -> dict[str, Any]:
    request_id = _ref("headers", "X-Request-ID")
    error = _error()
    return {
        "ProtocolBadRequest": _json(
            error,
            "A body that does not fit the protocol or the model, too many images, or an image "
            "that cannot be read (empty, corrupt, over the pixel limit).",
        ),
        "ProtocolUnauthorized": _json(
            error,
            "No valid API key (only when the server sets `QUEUENET_API_KEYS`).",
            **{"WWW-Authenticate": _ref("headers", "WWW-Authenticate")},
        ),
        "ProtocolNotFound": _json(
            error, "No such model or version (the message names those that exist), or no route."
        ),
        "ProtocolTooLarge": _json(error, "The body is over `QUEUENET_MAX_UPLOAD_BYTES`."),
        "ProtocolFailed": _json(
            error, "The worker could not classify an image.", **{"X-Request-ID": request_id}
        ),
        "ProtocolUnavailable": _json(
            error,
            "Redis unreachable, no model card yet, or the version's queue is full.",
            **{"Retry-After": _ref("headers", "Retry-After"), "X-Request-ID": request_id},
        ),
        "ProtocolTimeout": _json(
            error,
            "No answer within the deadline (`QUEUENET_PREDICT_TIMEOUT_S`, or a shorter "
            "`parameters.timeout`).",
            **{"X-Request-ID": request_id},
        ),
    }


def protocol_schemas(settings: AppSettings) -> dict[str, Any]:
    most = settings.max_images_per_request
    b64_value = {
        "type": "object",
        "required": ["b64"],
        "properties": {"b64": {"type": "string", "contentEncoding": "base64"}},
        "additionalProperties": False,
    }
    instance = {
        "oneOf": [
            b64_value,
            {
                "type": "object",
                "required": [INPUT_NAME],
                "properties": {INPUT_NAME: b64_value},
                "additionalProperties": False,
            },
        ]
    }
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    return {
        "ProtocolError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "For people."}},
        },
        "V2TensorMetadata": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "V2InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "properties": {
                        "timeout": {"type": "integer", "minimum": 0},
                        "binary_data_output": {"type": "boolean"},
                    },
                },
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape"],
                        "properties": {
                            "name": {"const": INPUT_NAME},
                            "datatype": {"const": "BYTES"},
                            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "content_type": {"const": "base64"},
                                    "binary_data_size": {"type": "integer", "minimum": 0},
                                },
                            },
                            "data": {
                                "type": "array",
                                "maxItems": most,
                                "items": {"type": "string", "contentEncoding": "base64"},
                            },
                        },
                    },
                },
                "outputs": {
                    "type": "array",
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"const": OUTPUT_NAME},
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "binary_data": {"type": "boolean"},
                                    "classification": {"type": "integer", "minimum": 0},
                                },
                            },
                        },
                    },
                },
            },
        },
        "V2InferResponse": {
            "type": "object",
            "required": ["model_name", "model_version", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": tensor},
            },
        },
        "TFModelStatus": {
            "type": "object",
            "required": ["model_version_status"],
            "properties": {
                "model_version_status": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["version", "state", "status"],
                        "properties": {
                            "version": {"type": "string"},
                            "state": {"enum": ["AVAILABLE", "END"]},
                            "status": {
                                "type": "object",
                                "required": ["error_code", "error_message"],
                            },
                        },
                    },
                }
            },
        },
        "TFPredictRequest": {
            "type": "object",
            "properties": {
                "signature_name": {"type": "string"},
                "instances": {"type": "array", "minItems": 1, "maxItems": most, "items": instance},
                "inputs": {},
            },
        },
        "TFClassifyRequest": {
            "type": "object",
            "required": ["examples"],
            "properties": {
                "signature_name": {"type": "string"},
                "context": {"type": "object"},
                "examples": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": most,
                    "items": {
                        "type": "object",
                        "required": [INPUT_NAME],
                        "properties": {INPUT_NAME: b64_value},
                    },
                },
            },
        },
    }

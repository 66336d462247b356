"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Built from the running settings, so the limits it states (body size, images per request,
default ``top_k``) and whether API keys are required are those of this deployment. Paths in
``app.auth.EXEMPT_PATHS`` are described as open; every other one may answer 401 when keys are
configured. ``servers`` is relative: the document is valid behind any host or proxy prefix.

A CI test (``tests/test_openapi.py``) runs schemathesis against a live service with this
document: no 5xx, and every status code, content type, header and body as described here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from app.auth import EXEMPT_PATHS
from app.openapi_protocols import (
    path_parameter,
    protocol_paths,
    protocol_responses,
    protocol_schemas,
)
from app.protocols import QUEUENET, protocol_of
from app.settings import AppSettings

OPENAPI_VERSION = "3.1.0"

EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mP4xcUFAAMQAQ/pbTdJAAAAAElFTkSuQmCC"
)
"""A 1x1 red PNG: the request examples, which a contract test sends and expects a 200 for."""

JSON = "application/json"
Schema = dict[str, Any]


def openapi_document(settings: AppSettings) -> dict[str, Any]:
    """The whole document as plain JSON-serialisable data."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(settings),
        "servers": [{"url": "/", "description": "this server (paths are relative)"}],
        "security": _security(required=bool(settings.api_keys)),
        "tags": [
            {"name": "predict", "description": "Image classification."},
            {"name": "models", "description": "The models and versions served, and their routes."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
            {"name": "demo", "description": "The browser demo page."},
            {"name": "kserve-v2", "description": "The Open Inference Protocol (KServe V2)."},
            {"name": "tfserving", "description": "TF Serving's REST API."},
        ],
        "paths": _paths(settings),
        "components": {
            "schemas": _schemas(settings) | protocol_schemas(settings),
            "responses": _responses() | protocol_responses(),
            "headers": _headers(),
            "securitySchemes": _security_schemes(),
        },
    }


def _package_version() -> str:
    try:
        return version("queuenet")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _info(settings: AppSettings) -> dict[str, Any]:
    return {
        "title": "QueueNet",
        "version": _package_version(),
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        "description": (
            "Image classification over HTTP. Uploaded images are queued in Redis and "
            "classified in batches by model workers.\n\n"
            "Every error, unknown paths included, is JSON: "
            '`{"success": false, "error": {"code": "...", "message": "..."}}`.\n\n'
            f"Limits of this server: request bodies up to {settings.max_upload_bytes} bytes "
            f"(`QUEUENET_MAX_UPLOAD_BYTES`), {settings.max_images_per_request} images per "
            f"request (`QUEUENET_MAX_IMAGES_PER_REQUEST`), {settings.max_image_pixels} pixels "
            f"per decoded image (`QUEUENET_MAX_IMAGE_PIXELS`), an answer within "
            f"{settings.predict_timeout_s:g} s (`QUEUENET_PREDICT_TIMEOUT_S`)."
        ),
    }


def _security(*, required: bool) -> list[dict[str, list[str]]]:
    """Keys are enforced only when ``QUEUENET_API_KEYS`` is set; otherwise they are optional."""
    schemes: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    return schemes if required else [{}, *schemes]


def _security_schemes() -> dict[str, Any]:
    enforced = (
        "Enforced only when the server sets `QUEUENET_API_KEYS`; then every path except "
        f"{', '.join(f'`{p}`' for p in sorted(EXEMPT_PATHS))} answers 401 without a valid key."
    )
    return {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": f"`Authorization: Bearer <key>`. {enforced}",
        },
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": f"`X-API-Key: <key>`. {enforced}",
        },
    }


# --- paths -----------------------------------------------------------------------------------


def _paths(settings: AppSettings) -> dict[str, Any]:
    operations: dict[str, dict[str, Any]] = {
        "/predict": {"post": _predict(settings)},
        "/models/{name}/predict": {"post": _predict(settings, model=True)},
        "/models/{name}/versions/{version}/predict": {
            "post": _predict(settings, model=True, version=True)
        },
        "/models": {"get": _list_models()},
        "/models/{name}": {"get": _show_model()},
        "/healthz": {"get": _healthz()},
        "/readyz": {"get": _readyz()},
        "/metrics": {"get": _metrics()},
        "/openapi.json": {"get": _openapi_json()},
        "/": {"get": _demo_page()},
    }
    operations |= protocol_paths(settings, EXAMPLE_PNG_BASE64)
    for path, methods in operations.items():
        for operation in methods.values():
            if path in EXEMPT_PATHS:
                operation["security"] = []
            elif protocol_of(path) == QUEUENET:
                operation["responses"]["401"] = _ref_response("Unauthorized")
            else:
                operation["responses"]["401"] = _ref_response("ProtocolUnauthorized")
    return operations


def _predict(settings: AppSettings, *, model: bool = False, version: bool = False) -> Schema:
    if version:
        operation_id, which = "predictWithVersion", "version `version` of model `name`"
    elif model:
        operation_id, which = (
            "predictWithModel",
            "model `name`: its serving version, or, for its canary share, the canary version",
        )
    else:
        operation_id, which = "predict", "the default model"
    path_parameters = [path_parameter("name", "A model name (`GET /models`).")] if model else []
    if version:
        path_parameters.append(path_parameter("version", "A version of that model."))
    return {
        "operationId": operation_id,
        "tags": ["predict"],
        "summary": f"Classify one or more images with {which.split(':')[0]}",
        "description": (
            f"Classifies with {which}. "
            "Answers the `top_k` most probable classes of each image, highest probability "
            "first. One image (one multipart field `image`, or JSON `image`) is answered with "
            "`predictions`; several (repeated `image` fields, or JSON `images`, even of one) "
            "with `results`, one entry per image in order, each its own success or error. "
            "The images of one request are queued all or none. `model` and the "
            "`X-Model-Version` header say which model version answered."
        ),
        "parameters": path_parameters
        + [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "description": (
                    "How many classes to return: 1 to the model's number of classes. "
                    f"Default {settings.default_top_k} (`QUEUENET_DEFAULT_TOP_K`), capped at "
                    "the number of classes. Takes precedence over a `top_k` form or JSON field."
                ),
                "schema": {"$ref": "#/components/schemas/TopK"},
            }
        ],
        "requestBody": _predict_body(settings),
        "responses": {
            "200": {
                "description": "The predictions.",
                "headers": {
                    "X-Request-ID": _ref_header("X-Request-ID"),
                    "X-Model-Name": _ref_header("X-Model-Name"),
                    "X-Model-Version": _ref_header("X-Model-Version"),
                },
                "content": {
                    JSON: {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/PredictResponse"},
                                {"$ref": "#/components/schemas/PredictManyResponse"},
                            ]
                        }
                    }
                },
            },
            "400": _ref_response("BadRequest"),
            "404": _ref_response("ModelNotFound"),
            "413": _ref_response("PayloadTooLarge"),
            "500": _ref_response("PredictionFailed"),
            "503": _ref_response("Unavailable"),
            "504": _ref_response("Timeout"),
        },
    }


def _predict_body(settings: AppSettings) -> dict[str, Any]:
    most = settings.max_images_per_request
    return {
        "required": True,
        "description": (
            f"At most {settings.max_upload_bytes} bytes and {most} images. Any image format "
            "Pillow reads except EPS; it is centre-cropped and resized to the model's input."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": most,
                            "items": {"type": "string", "format": "binary"},
                            "description": (
                                "The image file(s): one file field `image` per image "
                                "(`curl -F image=@photo.jpg`). Repeat the field for several."
                            ),
                        },
                        "top_k": {"$ref": "#/components/schemas/TopK"},
                    },
                }
            },
            JSON: {
                "schema": {"$ref": "#/components/schemas/PredictJSONRequest"},
                "examples": {
                    "one": {
                        "summary": "One image (a 1x1 red PNG)",
                        "value": {"image": EXAMPLE_PNG_BASE64, "top_k": 2},
                    },
                    "several": {
                        "summary": "Two images, one as a data: URL",
                        "value": {
                            "images": [
                                EXAMPLE_PNG_BASE64,
                                f"data:image/png;base64,{EXAMPLE_PNG_BASE64}",
                            ]
                        },
                    },
                },
            },
        },
    }


def _list_models() -> dict[str, Any]:
    return {
        "operationId": "listModels",
        "tags": ["models"],
        "summary": "Every model and version",
        "description": (
            "Each model with its versions (ready or not, live workers, input size, number of "
            "labels, queued requests), which version serves its unversioned requests "
            "(`serving`) and any canary, and which model `POST /predict` serves (`default`)."
        ),
        "responses": {
            "200": {
                "description": "The models.",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/ModelList"}}},
            },
            "503": _ref_response("RedisUnavailable"),
        },
    }


def _show_model() -> dict[str, Any]:
    return {
        "operationId": "showModel",
        "tags": ["models"],
        "summary": "One model and its versions",
        "parameters": [path_parameter("name", "A model name.")],
        "responses": {
            "200": {
                "description": "The model.",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/Model"}}},
            },
            "404": _ref_response("ModelNotFound"),
            "503": _ref_response("RedisUnavailable"),
        },
    }


def _healthz() -> dict[str, Any]:
    return {
        "operationId": "healthz",
        "tags": ["operations"],
        "summary": "Liveness",
        "description": "200 while the web process serves HTTP; checks nothing else.",
        "responses": {
            "200": {
                "description": "The process is up.",
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        }
                    }
                },
            }
        },
    }


def _readyz() -> dict[str, Any]:
    def readiness(ready: bool) -> Schema:
        return {
            "allOf": [{"$ref": "#/components/schemas/Readiness"}],
            "properties": {"ready": {"const": ready}},
        }

    return {
        "operationId": "readyz",
        "tags": ["operations"],
        "summary": "Readiness",
        "description": (
            "200 when this replica can serve the default model now: Redis answers, the default "
            "model's serving version has a worker with a fresh heartbeat, a model card and "
            "room in its queue. 503 names the failing checks (only `redis` when Redis is "
            "unreachable)."
        ),
        "responses": {
            "200": {
                "description": "Ready.",
                "content": {JSON: {"schema": readiness(True)}},
            },
            "503": {
                "description": "Not ready; see the checks with `ok: false`.",
                "content": {JSON: {"schema": readiness(False)}},
            },
        },
    }


def _metrics() -> dict[str, Any]:
    return {
        "operationId": "metrics",
        "tags": ["operations"],
        "summary": "Prometheus metrics",
        "description": (
            "Prometheus text exposition of the web tier (all gunicorn processes) and of the "
            "queue (depth, live workers, Redis reachable). Answers 200 even without Redis."
        ),
        "responses": {
            "200": {
                "description": "The metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }


def _openapi_json() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "tags": ["operations"],
        "summary": "This OpenAPI document",
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 description of this server.",
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["openapi", "info", "paths"],
                            "properties": {"openapi": {"type": "string", "pattern": r"^3\.1\."}},
                        }
                    }
                },
            }
        },
    }


def _demo_page() -> dict[str, Any]:
    return {
        "operationId": "demoPage",
        "tags": ["demo"],
        "summary": "Demo page",
        "description": (
            "A page to classify an image from a browser; it calls `POST /predict`. Its "
            "stylesheet, script and icon are served under `/static/`."
        ),
        "responses": {
            "200": {
                "description": "The page.",
                "headers": {
                    "Content-Security-Policy": {
                        "required": True,
                        "description": "Nothing may be loaded from or sent to another origin.",
                        "schema": {"type": "string"},
                    }
                },
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    }


# --- components ------------------------------------------------------------------------------


def _ref_response(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _ref_header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _error_response(description: str, codes: list[str] | None, **headers: Any) -> Schema:
    """A JSON error response; ``codes`` restricts ``error.code`` (None: any string)."""
    schema: Schema = {"$ref": "#/components/schemas/Error"}
    if codes is not None:
        code = {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}
        schema = {"allOf": [schema, code]}
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _responses() -> dict[str, Any]:
    request_id = _ref_header("X-Request-ID")
    return {
        "BadRequest": _error_response(
            "`invalid_request`: no image, a wrong body shape, too many images or a bad "
            "`top_k`; `invalid_image`: empty, not an image, truncated, corrupt or over the "
            "pixel limit. The message says which and, for a missing field, what arrived.",
            ["invalid_request", "invalid_image"],
        ),
        "Unauthorized": _error_response(
            "No valid API key (only when the server sets `QUEUENET_API_KEYS`). Sent for any "
            "method and any path but the open ones, unknown paths included.",
            ["unauthorized"],
            **{"WWW-Authenticate": _ref_header("WWW-Authenticate")},
        ),
        "ModelNotFound": _error_response(
            "`model_not_found`: no such model; `model_version_not_found`: no such version of "
            "it. The message names the models and versions that exist.",
            ["model_not_found", "model_version_not_found"],
        ),
        "RedisUnavailable": _error_response(
            "`queue_unavailable`: Redis unreachable (answered at once).",
            ["queue_unavailable"],
            **{"Retry-After": _ref_header("Retry-After")},
        ),
        "PayloadTooLarge": _error_response(
            "The request body is over `QUEUENET_MAX_UPLOAD_BYTES` (or a non-file form value "
            "over Flask's form memory limit).",
            ["request_entity_too_large"],
        ),
        "PredictionFailed": _error_response(
            "The worker could not classify the image (`prediction_failed`, `invalid_input`, "
            "`invalid_message`, ...), or an unexpected server error (`internal_error`).",
            None,
            **{"X-Request-ID": request_id},
        ),
        "Unavailable": _error_response(
            "`queue_unavailable`: Redis unreachable (answered at once); `model_unavailable`: "
            "no model is served yet, or no worker of the version has published its model "
            "card; `queue_full`: `QUEUENET_MAX_QUEUE` requests are already waiting in the "
            "version's queue. Retry after `Retry-After` seconds.",
            ["queue_unavailable", "model_unavailable", "queue_full"],
            **{"Retry-After": _ref_header("Retry-After"), "X-Request-ID": request_id},
        ),
        "Timeout": _error_response(
            "No answer within `QUEUENET_PREDICT_TIMEOUT_S`, queueing included.",
            ["prediction_timeout"],
            **{"X-Request-ID": request_id},
        ),
    }


def _headers() -> dict[str, Any]:
    return {
        "X-Request-ID": {
            "description": (
                "The job id of each image that was queued, comma-separated in request order; "
                "absent when nothing was queued. It names the request in the server logs."
            ),
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9a-f]{32}(,[0-9a-f]{32})*$"},
        },
        "X-Model-Name": {
            "description": "The model that answered (or, on an error, was asked).",
            "required": True,
            "schema": {"type": "string"},
        },
        "X-Model-Version": {
            "description": "The version of that model that answered (or was asked).",
            "required": True,
            "schema": {"type": "string"},
        },
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        },
        "WWW-Authenticate": {
            "description": (
                '`Bearer realm="queuenet"`, with `error="invalid_token"` when a key was sent '
                "but is not valid (RFC 6750)."
            ),
            "required": True,
            "schema": {"type": "string", "pattern": "^Bearer "},
        },
    }


def _schemas(settings: AppSettings) -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["success", "error"],
            "properties": {
                "success": {"const": False},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "Stable, for programs."},
                        "message": {"type": "string", "description": "For people."},
                    },
                },
            },
        },
        "TopK": {"type": "integer", "minimum": 1, "default": settings.default_top_k},
        "Base64Image": {
            "type": "string",
            "description": (
                "An image file in standard base64 (no line breaks), or a `data:` URL holding "
                "one (`data:image/png;base64,...`)."
            ),
            "anyOf": [{"contentEncoding": "base64"}, {"pattern": "^data:[^,]*,"}],
        },
        "PredictJSONRequest": _predict_json_request(settings),
        "Prediction": {
            "type": "object",
            "required": ["label", "probability", "index"],
            "properties": {
                "label": {"type": "string", "description": "Labels may repeat; see `index`."},
                "probability": {"type": "number", "minimum": 0, "maximum": 1},
                "index": {"type": "integer", "minimum": 0, "description": "The class index."},
            },
        },
        "Predictions": {
            "type": "array",
            "minItems": 1,
            "description": "Highest probability first.",
            "items": {"$ref": "#/components/schemas/Prediction"},
        },
        "ModelRef": {
            "type": "object",
            "description": "The model version that answered.",
            "required": ["name", "version"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        },
        "PredictResponse": {
            "type": "object",
            "required": ["success", "predictions", "model"],
            "properties": {
                "success": {"const": True},
                "predictions": {"$ref": "#/components/schemas/Predictions"},
                "model": {"$ref": "#/components/schemas/ModelRef"},
            },
        },
        "ImageResult": {
            "type": "object",
            "required": ["success", "predictions"],
            "properties": {
                "success": {"const": True},
                "predictions": {"$ref": "#/components/schemas/Predictions"},
            },
        },
        "PredictManyResponse": {
            "type": "object",
            "required": ["success", "results", "model"],
            "properties": {
                "success": {"const": True},
                "model": {"$ref": "#/components/schemas/ModelRef"},
                "results": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_images_per_request,
                    "description": "One entry per image, in request order.",
                    "items": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/ImageResult"},
                            {"$ref": "#/components/schemas/ImageError"},
                        ]
                    },
                },
            },
        },
        "ImageError": _image_error(),
        "ModelList": {
            "type": "object",
            "required": ["default", "models"],
            "properties": {
                "default": {
                    "type": ["string", "null"],
                    "description": "The model `POST /predict` serves.",
                },
                "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
            },
        },
        "Model": _model_schema(),
        "ModelVersion": _model_version_schema(),
        "Readiness": _readiness(),
        "Check": {
            "type": "object",
            "required": ["ok"],
            "properties": {
                "ok": {"type": "boolean"},
                "error": {"type": "string", "description": "Why the check failed."},
                "live": {"type": "integer", "minimum": 0, "description": "Live workers."},
                "depth": {"type": "integer", "minimum": 0, "description": "Queued requests."},
                "max": {"type": "integer", "minimum": 1, "description": "QUEUENET_MAX_QUEUE."},
                "name": {"type": "string", "description": "The default model."},
                "version": {"type": "string", "description": "Its serving version."},
            },
        },
    }


def _model_schema() -> Schema:
    return {
        "type": "object",
        "required": ["name", "serving", "canary", "versions"],
        "properties": {
            "name": {"type": "string"},
            "serving": {
                "type": ["string", "null"],
                "description": "The version that answers unversioned requests.",
            },
            "canary": {
                "description": "A version that takes `percent` % of unversioned requests.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["version", "percent"],
                        "properties": {
                            "version": {"type": "string"},
                            "percent": {"type": "number", "minimum": 0, "maximum": 100},
                        },
                    },
                ],
            },
            "versions": {"type": "array", "items": {"$ref": "#/components/schemas/ModelVersion"}},
        },
    }


def _model_version_schema() -> Schema:
    count = {"type": "integer", "minimum": 0}
    maybe_count = {"type": ["integer", "null"], "minimum": 1}
    return {
        "type": "object",
        "required": ["version", "ready", "workers", "input_size", "labels"],
        "properties": {
            "version": {"type": "string"},
            "ready": {"type": "boolean", "description": "A model card and a live worker."},
            "workers": count | {"description": "Workers with a fresh heartbeat."},
            "input_size": maybe_count | {"description": "Side of the square input, pixels."},
            "labels": maybe_count | {"description": "Number of classes."},
            "queued": count,
            "dead_letters": count,
            "card": {"type": ["string", "null"], "description": "The model card's fingerprint."},
            "recipe": {
                "description": "How images are prepared for it (see the README).",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["resize", "crop_padding", "resample"],
                        "properties": {
                            "resize": {"enum": ["center-crop", "stretch"]},
                            "crop_padding": count,
                            "resample": {"type": "string"},
                        },
                    },
                ],
            },
        },
    }


def _predict_json_request(settings: AppSettings) -> Schema:
    top_k = {"$ref": "#/components/schemas/TopK"}
    image = {"$ref": "#/components/schemas/Base64Image"}
    return {
        "description": "Exactly one of `image` (answered with `predictions`) or `images`.",
        "oneOf": [
            {
                "type": "object",
                "required": ["image"],
                "properties": {"image": image, "top_k": top_k},
            },
            {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": settings.max_images_per_request,
                        "items": image,
                    },
                    "top_k": top_k,
                },
            },
        ],
    }


def _image_error() -> Schema:
    return {
        "type": "object",
        "description": "One image of several that could not be classified.",
        "required": ["success", "error"],
        "properties": {
            "success": {"const": False},
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "status": {
                        "type": "integer",
                        "description": "The status this error has for a single image.",
                        "minimum": 400,
                        "maximum": 599,
                    },
                },
            },
        },
    }


def _readiness() -> Schema:
    check = {"$ref": "#/components/schemas/Check"}
    return {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {
                "type": "object",
                "required": ["redis"],
                "properties": {
                    "redis": check,
                    "model": check,
                    "workers": check,
                    "model_card": check,
                    "queue": check,
                },
                "additionalProperties": check,
            },
        },
    }

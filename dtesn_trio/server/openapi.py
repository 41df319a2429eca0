"""The OpenAPI 3.1 document, generated from the msgspec models, and the docs page."""

from __future__ import annotations

import copy
import html
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from dtesn_trio._version import __version__
from dtesn_trio.server.config import ServerConfig
from dtesn_trio.server.models import (
    BatchRequest,
    BatchResponse,
    ErrorBody,
    HealthResponse,
    JobAccepted,
    JobRequest,
    JobResponse,
    ProcessRequest,
    ProcessResponse,
    StatsResponse,
)
from dtesn_trio.server.models_routes import (
    ActivateResponse,
    ChunkAccepted,
    ChunkRequest,
    FitAccepted,
    FitRequest,
    ModelDetail,
    ModelList,
    SearchRequest,
)
from dtesn_trio.server.sessions_routes import add_session_paths

__all__ = ["docs_html", "openapi_document"]

_MODELS: tuple[type[Any], ...] = (
    ProcessRequest,
    ProcessResponse,
    BatchRequest,
    BatchResponse,
    JobRequest,
    JobAccepted,
    JobResponse,
    StatsResponse,
    HealthResponse,
    ErrorBody,
    FitRequest,
    FitAccepted,
    ChunkRequest,
    ChunkAccepted,
    SearchRequest,
    ModelList,
    ModelDetail,
    ActivateResponse,
)

_ERRORS = {
    "400": "Malformed body: not JSON, or not UTF-8",
    "401": "API key missing or wrong",
    "404": "No such job, model, model version or chunked fit (or durable jobs are"
    " disabled); error.field names which",
    "404-plot": "No such model or version (error.field names which), or the version was"
    " made by a plain fit: no trials to plot (field version)",
    "408": "The body did not arrive within server.body_timeout (connection closed)",
    "409-chunk": "Another chunk of this fit was applied meanwhile: chunks apply in order;"
    " send this one again",
    "409": "Idempotency-Key already used for a job with another payload (error.field names"
    " the header); a repeat with the same payload answers 200 with the first job",
    "410": "The job existed and was deleted by the retention policy (code expired)",
    "413": "Body over the configured limit",
    "422": "A field has the wrong type or value (error.field names it)",
    "429": "Rate limited; see Retry-After",
    "503": "Overloaded, circuit open, backend down or shutting down; see Retry-After",
    "504": "The request's deadline passed",
    "500": "Internal error (a bug; logged with the request id), or engine_error: the"
    " engine failed on this input (cause logged, never sent)",
}

_SVG = "image/svg+xml"  # a success "model" that is an SVG document, not JSON

# (method, path, summary, request model, success status, success model, error statuses)
_ROUTES: tuple[tuple[str, str, str, type[Any] | None, str, Any, tuple[str, ...]], ...] = (
    (
        "post",
        "/v1/process",
        "Process one input through the engine",
        ProcessRequest,
        "200",
        ProcessResponse,
        ("400", "401", "404", "408", "413", "422", "429", "503", "504", "500"),
    ),
    (
        "post",
        "/v1/process/batch",
        "Process 1-100 inputs; each has its own outcome",
        BatchRequest,
        "200",
        BatchResponse,
        ("400", "401", "404", "408", "413", "422", "429", "503", "504", "500"),
    ),
    (
        "post",
        "/v1/jobs",
        "Submit a durable job (stored before the 202 is sent)",
        JobRequest,
        "202",
        JobAccepted,
        ("400", "401", "408", "409", "413", "422", "503", "500"),
    ),
    (
        "get",
        "/v1/jobs/{job_id}",
        "A job's status, result or error",
        None,
        "200",
        JobResponse,
        ("401", "404", "410", "503", "500"),
    ),
    (
        "get",
        "/v1/models",
        "Every registered model",
        None,
        "200",
        ModelList,
        ("401", "404", "503", "500"),
    ),
    (
        "get",
        "/v1/models/{name}",
        "A model's versions: config, scores, fit, created, which is active",
        None,
        "200",
        ModelDetail,
        ("401", "404", "422", "503", "500"),
    ),
    (
        "post",
        "/v1/models/{name}/fit",
        "Fit a readout as a durable job (a new immutable version); chunked: true opens a"
        " chunked fit instead",
        FitRequest,
        "202",
        FitAccepted,
        ("400", "401", "404", "408", "413", "422", "503", "500"),
    ),
    (
        "post",
        "/v1/models/{name}/fit/{job}/chunks",
        "The next chunk of a chunked fit (the reservoir's state carries over); the last"
        " one submits the solve as a durable job (202)",
        ChunkRequest,
        "200",
        ChunkAccepted,
        ("400", "401", "404", "408", "409-chunk", "413", "422", "503", "500"),
    ),
    (
        "post",
        "/v1/models/{name}/search",
        "Hyperparameter search (grid or random) as a durable job; the best trial becomes a"
        " new version with every trial's score (and a plot of them). Without a space: the"
        " server's default space (SearchRequest says which)",
        SearchRequest,
        "202",
        FitAccepted,
        ("400", "401", "404", "408", "413", "422", "503", "500"),
    ),
    (
        "post",
        "/v1/models/{name}/versions/{version}/activate",
        "Make a version the one 'name' resolves to (atomic: requests in flight finish on theirs)",
        None,
        "200",
        ActivateResponse,
        ("401", "404", "422", "503", "500"),
    ),
    (
        "get",
        "/v1/models/{name}/versions/{version}/plot.svg",
        "The validation NRMSE of every trial of the search that made this version, as an"
        " SVG (one mark per trial; the best filled, a failed trial a cross)",
        None,
        "200",
        _SVG,
        ("401", "404-plot", "422", "503", "500"),
    ),
    ("get", "/v1/stats", "Runtime statistics", None, "200", StatsResponse, ("401", "500")),
    ("get", "/healthz", "Alive", None, "200", HealthResponse, ()),
    ("get", "/readyz", "Ready: pools up, not shutting down", None, "200", HealthResponse, ("503",)),
)

_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "job_id": {"type": "string"},
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    "job": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "version": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"},
}

_PUBLIC = frozenset({"/healthz", "/readyz"})


def _limit_input(schema: dict[str, Any], config: ServerConfig) -> None:
    """The server's ``max_input_length`` on a top-level string or array input."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            option["maxLength"] = min(option.get("maxLength", math.inf), config.max_input_length)
        elif option.get("type") == "array":
            option["maxItems"] = min(option.get("maxItems", math.inf), config.max_input_length)


def _apply_limits(
    schemas: dict[str, Any],
    config: ServerConfig,
    input_schema: dict[str, Any] | None,
    options: Mapping[str, dict[str, Any]] | None,
) -> None:
    """The models carry the hard ceilings; this server's config and its engine (its
    input's schema, the request options it takes) may be tighter, and the document says
    exactly what this server accepts."""
    for name in ("ProcessRequest", "JobRequest", "BatchRequest"):
        props = schemas[name]["properties"]
        if "input" in props:
            if input_schema is not None:
                props["input"] = copy.deepcopy(input_schema)
            _limit_input(props["input"], config)
        if "inputs" in props:
            if input_schema is not None:
                props["inputs"]["items"] = copy.deepcopy(input_schema)
            _limit_input(props["inputs"]["items"], config)
            props["inputs"]["maxItems"] = config.max_batch_inputs
        if "deadline_ms" in props:
            for option in props["deadline_ms"]["anyOf"]:
                if option.get("type") == "integer":
                    option["maximum"] = config.max_deadline_ms
        if options is None:
            continue
        for field in _OPTION_FIELDS:
            if field not in options:
                props.pop(field, None)
            elif options[field]:
                props[field] = {"anyOf": [dict(options[field]), {"type": "null"}], "default": None}


_OPTION_FIELDS = ("membrane_depth",)  # request fields that are engine options


def openapi_document(
    config: ServerConfig,
    *,
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    options: Mapping[str, dict[str, Any]] | None = None,
    requests: tuple[type[Any], type[Any], type[Any]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an app with ``config`` over an engine whose input has
    ``input_schema``, whose encoded output has ``output_schema``, and which takes the
    request ``options`` (name -> JSON Schema; ``None``: the models' as they are), with
    the request models ``requests`` (``models.request_models``; default DTESN's)."""
    swap: dict[Any, Any] = {}
    if requests is not None:
        swap = dict(zip((ProcessRequest, BatchRequest, JobRequest), requests, strict=True))
    models = tuple(swap.get(m, m) for m in _MODELS)
    refs, schemas = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    _apply_limits(schemas, config, input_schema, options)
    if output_schema is not None:
        schemas["ProcessResponse"]["properties"]["result"] = copy.deepcopy(output_schema)
    ref: dict[Any, Any] = dict(zip(_MODELS, refs, strict=True))  # by DTESN's models
    ref[_SVG] = {"type": "string"}
    error_ref = ref[ErrorBody]
    secured = bool(config.api_keys)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, ok, response, errors in _ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {
                ok: {
                    "description": "Success",
                    "content": {
                        _SVG if response == _SVG else "application/json": {"schema": ref[response]}
                    },
                }
            },
        }
        if request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref[request]}},
            }
        names = re.findall(r"{(\w+)}", path)
        if names:
            op["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": _PATH_PARAMETERS[n]}
                for n in names
            ]
        if path == "/v1/jobs" and method == "post":
            op["parameters"] = [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "Submitting again with the same key (e.g. a UUID) and"
                    " the same body returns the job stored the first time (200) instead of"
                    " adding one; another body under the key is a 409",
                }
            ]
            op["responses"]["200"] = {
                "description": "The job stored the first time with this Idempotency-Key",
                "content": {"application/json": {"schema": ref[response]}},
                "headers": {
                    "Location": {"schema": {"type": "string"}, "description": "The job's URL"}
                },
            }
        if path.endswith("/chunks"):
            op["responses"]["202"] = {
                "description": "The last chunk: the solve is a durable job (Location)",
                "content": {"application/json": {"schema": ref[response]}},
                "headers": {
                    "Location": {"schema": {"type": "string"}, "description": "The job's URL"}
                },
            }
        if ok == "202":
            op["responses"][ok]["headers"] = {
                "Location": {"schema": {"type": "string"}, "description": "The job's URL"}
            }
        for status in errors:
            if status == "401" and not secured:
                continue
            op["responses"][status[:3]] = {
                "description": _ERRORS[status],
                "content": {"application/json": {"schema": error_ref}},
            }
        if path in _PUBLIC:
            op["security"] = []
        paths.setdefault(path, {})[method] = op
    metrics_op: dict[str, Any] = {
        "summary": "Prometheus metrics (text format)",
        "operationId": "get_metrics",
        "responses": {
            "200": {
                "description": "Prometheus exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }
    if not config.metrics_require_auth:
        metrics_op["security"] = []
    elif secured:
        metrics_op["responses"]["401"] = {
            "description": _ERRORS["401"],
            "content": {"application/json": {"schema": error_ref}},
        }
    paths["/metrics"] = {"get": metrics_op}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "dtesn-trio",
            "version": __version__,
            "description": "A batched model served on a Trio runtime (by default: a deep tree"
            " echo state network).",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    add_session_paths(doc, secured=secured, input_schema=input_schema)
    if secured:
        doc["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearerAuth": []}]
    return doc


def docs_html(document: dict[str, Any]) -> str:
    """A docs page: the endpoints listed plainly (works offline), then Redoc, loaded
    from its CDN, rendering ``/openapi.json`` in full when the browser can reach it."""
    rows = []
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            rows.append(
                f"<li><code>{html.escape(method.upper())} {html.escape(path)}</code>"
                f" &mdash; {html.escape(op.get('summary', ''))}</li>"
            )
    title = html.escape(f"{document['info']['title']} {document['info']['version']}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title} API</title></head><body>"
        f"<h1>{title}</h1><ul>" + "".join(rows) + "</ul>"
        "<p>The OpenAPI 3.1 document: <a href='/openapi.json'>/openapi.json</a></p>"
        "<redoc spec-url='/openapi.json'></redoc>"
        "<script src='https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js'></script>"
        "</body></html>"
    )

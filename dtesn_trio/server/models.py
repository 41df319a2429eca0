"""Request and response bodies as msgspec structs; the OpenAPI schemas come from these.

Requests reject unknown fields (``forbid_unknown_fields``) and carry the hard limits
(priority 0-4, 1 <= ``deadline_ms`` <= one hour, 1-100 batch inputs); the server config
may only lower them.  The structs here take DTESN's input (text or a ``T x D`` array);
``request_models(input_type)`` makes the same three for another engine's input type.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import msgspec

from dtesn_trio.server.config import MAX_BATCH_INPUTS, MAX_DEADLINE_MS

__all__ = [
    "BatchItem",
    "BatchRequest",
    "BatchResponse",
    "ErrorBody",
    "ErrorDetail",
    "HealthResponse",
    "Input",
    "JobAccepted",
    "JobRequest",
    "JobResponse",
    "ProcessRequest",
    "ProcessResponse",
    "StatsResponse",
    "request_models",
]

TextInput = Annotated[
    str,
    msgspec.Meta(min_length=1, description="Text; each UTF-8 byte is one time step."),
]
NumericInput = Annotated[
    list[Annotated[list[float], msgspec.Meta(min_length=1)]],
    msgspec.Meta(min_length=1, description="A T x D array of numbers driving the root."),
]
Input = TextInput | NumericInput
PRIORITY_LEVELS = 5
# The range is checked by the app with ``_checks.check_priority`` (one message for every
# layer); ``extra_json_schema`` keeps it in the OpenAPI document.
Priority = Annotated[
    int,
    msgspec.Meta(
        description="0 is the most urgent.",
        extra_json_schema={"minimum": 0, "maximum": PRIORITY_LEVELS - 1},
    ),
]
DeadlineMs = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=MAX_DEADLINE_MS, description="Answer within this many milliseconds or fail."
    ),
]
MembraneDepth = Annotated[int, msgspec.Meta(ge=1, le=8)]
ModelRef = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[1-9][0-9]{0,8})?$",
        description="A registered model: 'name' (its active version) or 'name@version'.",
    ),
]


class _Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ProcessRequest(_Request):
    """``POST /v1/process``."""

    input: Input
    priority: Priority = 2
    deadline_ms: DeadlineMs | None = None
    membrane_depth: MembraneDepth | None = None
    use_cache: bool = True
    model: ModelRef | None = None


class BatchRequest(_Request):
    """``POST /v1/process/batch``: the inputs share priority, deadline and depth."""

    inputs: Annotated[list[Input], msgspec.Meta(min_length=1, max_length=MAX_BATCH_INPUTS)]
    priority: Priority = 2
    deadline_ms: DeadlineMs | None = None
    membrane_depth: MembraneDepth | None = None
    use_cache: bool = True
    model: ModelRef | None = None


class JobRequest(_Request):
    """``POST /v1/jobs``: like a process request, without a deadline (a job outlives
    the request that submitted it, and restarts of the server)."""

    input: Input
    priority: Priority = 2
    membrane_depth: MembraneDepth | None = None
    use_cache: bool = True


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None
    retry_after: float | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response."""

    error: ErrorDetail


class Timings(msgspec.Struct, kw_only=True):
    queued_ms: float = 0.0
    processing_ms: float = 0.0
    total_ms: float = 0.0


class ProcessResponse(msgspec.Struct, kw_only=True):
    """The outcome of one input: the engine's result and how it was obtained."""

    result: Any
    cache_hit: bool
    priority: int
    batch_size: int
    timings: dict[str, float]


class BatchItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One input's outcome: ``status`` is the HTTP status it would have had alone."""

    index: int
    status: int
    outcome: ProcessResponse | None = None
    error: ErrorDetail | None = None


class BatchResponse(msgspec.Struct, kw_only=True):
    results: list[BatchItem]


class JobAccepted(msgspec.Struct, kw_only=True):
    """``202``; ``Location`` points at the job."""

    job_id: str
    status: str
    location: str


class JobResponse(msgspec.Struct, kw_only=True):
    job_id: str
    status: Annotated[str, msgspec.Meta(pattern="^(queued|running|succeeded|failed)$")]
    attempts: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: ProcessResponse | None = None
    error: ErrorDetail | None = None


class StatsResponse(msgspec.Struct, kw_only=True):
    """The seed's statistics: processing, load, queue, pool (and more)."""

    processing: dict[str, Any]
    load: dict[str, Any]
    queue: dict[str, Any]
    pool: dict[str, Any]
    jobs: dict[str, Any] | None = None
    server: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None


class HealthResponse(msgspec.Struct, kw_only=True):
    status: str


_DTESN_MODELS = (ProcessRequest, BatchRequest, JobRequest)


@functools.cache
def request_models(input_type: Any = Input) -> tuple[type[Any], type[Any], type[Any]]:
    """``(ProcessRequest, BatchRequest, JobRequest)`` whose ``input`` is ``input_type``
    (any type msgspec decodes: the body is validated against it before the engine's
    ``decode``); the structs above for DTESN's ``Input``."""
    if input_type == Input:
        return _DTESN_MODELS
    common: list[Any] = [
        ("priority", Priority, 2),
        ("deadline_ms", DeadlineMs | None, None),
        ("membrane_depth", MembraneDepth | None, None),
        ("use_cache", bool, True),
    ]
    batch = Annotated[list[input_type], msgspec.Meta(min_length=1, max_length=MAX_BATCH_INPUTS)]
    options: dict[str, Any] = {"kw_only": True, "forbid_unknown_fields": True}
    process = msgspec.defstruct("ProcessRequest", [("input", input_type), *common], **options)
    batch_model = msgspec.defstruct("BatchRequest", [("inputs", batch), *common], **options)
    job = msgspec.defstruct(
        "JobRequest",
        [("input", input_type), *(f for f in common if f[0] != "deadline_ms")],
        **options,
    )
    return process, batch_model, job

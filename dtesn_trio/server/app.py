"""``create_app(runtime, config)``: the ASGI app (Starlette routes, msgspec bodies).

One runtime per server: every request goes through the same runtime, so its limiter,
queue and breaker see all the traffic.  The app owns no tasks and no resources; the
runtime does (see ``serve``), so the ASGI lifespan is not used.

Every HTTP request passes ``_Guard`` first: request id, API key, body limit (counted
while the body is read; the rest is discarded, not buffered), error mapping, metrics.
``POST /v1/process`` -- the request that overload multiplies, and mostly refuses -- is
then answered by the guard itself (``AppState.process_asgi``), without Starlette's
routing, ``Request`` and ``Response``: same answers, a third less of the app's CPU per
refusal (``benchmarks/refusal.py``); every other request goes on to Starlette.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import msgspec
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtesn_trio._checks import check_priority
from dtesn_trio.engine import ResolvedEngine
from dtesn_trio.errors import (
    DeadlineExceeded,
    DTESNError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    ShuttingDown,
)
from dtesn_trio.instrument import memory_statistics
from dtesn_trio.server.auth import ApiKeyAuth
from dtesn_trio.server.config import ServerConfig
from dtesn_trio.server.errors import (
    BodyTimeout,
    Gone,
    MalformedRequest,
    NotFound,
    NotReady,
    error_response_parts,
    internal_error_parts,
    too_large,
    validation_error,
)
from dtesn_trio.server.gate import ReadGate
from dtesn_trio.server.gctuning import GCMonitor
from dtesn_trio.server.http1 import COMPLETE_BODY, UNREAD_WAIT
from dtesn_trio.server.intake import LifoSlots
from dtesn_trio.server.metrics import CONTENT_TYPE, AppMetrics
from dtesn_trio.server.models import PRIORITY_LEVELS, request_models
from dtesn_trio.server.models_routes import model_routes
from dtesn_trio.server.openapi import docs_html, openapi_document
from dtesn_trio.server.requestid import new_request_id, request_id_var
from dtesn_trio.server.sessions_routes import session_routes

__all__ = ["AppState", "RuntimeLike", "ServerStatistics", "create_app"]

logger = logging.getLogger("dtesn_trio.server")
access_logger = logging.getLogger("dtesn_trio.access")

T = TypeVar("T")

_INTEGER_FIELDS = ("priority", "deadline_ms", "membrane_depth", "washout")
_INT_GOT_FLOAT = re.compile(r"Expected `int( \| null)?`, got `float`")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_DRAIN_SECONDS = 2.0  # discarding an over-limit body: at most this long ...
_DRAIN_FACTOR = 8  # ... and at most this many times the limit


class RuntimeLike(Protocol):
    """What the app needs of ``dtesn_trio.runtime.Runtime``."""

    @property
    def engine(self) -> ResolvedEngine: ...

    @property
    def jobs(self) -> Any: ...

    @property
    def ready(self) -> bool: ...

    @property
    def shutting_down(self) -> bool: ...

    async def process(
        self,
        input: Any,
        *,
        priority: int = 2,
        deadline: float | None = None,
        membrane_depth: int | None = None,
        use_cache: bool = True,
    ) -> Any: ...

    async def process_batch(
        self,
        inputs: Sequence[Any],
        *,
        priority: int = 2,
        deadline: float | None = None,
        membrane_depth: int | None = None,
        use_cache: bool = True,
    ) -> list[Any]: ...

    def get_stats(self) -> dict[str, Any]: ...

    def metrics_snapshot(self) -> dict[str, Any]: ...


def _enc_hook(obj: Any) -> Any:
    # The engine's results may hold NumPy arrays or scalars.
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(data), status, headers, media_type="application/json")


def _route_label(path: str) -> str:
    if path in _KNOWN_PATHS:
        return path
    if path.startswith("/v1/jobs/"):
        return "/v1/jobs/{job_id}"
    return "other"


_KNOWN_PATHS = frozenset(
    {
        "/v1/process",
        "/v1/process/batch",
        "/v1/jobs",
        "/v1/stats",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
    }
)


def _input_schema(engine: ResolvedEngine) -> dict[str, Any] | None:
    """The engine's input schema, or the one of its ``input_type`` (None: any JSON)."""
    if engine.input_schema is not None or engine.input_type is Any:
        return engine.input_schema
    schema: dict[str, Any] = msgspec.json.schema(engine.input_type)
    return None if "$defs" in schema else schema


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStatistics:
    """The HTTP layer of one app: requests being handled (``waiting`` of them for a
    ``server.max_in_flight`` slot), handled in all (answered or not), and whether the
    drain of a graceful stop has begun.  The lean server's read gate: connections whose
    request waits ``unread`` in the kernel, and how many were refused after waiting out
    ``server.max_unread_wait`` (``unread_refused``)."""

    in_flight: int
    requests: int
    draining: bool
    waiting: int = 0
    unread: int = 0
    unread_refused: int = 0


class AppState:
    """The app's view of the runtime, its config and metrics, and the drain deadline.

    ``begin_drain(grace)`` is called by ``serve`` when a graceful stop begins: requests
    still running ``grace`` seconds later are cancelled and answered ``503
    shutting_down``, so each gets an answer before the server closes its connection.
    """

    def __init__(self, runtime: RuntimeLike, config: ServerConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.auth = ApiKeyAuth(config.api_keys)
        self.metrics = AppMetrics()
        self.metrics.add_snapshot("runtime", runtime.metrics_snapshot)
        # Set by ``serve`` while it runs (it owns the process's GC settings).
        self.gc_monitor: GCMonitor | None = None
        self.metrics.add_gc(
            lambda: None if self.gc_monitor is None else self.gc_monitor.statistics()
        )
        self.public_paths = frozenset(
            {"/healthz", "/readyz"} | (set() if config.metrics_require_auth else {"/metrics"})
        )
        self.in_flight = 0
        self.requests = 0
        self._drain_deadline = math.inf
        self._scopes: set[trio.CancelScope] = set()
        limit = config.max_in_flight
        # The lean server reads /v1/process requests only with one of its tokens.
        ahead = config.max_waiting
        self.gate: ReadGate | None = None
        if config.http == "lean" and limit is not None and ahead is not None:
            gate = self.gate = ReadGate(limit + ahead, config.max_unread_wait)
            self.metrics.add_snapshot("http_gate", lambda: dataclasses.asdict(gate.statistics()))
        self.intake = (
            None
            if limit is None
            else LifoSlots(limit, PRIORITY_LEVELS, newest_first=self.gate is None)
        )
        # What the lean server calls: the app without its outermost layer (create_app).
        self.entry: ASGIApp | None = None
        engine = runtime.engine
        requests = request_models(engine.input_type)
        process_model, batch_model, job_model = requests
        self._process_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(process_model)
        self._batch_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(batch_model)
        self._job_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(job_model)
        document = openapi_document(
            config,
            input_schema=_input_schema(engine),
            output_schema=engine.output_schema,
            options={name: dict(engine.options_schema.get(name, {})) for name in engine.options},
            requests=requests,
        )
        self._openapi = _encoder.encode(document)
        self._docs = docs_html(document)

    def statistics(self) -> ServerStatistics:
        waiting = 0 if self.intake is None else self.intake.waiting
        gate = None if self.gate is None else self.gate.statistics()
        return ServerStatistics(
            self.in_flight,
            self.requests,
            self.draining,
            waiting,
            0 if gate is None else gate.waiting,
            0 if gate is None else gate.expired,
        )

    def unread_refusal(self, waited: float) -> Overloaded:
        """The answer to a request that waited out the read gate's ``max_wait`` unread."""
        gate = self.gate
        tokens = 0 if gate is None else gate.tokens
        return Overloaded(
            f"the server is overloaded: this request waited {waited * 1000:.0f} ms unread"
            f" behind {tokens} others (server.max_in_flight + server.max_waiting);"
            " it was not started",
            retry_after=1.0,
        )

    # ------------------------------------------------------------------ draining

    @property
    def draining(self) -> bool:
        return self._drain_deadline != math.inf

    def begin_drain(self, grace: float) -> None:
        """Answer requests still running after ``grace`` seconds with 503 (idempotent;
        a second call can only shorten the grace)."""
        deadline = trio.current_time() + grace
        if deadline >= self._drain_deadline:
            return
        self._drain_deadline = deadline
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, deadline)
        if self.intake is not None:
            self.intake.close()

    async def _drainable(
        self, fn: Callable[[], Awaitable[T]], deadline: float | None, priority: int
    ) -> T:
        """``fn()`` in one of the ``server.max_in_flight`` slots (waiting for one until
        ``deadline``: by priority, newest first), cancelled at the drain deadline."""
        intake = self.intake
        if intake is None:
            return await self._until_drained(fn)
        waited_from = trio.current_time()
        if not await intake.acquire(math.inf if deadline is None else deadline, priority):
            if intake.closed:
                raise ShuttingDown(
                    "the server is shutting down; this request had not started",
                    retry_after=1.0,
                )
            waited = (trio.current_time() - waited_from) * 1000
            raise DeadlineExceeded(
                f"the deadline passed after {waited:.0f} ms waiting for one of the"
                f" server's {intake.limit} request slots (server.max_in_flight)"
            )
        try:
            return await self._until_drained(fn)
        finally:
            intake.release()

    async def _until_drained(self, fn: Callable[[], Awaitable[T]]) -> T:
        with trio.CancelScope(deadline=self._drain_deadline) as scope:
            self._scopes.add(scope)
            try:
                return await fn()
            finally:
                self._scopes.discard(scope)
        raise ShuttingDown(
            "the server is shutting down and this request did not finish in time",
            retry_after=1.0,
        )

    # ------------------------------------------------------------------ validation

    def _decode(self, body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
        if not body:
            raise MalformedRequest("request body is empty; expected a JSON object")
        try:
            return decoder.decode(body)
        except msgspec.ValidationError as exc:
            if _INT_GOT_FLOAT.search(str(exc)) is None:
                raise validation_error(exc) from None
            # JSON Schema (and so our OpenAPI document) counts 4.0 as the integer 4;
            # msgspec does not.  Off the hot path: integral floats in the top-level
            # integer fields become ints, and the body is validated again.
            decoded: T = self._decode_integral(body, decoder.type)
            return decoded
        except msgspec.DecodeError as exc:
            raise MalformedRequest(f"request body is not valid JSON: {exc}") from None
        except UnicodeDecodeError:
            raise MalformedRequest("request body is not valid UTF-8") from None

    def _decode_integral(self, body: bytes, type_: Any) -> Any:
        raw = msgspec.json.decode(body)
        if isinstance(raw, dict):
            for key in _INTEGER_FIELDS:
                value = raw.get(key)
                if isinstance(value, float) and value.is_integer():
                    raw[key] = int(value)
        try:
            return msgspec.convert(raw, type_)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from None

    def _check_input(self, value: Any, field: str) -> None:
        limit = self.config.max_input_length
        if isinstance(value, str):
            if len(value) > limit:
                raise InvalidRequest(
                    f"{field} is longer than {limit} characters (got {len(value)})",
                    field=field,
                )
            return
        if not isinstance(value, list) or not value:
            return
        if len(value) > limit:
            raise InvalidRequest(
                f"{field} has more than {limit} rows (got {len(value)})", field=field
            )
        if not isinstance(value[0], list):
            return
        width = len(value[0])
        if width == 0 or any(not isinstance(row, list) or len(row) != width for row in value):
            raise InvalidRequest(
                f"{field} must be a rectangular T x D array with D >= 1", field=field
            )

    def _deadline(self, deadline_ms: int | None) -> float | None:
        if deadline_ms is None:
            deadline_ms = self.config.default_deadline_ms
            if deadline_ms is None:
                return None
        if deadline_ms > self.config.max_deadline_ms:
            raise InvalidRequest(
                f"deadline_ms must be <= {self.config.max_deadline_ms} (got {deadline_ms})",
                field="deadline_ms",
            )
        return trio.current_time() + deadline_ms / 1000

    async def _model_options(self, req: Any) -> dict[str, Any]:
        """The engine option of the request's ``model`` (resolved now: the request runs
        on that version however activations change while it runs), or none."""
        ref = getattr(req, "model", None)
        if ref is None:
            return {}
        models = getattr(self.runtime, "models", None)
        if models is None:
            raise InvalidRequest(
                "model needs the model registry (durable jobs on, the DTESN engine)",
                field="model",
            )
        return {"options": {"model": await models.resolve(ref)}}

    def _jobs(self) -> Any:
        jobs = self.runtime.jobs
        if jobs is None:
            raise NotFound("durable jobs are disabled on this server (jobs.enabled = false)")
        return jobs

    # ------------------------------------------------------------------ endpoints

    async def process(self, request: Request) -> Response:
        payload = await self._process(await request.body())
        return Response(payload, media_type="application/json")

    async def process_asgi(self, body: bytes, send: Send) -> None:
        """``POST /v1/process`` with its ``body`` already read, straight from ``_Guard``:
        without Starlette's routing, ``Request`` and ``Response`` (the hot path: under
        overload most of these requests are refused, and each costs the event loop what
        the layers cost).  The same answers as the route."""
        payload = await self._process(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(payload)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _process(self, body: bytes) -> bytes:
        req = self._decode(body, self._process_decoder)
        check_priority(req.priority, PRIORITY_LEVELS)
        self._check_input(req.input, "input")
        deadline = self._deadline(req.deadline_ms)
        start = time.perf_counter()
        runtime = self.runtime
        extra = await self._model_options(req)

        async def call() -> Any:
            return await runtime.process(
                req.input,
                priority=req.priority,
                deadline=deadline,
                membrane_depth=req.membrane_depth,
                use_cache=req.use_cache,
                **extra,
            )

        outcome = await self._drainable(call, deadline, req.priority)
        self.metrics.observe_process(req.priority, time.perf_counter() - start)
        return _encoder.encode(outcome.to_dict())

    async def process_batch(self, request: Request) -> Response:
        req = self._decode(await request.body(), self._batch_decoder)
        check_priority(req.priority, PRIORITY_LEVELS)
        if len(req.inputs) > self.config.max_batch_inputs:
            raise InvalidRequest(
                f"inputs has more than {self.config.max_batch_inputs} items"
                f" (got {len(req.inputs)})",
                field="inputs",
            )
        for i, value in enumerate(req.inputs):
            self._check_input(value, f"inputs[{i}]")
        deadline = self._deadline(req.deadline_ms)
        start = time.perf_counter()
        runtime = self.runtime
        extra = await self._model_options(req)

        async def call() -> list[Any]:
            return await runtime.process_batch(
                req.inputs,
                priority=req.priority,
                deadline=deadline,
                membrane_depth=req.membrane_depth,
                use_cache=req.use_cache,
                **extra,
            )

        outcomes = await self._drainable(call, deadline, req.priority)
        items: list[dict[str, Any]] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, DTESNError):
                items.append(
                    {"index": i, "status": outcome.http_status, "error": outcome.to_dict()}
                )
            else:
                items.append({"index": i, "status": 200, "outcome": outcome.to_dict()})
        self.metrics.observe_process(req.priority, time.perf_counter() - start)
        return _json({"results": items})

    async def submit_job(self, request: Request) -> Response:
        jobs = self._jobs()
        req = self._decode(await request.body(), self._job_decoder)
        check_priority(req.priority, PRIORITY_LEVELS)
        self._check_input(req.input, "input")
        if self.runtime.shutting_down or self.draining:
            raise ShuttingDown("the server is shutting down; submit the job again later")
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= 255 and key.isascii() and key.isprintable()):
            raise InvalidRequest(
                "the Idempotency-Key header must be 1-255 printable ASCII characters",
                field="Idempotency-Key",
            )
        # IdempotencyConflict (409) when the key names a job with another payload.
        record, created = await jobs.enqueue(msgspec.to_builtins(req), idempotency_key=key)
        location = f"/v1/jobs/{record.id}"
        body = {"job_id": record.id, "status": record.status, "location": location}
        return _json(body, 202 if created else 200, {"location": location})

    async def get_job(self, request: Request) -> Response:
        jobs = self._jobs()
        job_id = request.path_params["job_id"]
        record = await jobs.get(job_id) if _JOB_ID.match(job_id) else None
        if record is None:
            if jobs.issued(job_id):
                raise Gone(f"job {job_id!r} has expired: {jobs.retention()}", field="job_id")
            raise NotFound(f"no job with id {job_id!r}", field="job_id")
        body: dict[str, Any] = {
            "job_id": record.id,
            "status": record.status,
            "attempts": record.attempts,
            "created_at": record.created_at,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "result": record.result,
            "error": record.error,
        }
        return _json(body)

    async def stats(self, request: Request) -> Response:
        stats = dict(self.runtime.get_stats())
        jobs = self.runtime.jobs
        if jobs is not None:
            job_stats = dict(jobs.get_stats())
            try:
                job_stats["store"] = await jobs.counts()
            except DTESNError as exc:
                # The shared job store (PostgreSQL) is down: the instance's own figures
                # are what an operator needs now, not a 503 instead of all of them.
                job_stats["store"] = None
                job_stats["store_error"] = exc.message
            stats["jobs"] = job_stats
        stats["server"] = dataclasses.asdict(self.statistics())
        if self.gc_monitor is not None:
            stats["gc"] = self.gc_monitor.get_stats()
        stats["memory"] = dataclasses.asdict(memory_statistics(collect=self._collect(request)))
        return _json(stats)

    def _collect(self, request: Request) -> bool:
        value = request.query_params.get("gc")
        if value is None or value == "0":
            return False
        if value != "1":
            raise InvalidRequest(f"gc must be 0 or 1 (got {value!r})", field="gc")
        if not self.config.debug_memory:
            raise InvalidRequest(
                "gc=1 (a full garbage collection before the memory figures) needs"
                " server.debug_memory = true",
                field="gc",
            )
        return True

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.runtime.shutting_down or self.draining:
            raise ShuttingDown("the server is shutting down")
        if not self.runtime.ready:
            raise NotReady("the runtime is not ready (pools starting or down)")
        return _json({"status": "ready"})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), headers={"content-type": CONTENT_TYPE.decode()})

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(self._docs)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _json(
        {"error": {"code": code, "message": str(exc.detail)}},
        exc.status_code,
        dict(exc.headers or {}),
    )


class _Guard:
    """Request id, API key, body limit, error mapping, metrics and access log."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        method: str = scope["method"]
        offered_id = authorization = content_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered_id = value
            elif name == b"authorization":
                authorization = value
            elif name == b"content-length":
                content_length = value
        request_id = new_request_id(offered_id)
        token = request_id_var.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        limit = state.config.max_body_size
        path: str = scope["path"]
        started = False
        status = 500
        received = 0
        body_done = False

        async def guarded_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [*message.get("headers", ()), id_header]
                if state.draining:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # e.g. waiting for a disconnect: no body deadline
                return await receive()
            with trio.move_on_at(body_deadline):
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    body_done = not message.get("more_body", False)
                    if received > limit:
                        raise too_large(limit)
                return message
            body_done = True  # never read the rest: the connection is closed after
            raise body_timeout()

        async def read_body() -> bytes:
            # limited_receive until the body's end, under ONE cancel scope (a scope per
            # message is most of what reading costs); a disconnect before the end raises
            # ClientDisconnect, as Starlette's Request.body() does.
            nonlocal received, body_done
            chunks: list[bytes] = []
            with trio.move_on_at(body_deadline):
                while True:
                    message = await receive()
                    kind = message["type"]
                    if kind == "http.request":
                        chunk = message.get("body", b"")
                        received += len(chunk)
                        if received > limit:
                            body_done = not message.get("more_body", False)
                            raise too_large(limit)
                        if chunk:
                            chunks.append(chunk)
                        if not message.get("more_body", False):
                            body_done = True
                            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    elif kind == "http.disconnect":
                        raise ClientDisconnect()
            body_done = True
            raise body_timeout()

        async def whole_body() -> bytes:
            # the lean server hands over a body that came with the head: no receive()
            nonlocal body_done
            extensions = scope.get("extensions")
            body: bytes | None = None if extensions is None else extensions.get(COMPLETE_BODY)
            if body is None:
                return await read_body()
            body_done = True
            if len(body) > limit:
                raise too_large(limit)
            return body

        def body_timeout() -> BodyTimeout:
            return BodyTimeout(
                f"the request body did not arrive within {state.config.body_timeout:g}s"
                " (server.body_timeout)"
            )

        state.in_flight += 1
        state.metrics.in_flight.inc()
        start = time.perf_counter()
        body_deadline = trio.current_time() + state.config.body_timeout
        try:
            try:
                if path not in state.public_paths:
                    state.auth.check(authorization)
                if (
                    content_length is not None
                    and content_length.isdigit()
                    and int(content_length) > limit
                ):
                    raise too_large(limit)
                extensions = scope.get("extensions")
                if extensions is not None and UNREAD_WAIT in extensions:
                    raise state.unread_refusal(extensions[UNREAD_WAIT])
                if path == "/v1/process" and method == "POST":
                    await state.process_asgi(await whole_body(), guarded_send)
                else:
                    await self.app(scope, limited_receive, guarded_send)
            except DTESNError as exc:
                if started:
                    logger.warning("%s after the response started: %r", path, exc)
                else:
                    drain = isinstance(exc, PayloadTooLarge) and not body_done
                    await self._send_error(exc, guarded_send, receive if drain else None)
            except ClientDisconnect:
                status = 499  # nginx's "client closed request", for the metrics only
            except Exception:
                logger.exception("unhandled error on %s %s", scope["method"], path)
                if not started:
                    await self._send_parts(internal_error_parts(), guarded_send)
        finally:
            elapsed = time.perf_counter() - start
            route = _route_label(path)
            state.in_flight -= 1
            state.requests += 1
            state.metrics.in_flight.dec()
            state.metrics.observe_request(route, scope["method"], status, elapsed)
            if state.config.access_log:
                access_logger.info("%s %s %d %.1fms", scope["method"], path, status, elapsed * 1000)
            request_id_var.reset(token)

    @staticmethod
    async def _send_parts(parts: tuple[int, list[tuple[bytes, bytes]], bytes], send: Send) -> None:
        status, headers, body = parts
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _send_error(self, exc: DTESNError, send: Send, drain: Receive | None) -> None:
        status, headers, body = error_response_parts(exc)
        if isinstance(exc, PayloadTooLarge):
            # Whether or not the rest of the body was read, a client that sends too much
            # gets its connection closed after the answer (as nginx does).
            headers = [*headers, (b"connection", b"close")]
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if drain is None:
            await self._send_parts((status, headers[:-1], body), send)
            return
        # 413 before the body has ended: answer at once, then read and DISCARD the rest
        # (bounded) before finishing the response.  Closing with unread bytes in the
        # socket would make the kernel reset the connection, and a client still
        # sending would never see the 413.
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        budget = _DRAIN_FACTOR * self.state.config.max_body_size
        with trio.move_on_after(_DRAIN_SECONDS):
            while budget > 0:
                message = await drain()
                if message["type"] != "http.request":
                    break
                budget -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        await send({"type": "http.response.body", "body": b""})


def create_app(
    runtime: RuntimeLike | None = None,
    config: ServerConfig | None = None,
    *,
    engine: RuntimeLike | None = None,
    enable_async_resources: bool = True,
) -> Starlette:
    """The ASGI app over ``runtime``; ``app.state.dtesn`` is its ``AppState``.

    The seed's form ``create_app(engine=..., config=..., enable_async_resources=True)``
    works too: ``engine`` is the runtime.  The app opens no resources of its own -- the
    runtime (``open_runtime``) owns them all -- so ``enable_async_resources`` can only be
    True: the resources are always there, opened by ``async with``.
    """
    if (runtime is None) == (engine is None):
        raise TypeError("create_app needs the runtime, as its first argument or as engine=")
    if not enable_async_resources:
        raise ValueError(
            "enable_async_resources=False is not supported: the runtime owns the pools,"
            " limiter and queue, opened by `async with open_runtime(...)`"
        )
    runtime = runtime if runtime is not None else engine
    assert runtime is not None
    config = config or ServerConfig()
    state = AppState(runtime, config)
    routes = [
        Route("/v1/process", state.process, methods=["POST"]),
        Route("/v1/process/batch", state.process_batch, methods=["POST"]),
        Route("/v1/jobs", state.submit_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}", state.get_job, methods=["GET"]),
        Route("/v1/stats", state.stats, methods=["GET"]),
        Route("/healthz", state.healthz, methods=["GET"]),
        Route("/readyz", state.readyz, methods=["GET"]),
        Route("/metrics", state.metrics_endpoint, methods=["GET"]),
        *session_routes(state),
        *model_routes(state),
    ]
    if config.docs:
        routes += [
            Route("/openapi.json", state.openapi, methods=["GET"]),
            Route("/docs", state.docs, methods=["GET"]),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, state=state)],
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.dtesn = state
    state.entry = _entry_point(app)
    return app


def _entry_point(app: Starlette) -> ASGIApp:
    """``app`` without Starlette's outermost ``ServerErrorMiddleware``: the guard already
    answers any exception with a 500 and logs it, so a server that calls this (the lean
    one) skips a layer and a wrapper around every ``send``."""
    guard = app.build_middleware_stack().app  # type: ignore[attr-defined]
    assert isinstance(guard, _Guard)

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app
        await guard(scope, receive, send)

    return entry

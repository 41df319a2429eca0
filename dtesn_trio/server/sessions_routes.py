"""The session routes: ``/v1/sessions`` (open), ``/v1/sessions/{session_id}`` (read,
``DELETE`` to end) and ``/v1/sessions/{session_id}/step`` (the next chunk), with their
msgspec models and their part of the OpenAPI document.

They answer through the runtime's ``SessionManager`` (``runtime.sessions``); without
one (sessions disabled, or an engine other than DTESN) every route is a 404 saying so.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dtesn_trio._checks import check_priority
from dtesn_trio.server.errors import NotFound
from dtesn_trio.server.models import PRIORITY_LEVELS, DeadlineMs, ErrorBody, Input, Priority
from dtesn_trio.sessions import SessionInfo, SessionManager
from dtesn_trio.sessions.config import MAX_WASHOUT

if TYPE_CHECKING:
    from dtesn_trio.server.app import AppState

__all__ = ["add_session_paths", "session_routes"]

ModelRef = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=74,
        pattern="^(default@0|[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[1-9][0-9]{0,8})?)$",
        description="'name' (its active version) or 'name@version'; absent: the built-in"
        " model. The session keeps the version it opened with.",
    ),
]


class OpenSessionRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/sessions``."""

    model: ModelRef | None = None
    washout: Annotated[
        int,
        msgspec.Meta(
            ge=0, le=MAX_WASHOUT, description="The session's first steps with no prediction."
        ),
    ] = 0


class SessionResponse(msgspec.Struct, kw_only=True):
    """A live session."""

    session_id: str
    model: str
    washout: int
    position: Annotated[int, msgspec.Meta(description="Steps run so far.")]
    busy: Annotated[bool, msgspec.Meta(description="A chunk is running now.")]
    expires_in: Annotated[
        float, msgspec.Meta(description="Seconds without a chunk before the idle TTL ends it.")
    ]
    location: str


class StepRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/sessions/{session_id}/step``: the next chunk of the series."""

    input: Input
    priority: Priority = 2
    deadline_ms: DeadlineMs | None = None
    return_state: Annotated[
        bool, msgspec.Meta(description="Include the reservoir state after the chunk.")
    ] = False


class StepResponse(msgspec.Struct, kw_only=True):
    """One chunk's answer."""

    session_id: str
    model: str
    steps: Annotated[int, msgspec.Meta(description="Steps in this chunk.")]
    position: Annotated[int, msgspec.Meta(description="Steps run by the session so far.")]
    predictions: Annotated[
        list[Any] | None,
        msgspec.Meta(
            description="The readout's output for each step of the chunk past the washout;"
            " null when the model has no readout."
        ),
    ]
    first_prediction: Annotated[
        int | None,
        msgspec.Meta(description="The session step (0-based) of predictions[0]."),
    ]
    state: list[float] | None = None
    batch_size: Annotated[int, msgspec.Meta(description="Chunks computed in the same batch.")]
    timings: dict[str, float]


_open_decoder = msgspec.json.Decoder(OpenSessionRequest)
_encoder = msgspec.json.Encoder()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(data), status, headers, media_type="application/json")


_step_decoder = msgspec.json.Decoder(StepRequest)


def _body(info: SessionInfo) -> dict[str, Any]:
    return {
        "session_id": info.session_id,
        "model": info.model,
        "washout": info.washout,
        "position": info.position,
        "busy": info.busy,
        "expires_in": round(info.expires_in, 3),
        "location": f"/v1/sessions/{info.session_id}",
    }


class _Routes:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def _manager(self) -> SessionManager:
        manager: SessionManager | None = getattr(self.state.runtime, "sessions", None)
        if manager is None:
            raise NotFound(
                "sessions are disabled on this server (sessions.enabled = false, or an"
                " engine other than DTESN)"
            )
        return manager

    async def open(self, request: Request) -> Response:
        manager = self._manager()
        req = self.state._decode(await request.body(), _open_decoder)
        info = await manager.open(req.model, washout=req.washout)
        body = _body(info)
        return _json(body, 201, {"location": body["location"]})

    async def get(self, request: Request) -> Response:
        info = self._manager().get(request.path_params["session_id"])
        return _json(_body(info))

    async def delete(self, request: Request) -> Response:
        info = await self._manager().end(request.path_params["session_id"])
        return _json(_body(info))

    async def step(self, request: Request) -> Response:
        manager = self._manager()
        session_id = request.path_params["session_id"]
        manager.get(session_id)  # an unknown session is named before the body is judged
        state = self.state
        req = state._decode(await request.body(), _step_decoder)
        check_priority(req.priority, PRIORITY_LEVELS)
        state._check_input(req.input, "input")
        deadline = state._deadline(req.deadline_ms)

        async def call() -> Any:
            return await manager.step(
                session_id, req.input, priority=req.priority, deadline=deadline
            )

        result = await state._drainable(call, deadline, req.priority)
        body = {
            "session_id": result.session_id,
            "model": result.model,
            "steps": result.steps,
            "position": result.position,
            "predictions": None if result.predictions is None else result.predictions.tolist(),
            "first_prediction": result.first_prediction,
            "batch_size": result.batch_size,
            "timings": result.timings,
        }
        if req.return_state:
            body["state"] = result.state.tolist()
        return _json(body)


def session_routes(state: AppState) -> list[Route]:
    """The session routes over ``state``'s runtime."""
    routes = _Routes(state)
    return [
        Route("/v1/sessions", routes.open, methods=["POST"]),
        Route("/v1/sessions/{session_id}", routes.get, methods=["GET"]),
        Route("/v1/sessions/{session_id}", routes.delete, methods=["DELETE"]),
        Route("/v1/sessions/{session_id}/step", routes.step, methods=["POST"]),
    ]


_ERRORS = {
    "400": "Malformed body: not JSON, or not UTF-8",
    "401": "API key missing or wrong",
    "404": "No such model or version (model_not_found, field model), or no live session"
    " with this id (session_not_found: never opened, ended by DELETE, or idle past"
    " sessions.idle_ttl; the message says which), or sessions are disabled",
    "409": "session_busy: the session's previous chunk is still running; this chunk was"
    " not applied (send it again once the previous answer arrived)",
    "410": "session_lost: the session was saved at the last restart but could not be"
    " restored (the message says why); open a new session",
    "413": "Body over the configured limit",
    "422": "A field has the wrong type or value, e.g. a chunk of the wrong dimension"
    " (error.field names it)",
    "429": "Rate limited; see Retry-After",
    "503": "Overloaded (also: max_sessions live sessions), circuit open, or shutting down"
    " (the chunk was not applied); see Retry-After",
    "504": "The chunk's deadline passed (the chunk was not applied)",
    "500": "Internal error (a bug; logged with the request id)",
}

_STEP_ERRORS = ("400", "401", "404", "409", "410", "413", "422", "429", "503", "504", "500")
_OPS: tuple[tuple[str, str, str, type[Any] | None, str, type[Any], tuple[str, ...]], ...] = (
    (
        "post",
        "/v1/sessions",
        "Open a session on a model version (its state starts at zero)",
        OpenSessionRequest,
        "201",
        SessionResponse,
        ("400", "401", "404", "413", "422", "503", "500"),
    ),
    (
        "get",
        "/v1/sessions/{session_id}",
        "A live session: model, position, idle time left",
        None,
        "200",
        SessionResponse,
        ("401", "404", "410", "500"),
    ),
    (
        "delete",
        "/v1/sessions/{session_id}",
        "End a session (its last state is dropped)",
        None,
        "200",
        SessionResponse,
        ("401", "404", "410", "500"),
    ),
    (
        "post",
        "/v1/sessions/{session_id}/step",
        "Run the session's next chunk: a prediction per step, the state carried on."
        " One chunk at a time per session (a second one at once is a 409)",
        StepRequest,
        "200",
        StepResponse,
        _STEP_ERRORS,
    ),
)


def add_session_paths(
    doc: dict[str, Any], *, secured: bool, input_schema: dict[str, Any] | None = None
) -> None:
    """Add the session routes and their schemas to the OpenAPI document ``doc``."""
    models = (OpenSessionRequest, SessionResponse, StepRequest, StepResponse, ErrorBody)
    refs, schemas = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    if input_schema is not None:
        schemas["StepRequest"]["properties"]["input"] = copy.deepcopy(input_schema)
    ref: dict[Any, dict[str, Any]] = dict(zip(models, refs, strict=True))
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in schemas.items():
        components.setdefault(name, schema)
    for method, path, summary, request, ok, response, errors in _OPS:
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_')}".replace("{", "").replace(
                "}", ""
            ),
            "responses": {
                ok: {
                    "description": "Success",
                    "content": {"application/json": {"schema": ref[response]}},
                }
            },
        }
        if ok == "201":
            op["responses"][ok]["headers"] = {
                "Location": {"schema": {"type": "string"}, "description": "The session's URL"}
            }
        if request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref[request]}},
            }
        if "{session_id}" in path:
            op["parameters"] = [
                {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        for status in errors:
            if status == "401" and not secured:
                continue
            op["responses"][status] = {
                "description": _ERRORS[status],
                "content": {"application/json": {"schema": ref[ErrorBody]}},
            }
        doc["paths"].setdefault(path, {})[method] = op

"""The model routes: fit, chunked fit, search, list, describe, activate, a search's plot.

``model_routes(state)`` gives the Starlette routes ``create_app`` mounts; each handler
validates its body (msgspec structs below, the OpenAPI schemas come from them), checks
the training data against itself at once (a 422 naming the field, never a failed job
later), and submits durable work through the runtime's job service: the 202's
``Location`` is the job (``GET /v1/jobs/{id}``), whose result names the new version.
``GET /v1/models/{name}/versions/{v}/plot.svg`` draws the trials of the search that
made version ``v`` (``image/svg+xml``); a version made by a plain fit has none (404,
field ``version``).  The routes answer 404 when the server has no model registry
(durable jobs disabled, or an engine other than DTESN).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dtesn_trio.errors import InvalidRequest, ShuttingDown
from dtesn_trio.models.fitting import training_set
from dtesn_trio.models.plot import trials_svg
from dtesn_trio.models.registry import ModelRegistry, check_name, parse_version
from dtesn_trio.models.search import (
    DEFAULT_ALPHAS,
    DEFAULT_SPACE,
    DEFAULT_TRIALS,
    plan_trials,
    search_alphas,
    search_strategy,
)
from dtesn_trio.models.training import FIT, FIT_CHUNKS, SEARCH, add_chunk, check_alphas
from dtesn_trio.server.errors import NotFound

if TYPE_CHECKING:
    from dtesn_trio.server.app import AppState

__all__ = [
    "ActivateResponse",
    "ChunkAccepted",
    "ChunkRequest",
    "FitAccepted",
    "FitRequest",
    "ModelDetail",
    "ModelList",
    "SearchRange",
    "SearchRequest",
    "model_routes",
]

_Data = Annotated[
    Any,
    msgspec.Meta(
        description="One series (text, or a T x D array) or a list of sequences (texts or"
        " T_i x D arrays)."
    ),
]
_Targets = Annotated[
    Any,
    msgspec.Meta(
        description="per_step: one target per step (T, or T x outputs; for a list of"
        " sequences, one such series each); final: one target per sequence."
    ),
]
_Washout = Annotated[
    int, msgspec.Meta(ge=0, description="Steps left out of the fit, per sequence.")
]
_Alpha = Annotated[
    float | list[float],
    msgspec.Meta(description="Ridge penalty, or a list: each is scored on the held-out split."),
]
_Validation = Annotated[float, msgspec.Meta(gt=0, lt=1, description="Fraction held out.")]
_Config = Annotated[
    dict[str, Any] | None,
    msgspec.Meta(description="DTESNConfig fields overriding the server's model config."),
]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class FitRequest(_Body):
    """``POST /v1/models/{name}/fit``.  ``chunked``: no data here; send it to
    ``/v1/models/{name}/fit/{job}/chunks`` (one long per_step series, one alpha)."""

    inputs: _Data = None
    targets: _Targets = None
    mode: Literal["final", "per_step"] = "per_step"
    washout: _Washout = 0
    alpha: _Alpha = 1e-6
    validation: _Validation = 0.2
    config: _Config = None
    chunked: bool = False


class ChunkRequest(_Body):
    """The next chunk of a chunked fit: its steps continue the reservoir's state.
    ``index`` (optional, from 0): a chunk already applied is not applied again (200, the
    progress so far), one sent before its predecessor is refused (409)."""

    inputs: _Data
    targets: _Targets
    last: bool = False
    index: Annotated[int, msgspec.Meta(ge=0)] | None = None


class SearchRange(_Body):
    """A range a random search draws from: uniform in ``[low, high]``, log-uniform with
    ``log`` (``low`` > 0); drawn values are rounded to 3 significant digits."""

    low: float
    high: float
    log: bool = False


def _describe(key: str, values: Any) -> str:
    if isinstance(values, list):
        return f"{key} one of {', '.join(f'{v:g}' for v in values)}"
    kind = "log-uniform" if values["log"] else "uniform"
    return f"{key} {kind} in {values['low']:g}-{values['high']:g}"


_DEFAULT_SPACE_TEXT = "; ".join(_describe(k, v) for k, v in sorted(DEFAULT_SPACE.items()))


class SearchRequest(_Body):
    """``POST /v1/models/{name}/search``: ``space`` maps parameters to the values tried.

    Without ``space`` the server's default space is searched: ``trials`` (30 unless
    given) random draws of ``input_scaling`` (log-uniform in 0.01-1),
    ``spectral_radius`` (uniform in 0.7-1.1) and ``leak_rate`` (one of 0.25, 0.5 and 1:
    time scales of 4, 2 and 1 steps), the other fields those of the server's model (or
    ``config``).  Every trial scores each alpha of ``alpha`` (default 1e-8, 1e-6, 1e-4)
    on the held-out split and keeps the best, so alphas do not multiply trials.
    Sending only ``inputs``, ``targets`` and ``washout`` is enough."""

    inputs: _Data
    targets: _Targets
    space: (
        Annotated[
            dict[str, list[int | float] | SearchRange],
            msgspec.Meta(
                description="Parameter -> a list of values (grid or random), or a range"
                " (random only). Searchable: spectral_radius, leak_rate, input_scaling,"
                " sparsity, membrane_depth (a list), alpha (each value a trial of its own)."
                " Omitted: the default space, random draws over " + _DEFAULT_SPACE_TEXT + "."
            ),
        ]
        | None
    ) = None
    strategy: (
        Annotated[
            Literal["grid", "random"],
            msgspec.Meta(description="Omitted: random when the space has a range, else grid."),
        ]
        | None
    ) = None
    trials: Annotated[
        int, msgspec.Meta(ge=1, le=200, description="The trial budget (reservoir configs).")
    ] = DEFAULT_TRIALS
    validation: _Validation = 0.25
    seed: Annotated[int, msgspec.Meta(description="Seed of the random draws.")] = 0
    mode: Literal["final", "per_step"] = "per_step"
    washout: _Washout = 0
    alpha: (
        Annotated[
            float | list[float],
            msgspec.Meta(
                description="Ridge penalties every trial scores on the held-out split (it"
                " keeps the best). Omitted: " + ", ".join(f"{a:g}" for a in DEFAULT_ALPHAS) + "."
            ),
        ]
        | None
    ) = None
    config: _Config = None


class FitAccepted(msgspec.Struct, kw_only=True):
    """``202``: ``location`` is the job; its result names the new version."""

    job_id: str
    status: str
    location: str


class ChunkAccepted(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A chunked fit's progress; after the last chunk, ``location`` is the solve job."""

    job_id: str
    chunks: int
    steps: int
    status: str
    location: str | None = None


class VersionRecord(msgspec.Struct, kw_only=True):
    name: str
    version: int
    active: bool
    config: dict[str, Any]
    scores: dict[str, Any]
    fit: dict[str, Any]
    created_at: float


class ModelDetail(msgspec.Struct, kw_only=True):
    name: str
    active_version: int | None
    versions: list[VersionRecord]


class ModelSummary(msgspec.Struct, kw_only=True):
    name: str
    versions: int
    active_version: int | None


class ModelList(msgspec.Struct, kw_only=True):
    models: list[ModelSummary]


class ActivateResponse(msgspec.Struct, kw_only=True):
    name: str
    active_version: int


_fit = msgspec.json.Decoder(FitRequest)
_chunk = msgspec.json.Decoder(ChunkRequest)
_search = msgspec.json.Decoder(SearchRequest)


def model_routes(state: AppState) -> list[Route]:
    """The routes above, served by ``state``'s runtime."""
    from dtesn_trio.server.app import _json

    def registry() -> ModelRegistry:
        models: ModelRegistry | None = getattr(state.runtime, "models", None)
        if models is None:
            raise NotFound("models need durable jobs and the DTESN engine (jobs.enabled = false)")
        return models

    def name_of(request: Request) -> str:
        return check_name(request.path_params["name"])

    async def submit(payload: dict[str, Any], **extra: Any) -> Response:
        if state.runtime.shutting_down or state.draining:
            raise ShuttingDown("the server is shutting down; submit again later")
        record = await state._jobs().submit(payload)
        location = f"/v1/jobs/{record.id}"
        body = {"job_id": record.id, **extra, "status": record.status, "location": location}
        return _json(body, 202, {"location": location})

    async def fit(request: Request) -> Response:
        models = registry()
        name = name_of(request)
        req = state._decode(await request.body(), _fit)
        alphas = check_alphas(req.alpha)
        config = models.config_for(req.config)
        if req.chunked:
            if req.inputs is not None or req.targets is not None:
                raise InvalidRequest("a chunked fit takes its data in chunks", field="inputs")
            if len(alphas) != 1 or req.mode != "per_step":
                raise InvalidRequest(
                    "a chunked fit takes one alpha and mode per_step", field="alpha"
                )
            upload = secrets.token_hex(16)
            spec = {"config": config.to_dict(), "alpha": alphas[0], "washout": req.washout}
            await models.store.create_upload(upload, name, spec, models.now())
            location = f"/v1/models/{name}/fit/{upload}/chunks"
            body = {"job_id": upload, "chunks": 0, "steps": 0, "status": "receiving"}
            return _json({**body, "location": location}, 202, {"location": location})
        if req.inputs is None or req.targets is None:
            field = "inputs" if req.inputs is None else "targets"
            raise InvalidRequest(f"{field} is required (or chunked: true)", field=field)
        training_set(req.inputs, req.targets, req.mode)
        payload = {
            "kind": FIT,
            "fit_id": secrets.token_hex(16),
            "name": name,
            "inputs": req.inputs,
            "targets": req.targets,
            "mode": req.mode,
            "washout": req.washout,
            "alphas": alphas,
            "validation": req.validation,
            "config": config.to_dict(),
        }
        return await submit(payload)

    async def chunk(request: Request) -> Response:
        models = registry()
        name = name_of(request)
        upload = request.path_params["job"]
        req = state._decode(await request.body(), _chunk)
        progress = await add_chunk(models, upload, name, req.inputs, req.targets, req.index)
        body = {"job_id": upload, **progress, "status": "receiving"}
        if not req.last:
            return _json(body)
        payload = {"kind": FIT_CHUNKS, "fit_id": upload, "name": name, "upload": upload}
        return await submit(payload, **progress)

    async def search(request: Request) -> Response:
        models = registry()
        name = name_of(request)
        req = state._decode(await request.body(), _search)
        alphas = check_alphas(search_alphas(req.alpha))
        config = models.config_for(req.config)
        training_set(req.inputs, req.targets, req.mode)
        space = DEFAULT_SPACE if req.space is None else msgspec.to_builtins(req.space)
        strategy = search_strategy(space, req.strategy)
        for params in plan_trials(space, strategy, req.trials, req.seed):
            models.config_for(
                {**config.to_dict(), **{k: v for k, v in params.items() if k != "alpha"}},
                field="space",
            )
            if "alpha" in params:
                check_alphas(params["alpha"])
        payload = {
            "kind": SEARCH,
            "fit_id": secrets.token_hex(16),
            "name": name,
            "inputs": req.inputs,
            "targets": req.targets,
            "mode": req.mode,
            "washout": req.washout,
            "alpha": alphas,
            "space": space,
            "strategy": strategy,
            "trials": req.trials,
            "validation": req.validation,
            "seed": req.seed,
            "config": config.to_dict(),
        }
        return await submit(payload)

    async def list_models(request: Request) -> Response:
        return _json({"models": await registry().list()})

    async def describe(request: Request) -> Response:
        return _json(await registry().describe(name_of(request)))

    async def activate(request: Request) -> Response:
        models = registry()
        name = name_of(request)
        version = parse_version(request.path_params["version"])
        await models.activate(name, version)
        return _json({"name": name, "active_version": version})

    async def plot(request: Request) -> Response:
        models = registry()
        name = name_of(request)
        version = parse_version(request.path_params["version"])
        info = await models.version_info(name, version)
        trials = info.scores.get("trials")
        if not trials:
            raise NotFound(
                f"version {version} of model {name!r} was made by a fit, not a search:"
                " it has no trials to plot",
                field="version",
            )
        svg = trials_svg(trials, title=f"search trials of {name}@{version}")
        return Response(svg, media_type="image/svg+xml")

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name}", describe, methods=["GET"]),
        Route("/v1/models/{name}/fit", fit, methods=["POST"]),
        Route("/v1/models/{name}/fit/{job}/chunks", chunk, methods=["POST"]),
        Route("/v1/models/{name}/search", search, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}/activate", activate, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}/plot.svg", plot, methods=["GET"]),
    ]

"""The durable work of training: a fit job, the chunks of a chunked fit and its solve.

``run_job(registry, payload)`` is what the job service runs for a payload whose
``kind`` is one of ``JOB_KINDS`` (the runtime dispatches on it).  Each job carries a
``fit_id``; the version it makes is stored under it, so a job run again after a crash
(its lease ran out, or the service restarted mid-fit) returns the version of the first
run if that run got as far as storing it, and otherwise fits again from the stored
payload.  Nothing a client was told had been accepted is lost.

A chunked fit keeps its accumulator (``fitting.Accumulator``) in the store: each chunk
is applied in the request that posts it (in a worker thread) and the new accumulator is
stored before the answer, only if no other chunk of the same fit was stored meanwhile
(``ChunkConflict``, 409, otherwise: chunks apply strictly in order).  The last chunk
(``"last": true``) submits the solve as a job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import trio

from dtesn_trio.dtesn import DTESNConfig
from dtesn_trio.dtesn.encoding import encode_input
from dtesn_trio.errors import DTESNError, InvalidRequest
from dtesn_trio.models.fitting import Accumulator, fit_readout, training_set
from dtesn_trio.models.registry import ModelRegistry, UnknownModel
from dtesn_trio.models.search import SEARCH_TRIAL, Enqueue, run_search, run_trials
from dtesn_trio.models.version import VersionInfo

__all__ = ["FIT", "FIT_CHUNKS", "JOB_KINDS", "SEARCH", "ChunkConflict", "add_chunk", "run_job"]

FIT = "model_fit"
FIT_CHUNKS = "model_fit_chunks"
SEARCH = "model_search"
JOB_KINDS = frozenset({FIT, FIT_CHUNKS, SEARCH, SEARCH_TRIAL})


class ChunkConflict(DTESNError):
    """Another chunk of the same fit was applied while this one was: 409, send it again
    after the other's answer (chunks apply in order)."""

    code = "conflict"
    http_status = 409


def _result(info: VersionInfo) -> dict[str, Any]:
    result = {
        "name": info.name,
        "version": info.version,
        "model": f"{info.name}@{info.version}",
        "location": f"/v1/models/{info.name}",
        "scores": info.scores,
    }
    if "trials" in info.scores:  # a search's: the plot of its trials' scores
        result["plot"] = f"/v1/models/{info.name}/versions/{info.version}/plot.svg"
    return result


async def run_job(
    registry: ModelRegistry, payload: dict[str, Any], enqueue: Enqueue | None = None
) -> dict[str, Any]:
    """Run one training job (see the module docstring); its JSON result.  ``enqueue``:
    the job service's, for a search's trial jobs (None: trials run in the search)."""
    kind = payload["kind"]
    if kind == SEARCH_TRIAL:
        return await run_trials(registry, payload)
    done = await registry.store.by_fit(payload["fit_id"])
    if done is not None:
        return _result(done)
    if kind == FIT:
        info = await _fit(registry, payload)
    elif kind == FIT_CHUNKS:
        info = await _solve(registry, payload)
    else:
        info = await run_search(registry, payload, enqueue)
    return _result(info)


async def _fit(registry: ModelRegistry, payload: dict[str, Any]) -> VersionInfo:
    config = DTESNConfig.from_dict(payload["config"])
    data = training_set(payload["inputs"], payload["targets"], payload["mode"])

    def work() -> tuple[Any, dict[str, Any]]:
        return fit_readout(
            registry.reservoir(config),
            data,
            alphas=payload["alphas"],
            washout=payload["washout"],
            validation=payload["validation"],
        )

    readout, scores = await trio.to_thread.run_sync(work)
    fit = {
        "mode": payload["mode"],
        "washout": payload["washout"],
        "alpha": readout.alpha,
        "steps": sum(int(t.shape[0]) for t in data.targets),
        "sequences": len(data.inputs),
    }
    return await registry.add_version(
        payload["name"], config, readout, scores=scores, fit=fit, fit_id=payload["fit_id"]
    )


async def add_chunk(
    registry: ModelRegistry,
    upload_id: str,
    name: str,
    inputs: Any,
    targets: Any,
    index: int | None = None,
) -> dict[str, Any]:
    """Apply one chunk of the chunked fit ``upload_id`` and store the accumulator;
    returns ``{"chunks", "steps"}`` so far.  ``index`` (0, 1, ...: the chunk's place,
    optional) makes a resent chunk harmless: one already applied is not applied again
    (the progress is returned as it is), one that comes too early is refused."""
    found = await registry.store.upload(upload_id)
    if found is None or found[0] != name:
        raise UnknownModel(
            f"no chunked fit {upload_id!r} of model {name!r} (a fit whose last chunk"
            f" arrived is solved: its version is listed by GET /v1/models/{name})",
            field="job",
        )
    _, spec, state, chunks = found
    if index is not None and index > chunks:
        raise ChunkConflict(
            f"chunk {index} came before chunk {chunks}: send chunk {chunks} first",
            field="index",
        )
    if index is not None and index < chunks:
        assert state is not None
        steps = await trio.to_thread.run_sync(lambda: Accumulator.from_bytes(state).steps)
        return {"chunks": chunks, "steps": steps}
    config = DTESNConfig.from_dict(spec["config"])
    data = training_set(inputs, targets, "per_step")
    encoded = encode_input(data.inputs[0], config.input_dim, field="inputs")

    def work() -> tuple[bytes, int]:
        if state is None:
            outputs = 1 if data.targets[0].ndim == 1 else data.targets[0].shape[1]
            acc = Accumulator(config.reservoir_size, outputs, spec["washout"])
        else:
            acc = Accumulator.from_bytes(state)
        acc.add(registry.reservoir(config), encoded, data.targets[0])
        return acc.to_bytes(), acc.steps

    blob, steps = await trio.to_thread.run_sync(work)
    if not await registry.store.save_upload(upload_id, chunks + 1, blob):
        raise ChunkConflict(
            f"another chunk of fit {upload_id} was applied meanwhile; chunks apply in"
            " order: send this one again",
            field="job",
        )
    return {"chunks": chunks + 1, "steps": steps}


async def _solve(registry: ModelRegistry, payload: dict[str, Any]) -> VersionInfo:
    found = await registry.store.upload(payload["upload"])
    if found is None or found[2] is None:
        raise InvalidRequest("the chunked fit has no chunks (or is gone)", field="job")
    _, spec, state, chunks = found
    config = DTESNConfig.from_dict(spec["config"])
    assert state is not None

    def work() -> tuple[Any, dict[str, Any], int]:
        acc = Accumulator.from_bytes(state)
        readout = acc.solve(spec["alpha"])
        return readout, {"train_nrmse": acc.train_nrmse(readout)}, acc.steps

    readout, scores, steps = await trio.to_thread.run_sync(work)
    fit = {
        "mode": "per_step",
        "washout": spec["washout"],
        "alpha": spec["alpha"],
        "steps": steps,
        "chunks": chunks,
    }
    info = await registry.add_version(
        payload["name"], config, readout, scores=scores, fit=fit, fit_id=payload["fit_id"]
    )
    await registry.store.delete_upload(payload["upload"])
    return info


def check_alphas(alpha: float | list[float]) -> list[float]:
    """The request's ``alpha`` as a non-empty list of finite numbers >= 0."""
    alphas = alpha if isinstance(alpha, list) else [alpha]
    if not alphas or not all(np.isfinite(a) and a >= 0 for a in alphas):
        raise InvalidRequest(
            "alpha must be a number >= 0 or a non-empty list of them", field="alpha"
        )
    return [float(a) for a in alphas]

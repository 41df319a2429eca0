"""Hyperparameter search as a durable job: grid or random trials, each scored on a
held-out split, the best made a new version with every trial's score kept.

The space maps a parameter -- a ``DTESNConfig`` field among ``SEARCHABLE`` or
``alpha`` -- to the list of values to try.  ``grid``: the cartesian product in order
(the first ``trials`` of it); ``random``: ``trials`` distinct points drawn with
``seed``.  Each trial fits on the first ``1 - validation`` of the data and is scored
(NRMSE) on the rest; trials that differ only in ``alpha`` form one group, which runs
the reservoir once.

With the job service (``enqueue``), each group is a durable job of its own
(``model_search_trial``, idempotency key ``search:<id>:<group>``), claimed by any
instance's claimers, several at once; the search job itself only submits them and is
put back in the queue (``TrialsPending``, a transient refusal: no attempt counted, no
claimer held) until every trial's score is stored.  A group whose job failed scores
its trials as failed (no NRMSE).  Without it (``enqueue=None``) the groups run in
order inside the search.  Either way a score is stored once known, so nothing scored
is computed again after a crash.  The best trial is fitted again on all of the data
and stored as the new version, every trial's score in its ``scores``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import trio

from dtesn_trio.dtesn import DTESNConfig
from dtesn_trio.errors import DTESNError, InvalidRequest, Overloaded
from dtesn_trio.models.fitting import TrainingSet, fit_readout, split_rows, state_rows, training_set
from dtesn_trio.models.registry import ModelRegistry
from dtesn_trio.models.version import VersionInfo

__all__ = ["SEARCHABLE", "SEARCH_TRIAL", "TrialsPending", "plan_trials", "run_search", "run_trials"]

SEARCH_TRIAL = "model_search_trial"
_PENDING_RETRY = 0.25

Enqueue = Callable[..., Awaitable[tuple[Any, bool]]]


class TrialsPending(Overloaded):
    """The search's trial jobs are not all scored yet: the search job goes back to the
    queue for ``retry_after`` seconds (the job service's transient refusal)."""


SEARCHABLE = (
    "spectral_radius",
    "leak_rate",
    "input_scaling",
    "sparsity",
    "membrane_depth",
    "alpha",
)
MAX_TRIALS = 200


def plan_trials(
    space: dict[str, list[Any]], strategy: str, trials: int, seed: int
) -> list[dict[str, Any]]:
    """The trials' parameters, in the order they run; ``InvalidRequest`` naming a bad
    part of the space."""
    if not space:
        raise InvalidRequest("space must name at least one parameter", field="space")
    for key, values in space.items():
        if key not in SEARCHABLE:
            raise InvalidRequest(
                f"space.{key}: not searchable (searchable: {', '.join(SEARCHABLE)})",
                field=f"space.{key}",
            )
        if not isinstance(values, list) or not values:
            raise InvalidRequest(f"space.{key} must be a non-empty list", field=f"space.{key}")
    if not 1 <= trials <= MAX_TRIALS:
        raise InvalidRequest(f"trials must be 1-{MAX_TRIALS} (got {trials})", field="trials")
    keys = sorted(space)
    grid = list(itertools.product(*(space[k] for k in keys)))
    if strategy == "grid":
        points = grid[:trials]
    elif strategy == "random":
        rng = np.random.default_rng(seed)
        picks = rng.permutation(len(grid))[:trials]
        points = [grid[i] for i in picks]
    else:
        raise InvalidRequest(
            f"strategy must be 'grid' or 'random' (got {strategy!r})", field="strategy"
        )
    # alpha last in the order of runs: trials of one config run the reservoir once
    planned = [dict(zip(keys, p, strict=True)) for p in points]
    planned.sort(key=lambda p: [repr(p.get(k)) for k in keys if k != "alpha"])
    return planned


def _score(
    registry: ModelRegistry,
    config: DTESNConfig,
    data: TrainingSet,
    washout: int,
    validation: float,
    alphas: list[float],
) -> list[float]:
    from dtesn_trio.dtesn import RidgeReadout
    from dtesn_trio.dtesn.tasks import nrmse

    model = registry.reservoir(config)
    xs, ys = state_rows(model, data, washout)
    (x_fit, y_fit), (x_val, y_val) = split_rows(xs, ys, data, validation)
    out = []
    for alpha in alphas:
        ro = RidgeReadout(alpha=alpha, mode=data.mode).fit_states(x_fit, y_fit)
        score = nrmse(ro.predict_states(x_val), y_val)
        out.append(score if math.isfinite(score) else math.inf)
    return out


def _groups(planned: list[dict[str, Any]]) -> list[list[int]]:
    """Trial indices by config (alpha aside), in the order of ``planned``."""
    groups: dict[str, list[int]] = {}
    for i, params in enumerate(planned):
        cfg = {k: v for k, v in params.items() if k != "alpha"}
        groups.setdefault(repr(sorted(cfg.items())), []).append(i)
    return list(groups.values())


async def run_trials(registry: ModelRegistry, payload: dict[str, Any]) -> dict[str, Any]:
    """Score one group of a search's trials (``payload["group"]``) and store each."""
    planned = plan_trials(payload["space"], payload["strategy"], payload["trials"], payload["seed"])
    search_id = payload["search_id"]
    done = await registry.store.trials(search_id)
    todo = [i for i in payload["group"] if i not in done]
    if todo:
        data = training_set(payload["inputs"], payload["targets"], payload["mode"])
        cfg = {k: v for k, v in planned[todo[0]].items() if k != "alpha"}
        alphas = [float(planned[i].get("alpha", payload["alpha"])) for i in todo]
        try:
            config = registry.config_for({**payload["config"], **cfg}, field="space")
            scored = await trio.to_thread.run_sync(
                _score, registry, config, data, payload["washout"], payload["validation"], alphas
            )
        except (DTESNError, ValueError, np.linalg.LinAlgError):
            scored = [math.inf] * len(todo)  # a config that cannot be built or fitted
        for i, score in zip(todo, scored, strict=True):
            await registry.store.add_trial(search_id, i, planned[i], score)
    return {"search_id": search_id, "trials": payload["group"]}


async def run_search(
    registry: ModelRegistry, payload: dict[str, Any], enqueue: Enqueue | None = None
) -> VersionInfo:
    """Run (or resume) the search of ``payload``; the new version.  Raises
    ``TrialsPending`` while trial jobs submitted through ``enqueue`` are unscored."""
    base = payload["config"]
    planned = plan_trials(payload["space"], payload["strategy"], payload["trials"], payload["seed"])
    search_id = payload["fit_id"]
    done = await registry.store.trials(search_id)
    pending = [g for g in _groups(planned) if any(i not in done for i in g)]
    waiting = False
    for number, group in enumerate(_groups(planned)):
        if group not in pending:
            continue
        child = {**payload, "kind": SEARCH_TRIAL, "search_id": search_id, "group": group}
        child["fit_id"] = f"{search_id}:{number}"
        if enqueue is None:
            await run_trials(registry, child)
            continue
        record, _ = await enqueue(child, idempotency_key=f"search:{search_id}:{number}")
        if record.status == "failed":  # its trials cannot be scored: say so
            for i in group:
                await registry.store.add_trial(search_id, i, planned[i], math.inf)
        else:
            waiting = True
    if waiting:
        raise TrialsPending(
            f"{len(pending)} trial groups of search {search_id} are not scored yet",
            retry_after=_PENDING_RETRY,
        )
    done = await registry.store.trials(search_id)
    trials = [
        {"trial": i, "params": planned[i], "validation_nrmse": None if math.isinf(s) else s}
        for i, (_, s) in sorted(done.items())
    ]
    best_i = min(done, key=lambda i: done[i][1])
    if math.isinf(done[best_i][1]):
        raise InvalidRequest("every trial of the search failed to fit", field="space")
    best = planned[best_i]
    data = training_set(payload["inputs"], payload["targets"], payload["mode"])
    config = registry.config_for({**base, **{k: v for k, v in best.items() if k != "alpha"}})
    alpha = float(best.get("alpha", payload["alpha"]))

    def refit() -> tuple[Any, dict[str, Any]]:
        return fit_readout(
            registry.reservoir(config),
            data,
            alphas=[alpha],
            washout=payload["washout"],
            validation=payload["validation"],
        )

    readout, scores = await trio.to_thread.run_sync(refit)
    scores.update(
        validation_nrmse=trials[best_i]["validation_nrmse"],
        best_trial=best_i,
        best_params=best,
        trials=trials,
    )
    fit = {
        "mode": payload["mode"],
        "washout": payload["washout"],
        "alpha": alpha,
        "search": {"strategy": payload["strategy"], "trials": len(planned)},
    }
    return await registry.add_version(
        payload["name"], config, readout, scores=scores, fit=fit, fit_id=search_id
    )

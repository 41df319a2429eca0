"""Hyperparameter search as a durable job: grid or random trials, each scored on a
held-out split, the best made a new version with every trial's score kept.

The space maps a parameter -- a ``DTESNConfig`` field among ``SEARCHABLE`` or
``alpha`` -- to the list of values to try.  ``grid``: the cartesian product in order
(the first ``trials`` of it); ``random``: ``trials`` distinct points drawn with
``seed``.  Each trial fits on the first ``1 - validation`` of the data and is scored
(NRMSE) on the rest; its score is stored as soon as it is known, so a search run
again after a crash resumes at the first trial without one.  Trials that differ only
in ``alpha`` share one run of the reservoir.  The best trial is fitted again on all of
the data and stored as the new version.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import trio

from dtesn_trio.dtesn import DTESNConfig
from dtesn_trio.errors import InvalidRequest
from dtesn_trio.models.fitting import TrainingSet, _rows, _split, fit_readout, training_set
from dtesn_trio.models.registry import ModelRegistry
from dtesn_trio.models.version import VersionInfo

__all__ = ["SEARCHABLE", "plan_trials", "run_search"]

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
    xs, ys = _rows(model, data, washout)
    (x_fit, y_fit), (x_val, y_val) = _split(xs, ys, data, validation)
    out = []
    for alpha in alphas:
        ro = RidgeReadout(alpha=alpha, mode=data.mode).fit_states(x_fit, y_fit)
        score = nrmse(ro.predict_states(x_val), y_val)
        out.append(score if math.isfinite(score) else math.inf)
    return out


async def run_search(registry: ModelRegistry, payload: dict[str, Any]) -> VersionInfo:
    """Run (or resume) the search of ``payload``; the new version."""
    base = payload["config"]
    data = training_set(payload["inputs"], payload["targets"], payload["mode"])
    planned = plan_trials(payload["space"], payload["strategy"], payload["trials"], payload["seed"])
    search_id = payload["fit_id"]
    done = await registry.store.trials(search_id)
    default_alpha = payload["alpha"]
    # group the trials by config: one reservoir run scores all alphas of a config
    groups: dict[str, list[int]] = {}
    for i, params in enumerate(planned):
        cfg = {k: v for k, v in params.items() if k != "alpha"}
        groups.setdefault(repr(sorted(cfg.items())), []).append(i)
    for idxs in groups.values():
        todo = [i for i in idxs if i not in done]
        if not todo:
            continue
        cfg = {k: v for k, v in planned[todo[0]].items() if k != "alpha"}
        config = registry.config_for({**base, **cfg}, field="space")
        alphas = [float(planned[i].get("alpha", default_alpha)) for i in todo]
        scored = await trio.to_thread.run_sync(
            _score, registry, config, data, payload["washout"], payload["validation"], alphas
        )
        for i, score in zip(todo, scored, strict=True):
            await registry.store.add_trial(search_id, i, planned[i], score)
            done[i] = (planned[i], score)
    trials = [
        {"trial": i, "params": planned[i], "validation_nrmse": None if math.isinf(s) else s}
        for i, (_, s) in sorted(done.items())
    ]
    best_i = min(done, key=lambda i: done[i][1])
    best = planned[best_i]
    config = registry.config_for({**base, **{k: v for k, v in best.items() if k != "alpha"}})
    alpha = float(best.get("alpha", default_alpha))

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

"""Hyperparameter search as a durable job: grid or random trials, each scored on a
held-out split, the best made a new version with every trial's score kept.

The space maps a parameter -- a ``DTESNConfig`` field among ``SEARCHABLE`` or
``alpha`` -- to the list of values to try, or (``random`` only) to a range
``{"low", "high", "log"}`` drawn from uniformly (log-uniformly with ``"log": true``;
drawn values are rounded to 3 significant digits).  ``grid``: the cartesian product in
order (the first ``trials`` of it); ``random``: ``trials`` points drawn with ``seed``
(distinct points of the grid when every value is a list).  Each trial fits on the first
``1 - validation`` of the data and is scored (NRMSE) on the rest.  Every trial scores
each of the search's ``alpha`` values (a list) on the same run of the reservoir and
keeps the best, so a list of alphas costs a ridge solve each, not a trial each; an
``alpha`` in the space instead makes each value a trial of its own.  Trials that
differ only in ``alpha`` form one group, which runs the reservoir once.

Without a space the search uses ``DEFAULT_SPACE`` (random: ``input_scaling``
log-uniform in 0.01-1, ``spectral_radius`` uniform in 0.7-1.1, ``leak_rate`` one of
0.25, 0.5 and 1) and, unless told otherwise, ``DEFAULT_TRIALS`` trials; without an
``alpha`` (whatever the space) every trial scores ``DEFAULT_ALPHAS`` (1e-8, 1e-6, 1e-4).

With the job service (``enqueue``), each group is a durable job of its own
(``model_search_trial``, idempotency key ``search:<id>:<group>``), claimed by any
instance's claimers, several at once; the search job itself only submits them and is
put back in the queue (``TrialsPending``, a transient refusal: no attempt counted, no
claimer held) until every trial's score is stored.  A group whose job failed scores
its trials as failed (no NRMSE).  Without it (``enqueue=None``) the groups run in
order inside the search.  Either way a score is stored once known, so nothing scored
is computed again after a crash.  The best trial is fitted again on all of the data
(with its alpha) and stored as the new version, every trial's score in its ``scores``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import trio

from dtesn_trio.dtesn import DTESNConfig, DTESNModel, RidgeReadout
from dtesn_trio.dtesn.tasks import nrmse
from dtesn_trio.errors import DTESNError, InvalidRequest, Overloaded
from dtesn_trio.models.fitting import TrainingSet, fit_readout, split_rows, state_rows, training_set
from dtesn_trio.models.registry import ModelRegistry
from dtesn_trio.models.version import VersionInfo

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_SPACE",
    "DEFAULT_TRIALS",
    "SEARCHABLE",
    "SEARCH_TRIAL",
    "TrialsPending",
    "plan_trials",
    "run_search",
    "run_trials",
    "score_alphas",
    "search_alphas",
    "search_strategy",
]

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
_INTEGRAL = frozenset({"membrane_depth"})
MAX_TRIALS = 200

DEFAULT_SPACE: dict[str, Any] = {
    "input_scaling": {"low": 0.01, "high": 1.0, "log": True},
    "spectral_radius": {"low": 0.7, "high": 1.1, "log": False},
    "leak_rate": [0.25, 0.5, 1.0],
}
DEFAULT_ALPHAS = (1e-8, 1e-6, 1e-4)
DEFAULT_TRIALS = 30


def search_strategy(space: dict[str, Any], strategy: str | None) -> str:
    """The strategy a search runs: ``strategy``, or when it is not given ``random`` if
    the space has a range and ``grid`` otherwise."""
    if strategy is not None:
        return strategy
    return "random" if any(isinstance(v, dict) for v in space.values()) else "grid"


def search_alphas(alpha: float | Sequence[float] | None) -> list[float]:
    """The alphas every trial scores: ``alpha`` as a list, ``DEFAULT_ALPHAS`` for None."""
    if alpha is None:
        return list(DEFAULT_ALPHAS)
    return [float(a) for a in alpha] if isinstance(alpha, Sequence) else [float(alpha)]


def _check_range(key: str, spec: Any) -> tuple[float, float, bool]:
    field = f"space.{key}"
    if key in _INTEGRAL:
        raise InvalidRequest(f"{field} takes a list of integers, not a range", field=field)
    extra = set(spec) - {"low", "high", "log"}
    if extra or "low" not in spec or "high" not in spec:
        raise InvalidRequest(
            f'{field}: a range is {{"low": number, "high": number, "log": bool}}',
            field=field,
        )
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not isinstance(log, bool) or not math.isfinite(low + high):
        raise InvalidRequest(
            f"{field}: low and high must be finite numbers, log true or false", field=field
        )
    if not low < high:
        raise InvalidRequest(f"{field}: low must be < high (got {low} >= {high})", field=field)
    if log and low <= 0:
        raise InvalidRequest(f"{field}: a log range needs low > 0 (got {low})", field=field)
    return float(low), float(high), log


def _draw(rng: np.random.Generator, spec: tuple[float, float, bool]) -> float:
    low, high, log = spec
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
    return float(f"{min(max(value, low), high):.3g}")


def plan_trials(
    space: dict[str, Any], strategy: str | None, trials: int, seed: int
) -> list[dict[str, Any]]:
    """The trials' parameters, in the order they run; ``InvalidRequest`` naming a bad
    part of the space."""
    if not space:
        raise InvalidRequest("space must name at least one parameter", field="space")
    ranges: dict[str, tuple[float, float, bool]] = {}
    for key, values in space.items():
        if key not in SEARCHABLE:
            raise InvalidRequest(
                f"space.{key}: not searchable (searchable: {', '.join(SEARCHABLE)})",
                field=f"space.{key}",
            )
        if isinstance(values, dict):
            ranges[key] = _check_range(key, values)
        elif not isinstance(values, list) or not values:
            raise InvalidRequest(
                f"space.{key} must be a non-empty list (or, random only, a range)",
                field=f"space.{key}",
            )
    if not 1 <= trials <= MAX_TRIALS:
        raise InvalidRequest(f"trials must be 1-{MAX_TRIALS} (got {trials})", field="trials")
    strategy = search_strategy(space, strategy)
    keys = sorted(space)
    if strategy not in ("grid", "random"):
        raise InvalidRequest(
            f"strategy must be 'grid' or 'random' (got {strategy!r})", field="strategy"
        )
    if strategy == "grid" and ranges:
        key = min(ranges)
        raise InvalidRequest(
            f"space.{key}: a range needs strategy 'random' (grid takes lists)",
            field=f"space.{key}",
        )
    rng = np.random.default_rng(seed)
    if ranges:  # independent draws: a range is never exhausted
        points = [
            tuple(
                _draw(rng, ranges[k]) if k in ranges else space[k][rng.integers(len(space[k]))]
                for k in keys
            )
            for _ in range(trials)
        ]
    else:
        grid = list(itertools.product(*(space[k] for k in keys)))
        if strategy == "grid":
            points = grid[:trials]
        else:
            points = [grid[i] for i in rng.permutation(len(grid))[:trials]]
    # alpha last in the order of runs: trials of one config run the reservoir once
    planned = [dict(zip(keys, p, strict=True)) for p in points]
    planned.sort(key=lambda p: [repr(p.get(k)) for k in keys if k != "alpha"])
    return planned


def score_alphas(
    model: DTESNModel, data: TrainingSet, washout: int, validation: float, alphas: list[float]
) -> list[float]:
    """One trial's work (synchronous): the validation NRMSE of each alpha (``inf`` for
    one that does not fit) of a readout on ``model``'s states, fitted on the first
    ``1 - validation`` of ``data`` and scored on the rest."""
    xs, ys = state_rows(model, data, washout)
    (x_fit, y_fit), (x_val, y_val) = split_rows(xs, ys, data, validation)
    out = []
    for alpha in alphas:
        ro = RidgeReadout(alpha=alpha, mode=data.mode).fit_states(x_fit, y_fit)
        score = nrmse(ro.predict_states(x_val), y_val)
        out.append(score if math.isfinite(score) else math.inf)
    return out


def _score(
    registry: ModelRegistry,
    config: DTESNConfig,
    data: TrainingSet,
    washout: int,
    validation: float,
    alphas: list[float],
) -> list[float]:
    return score_alphas(registry.reservoir(config), data, washout, validation, alphas)


def _groups(planned: list[dict[str, Any]]) -> list[list[int]]:
    """Trial indices by config (alpha aside), in the order of ``planned``."""
    groups: dict[str, list[int]] = {}
    for i, params in enumerate(planned):
        cfg = {k: v for k, v in params.items() if k != "alpha"}
        groups.setdefault(repr(sorted(cfg.items())), []).append(i)
    return list(groups.values())


def _trial_alphas(params: dict[str, Any], payload: dict[str, Any]) -> list[float]:
    if "alpha" in params:
        return [float(params["alpha"])]
    return search_alphas(payload.get("alpha"))


def _record(stored: dict[str, Any]) -> tuple[float | None, list[dict[str, Any]]]:
    """A stored trial's alpha and per-alpha scores (none for a trial stored without)."""
    alpha = stored.get("alpha")
    alphas = stored.get("alphas")
    return (
        float(alpha) if isinstance(alpha, int | float) else None,
        alphas if isinstance(alphas, list) else [],
    )


async def run_trials(registry: ModelRegistry, payload: dict[str, Any]) -> dict[str, Any]:
    """Score one group of a search's trials (``payload["group"]``) and store each."""
    planned = plan_trials(
        payload["space"], payload.get("strategy"), payload["trials"], payload["seed"]
    )
    search_id = payload["search_id"]
    done = await registry.store.trials(search_id)
    todo = [i for i in payload["group"] if i not in done]
    if todo:
        data = training_set(payload["inputs"], payload["targets"], payload["mode"])
        cfg = {k: v for k, v in planned[todo[0]].items() if k != "alpha"}
        wanted = {i: _trial_alphas(planned[i], payload) for i in todo}
        alphas = sorted({a for values in wanted.values() for a in values})
        try:
            config = registry.config_for({**payload["config"], **cfg}, field="space")
            scored = await trio.to_thread.run_sync(
                _score, registry, config, data, payload["washout"], payload["validation"], alphas
            )
        except (DTESNError, ValueError, np.linalg.LinAlgError):
            scored = [math.inf] * len(alphas)  # a config that cannot be built or fitted
        by_alpha = dict(zip(alphas, scored, strict=True))
        for i in todo:
            tried = [(a, by_alpha[a]) for a in wanted[i]]
            alpha, score = min(tried, key=lambda t: t[1])
            record: dict[str, Any] = {"alpha": alpha}
            if len(tried) > 1:
                record["alphas"] = [
                    {"alpha": a, "validation_nrmse": None if math.isinf(s) else s} for a, s in tried
                ]
            await registry.store.add_trial(search_id, i, record, score)
    return {"search_id": search_id, "trials": payload["group"]}


async def run_search(
    registry: ModelRegistry, payload: dict[str, Any], enqueue: Enqueue | None = None
) -> VersionInfo:
    """Run (or resume) the search of ``payload``; the new version.  Raises
    ``TrialsPending`` while trial jobs submitted through ``enqueue`` are unscored."""
    base = payload["config"]
    strategy = search_strategy(payload["space"], payload.get("strategy"))
    planned = plan_trials(payload["space"], strategy, payload["trials"], payload["seed"])
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
                await registry.store.add_trial(search_id, i, {}, math.inf)
        else:
            waiting = True
    if waiting:
        raise TrialsPending(
            f"{len(pending)} trial groups of search {search_id} are not scored yet",
            retry_after=_PENDING_RETRY,
        )
    done = await registry.store.trials(search_id)
    trials = []
    for i, (stored, score) in sorted(done.items()):
        alpha, alphas = _record(stored)
        if alpha is None:
            alpha = _trial_alphas(planned[i], payload)[0]
        trial: dict[str, Any] = {
            "trial": i,
            "params": {**planned[i], "alpha": alpha},
            "validation_nrmse": None if math.isinf(score) else score,
        }
        if alphas:
            trial["alphas"] = alphas
        trials.append(trial)
    best_i = min(done, key=lambda i: done[i][1])
    if math.isinf(done[best_i][1]):
        raise InvalidRequest("every trial of the search failed to fit", field="space")
    best = trials[best_i]["params"]
    data = training_set(payload["inputs"], payload["targets"], payload["mode"])
    config = registry.config_for({**base, **{k: v for k, v in best.items() if k != "alpha"}})
    alpha = float(best["alpha"])

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
        "search": {
            "strategy": strategy,
            "trials": len(planned),
            "space": payload["space"],
            "alphas": search_alphas(payload.get("alpha")),
        },
    }
    return await registry.add_version(
        payload["name"], config, readout, scores=scores, fit=fit, fit_id=search_id
    )

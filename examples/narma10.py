"""Train a ridge readout on NARMA10 with the default DTESN model and with a tuned one;
print both NRMSEs.

The tuned parameters are the best trial of the server's default search on this data
(``POST /v1/models/{name}/search`` with no space, as ``benchmarks/fit.py`` runs it);
``--search`` runs that same search here, in process (the same draws and scores), and
uses its best trial instead.

python examples/narma10.py [--steps 4000] [--depth 4] [--size 1024] [--search]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from dtesn_trio.dtesn import DTESNConfig, DTESNModel
from dtesn_trio.dtesn.tasks import narma10, nrmse

# the best trial of the default search (benchmarks/fit.py's search_best)
TUNED: dict[str, Any] = {
    "input_scaling": 0.235,
    "leak_rate": 1.0,
    "spectral_radius": 0.96,
    "alpha": 1e-4,
}


def score(
    config: DTESNConfig, u: np.ndarray, y: np.ndarray, split: int, washout: int, alpha: float
) -> float:
    model = DTESNModel(config)
    # one long series: a per-step readout, fitted after a washout
    model.fit_readout([u[:split]], [y[:split]], alpha=alpha, mode="per_step", washout=washout)
    # run the whole series (the test part continues from the trained part's state)
    result = model.process_one(u)
    assert result.prediction is not None
    return nrmse(result.prediction[split:], y[split:])


def search(
    base: DTESNConfig, u: np.ndarray, y: np.ndarray, split: int, washout: int
) -> dict[str, Any]:
    """The server's default search, in process: the best trial's parameters."""
    from dtesn_trio.models.fitting import training_set
    from dtesn_trio.models.search import (
        DEFAULT_ALPHAS,
        DEFAULT_SPACE,
        DEFAULT_TRIALS,
        plan_trials,
        score_alphas,
    )

    data = training_set(u[:split].tolist(), y[:split].tolist(), "per_step")
    alphas = list(DEFAULT_ALPHAS)
    best: tuple[float, dict[str, Any]] = (float("inf"), {})
    for i, params in enumerate(plan_trials(DEFAULT_SPACE, None, DEFAULT_TRIALS, seed=0)):
        config = DTESNConfig(**{**base.to_dict(), **params})
        scores = score_alphas(DTESNModel(config), data, washout, 0.25, alphas)
        j = int(np.argmin(scores))
        print(f"  trial {i:2}: validation NRMSE {scores[j]:.4f}  {params} alpha {alphas[j]:g}")
        if scores[j] < best[0]:
            best = (scores[j], {**params, "alpha": alphas[j]})
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="series length (train 75 %%)")
    parser.add_argument("--depth", type=int, default=4, help="membrane_depth")
    parser.add_argument("--size", type=int, default=1024, help="reservoir_size")
    parser.add_argument("--washout", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=1e-6, help="ridge penalty (default)")
    parser.add_argument("--search", action="store_true", help="run the default search here")
    args = parser.parse_args()

    u, y = narma10(args.steps, seed=0)
    split = args.steps * 3 // 4
    base = DTESNConfig(membrane_depth=args.depth, reservoir_size=args.size)
    print(f"NARMA10: train {split} steps, test {args.steps - split} steps")
    started = time.perf_counter()
    default = score(base, u, y, split, args.washout, args.alpha)
    shown = ", ".join(
        f"{k} {getattr(base, k)}" for k in ("input_scaling", "spectral_radius", "leak_rate")
    )
    print(
        f"default: NRMSE = {default:.4f}  ({shown}, alpha {args.alpha:g};"
        f" {time.perf_counter() - started:.2f} s)"
    )
    tuned = search(base, u, y, split, args.washout) if args.search else TUNED
    started = time.perf_counter()
    params = {k: v for k, v in tuned.items() if k != "alpha"}
    score_tuned = score(
        DTESNConfig(**{**base.to_dict(), **params}), u, y, split, args.washout, tuned["alpha"]
    )
    shown = ", ".join(f"{k} {v:g}" for k, v in tuned.items())
    print(f"tuned:   NRMSE = {score_tuned:.4f}  ({shown}; {time.perf_counter() - started:.2f} s)")


if __name__ == "__main__":
    main()

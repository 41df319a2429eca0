"""NARMA10 quality: the DTESN model vs reservoirpy at the same size and hyperparameters.

Both models see the same series, use 1024 units, leak rate 0.3, spectral radius 0.95,
input scaling 1.0, connectivity 0.1 and seed 42, and are read out by ridge regression
with the same penalty on the same washed-out training steps. reservoirpy is a
benchmark-only dependency (``pip install reservoirpy``, the ``bench`` extra).

    python benchmarks/dtesn_quality.py [--quick] [--json]

Keys: ``nrmse``, ``reservoirpy_nrmse``, ``ratio`` (nrmse / reservoirpy_nrmse; target
<= 1.1), plus the settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))

import numpy as np  # noqa: E402
from _deps import require  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from dtesn_trio.dtesn import DTESNConfig, DTESNModel, RidgeReadout  # noqa: E402
from dtesn_trio.dtesn.tasks import narma10, nrmse  # noqa: E402


def dtesn_score(
    cfg: DTESNConfig, u: np.ndarray, y: np.ndarray, split: int, washout: int, alpha: float
) -> float:
    model = DTESNModel(cfg)
    states = model.run_states(u)
    ro = RidgeReadout(alpha=alpha, mode="per_step").fit_states(
        states[washout:split], y[washout:split]
    )
    return nrmse(ro.predict_states(states[split:]), y[split:])


def reservoirpy_score(
    cfg: DTESNConfig, u: np.ndarray, y: np.ndarray, split: int, washout: int, alpha: float
) -> float:
    from reservoirpy.nodes import Reservoir, Ridge

    reservoir = Reservoir(
        units=cfg.reservoir_size,
        lr=cfg.leak_rate,
        sr=cfg.spectral_radius,
        input_scaling=cfg.input_scaling,
        rc_connectivity=cfg.sparsity,
        seed=cfg.seed,
    )
    states = reservoir.run(u)
    readout = Ridge(ridge=alpha)
    readout.fit(states[washout:split], y[washout:split, None])
    return nrmse(readout.run(states[split:])[:, 0], y[split:])


def main() -> None:
    parser = argparse.ArgumentParser(description="NARMA10: DTESN vs reservoirpy")
    parser.add_argument("--quick", action="store_true", help="one short series (< 45 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    require("reservoirpy")

    steps = 2000 if args.quick else 4000
    series = [0] if args.quick else [0, 1, 2]
    washout, alpha = 100, 1e-6
    split = steps * 3 // 4
    cfg = DTESNConfig()  # the default model: depth 4, 1024 units, seed 42
    ours: list[float] = []
    theirs: list[float] = []
    started = time.perf_counter()
    with threadpool_limits(1):  # same footing for both, and a quiet neighbour
        for s in series:
            u, y = narma10(steps, seed=s)
            ours.append(dtesn_score(cfg, u, y, split, washout, alpha))
            theirs.append(reservoirpy_score(cfg, u, y, split, washout, alpha))
    ours_m, theirs_m = float(np.mean(ours)), float(np.mean(theirs))
    out = {
        "nrmse": round(ours_m, 4),
        "reservoirpy_nrmse": round(theirs_m, 4),
        "ratio": round(ours_m / theirs_m, 4),
        "target_ratio_max": 1.1,
        "series": len(series),
        "steps": steps,
        "train_steps": split,
        "washout": washout,
        "ridge_alpha": alpha,
        "reservoir_size": cfg.reservoir_size,
        "membrane_depth": cfg.membrane_depth,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"NARMA10, {len(series)} series × {steps} steps (train {split}, washout {washout})")
    print(f"{'model':<34}{'NRMSE':>10}")
    print(f"{'DTESN (depth 4, 8 membranes)':<34}{ours_m:>10.4f}")
    print(f"{'reservoirpy ESN (1 reservoir)':<34}{theirs_m:>10.4f}")
    print(f"ratio {out['ratio']:.3f} (target <= 1.1), {out['seconds']} s")


if __name__ == "__main__":
    main()

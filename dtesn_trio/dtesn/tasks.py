"""Benchmark tasks for reservoir models (kept small: data, not a framework)."""

from __future__ import annotations

import numpy as np

from dtesn_trio.dtesn.encoding import FloatArray

__all__ = ["narma10", "nrmse"]


def narma10(steps: int, *, seed: int = 0) -> tuple[FloatArray, FloatArray]:
    """The NARMA10 task: inputs ``u`` (``steps × 1``, uniform in [0, 0.5]) and targets
    ``y`` (``steps``), with ``y[t+1] = 0.3 y[t] + 0.05 y[t] Σ_{i<10} y[t-i]
    + 1.5 u[t-9] u[t] + 0.1``. The first 20 generated steps (the warm-up from zeros) are
    dropped.
    """
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.0, 0.5, size=steps + 20)
    y = np.zeros(steps + 20)
    for t in range(9, steps + 19):
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * y[t - 9 : t + 1].sum() + 1.5 * u[t - 9] * u[t] + 0.1
    return u[20:, None].copy(), y[20:].copy()


def nrmse(prediction: FloatArray, target: FloatArray) -> float:
    """Root-mean-square error divided by the target's standard deviation."""
    p = np.asarray(prediction, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    return float(np.sqrt(np.mean((p - t) ** 2)) / np.std(t))

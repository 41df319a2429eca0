"""Fitting a readout from request data: validation, alpha selection, and the
accumulator of a chunked fit.  Synchronous NumPy work (callers run it in a thread).

Training data (``inputs`` and ``targets``):

- one series: text, or a ``T x D`` array; with ``mode="per_step"`` its targets are
  ``T`` numbers (or ``T x outputs``);
- a list of sequences (texts or ``T_i x D`` arrays): with ``per_step``, one target
  series per sequence; with ``final``, one target (a number or a row) per sequence.

One alpha: the readout is fitted on everything, exactly as ``DTESNModel.fit_readout``
does (same states, same solve).  A list of alphas: each is fitted on the first
``1 - validation`` of the data (steps of one series, or sequences of a list) and
scored (NRMSE) on the rest; the best is fitted again on everything.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from dtesn_trio.dtesn import DTESNModel, RidgeReadout
from dtesn_trio.dtesn.encoding import FloatArray
from dtesn_trio.dtesn.tasks import nrmse
from dtesn_trio.errors import InvalidRequest

__all__ = [
    "Accumulator",
    "TrainingSet",
    "fit_readout",
    "split_rows",
    "state_rows",
    "training_set",
]


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Validated training data: the sequences and their target arrays."""

    inputs: list[Any]
    targets: list[FloatArray]  # per_step: one (T_i[, k]) array per input; final: one (n[, k])
    mode: str
    single: bool  # one series (split by steps) rather than a list of sequences


def _is_series(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list)
        and bool(value)
        and isinstance(value[0], list)
        and (not value[0] or not isinstance(value[0][0], list))
    )


def _steps(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else len(value)


def _array(value: Any, field: str) -> FloatArray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidRequest(
            f"{field} must be numbers (a list, or a list of rows)", field=field
        ) from None
    if arr.ndim not in (1, 2) or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InvalidRequest(
            f"{field} must be a non-empty list of finite numbers or of equal rows", field=field
        )
    return arr


def training_set(inputs: Any, targets: Any, mode: str) -> TrainingSet:
    """Check ``inputs`` and ``targets`` against each other; ``InvalidRequest`` names
    the field and the lengths that disagree."""
    if _is_series(inputs):
        if mode == "final":
            raise InvalidRequest(
                "mode 'final' needs a list of sequences (one target each); one series"
                " needs mode 'per_step'",
                field="inputs",
            )
        arr = _array(targets, "targets")
        steps = _steps(inputs)
        if arr.shape[0] != steps:
            raise InvalidRequest(
                f"targets has {arr.shape[0]} steps, inputs has {steps}: one target per step",
                field="targets",
            )
        return TrainingSet([inputs], [arr], mode, True)
    if not isinstance(inputs, list) or not inputs or not all(_is_series(x) for x in inputs):
        raise InvalidRequest(
            "inputs must be text, a T x D array, or a non-empty list of them", field="inputs"
        )
    if mode == "final":
        arr = _array(targets, "targets")
        if arr.shape[0] != len(inputs):
            raise InvalidRequest(
                f"targets has {arr.shape[0]} rows for {len(inputs)} inputs: one per input",
                field="targets",
            )
        return TrainingSet(list(inputs), [arr], mode, False)
    if not isinstance(targets, list) or len(targets) != len(inputs):
        got = len(targets) if isinstance(targets, list) else "not a list"
        raise InvalidRequest(
            f"targets must hold one series per input ({len(inputs)}; got {got})",
            field="targets",
        )
    arrays = []
    for i, (x, y) in enumerate(zip(inputs, targets, strict=True)):
        arr = _array(y, f"targets[{i}]")
        if arr.shape[0] != _steps(x):
            raise InvalidRequest(
                f"targets[{i}] has {arr.shape[0]} steps, inputs[{i}] has {_steps(x)}",
                field=f"targets[{i}]",
            )
        arrays.append(arr)
    return TrainingSet(list(inputs), arrays, mode, False)


def state_rows(
    model: DTESNModel, data: TrainingSet, washout: int
) -> tuple[list[FloatArray], list[FloatArray]]:
    """States and targets per input, as ``RidgeReadout.fit`` builds them."""
    if data.mode == "final":
        return [model.features(data.inputs)], [data.targets[0]]
    xs, ys = [], []
    for x, y in zip(data.inputs, data.targets, strict=True):
        xs.append(model.run_states(x)[washout:])
        ys.append(y[washout:])
    return xs, ys


def fit_readout(
    model: DTESNModel,
    data: TrainingSet,
    *,
    alphas: list[float],
    washout: int,
    validation: float,
) -> tuple[RidgeReadout, dict[str, Any]]:
    """The fitted readout (not attached) and its scores: ``train_nrmse``, and with
    several alphas ``alpha`` (the best), ``validation_nrmse`` and ``alphas`` (each
    alpha with its validation NRMSE)."""
    xs, ys = state_rows(model, data, washout)
    if sum(x.shape[0] for x in xs) == 0:
        raise InvalidRequest(f"washout {washout} leaves no step to fit on", field="washout")
    scores: dict[str, Any] = {}
    best = alphas[0]
    if len(alphas) > 1:
        (x_fit, y_fit), (x_val, y_val) = split_rows(xs, ys, data, validation)
        tried: list[tuple[float, float]] = []
        for alpha in alphas:
            ro = RidgeReadout(alpha=alpha, mode=data.mode).fit_states(x_fit, y_fit)
            score = nrmse(ro.predict_states(x_val), y_val)
            tried.append((alpha, score if math.isfinite(score) else math.inf))
        best, best_score = min(tried, key=lambda t: t[1])
        scores.update(
            alpha=best,
            validation_nrmse=_finite(best_score),
            alphas=[{"alpha": a, "validation_nrmse": _finite(s)} for a, s in tried],
        )
    X, Y = np.concatenate(xs), np.concatenate(ys)
    readout = RidgeReadout(alpha=best, mode=data.mode, washout=washout).fit_states(X, Y)
    scores["train_nrmse"] = _finite(nrmse(readout.predict_states(X), Y))
    return readout, scores


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def split_rows(
    xs: list[FloatArray], ys: list[FloatArray], data: TrainingSet, validation: float
) -> tuple[tuple[FloatArray, FloatArray], tuple[FloatArray, FloatArray]]:
    if data.single or data.mode == "final":
        X, Y = (
            xs[0] if len(xs) == 1 else np.concatenate(xs),
            ys[0] if len(ys) == 1 else np.concatenate(ys),
        )
        cut = X.shape[0] - max(1, round(X.shape[0] * validation))
        if cut < 1:
            raise InvalidRequest(
                "too little data to hold out a validation part", field="validation"
            )
        return (X[:cut], Y[:cut]), (X[cut:], Y[cut:])
    held = max(1, round(len(xs) * validation))
    if held >= len(xs):
        raise InvalidRequest(
            f"validation {validation} holds out every one of {len(xs)} sequences",
            field="validation",
        )
    return (
        (np.concatenate(xs[:-held]), np.concatenate(ys[:-held])),
        (np.concatenate(xs[-held:]), np.concatenate(ys[-held:])),
    )


class Accumulator:
    """``X^T X``, ``X^T Y`` and the sums of one long series fed in chunks, with the
    reservoir's state carried from chunk to chunk: memory is that of one chunk plus
    the ``(1 + N)^2`` matrix, whatever the series' length.  ``solve`` gives the ridge
    readout ``fit_states`` would give on the whole series (to rounding), by Cholesky."""

    def __init__(self, size: int, outputs: int, washout: int) -> None:
        self.xtx = np.zeros((size, size))
        self.xty = np.zeros((size, outputs))
        self.x_sum = np.zeros(size)
        self.y_sum = np.zeros(outputs)
        self.y_sq = np.zeros(outputs)
        self.count = 0
        self.steps = 0
        self.washout = washout
        self.flat = True
        self.state = np.zeros(size)

    def add(self, model: DTESNModel, inputs: Any, targets: FloatArray) -> None:
        """Run the chunk from the carried state and add its rows (after the washout)."""
        states = model.run_states(inputs, initial_state=self.state)
        self.state = states[-1].copy()
        skip = max(0, self.washout - self.steps)
        self.steps += states.shape[0]
        self.flat = targets.ndim == 1
        X = states[skip:]
        Y = (targets[:, None] if targets.ndim == 1 else targets)[skip:]
        if Y.shape[1] != self.xty.shape[1]:
            raise InvalidRequest(
                f"targets has {Y.shape[1]} outputs per step, earlier chunks had {self.xty.shape[1]}",
                field="targets",
            )
        self.xtx += X.T @ X
        self.xty += X.T @ Y
        self.x_sum += X.sum(axis=0)
        self.y_sum += Y.sum(axis=0)
        self.y_sq += (Y * Y).sum(axis=0)
        self.count += X.shape[0]

    def solve(self, alpha: float) -> RidgeReadout:
        """The readout, centred as ``RidgeReadout.fit_states`` centres (bias unpenalised)."""
        if self.count == 0:
            raise InvalidRequest("no step left to fit on after the washout", field="washout")
        n = self.count
        x_mean = self.x_sum / n
        y_mean = self.y_sum / n
        gram = self.xtx - n * np.outer(x_mean, x_mean)
        gram[np.diag_indices_from(gram)] += alpha
        rhs = self.xty - n * np.outer(x_mean, y_mean)
        w = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram, lower=True), rhs)
        b = y_mean - x_mean @ w
        ro = RidgeReadout(alpha=alpha, mode="per_step", washout=self.washout)
        ro.weights = np.vstack([b[None, :], w])
        ro._flat = self.flat
        return ro

    def train_nrmse(self, readout: RidgeReadout) -> float | None:
        """The training NRMSE from the sums alone (no state kept)."""
        assert readout.weights is not None
        w, b = readout.weights[1:], readout.weights[0]
        n = self.count
        k = self.xty.shape[1]
        # sum over steps of ||x w + b - y||^2, expanded into the sums kept
        pred_sq = np.einsum("ik,ij,jk->k", w, self.xtx, w) + 2 * (self.x_sum @ w) * b + n * b * b
        cross = np.einsum("ik,ik->k", w, self.xty) + b * self.y_sum
        sse = float(np.sum(pred_sq - 2 * cross + self.y_sq))
        total = n * k
        var = float(np.sum(self.y_sq)) / total - (float(np.sum(self.y_sum)) / total) ** 2
        if var <= 0:
            return None
        return _finite(math.sqrt(max(sse, 0.0) / total) / math.sqrt(var))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            xtx=self.xtx,
            xty=self.xty,
            x_sum=self.x_sum,
            y_sum=self.y_sum,
            y_sq=self.y_sq,
            state=self.state,
            counts=np.array([self.count, self.steps, self.washout, int(self.flat)]),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Accumulator:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            acc = cls(z["xtx"].shape[0], z["xty"].shape[1], int(z["counts"][2]))
            acc.xtx, acc.xty = z["xtx"], z["xty"]
            acc.x_sum, acc.y_sum, acc.y_sq, acc.state = (
                z["x_sum"],
                z["y_sum"],
                z["y_sq"],
                z["state"],
            )
            acc.count, acc.steps, _, flat = (int(v) for v in z["counts"])
            acc.flat = bool(flat)
        return acc

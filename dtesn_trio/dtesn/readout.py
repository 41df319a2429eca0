"""A ridge-regression readout on the reservoir's states."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.linalg

from dtesn_trio import _checks
from dtesn_trio.dtesn.encoding import FloatArray

if TYPE_CHECKING:
    from dtesn_trio.dtesn.model import DTESNModel

__all__ = ["RidgeReadout"]

_MODES = ("final", "per_step")


class RidgeReadout:
    """Linear readout ``y = [1, x] @ weights`` fitted by ridge regression.

    - ``mode="final"``: one output per input, from its final state; ``targets`` is an
      ``n`` or ``n × outputs`` array.
    - ``mode="per_step"``: one output per time step, from every step's state;
      ``targets`` holds one ``T_i`` or ``T_i × outputs`` array per input. The first
      ``washout`` steps of each input are left out of the fit (not of predictions).

    ``alpha`` penalises the weights, not the bias. Use ``model.fit_readout(...)`` to fit
    and attach in one call; an attached readout fills ``DTESNResult.prediction``.
    """

    def __init__(self, alpha: float = 1e-6, mode: str = "final", washout: int = 0) -> None:
        _checks.non_negative("readout.alpha", alpha)
        _checks.one_of("readout.mode", mode, _MODES)
        _checks.integer("readout.washout", washout, minimum=0)
        self.alpha = float(alpha)
        self.mode = mode
        self.washout = washout
        self.weights: FloatArray | None = None  # (1 + state_size, outputs); row 0 = bias
        self._flat = False  # fitted on 1-D targets: predictions drop the outputs axis

    def __repr__(self) -> str:
        fitted = "unfitted" if self.weights is None else f"outputs={self.weights.shape[1]}"
        return f"RidgeReadout(alpha={self.alpha}, mode={self.mode!r}, {fitted})"

    # ------------------------------------------------------------------ fitting
    def fit_states(self, states: FloatArray, targets: npt.ArrayLike) -> RidgeReadout:
        """Fit on a ``samples × state_size`` matrix and matching ``samples [× outputs]``."""
        X = np.asarray(states, dtype=np.float64)
        Y = np.asarray(targets, dtype=np.float64)
        self._flat = Y.ndim == 1
        if Y.ndim == 1:
            Y = Y[:, None]
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"readout targets must have one row per sample (got {Y.shape[0]} for {X.shape[0]})"
            )
        if X.shape[0] == 0:
            raise ValueError("readout needs at least one sample to fit")
        # Centre to leave the bias unpenalised: w solves (Xc'Xc + αI) w = Xc'Yc.
        x_mean = X.mean(axis=0)
        y_mean = Y.mean(axis=0)
        Xc = X - x_mean
        Yc = Y - y_mean
        gram = Xc.T @ Xc
        gram[np.diag_indices_from(gram)] += self.alpha
        w = scipy.linalg.solve(gram, Xc.T @ Yc, assume_a="sym")
        b = y_mean - x_mean @ w
        self.weights = np.vstack([b[None, :], w])
        return self

    def fit(
        self, model: DTESNModel, inputs: Sequence[object], targets: Sequence[Any] | npt.ArrayLike
    ) -> RidgeReadout:
        """Run ``model`` on ``inputs`` and fit on its states (see the class docstring)."""
        if self.mode == "final":
            return self.fit_states(model.features(inputs), targets)
        tlist = list(targets)  # type: ignore[arg-type]
        if len(tlist) != len(inputs):
            raise ValueError(
                f"readout targets: one array per input (got {len(tlist)} for {len(inputs)} inputs)"
            )
        xs: list[FloatArray] = []
        ys: list[FloatArray] = []
        for i, (x, y) in enumerate(zip(inputs, tlist, strict=True)):
            states = model.run_states(x)
            ya = np.asarray(y, dtype=np.float64)
            if ya.shape[0] != states.shape[0]:
                raise ValueError(
                    f"readout targets[{i}] has {ya.shape[0]} steps, input has {states.shape[0]}"
                )
            xs.append(states[self.washout :])
            ys.append(ya[self.washout :])
        return self.fit_states(np.concatenate(xs), np.concatenate(ys))

    # ------------------------------------------------------------------ predicting
    def predict_states(self, states: FloatArray) -> FloatArray:
        """Outputs for a ``samples × state_size`` matrix.

        Each row's output depends on that row alone, to the bit: a series predicted in
        chunks (a session) equals the series predicted whole.
        """
        if self.weights is None:
            raise RuntimeError("readout is not fitted")
        # einsum's own loops, not BLAS: BLAS sums a row in an order that depends on
        # the row's place in its block, so the same state could predict a last bit apart
        out: FloatArray = np.einsum("ij,jk->ik", states, self.weights[1:]) + self.weights[0]
        return out[:, 0] if self._flat else out

    def predict(self, model: DTESNModel, inputs: Sequence[object]) -> FloatArray | list[FloatArray]:
        """``final``: an ``n [× outputs]`` array; ``per_step``: one array per input."""
        if self.mode == "final":
            return self.predict_states(model.features(inputs))
        return [self.predict_states(model.run_states(x)) for x in inputs]

    # ------------------------------------------------------------------ persistence
    def _to_arrays(self) -> dict[str, Any]:
        meta = {"alpha": self.alpha, "mode": self.mode, "washout": self.washout, "flat": self._flat}
        out: dict[str, Any] = {"readout.meta": np.array(json.dumps(meta))}
        if self.weights is not None:
            out["readout.weights"] = self.weights
        return out

    @classmethod
    def _from_arrays(cls, data: dict[str, Any]) -> RidgeReadout | None:
        if "readout.meta" not in data:
            return None
        meta = json.loads(str(data["readout.meta"]))
        ro = cls(alpha=meta["alpha"], mode=meta["mode"], washout=meta["washout"])
        ro._flat = bool(meta["flat"])
        if "readout.weights" in data:
            ro.weights = np.asarray(data["readout.weights"], dtype=np.float64)
        return ro

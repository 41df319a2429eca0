"""The deep tree echo state network: build once, run one input or a batch.

Every membrane ``i`` is a leaky echo state network driven by the input and, below the
root, by its parent membrane's *new* state of the same step::

    x_i[t+1] = (1 - a) x_i[t] + a tanh(W_in u[t+1] + W x_i[t] + W_parent x_p[t+1] + bias)

so the levels are updated in order, root first. Initial states are zero. The feature
vector of an input is the concatenation of all membranes' final states, in membrane
order (level order): ``features[m.offset : m.offset + m.units]`` is membrane ``m``.

Execution: one input (``process_one``, ``run_states``) runs per level one CSR product
over the contiguous ``[parent level, own level]`` slice of the padded state vector,
through SciPy's compiled kernel; a batch (``process_batch``) keeps states as
``(units, batch)`` and runs per level one CSR × dense-matrix product.

Padding and masking: a batch's inputs are sorted by length; at step ``t`` only the
prefix of inputs still running is updated, so a finished input's state is left exactly
untouched; once half of the computed columns are finished they are dropped.

The single and batch paths run the same kernel in the same order (identical numbers).
Membranes are padded to one width internally; padded units have no weights and stay exactly zero.
Input encoding: see :mod:`dtesn_trio.dtesn.encoding`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackNoConvergence, eigs

try:  # SciPy's compiled CSR kernels: the public ``@`` adds Python overhead to every call
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover
    _sparsetools = None

from dtesn_trio.dtesn.config import DTESNConfig
from dtesn_trio.dtesn.encoding import EncodedInput, FloatArray, encode_input, text_values
from dtesn_trio.dtesn.topology import tree_layout

if TYPE_CHECKING:
    from dtesn_trio.dtesn.readout import RidgeReadout

__all__ = ["DTESNModel", "DTESNResult", "Membrane", "spectral_radius"]

_FORMAT = "dtesn-trio-model/1"

# The step loops are Python around small NumPy calls, which keep the GIL; a thread that
# wants it (the event loop) gets it after the interpreter's switch interval, which the
# runtime sets to 0.5 ms (``processor.switch_interval``).  The loops call a checkpoint
# between steps (every step of a batch, every 8th of a single input), a no-op unless a
# caller passes one.  The loops do not offer the GIL with ``time.sleep(0)``: that made
# batches slower and did not help the event loop (docs/RELIABILITY.md, "Overload").
_CHECK_MASK = 7
Checkpoint = Callable[[], None]  # called between time steps (see process_batch)


def _no_checkpoint() -> None:
    return None


_DENSE_EIG_LIMIT = 32


@dataclass(frozen=True, eq=False)
class Membrane:
    """One leaky ESN of the tree; its weights are plain arrays, safe to read.

    - ``index``: position in level order (the root is 0); ``level``: 1-based depth;
      ``parent``: index of the driving membrane (``None`` for the root).
    - ``offset``, ``units``: its slice of the feature vector.
    - ``W_in``: ``units × input_dim`` dense input weights.
    - ``W``: ``units × units`` sparse (``scipy.sparse.csr_array``) recurrent weights,
      rescaled to the config's spectral radius (a nilpotent ``W``, spectral radius 0,
      is left as drawn).
    - ``W_parent``: ``units × parent.units`` sparse weights from the parent's state, or
      ``None`` for the root.
    - ``bias``: ``units`` dense bias.
    """

    index: int
    level: int
    parent: int | None
    offset: int
    units: int
    W_in: FloatArray
    W: Any
    W_parent: Any
    bias: FloatArray


@dataclass(frozen=True, eq=False)
class DTESNResult:
    """The output for one input.

    - ``features``: final states of all membranes (length ``reservoir_size``).
    - ``level_summary``: one dict per level: ``level``, ``membranes``, ``units``,
      ``mean_activation``, ``mean_abs_activation``, ``norm`` (L2 of the level's states).
    - ``prediction``: the readout's output when one is attached, else ``None``; shape
      ``(outputs,)`` for a ``final`` readout, ``(steps, outputs)`` (or ``(steps,)`` when
      fitted on 1-D targets) for a ``per_step`` readout.
    - ``steps``: time steps run (bytes of text, rows of a numeric input).
    """

    features: FloatArray
    level_summary: list[dict[str, float | int]]
    prediction: FloatArray | None
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: lists of floats, no NumPy types."""
        return {
            "features": self.features.tolist(),
            "level_summary": [dict(d) for d in self.level_summary],
            "prediction": None if self.prediction is None else self.prediction.tolist(),
            "steps": self.steps,
        }


def spectral_radius(matrix: Any) -> float:
    """Largest |eigenvalue| of a sparse square matrix, computed cheaply.

    Tiny matrices (n <= 32) use a dense eigen decomposition; larger ones ARPACK (``scipy.sparse.linalg.eigs``, k=1), never a dense
    ``eigvals`` of a big matrix.
    """
    n = matrix.shape[0]
    if n <= _DENSE_EIG_LIMIT:
        return float(np.max(np.abs(np.linalg.eigvals(matrix.toarray()))))
    try:
        # k=1 alone can settle on an eigenvalue just inside the edge of a random
        # matrix's spectrum; a few more with a wider Krylov space find the largest.
        vals = eigs(
            matrix.astype(np.float64),
            k=6,
            which="LM",
            v0=np.ones(n),
            ncv=min(n, 60),
            tol=1e-12,
            maxiter=50 * n,
            return_eigenvectors=False,
        )
    except ArpackNoConvergence as exc:  # pragma: no cover - rare; power-iterate instead
        if len(exc.eigenvalues):
            vals = exc.eigenvalues
        else:
            return _power_iteration(matrix)
    return float(np.max(np.abs(vals)))


def _power_iteration(matrix: Any, iterations: int = 2000) -> float:  # pragma: no cover
    v = np.ones(matrix.shape[0]) / np.sqrt(matrix.shape[0])
    est = 0.0
    for _ in range(iterations):
        w = matrix @ v
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            return 0.0
        est, v = norm, w / norm
    return est


def _csr_matvec_add(mat: Any, x: FloatArray, out: FloatArray) -> None:
    """``out += mat @ x`` for a vector ``x``, without SciPy's per-call Python overhead."""
    if _sparsetools is not None:
        _sparsetools.csr_matvec(
            mat.shape[0], mat.shape[1], mat.indptr, mat.indices, mat.data, x, out
        )
    else:  # pragma: no cover - SciPy moved its kernels; the public operator is slower
        out += mat @ x


def _csr_matvecs_add(mat: Any, x: FloatArray, out: FloatArray) -> None:
    """``out += mat @ x`` for a ``cols × n`` matrix ``x`` (``out`` C-contiguous)."""
    if _sparsetools is not None:
        xc = np.ascontiguousarray(x)
        _sparsetools.csr_matvecs(
            mat.shape[0],
            mat.shape[1],
            xc.shape[1],
            mat.indptr,
            mat.indices,
            mat.data,
            xc.ravel(),
            out.ravel(),
        )
    else:  # pragma: no cover
        out += mat @ x


def _sparse_uniform(
    rng: np.random.Generator, rows: int, cols: int, density: float, scale: float
) -> Any:
    total = rows * cols
    nnz = max(1, round(density * total))
    flat = np.sort(rng.choice(total, size=nnz, replace=False))
    values = rng.uniform(-scale, scale, size=nnz)
    r, c = np.divmod(flat, cols)
    return sp.csr_array((values, (r, c)), shape=(rows, cols))


def _draw_membranes(config: DTESNConfig) -> list[Membrane]:
    rng = np.random.default_rng(config.seed)
    slots = tree_layout(config.membrane_depth, config.reservoir_size)
    units_of = {s.index: s.units for s in slots}
    membranes: list[Membrane] = []
    offset = 0
    for slot in slots:
        n = slot.units
        w = _sparse_uniform(rng, n, n, config.sparsity, 1.0)
        radius = spectral_radius(w)
        if radius > 1e-12:
            w = w * (config.spectral_radius / radius)
        w_in = rng.uniform(-config.input_scaling, config.input_scaling, size=(n, config.input_dim))
        bias = rng.uniform(-config.bias_scaling, config.bias_scaling, size=n)
        w_parent = None
        if slot.parent is not None:
            w_parent = _sparse_uniform(
                rng, n, units_of[slot.parent], config.sparsity, config.parent_scaling
            )
        membranes.append(
            Membrane(
                slot.index,
                slot.level,
                slot.parent,
                offset,
                n,
                w_in,
                sp.csr_array(w),
                w_parent,
                bias,
            )
        )
        offset += n
    return membranes


@dataclass(eq=False)
class _Level:
    level: int
    start: int  # first membrane index
    stop: int
    sparse: Any  # CSR over the padded flat slice [parent level, own level]
    col_start: int  # flat padded index where the sparse product's input slice starts
    unit_slice: slice  # the level's range in `features`


class DTESNModel:
    """A deep tree echo state network, built once from a :class:`DTESNConfig`.

    ``readout`` is ``None`` until :meth:`fit_readout` (or an assignment of a fitted :class:`RidgeReadout`).

    Thread-safe for concurrent ``process_*`` / ``run_states`` calls (they only read the
    weights); ``fit_readout`` replaces ``readout`` with one assignment.
    """

    config: DTESNConfig
    membranes: tuple[Membrane, ...]
    readout: RidgeReadout | None

    def __init__(
        self,
        config: DTESNConfig | None = None,
        *,
        _membranes: list[Membrane] | None = None,
    ) -> None:
        self.config = config if config is not None else DTESNConfig()
        self.membranes = tuple(
            _membranes if _membranes is not None else _draw_membranes(self.config)
        )
        self.readout = None
        self._build_layouts()

    # ------------------------------------------------------------------ layout
    def _build_layouts(self) -> None:
        cfg = self.config
        mems = self.membranes
        n_mem = len(mems)
        s = max(m.units for m in mems)
        self._s = s
        npad = n_mem * s
        self._npad = npad
        unit_index = np.concatenate([np.arange(m.units) + m.index * s for m in mems])
        self._unit_index = unit_index
        self._padded = bool(unit_index.shape[0] != npad)  # else the gather is the identity
        w_in = np.zeros((npad, cfg.input_dim))
        bias = np.zeros(npad)
        for m in mems:
            w_in[m.index * s : m.index * s + m.units] = m.W_in
            bias[m.index * s : m.index * s + m.units] = m.bias
        self._w_in_T = np.ascontiguousarray(w_in.T)  # (D, npad)
        self._bias = bias
        # Text drives every input with the same scalar: a 256-row lookup table.
        byte_u = text_values(np.arange(256))
        self._byte_u = byte_u
        w_sum = w_in.sum(axis=1)
        self._text_table = np.ascontiguousarray(byte_u[:, None] * w_sum[None, :] + bias)
        # The batch path computes the same rows as an outer product (the same two
        # operations, so the same bits): a gather from the 2 MB table, column by column,
        # missed the cache and took a fifth of each step.
        self._w_sum_col = np.ascontiguousarray(w_sum[:, None])
        self._bias_col = np.ascontiguousarray(bias[:, None])

        levels: list[_Level] = []
        prev: _Level | None = None
        for lvl in sorted({m.level for m in mems}):
            members = [m for m in mems if m.level == lvl]
            start, stop = members[0].index, members[-1].index + 1
            count = stop - start
            # Sparse operator over the flat padded slice [prev level | this level].
            col_start = (prev.start if prev is not None else start) * s
            width = stop * s - col_start
            rows: list[npt.NDArray[np.int_]] = []
            cols: list[npt.NDArray[np.int_]] = []
            vals: list[FloatArray] = []
            for j, m in enumerate(members):
                parts = [(m.W, m.index * s - col_start)]
                if m.parent is not None:
                    parts.append((m.W_parent, mems[m.parent].index * s - col_start))
                for mat, c0 in parts:
                    coo = sp.coo_array(mat)
                    rows.append(coo.row + j * s)
                    cols.append(coo.col + c0)
                    vals.append(coo.data)
            blocks = sp.coo_array(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(count * s, width),
            )
            first = members[0].offset
            last = members[-1].offset + members[-1].units
            level = _Level(
                lvl,
                start,
                stop,
                sp.csr_array(blocks),
                col_start,
                slice(first, last),
            )
            levels.append(level)
            prev = level
        self._levels = levels

    # ------------------------------------------------------------------ inputs
    def _drive(self, enc: EncodedInput) -> FloatArray:
        """``W_in u[t] + bias`` for every step: ``T × npad``."""
        if enc.text is not None:
            return self._text_table[np.frombuffer(enc.text, dtype=np.uint8)]
        assert enc.values is not None
        # einsum's loops, not BLAS: each row's drive depends on that row alone (BLAS
        # sums a row in an order set by its place in a block), so a series run in
        # chunks or in a batch gets the same bits as run whole
        out: FloatArray = np.einsum("td,dn->tn", enc.values, self._w_in_T)
        out += self._bias
        return out

    def _encode(self, x: object, field: str = "input") -> EncodedInput:
        if isinstance(x, EncodedInput):
            return x
        return encode_input(x, self.config.input_dim, field=field)

    # ------------------------------------------------------------------ single path
    def _run_single(
        self,
        enc: EncodedInput,
        record: bool,
        initial: FloatArray | None = None,
        checkpoint: Checkpoint = _no_checkpoint,
    ) -> tuple[FloatArray, FloatArray | None]:
        a = self.config.leak_rate
        x = np.zeros(self._npad)
        if initial is not None:
            x[self._unit_index] = initial
        steps = enc.steps
        rec = np.empty((steps, self._npad)) if record else None
        s = self._s
        levels = [(lv.sparse, lv.col_start, lv.start * s, lv.stop * s) for lv in self._levels]
        # text: each step's drive is a row of the byte table (no copy of the sequence)
        drive = self._text_table if enc.text is not None else self._drive(enc)
        rows = np.frombuffer(enc.text, dtype=np.uint8) if enc.text is not None else range(steps)
        for t, row in enumerate(rows):
            if t & _CHECK_MASK == _CHECK_MASK:
                checkpoint()
            d = drive[row]
            for mat, c0, lo, hi in levels:
                pre = d[lo:hi].copy()
                _csr_matvec_add(mat, x[c0:hi], pre)
                np.tanh(pre, out=pre)
                xs = x[lo:hi]
                pre -= xs
                pre *= a
                xs += pre
            if rec is not None:
                rec[t] = x
        return x, rec

    # ------------------------------------------------------------------ batch paths
    def _run_batch(
        self, encs: list[EncodedInput], record: bool, checkpoint: Checkpoint
    ) -> tuple[list[FloatArray], list[FloatArray] | None]:
        lengths = np.array([e.steps for e in encs])
        order = np.argsort(-lengths, kind="stable")
        sorted_len = lengths[order]
        finals, recs = self._run_batch_sparse(
            [encs[i] for i in order], sorted_len, record, checkpoint
        )
        out_f: list[FloatArray] = [np.empty(0)] * len(encs)
        out_r: list[FloatArray] | None = [np.empty(0)] * len(encs) if record else None
        for pos, i in enumerate(order):
            out_f[i] = finals[pos]
            if recs is not None and out_r is not None:
                out_r[i] = recs[pos]
        return out_f, out_r

    def _run_batch_sparse(
        self,
        encs: list[EncodedInput],
        sorted_len: npt.NDArray[np.int_],
        record: bool,
        checkpoint: Checkpoint,
        initial: FloatArray | None = None,
    ) -> tuple[list[FloatArray], list[FloatArray] | None]:
        """Inputs sorted by length, longest first. State layout ``(units, batch)``.

        ``initial``: the padded start states, ``(npad, batch)`` in the same order
        (default zeros); it is not modified."""
        a = self.config.leak_rate
        s, npad, b = self._s, self._npad, len(encs)
        dim = self.config.input_dim
        steps = int(sorted_len[0])
        all_text = all(e.text is not None for e in encs)
        drive_buf = np.empty((npad, b))
        if all_text:
            # byte codes (T, batch); each step's drive is w_sum x value + bias per column
            codes = np.zeros((steps, b), dtype=np.intp)
            for pos, e in enumerate(encs):
                assert e.text is not None
                codes[: e.steps, pos] = np.frombuffer(e.text, dtype=np.uint8)
            byte_u = self._byte_u[codes]  # (T, batch): each step's input value per column
        else:
            # u[t]: the inputs of step t, (batch, D); zero past an input's end (unused).
            # Each step's drive is the single path's product, rows = inputs instead of
            # time steps (``_drive``), so the numbers are the single path's.
            U = np.zeros((steps, b, dim))
            for pos, e in enumerate(encs):
                if e.text is not None:
                    U[: e.steps, pos, :] = text_values(np.frombuffer(e.text, dtype=np.uint8))[
                        :, None
                    ]
                else:
                    assert e.values is not None
                    U[: e.steps, pos, :] = e.values
        X = np.zeros((npad, b)) if initial is None else np.array(initial, order="C")
        width = b  # columns still computed; finished inputs are dropped when half are done
        finals: list[FloatArray] = [np.empty(0)] * b
        rec = np.zeros((steps, npad, b)) if record else None
        levels = [(lv.sparse, lv.col_start, lv.start * s, lv.stop * s) for lv in self._levels]
        for t in range(steps):
            checkpoint()
            na = int(np.count_nonzero(sorted_len[:width] > t))
            if na <= width // 2:
                for pos in range(na, width):
                    finals[pos] = X[:, pos].copy()
                X = np.ascontiguousarray(X[:, :na])
                width = na
            # the drive (npad, width), then the accumulator of the pre-activations
            if all_text:
                if drive_buf.shape[1] != width:
                    drive_buf = np.empty((npad, width))
                Pt = np.multiply(self._w_sum_col, byte_u[t, :width], out=drive_buf)
                Pt += self._bias_col
            else:
                rows = np.einsum("bd,dn->bn", U[t, :width], self._w_in_T)
                rows += self._bias
                Pt = np.ascontiguousarray(rows.T)
            for mat, c0, lo, hi in levels:
                pre = Pt[lo:hi]
                _csr_matvecs_add(mat, X[c0:hi], pre)
                np.tanh(pre, out=pre)
                if na == width:
                    xs = X[lo:hi]
                else:  # the mask: inputs past their end (a suffix) keep their state
                    xs = X[lo:hi, :na]
                    pre = pre[:, :na]
                pre -= xs
                pre *= a
                xs += pre
            if rec is not None:
                rec[t, :, :width] = X
        for pos in range(width):
            finals[pos] = X[:, pos].copy()
        recs = None
        if rec is not None:
            recs = [np.ascontiguousarray(rec[: sorted_len[pos], :, pos]) for pos in range(b)]
        return finals, recs

    # ------------------------------------------------------------------ results
    def _results(
        self, finals: list[FloatArray], recs: list[FloatArray] | None, steps: list[int]
    ) -> list[DTESNResult]:
        """Results of a batch, the summaries computed for all inputs at once."""
        F = np.stack(finals)
        F = F[:, self._unit_index] if self._padded else F
        columns: list[tuple[int, int, int, list[float], list[float], list[float]]] = []
        for lv in self._levels:
            part = F[:, lv.unit_slice]
            columns.append(
                (
                    lv.level,
                    lv.stop - lv.start,
                    int(part.shape[1]),
                    part.mean(axis=1).tolist(),
                    np.abs(part).mean(axis=1).tolist(),
                    np.sqrt(np.einsum("ij,ij->i", part, part)).tolist(),
                )
            )
        ro = self.readout
        final_pred = None
        if ro is not None and ro.mode == "final":
            final_pred = ro.predict_states(F)
            if final_pred.ndim == 1:
                final_pred = final_pred[:, None]
        out: list[DTESNResult] = []
        for i in range(F.shape[0]):
            summary: list[dict[str, float | int]] = [
                {
                    "level": level,
                    "membranes": membranes,
                    "units": units,
                    "mean_activation": mean[i],
                    "mean_abs_activation": mean_abs[i],
                    "norm": norm[i],
                }
                for level, membranes, units, mean, mean_abs, norm in columns
            ]
            prediction = None
            if final_pred is not None:
                prediction = final_pred[i]
            elif ro is not None:
                assert recs is not None
                rec = recs[i][:, self._unit_index] if self._padded else recs[i]
                prediction = ro.predict_states(rec)
            out.append(DTESNResult(F[i], summary, prediction, steps[i]))
        return out

    def _needs_record(self) -> bool:
        return self.readout is not None and self.readout.mode == "per_step"

    # ------------------------------------------------------------------ public
    def process_one(self, x: object, *, checkpoint: Checkpoint = _no_checkpoint) -> DTESNResult:
        """Run one input on the fastest single-input path (not a padded batch of one).

        ``checkpoint`` is called every few time steps (default: nothing): a caller's
        hook, e.g. to pause or observe a long computation.
        """
        enc = self._encode(x)
        xpad, rec = self._run_single(enc, self._needs_record(), checkpoint=checkpoint)
        return self._results([xpad], None if rec is None else [rec], [enc.steps])[0]

    def process_batch(
        self, inputs: Sequence[object], *, checkpoint: Checkpoint = _no_checkpoint
    ) -> list[DTESNResult]:
        """Run a batch: one set of matrix products per time step for all inputs.

        Each result equals ``process_one`` of the same input to ~1e-15. Every input is
        validated first; a bad one raises :class:`InvalidRequest` with
        ``field="inputs[i]"`` and nothing runs.  ``checkpoint`` is called between time
        steps (see :meth:`process_one`).
        """
        if isinstance(inputs, str | bytes | bytearray | np.ndarray):
            raise TypeError("process_batch takes a sequence of inputs; use process_one for one")
        encs = [self._encode(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
        if not encs:
            return []
        if len(encs) == 1:
            return [self.process_one(encs[0], checkpoint=checkpoint)]
        record = self._needs_record()
        finals, recs = self._run_batch(encs, record, checkpoint)
        return self._results(finals, recs, [e.steps for e in encs])

    def run_states(self, x: object, *, initial_state: npt.ArrayLike | None = None) -> FloatArray:
        """Every step's full state, ``steps × reservoir_size`` (for time-series readouts).

        ``initial_state`` (length ``reservoir_size``, default zeros) starts the run
        elsewhere, e.g. to check the echo state property.
        """
        enc = self._encode(x)
        x0 = None
        if initial_state is not None:
            x0 = np.asarray(initial_state, dtype=np.float64)
            if x0.shape != (self.config.reservoir_size,):
                raise ValueError(
                    f"initial_state must have shape ({self.config.reservoir_size},) "
                    f"(got {x0.shape})"
                )
        _, rec = self._run_single(enc, True, x0)
        assert rec is not None
        return np.ascontiguousarray(rec[:, self._unit_index])

    def run_states_batch(
        self, inputs: Sequence[object], *, initial_states: npt.ArrayLike | None = None
    ) -> list[FloatArray]:
        """Every step's full state of each input, ``steps_i × reservoir_size``, run as
        one batch; each equals ``run_states`` of that input (and of its initial state)
        bit for bit.

        ``initial_states`` (``len(inputs) × reservoir_size``, default zeros) starts each
        input where an earlier run left it: its last row carries a live series on.
        """
        recs = self._from_states(inputs, initial_states, True)
        assert isinstance(recs, list)
        return recs

    def final_states_batch(
        self, inputs: Sequence[object], *, initial_states: npt.ArrayLike | None = None
    ) -> FloatArray:
        """The last rows of ``run_states_batch`` (``len(inputs) × reservoir_size``),
        without keeping every step's state."""
        finals = self._from_states(inputs, initial_states, False)
        assert isinstance(finals, np.ndarray)
        return finals

    def _from_states(
        self, inputs: Sequence[object], initial_states: npt.ArrayLike | None, record: bool
    ) -> list[FloatArray] | FloatArray:
        encs = [self._encode(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
        b = len(encs)
        if not encs:
            return [] if record else np.zeros((0, self.config.reservoir_size))
        x0 = None
        if initial_states is not None:
            given = np.asarray(initial_states, dtype=np.float64)
            if given.shape != (b, self.config.reservoir_size):
                raise ValueError(
                    f"initial_states must have shape ({b}, {self.config.reservoir_size})"
                    f" (got {given.shape})"
                )
            x0 = np.zeros((b, self._npad))
            x0[:, self._unit_index] = given
        if b == 1:  # the single path (the same numbers, less work per step)
            start = None if x0 is None else x0[0, self._unit_index]
            xpad, rec = self._run_single(encs[0], record, start)
            if rec is None:
                final: FloatArray = xpad[self._unit_index][None, :]
                return final
            return [np.ascontiguousarray(rec[:, self._unit_index]) if self._padded else rec]
        lengths = np.array([e.steps for e in encs])
        order = np.argsort(-lengths, kind="stable")
        initial = None if x0 is None else np.ascontiguousarray(x0[order].T)
        finals, recs = self._run_batch_sparse(
            [encs[i] for i in order], lengths[order], record, _no_checkpoint, initial
        )
        if not record:
            out_f = np.empty((b, self.config.reservoir_size))
            for pos, i in enumerate(order):
                out_f[i] = finals[pos][self._unit_index] if self._padded else finals[pos]
            return out_f
        assert recs is not None
        out: list[FloatArray] = [np.empty(0)] * b
        for pos, i in enumerate(order):
            rec = recs[pos]
            out[i] = np.ascontiguousarray(rec[:, self._unit_index]) if self._padded else rec
        return out

    def features(self, inputs: Sequence[object]) -> FloatArray:
        """Final feature vectors of a batch, ``len(inputs) × reservoir_size``."""
        encs = [self._encode(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
        if not encs:
            return np.zeros((0, self.config.reservoir_size))
        if len(encs) == 1:
            xpad, _ = self._run_single(encs[0], False)
            one: FloatArray = xpad[self._unit_index][None, :]
            return one
        finals, _ = self._run_batch(encs, False, _no_checkpoint)
        return np.stack([f[self._unit_index] for f in finals])

    def fit_readout(
        self,
        inputs: Sequence[object],
        targets: Sequence[Any] | npt.ArrayLike,
        *,
        alpha: float = 1e-6,
        mode: str = "final",
        washout: int = 0,
    ) -> RidgeReadout:
        """Fit a :class:`RidgeReadout` on this model and attach it (``self.readout``)."""
        from dtesn_trio.dtesn.readout import RidgeReadout

        ro = RidgeReadout(alpha=alpha, mode=mode, washout=washout).fit(self, inputs, targets)
        self.readout = ro
        return ro

    def cache_key(self) -> str:
        """A stable hash of what decides a result: the config and the readout's weights
        (a result cache keyed on ``(input, cache_key())`` never serves a stale
        prediction). Weights loaded from a file hash as the config that drew them.
        """
        ro = self.readout
        if ro is None or ro.weights is None:
            return self.config.cache_key()
        h = hashlib.sha256(self.config.cache_key().encode())
        h.update(f"{ro.mode}:{ro.alpha}:{ro.washout}:{ro.weights.shape}".encode())
        h.update(np.ascontiguousarray(ro.weights).tobytes())
        return h.hexdigest()[:32]

    @property
    def state_size(self) -> int:
        """Units in total (``reservoir_size``)."""
        return self.config.reservoir_size

    def __repr__(self) -> str:
        c = self.config
        return (
            f"DTESNModel(membrane_depth={c.membrane_depth}, reservoir_size={c.reservoir_size}, "
            f"membranes={len(self.membranes)}, readout={self.readout!r})"
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole model (config, every weight, the readout) to an ``.npz`` file."""
        arrays: dict[str, Any] = {
            "format": np.array(_FORMAT),
            "config": np.array(json.dumps(self.config.to_dict())),
        }
        for m in self.membranes:
            p = f"m{m.index}."
            arrays[p + "W_in"] = m.W_in
            arrays[p + "bias"] = m.bias
            for name, mat in (("W", m.W), ("W_parent", m.W_parent)):
                if mat is None:
                    continue
                csr = sp.csr_array(mat)
                arrays[p + name + ".data"] = csr.data
                arrays[p + name + ".indices"] = csr.indices
                arrays[p + name + ".indptr"] = csr.indptr
                arrays[p + name + ".shape"] = np.array(csr.shape)
        if self.readout is not None:
            arrays.update(self.readout._to_arrays())
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DTESNModel:
        """Read a model written by :meth:`save` (weights as saved, not redrawn)."""
        from dtesn_trio.dtesn.readout import RidgeReadout

        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        if "format" not in data or str(data["format"]) != _FORMAT:
            raise ValueError(f"{path}: not a dtesn-trio model file")
        config = DTESNConfig.from_dict(json.loads(str(data["config"])))
        slots = tree_layout(config.membrane_depth, config.reservoir_size)
        membranes: list[Membrane] = []
        offset = 0
        for slot in slots:
            p = f"m{slot.index}."

            def csr(name: str, prefix: str = p) -> Any:
                shape = tuple(int(v) for v in data[prefix + name + ".shape"])
                return sp.csr_array(
                    (
                        data[prefix + name + ".data"],
                        data[prefix + name + ".indices"],
                        data[prefix + name + ".indptr"],
                    ),
                    shape=shape,
                )

            w_in = np.asarray(data[p + "W_in"], dtype=np.float64)
            if w_in.shape != (slot.units, config.input_dim):
                raise ValueError(f"{path}: membrane {slot.index} W_in has shape {w_in.shape}")
            membranes.append(
                Membrane(
                    slot.index,
                    slot.level,
                    slot.parent,
                    offset,
                    slot.units,
                    w_in,
                    csr("W"),
                    csr("W_parent") if slot.parent is not None else None,
                    np.asarray(data[p + "bias"], dtype=np.float64),
                )
            )
            offset += slot.units
        model = cls(config, _membranes=membranes)
        model.readout = RidgeReadout._from_arrays(data)
        return model

"""The numbers of a session step: chunks of many sessions of one model, one batch.

``run_steps(items)`` is the batch function the runtime's queue calls (in a worker
thread): it stacks the sessions' states into one start-state matrix and runs every
chunk at once with ``DTESNModel.run_states_batch``, so a session carried across chunks
gives, bit for bit, the states and predictions of one long ``run_states`` /
``process_one`` over the concatenated chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dtesn_trio.dtesn.encoding import EncodedInput, FloatArray
from dtesn_trio.dtesn.model import DTESNModel

__all__ = ["StepItem", "StepOutput", "run_steps"]


@dataclass(frozen=True, eq=False, slots=True)
class StepItem:
    """One chunk of one session: its model, the state it starts from, and how many
    of its first steps fall in the session's washout (no prediction)."""

    model: DTESNModel
    state: FloatArray
    chunk: EncodedInput
    skip: int


@dataclass(frozen=True, eq=False, slots=True)
class StepOutput:
    """The state after the chunk, and the readout's prediction for each step past the
    washout (``None`` without a fitted readout)."""

    state: FloatArray
    predictions: FloatArray | None


_BLOCK = 32
"""Columns of the state matrix computed together: a wider matrix of the default model's
states falls out of the CPU's cache, and each column costs more than in a block of 32
(``benchmarks/sessions.py``)."""


def run_steps(items: Sequence[StepItem]) -> list[StepOutput]:
    """Run the chunks of ``items`` (which share one model) as one batch (in blocks of
    ``_BLOCK`` sessions; each session's numbers do not depend on its neighbours)."""
    if not items:
        return []
    model = items[0].model
    if any(item.model is not model for item in items):
        raise ValueError("run_steps: the items of one batch must share one model")
    if len(items) > _BLOCK:
        out: list[StepOutput] = []
        for i in range(0, len(items), _BLOCK):
            out += _run_block(items[i : i + _BLOCK])
        return out
    return _run_block(items)


def _run_block(items: Sequence[StepItem]) -> list[StepOutput]:
    model = items[0].model
    states = np.stack([item.state for item in items])
    readout = model.readout
    if readout is None or readout.weights is None:
        # no predictions to make: only the final states, not every step's
        finals = model.final_states_batch([item.chunk for item in items], initial_states=states)
        return [StepOutput(final.copy(), None) for final in finals]
    records = model.run_states_batch([item.chunk for item in items], initial_states=states)
    out = []
    for item, rec in zip(items, records, strict=True):
        predictions = readout.predict_states(rec[item.skip :])
        out.append(StepOutput(rec[-1].copy(), predictions))
    return out

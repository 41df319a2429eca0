"""Engine worker processes: the model computes outside the server's interpreter.

The DTESN's step loop is Python around small sparse products, so a computing *thread*
holds the GIL most of the time, and the event loop that reads, answers -- and, under
overload, refuses -- requests must win it back after every system call.  Measured at 10x
overload (benchmarks/overload.py): the event loop and the engine thread together never
got more than one core between them, and every refusal the loop made was taken from the
engine.  In its own process the model has its own GIL and core.

``EngineProcesses`` owns a ``trio_parallel`` worker context (spawned processes, kept for
the whole run, ended when the block exits) and a private temporary directory holding:

- the models, each written once with :meth:`DTESNModel.save` and loaded once per worker
  (by path; weights as saved, readout included).  A worker computes with a plain
  :class:`DTESNModel` loaded from that file: a subclass's overridden methods run only
  with the thread executor;
- the priority gate, a memory-mapped file holding the highest priority computing right
  now.  Only the event loop writes it (calls start and end there); a worker computing
  at a lower priority reads it between time steps and waits while it is higher -- the
  same cooperative preemption as :class:`~dtesn_trio.dtesn.preemption.PriorityGate`
  across processes.

A worker that dies mid-call (killed, out of memory) fails that call with
:class:`~dtesn_trio.errors.EngineError`; ``trio_parallel`` starts a fresh one for the
next call.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio
import trio_parallel

from dtesn_trio.dtesn.blas import blas_threads
from dtesn_trio.dtesn.encoding import EncodedInput
from dtesn_trio.dtesn.model import DTESNModel, DTESNResult
from dtesn_trio.errors import EngineError

__all__ = ["EngineProcesses", "open_engine_processes"]

_NOBODY = 2**31  # the gate's value while nothing with a priority computes
_POLL = 0.0005  # how often a paused worker looks at the gate again (s)


@dataclass(frozen=True)
class _Outcome:
    results: list[DTESNResult]
    pauses: int
    paused_seconds: float


class EngineProcesses:
    """Worker processes computing for a :class:`DTESNProcessor`; see the module doc."""

    def __init__(self, context: trio_parallel.WorkerContext, directory: Path, blas: int) -> None:
        self._context = context
        self._dir = directory
        self._blas = blas
        self._gate_path = directory / "gate"
        self._gate_path.write_bytes(np.array([_NOBODY], dtype=np.int64).tobytes())
        self._gate_file = self._gate_path.open("r+b")
        self._gate_map = mmap.mmap(self._gate_file.fileno(), 8)
        self._top = np.ndarray((1,), dtype=np.int64, buffer=self._gate_map)
        self._running: dict[int, int] = {}
        self._paths: dict[int, str] = {}
        self._saving: dict[int, trio.Event] = {}
        self.pauses = 0
        self.paused_seconds = 0.0
        self.worker_deaths = 0

    def _close(self) -> None:
        del self._top
        self._gate_map.close()
        self._gate_file.close()

    async def _model_path(self, model: DTESNModel) -> str:
        """The file a worker loads ``model`` from, written on first use (in a thread)."""
        key = id(model)
        while key not in self._paths:
            saving = self._saving.get(key)
            if saving is not None:
                await saving.wait()
                continue
            done = self._saving[key] = trio.Event()
            try:
                path = str(self._dir / f"model-{len(self._paths)}-{model.cache_key()}.npz")
                await trio.to_thread.run_sync(model.save, path)
                self._paths[key] = path
            finally:
                del self._saving[key]
                done.set()
        await trio.lowlevel.checkpoint()
        return self._paths[key]

    def _enter(self, priority: int) -> None:
        self._running[priority] = self._running.get(priority, 0) + 1
        self._top[0] = min(self._running)

    def _exit(self, priority: int) -> None:
        left = self._running[priority] - 1
        if left:
            self._running[priority] = left
        else:
            del self._running[priority]
        self._top[0] = min(self._running, default=_NOBODY)

    @property
    def computing(self) -> tuple[tuple[int, int], ...]:
        """``(priority, calls)`` computing now."""
        return tuple(sorted(self._running.items()))

    async def warm_up(self, model: DTESNModel, workers: int) -> None:
        """Start ``workers`` processes and load ``model`` in each, before any request."""
        path = await self._model_path(model)
        limiter = trio.CapacityLimiter(workers)
        run = functools.partial(self._context.run_sync, _load_in_worker, path, limiter=limiter)
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(run)

    async def run(
        self,
        model: DTESNModel,
        encs: list[EncodedInput],
        batch: bool,
        priority: int | None,
        limiter: trio.CapacityLimiter,
    ) -> list[DTESNResult]:
        """Compute in a worker; lower priorities pause while this one computes."""
        path = await self._model_path(model)
        async with limiter:
            if priority is not None:
                self._enter(priority)
            try:
                outcome = await self._context.run_sync(
                    _compute_in_worker,
                    path,
                    str(self._gate_path),
                    encs,
                    batch,
                    priority,
                    self._blas,
                    limiter=_UNLIMITED,
                )
            except trio_parallel.BrokenWorkerError as exc:
                self.worker_deaths += 1
                raise EngineError(f"the engine worker process died: {exc}") from exc
            finally:
                if priority is not None:
                    self._exit(priority)
        assert isinstance(outcome, _Outcome)
        self.pauses += outcome.pauses
        self.paused_seconds += outcome.paused_seconds
        return outcome.results


# Calls are bounded by the processor's limiters (taken in ``run``); the context's own
# limiter must not bound them again.
_UNLIMITED = trio.CapacityLimiter(math.inf)


@asynccontextmanager
async def open_engine_processes(
    *, blas: int, grace_period: float = 10.0
) -> AsyncIterator[EngineProcesses]:
    """Own the engine's worker processes for the block (spawned on first use or by
    :meth:`EngineProcesses.warm_up`); leaving it ends them and removes their files."""
    with tempfile.TemporaryDirectory(prefix="dtesn-engine-") as tmp:
        async with trio_parallel.open_worker_context(
            idle_timeout=math.inf, grace_period=grace_period
        ) as context:
            processes = EngineProcesses(context, Path(tmp), blas)
            try:
                yield processes
            finally:
                processes._close()


# ------------------------------------------------------------------ in the worker

_MODELS: dict[str, DTESNModel] = {}
_GATES: dict[str, tuple[object, np.ndarray]] = {}


def _load_in_worker(path: str) -> None:
    if path not in _MODELS:
        _MODELS[path] = DTESNModel.load(path)


def _gate(path: str) -> np.ndarray:
    entry = _GATES.get(path)
    if entry is None:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ)
        entry = _GATES[path] = (mapped, np.ndarray((1,), dtype=np.int64, buffer=mapped))
    return entry[1]


def _compute_in_worker(
    model_path: str,
    gate_path: str,
    encs: list[EncodedInput],
    batch: bool,
    priority: int | None,
    blas: int,
) -> _Outcome:
    _load_in_worker(model_path)
    model = _MODELS[model_path]
    pauses = 0
    paused = 0.0

    def checkpoint() -> None:
        nonlocal pauses, paused
        if not pauses and top[0] < level:
            pauses += 1
            began = time.monotonic()
            while top[0] < level:
                time.sleep(_POLL)
            paused += time.monotonic() - began

    if priority is not None:
        top, level = _gate(gate_path), priority
    with blas_threads(blas):
        step = checkpoint if priority is not None else _nothing
        if batch:
            results = model.process_batch(encs, checkpoint=step)
        else:
            results = [model.process_one(encs[0], checkpoint=step)]
    return _Outcome(results, pauses, paused)


def _nothing() -> None:
    return None


def worker_pid() -> int:
    """The process id of the worker that runs it (tests: which process computed)."""
    return os.getpid()

"""The executor: runs an engine's synchronous ``process_batch`` off the event loop.

Two limits apply to every call:

- ``max_concurrent_processes`` (a :class:`trio.CapacityLimiter`, default 100 as the
  seed): calls in processing at once; the others wait, in FIFO order.
- the cores: at most ``worker_threads`` calls compute at once (another
  ``CapacityLimiter``), each with BLAS held to ``blas_threads`` (threadpoolctl, see
  :mod:`dtesn_trio.blas`; in worker threads the libraries' one thread count is
  process-wide: it is held from ``open()`` to its end, so BLAS called elsewhere in the
  process meanwhile runs at that count too), and ``worker_threads × blas_threads <=
  cores`` whatever ``max_concurrent_processes`` says.  A FastAPI app whose 40 pool
  threads each ran multi-threaded BLAS served zero requests at 64 connections on this
  project's 2-core machine; this is why.

Where it computes (``executor``): in worker *threads* of this process (the default of
``ProcessorConfig``), or in worker *processes* (``"process"``, on ``trio_parallel``; the
default of ``dtesn-trio serve``): each with its
own interpreter and GIL, so the event loop never waits for a GIL-bound engine to let go
of the GIL.  The processes exist while ``async with executor.open():`` runs
(``open_runtime`` does it); the engine is pickled once, to a private temporary file,
and every worker loads it from there once (it must be picklable: the error says so when
it is not).  A worker that dies mid-call fails that call with
:class:`~dtesn_trio.errors.EngineError`; ``trio_parallel`` starts a fresh one.

A cancelled call is neither a success nor a failure: it counts in ``cancelled_requests``
only.  Work already running is not abandoned (NumPy cannot be interrupted, nor a worker
process mid-call); if it finishes, the caller gets its result and it counts as completed.
"""

from __future__ import annotations

import fcntl
import math
import os
import pickle
import stat
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import trio
import trio_parallel

from dtesn_trio import _checks
from dtesn_trio.blas import available_cores, blas_threads
from dtesn_trio.engine import check_outputs, encode_outputs, engine_name
from dtesn_trio.errors import EngineError

__all__ = [
    "Executor",
    "ExecutorStatistics",
    "ProcessorConfig",
    "RateWindow",
]


@dataclass(frozen=True)
class ProcessorConfig:
    """How the executor runs the engine (section ``processor``).

    - ``max_concurrent_processes``: calls processed at once (the rest wait).
    - ``enable_async_optimization``: ``False`` runs one computation at a time (one
      worker), the seed's "standard processing" fallback.
    - ``blas_threads``: BLAS threads per worker; default 1.
    - ``worker_threads``: calls computing at once; default ``cores // blas_threads``.
      Both are clamped so that ``worker_threads × blas_threads <= cores``.
    - ``executor``: ``"thread"`` (compute in worker threads of this process) or
      ``"process"`` (in ``worker_threads`` worker processes: the engine gets its own
      GIL; it must be picklable).
    - ``throughput_window``: seconds over which ``throughput`` counts completions.
    - ``switch_interval``: the interpreter's GIL switch interval (``sys.setswitchinterval``)
      that ``open_runtime`` sets while it runs (and restores after); ``None`` leaves it
      alone.  After every system call the event loop waits this long, at most, to win
      the GIL back from computing threads (docs/RELIABILITY.md, "Overload").
    """

    max_concurrent_processes: int = 100
    enable_async_optimization: bool = True
    blas_threads: int | None = None
    worker_threads: int | None = None
    executor: Literal["thread", "process"] = "thread"
    throughput_window: float = 10.0
    switch_interval: float | None = 0.0005

    def __post_init__(self) -> None:
        _checks.integer(
            "processor.max_concurrent_processes", self.max_concurrent_processes, minimum=1
        )
        if not isinstance(self.enable_async_optimization, bool):
            raise ValueError(
                "processor.enable_async_optimization must be a bool "
                f"(got {self.enable_async_optimization!r})"
            )
        if self.blas_threads is not None:
            _checks.integer("processor.blas_threads", self.blas_threads, minimum=1)
        if self.worker_threads is not None:
            _checks.integer("processor.worker_threads", self.worker_threads, minimum=1)
        _checks.one_of("processor.executor", self.executor, ("thread", "process"))
        _checks.positive("processor.throughput_window", self.throughput_window)
        if self.switch_interval is not None:
            _checks.in_range("processor.switch_interval", self.switch_interval, 1e-6, 1.0)

    def resolved_threads(self, cores: int | None = None) -> tuple[int, int]:
        """``(worker_threads, blas_threads)`` for this machine, never above its cores."""
        cores = available_cores() if cores is None else cores
        blas = min(self.blas_threads or 1, cores)
        most = max(1, cores // blas)
        workers = min(self.worker_threads or most, most)
        if not self.enable_async_optimization:
            workers = 1
        return workers, blas


@dataclass(frozen=True)
class ExecutorStatistics:
    """A snapshot of the executor.  Counts are of inputs (a batch of n counts n)."""

    total_requests: int
    completed_requests: int
    failed_requests: int
    cancelled_requests: int
    concurrent_requests: int
    peak_concurrent: int
    batch_requests: int
    avg_processing_time: float  # seconds per completed input, slot acquired to done
    throughput: float  # completed inputs per second over the last throughput_window
    max_concurrent_processes: int
    available_processing_slots: int
    worker_threads: int
    blas_threads: int
    async_optimization_enabled: bool
    busy_threads: int = 0  # workers computing now
    executor: str = "thread"
    worker_deaths: int = 0  # engine worker processes that died mid-call


class RateWindow:
    """Events per second over the last ``window`` seconds (explicit times: testable)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._events: deque[tuple[float, int]] = deque()
        self._count = 0

    def record(self, now: float, n: int = 1) -> None:
        self._events.append((now, n))
        self._count += n
        self._prune(now)

    def rate(self, now: float) -> float:
        self._prune(now)
        return self._count / self.window

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._events and self._events[0][0] <= horizon:
            self._count -= self._events.popleft()[1]


class Executor:
    """Runs one engine's batch method under the limits above; see the module doc.

    ``await executor.run(items)`` calls ``engine.process_batch(items)`` (or another
    method of the engine named by ``method``) in a worker and returns its outputs.
    """

    def __init__(
        self,
        engine: Any,
        config: ProcessorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config if config is not None else ProcessorConfig()
        self._workers, self._blas = self.config.resolved_threads()
        self._slots = trio.CapacityLimiter(self.config.max_concurrent_processes)
        self._threads = trio.CapacityLimiter(self._workers)
        self._processes: _Processes | None = None
        self._deaths = 0
        self._clock = clock
        self._rate = RateWindow(self.config.throughput_window)
        self._total = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._concurrent = 0
        self._peak = 0
        self._batches = 0
        self._busy_time = 0.0

    @property
    def max_concurrent_processes(self) -> int:
        return int(self._slots.total_tokens)

    @max_concurrent_processes.setter
    def max_concurrent_processes(self, value: int) -> None:
        """Resize the slot limiter (an adaptive controller may move it)."""
        _checks.integer("processor.max_concurrent_processes", value, minimum=1)
        self._slots.total_tokens = value

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Executor]:
        """With ``executor="process"``: pickle the engine, start ``worker_threads``
        worker processes, each loading it before the block begins, and end them after.
        With threads: nothing to start, and BLAS is held to ``blas_threads`` (process-wide:
        the libraries have one thread count) until the block ends."""
        if self.config.executor != "process":
            # BLAS held to blas_threads while open: each call's own lease is then a
            # count (no library call), where a lease per call set the libraries' thread
            # count and back around every batch (~15 us of a worker's time, holding the
            # GIL, a batch of a fast engine).
            with blas_threads(self._blas):
                await trio.lowlevel.checkpoint()
                yield self
            return
        if self._processes is not None:
            raise RuntimeError("Executor.open(): already open")
        try:
            blob = pickle.dumps(self.engine, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f'processor.executor="process" needs a picklable engine: pickling'
                f" {type(self.engine).__qualname__} failed ({exc!r}); make it picklable"
                ' (e.g. __getstate__) or use processor.executor="thread"'
            ) from exc
        with tempfile.TemporaryDirectory(prefix="dtesn-engine-") as tmp:
            path = Path(tmp) / "engine.pickle"
            await trio.to_thread.run_sync(path.write_bytes, blob)
            async with trio_parallel.open_worker_context(
                idle_timeout=math.inf, grace_period=10.0, init=_widen_pipes
            ) as context:
                processes = _Processes(context, str(path), self._blas)
                await processes.warm_up(self._workers)
                self._processes = processes
                try:
                    yield self
                finally:
                    self._processes = None

    def count_refused(self, n: int = 1) -> None:
        """Count ``n`` inputs refused before they ran (bad input): requested and failed."""
        self._total += n
        self._failed += n

    async def run(
        self,
        items: Sequence[Any],
        *,
        method: str = "process_batch",
        batch: bool = True,
        encode: bool = False,
    ) -> Sequence[Any]:
        """``engine.<method>(items)`` in a worker; its result as it returned it.

        ``encode=True``: the outputs, checked one per item, as the engine's ``encode``
        makes them, in JSON bytes (:func:`dtesn_trio.engine.encode_outputs`), computed
        in the worker.  ``batch=False`` does not count the call in ``batch_requests``
        (the seed's single-input path).
        """
        return await self._counted(len(items), batch, partial(self._call, method, items, encode))

    async def run_local(
        self, fn: Callable[[Sequence[Any]], Sequence[Any]], items: Sequence[Any]
    ) -> Sequence[Any]:
        """``fn(items)`` in a worker thread of this process, under the same two limits
        as ``run`` and counted with it, whatever ``executor`` says: for work whose state
        lives in this process (a session's reservoir state)."""
        compute = partial(
            trio.to_thread.run_sync,
            _compute_local,
            fn,
            items,
            self._blas,
            limiter=self._threads,
            abandon_on_cancel=False,
        )
        return await self._counted(len(items), True, compute)

    async def _call(self, method: str, items: Sequence[Any], encode: bool) -> Sequence[Any]:
        if self.config.executor != "process":
            outputs: Sequence[Any] = await trio.to_thread.run_sync(
                _compute,
                self.engine,
                method,
                items,
                self._blas,
                encode,
                limiter=self._threads,
                abandon_on_cancel=False,
            )
            return outputs
        processes = self._processes
        if processes is None:
            raise RuntimeError(
                'processor.executor="process" computes inside '
                "`async with processor.open():` (open_runtime opens it)"
            )
        try:
            outputs = await processes.run(method, items, self._threads, encode)
        except trio_parallel.BrokenWorkerError as exc:
            self._deaths += 1
            raise EngineError(f"the engine worker process died: {exc}") from exc
        return outputs

    async def _counted(
        self, n: int, batch: bool, compute: Callable[[], Awaitable[Sequence[Any]]]
    ) -> Sequence[Any]:
        """``await compute()`` for ``n`` inputs in one of the slots, counted."""
        self._total += n
        if batch:
            self._batches += 1
        self._concurrent += n
        self._peak = max(self._peak, self._concurrent)
        slots = self._slots
        try:
            # A free slot is taken without a trip through the scheduler (``compute``
            # checkpoints: the worker's limiter, then the thread): the batch starts a
            # scheduler pass sooner.  Only a call that must wait for a slot waits here.
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                await slots.acquire()
            try:
                started = self._clock()
                outputs = await compute()
                elapsed = self._clock() - started
            finally:
                slots.release()
        except trio.Cancelled:
            self._cancelled += n
            raise
        except BaseException:
            self._failed += n
            raise
        finally:
            self._concurrent -= n
        self._completed += n
        self._busy_time += elapsed * n
        self._rate.record(self._clock(), n)
        return outputs

    def statistics(self) -> ExecutorStatistics:
        """A frozen snapshot; ``throughput`` is over the last ``throughput_window``."""
        return ExecutorStatistics(
            total_requests=self._total,
            completed_requests=self._completed,
            failed_requests=self._failed,
            cancelled_requests=self._cancelled,
            concurrent_requests=self._concurrent,
            peak_concurrent=self._peak,
            batch_requests=self._batches,
            avg_processing_time=self._busy_time / self._completed if self._completed else 0.0,
            throughput=self._rate.rate(self._clock()),
            max_concurrent_processes=int(self._slots.total_tokens),
            available_processing_slots=int(self._slots.available_tokens),
            worker_threads=self._workers,
            blas_threads=self._blas,
            async_optimization_enabled=self.config.enable_async_optimization,
            busy_threads=self._workers - int(self._threads.available_tokens),
            executor=self.config.executor,
            worker_deaths=self._deaths,
        )

    def get_processing_stats(self) -> dict[str, Any]:
        """The seed's stats dict, built from :meth:`statistics`."""
        st = self.statistics()
        return {
            "total_requests": st.total_requests,
            "completed_requests": st.completed_requests,
            "concurrent_requests": st.concurrent_requests,
            "failed_requests": st.failed_requests,
            "cancelled_requests": st.cancelled_requests,
            "avg_processing_time": st.avg_processing_time,
            "throughput": st.throughput,
            "peak_concurrent": st.peak_concurrent,
            "batch_requests": st.batch_requests,
            "max_concurrent_processes": st.max_concurrent_processes,
            "available_processing_slots": st.available_processing_slots,
            "async_optimization_enabled": st.async_optimization_enabled,
            "worker_threads": st.worker_threads,
            "blas_threads": st.blas_threads,
            "executor": st.executor,
            "worker_deaths": st.worker_deaths,
            # the express lane and the priority gate are gone; their keys stay, at 0,
            # for dashboards that read them
            "express_threads": 0,
            "express_calls": 0,
            "preemptions": 0,
        }


def with_overrides(config: ProcessorConfig, **overrides: Any) -> ProcessorConfig:
    """``config`` with the given fields replaced (``None`` values ignored)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **given) if given else config


class _Processes:
    """The worker processes of one open executor."""

    def __init__(self, context: trio_parallel.WorkerContext, path: str, blas: int) -> None:
        self._context = context
        self._path = path
        self._blas = blas

    async def warm_up(self, workers: int) -> None:
        """Start ``workers`` processes and load the engine in each, before any request."""
        limiter = trio.CapacityLimiter(workers)
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(self._load, limiter)

    async def _load(self, limiter: trio.CapacityLimiter) -> None:
        await self._context.run_sync(_load_in_worker, self._path, limiter=limiter)

    async def run(
        self, method: str, items: Sequence[Any], limiter: trio.CapacityLimiter, encode: bool
    ) -> Any:
        async with limiter:
            return await self._context.run_sync(
                _run_in_worker, self._path, method, items, self._blas, encode, limiter=_UNLIMITED
            )


# Calls are bounded by the executor's limiters (taken in ``run``); the context's own
# limiter must not bound them again.
_UNLIMITED = trio.CapacityLimiter(math.inf)

# ------------------------------------------------------------------ in the worker

_ENGINES: dict[str, Any] = {}


_PIPE_BYTES = 1 << 20


def _widen_pipes() -> None:
    """In a new worker: make its pipes to the server hold a whole batch (1 MiB, as
    Linux allows by default, against 64 KiB).  The server reads a result one pipe-full
    per trip through its event loop; under a storm a trip waits for every runnable
    task, and a batch of JSON results took seconds to come back 64 KiB at a time."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is None:  # not Linux
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, setpipe, _PIPE_BYTES)
        except OSError:  # gone meanwhile, or above this user's pipe limit: keep it
            continue


def _load_in_worker(path: str) -> None:
    if path not in _ENGINES:
        with open(path, "rb") as f:
            _ENGINES[path] = pickle.load(f)


def _run_in_worker(path: str, method: str, items: Sequence[Any], blas: int, encode: bool) -> Any:
    _load_in_worker(path)
    return list(_compute(_ENGINES[path], method, items, blas, encode))


def _compute(engine: Any, method: str, items: Sequence[Any], blas: int, encode: bool) -> Any:
    """In a worker thread or process: the call, and the outputs' JSON when asked."""
    with blas_threads(blas):
        outputs = getattr(engine, method)(items)
        if not encode:
            return outputs
        checked = check_outputs(engine_name(engine), len(items), outputs)
        return encode_outputs(engine.encode, checked)


def _compute_local(
    fn: Callable[[Sequence[Any]], Sequence[Any]], items: Sequence[Any], blas: int
) -> Any:
    """In a worker thread: ``run_local``'s call."""
    with blas_threads(blas):
        return fn(items)

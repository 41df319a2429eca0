"""The processor: runs the model in worker threads without blocking the event loop.

Two limits apply to every call:

- ``max_concurrent_processes`` (a :class:`trio.CapacityLimiter`, default 100 as the
  seed): calls in processing at once; the others wait, in FIFO order.
- the cores: at most ``worker_threads`` threads compute at once (another
  ``CapacityLimiter``, passed to :func:`trio.to_thread.run_sync`), each with BLAS held to
  ``blas_threads`` (threadpoolctl, see :mod:`dtesn_trio.dtesn.blas`), and
  ``worker_threads × blas_threads <= cores`` whatever ``max_concurrent_processes``
  says. A FastAPI app whose 40 pool threads each ran multi-threaded BLAS served zero
  requests at 64 connections on this project's 2-core machine; this is why.

Priority (issue 8). A call may carry a ``priority`` (0 = most urgent): while it computes,
a computation of a lower priority pauses at its next time step (a
:class:`~dtesn_trio.dtesn.preemption.PriorityGate`; once per computation, so lower work
always progresses) and resumes afterwards, nothing lost.
An ``express`` call that finds every worker thread busy computes on one of
``express_threads`` reserved threads instead of waiting for a worker: with a priority
above the running work's, it preempts it instead of queueing behind it.

Where it computes (``executor``): in worker *threads* of the server's process (the
default), or in worker *processes* (``"process"``, :mod:`dtesn_trio.dtesn.engine_processes`):
each with its own interpreter and GIL, so the event loop never waits for the model to
let go of the GIL.  This model is GIL-bound (Python between small sparse products); at
10x overload a thread engine and the event loop shared one core's worth of GIL.  The
processes exist while ``async with processor.open():`` runs (``open_runtime`` does it).

A cancelled call is neither a success nor a failure: it counts in
``cancelled_requests`` only. Work already running in a thread is not abandoned (NumPy
cannot be interrupted); if it finishes, the caller gets its result and it counts as
completed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import trio

from dtesn_trio import _checks
from dtesn_trio.dtesn.blas import available_cores, blas_threads
from dtesn_trio.dtesn.config import MAX_MEMBRANE_DEPTH, DTESNConfig
from dtesn_trio.dtesn.encoding import EncodedInput, encode_input
from dtesn_trio.dtesn.engine_processes import EngineProcesses, open_engine_processes
from dtesn_trio.dtesn.model import DTESNModel, DTESNResult
from dtesn_trio.dtesn.preemption import PriorityGate
from dtesn_trio.errors import InvalidRequest

__all__ = ["DTESNProcessor", "ProcessorConfig", "ProcessorStatistics"]

StatsProvider = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class ProcessorConfig:
    """How the processor runs the model.

    - ``max_concurrent_processes``: calls processed at once (the rest wait).
    - ``enable_async_optimization``: ``False`` runs one computation at a time (one
      worker thread), the seed's "standard processing" fallback.
    - ``blas_threads``: BLAS threads per worker thread; default 1.
    - ``worker_threads``: threads computing at once; default ``cores // blas_threads``.
      Both are clamped so that ``worker_threads × blas_threads <= cores``.
    - ``express_threads``: extra threads for ``express`` calls that find every worker
      thread busy (0: express calls wait for a worker like any other).  They do not
      oversubscribe the cores when the express call preempts: the paused thread waits.
    - ``executor``: ``"thread"`` (compute in worker threads of this process) or
      ``"process"`` (in worker processes, one per worker/express thread: the model gets
      its own GIL; see the module docstring).
    - ``throughput_window``: seconds over which ``throughput`` counts completions.
    - ``switch_interval``: the interpreter's GIL switch interval (``sys.setswitchinterval``)
      that ``open_runtime`` sets while it runs (and restores after); ``None`` leaves it
      alone.  After every system call the event loop must win the GIL back from the
      computing threads, and with Python's default 5 ms it waited up to 5 ms each time
      (the I/O convoy): at 10x load the loop answered a few dozen requests a second and
      even refusals took seconds (benchmarks/overload.py).  0.5 ms costs the computing
      threads little: they release the GIL inside NumPy/SciPy anyway.
    """

    max_concurrent_processes: int = 100
    enable_async_optimization: bool = True
    blas_threads: int | None = None
    worker_threads: int | None = None
    express_threads: int = 1
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
        _checks.integer("processor.express_threads", self.express_threads, minimum=0)
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
class ProcessorStatistics:
    """A snapshot of the processor. Counts are of inputs (a batch of n counts n)."""

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
    model_depths: tuple[int, ...]  # membrane depths with a built model
    busy_threads: int = 0  # worker threads computing now
    express_threads: int = 0
    express_calls: int = 0  # calls that computed on an express thread
    executor: str = "thread"
    worker_deaths: int = 0  # engine worker processes that died mid-call
    computing: tuple[tuple[int, int], ...] = ()  # (priority, calls) computing now
    preemptions: int = 0  # times a computation paused for a higher-priority one
    paused_seconds: float = 0.0  # total seconds computations spent paused


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


class DTESNProcessor:
    """Owns the DTESN model(s) and runs them off the event loop.

    ``DTESNProcessor(model_or_config, config)``, or with the seed's keywords
    ``DTESNProcessor(max_concurrent_processes=100, enable_async_optimization=True)``
    (they override ``config``). A :class:`DTESNModel` is used as given; a
    :class:`DTESNConfig` (or nothing: the defaults) is built on first use in a worker
    thread — ``await start_async_resources()`` builds it ahead of time. A different
    ``membrane_depth`` per call uses a variant of the model built once and kept (it has
    no readout: a readout belongs to one state size).

    The optional ``*_stats`` callables fill the nested dicts of
    :meth:`get_processing_stats`.
    """

    def __init__(
        self,
        model_or_config: DTESNModel | DTESNConfig | None = None,
        config: ProcessorConfig | None = None,
        *,
        max_concurrent_processes: int | None = None,
        enable_async_optimization: bool | None = None,
        blas_threads: int | None = None,
        worker_threads: int | None = None,
        concurrency_stats: StatsProvider | None = None,
        connection_pool_stats: StatsProvider | None = None,
        queue_stats: StatsProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = config if config is not None else ProcessorConfig()
        overrides: dict[str, Any] = {
            k: v
            for k, v in (
                ("max_concurrent_processes", max_concurrent_processes),
                ("enable_async_optimization", enable_async_optimization),
                ("blas_threads", blas_threads),
                ("worker_threads", worker_threads),
            )
            if v is not None
        }
        self.config = replace(config, **overrides) if overrides else config
        if isinstance(model_or_config, DTESNModel):
            self.model_config = model_or_config.config
            self._models: dict[int, DTESNModel] = {
                model_or_config.config.membrane_depth: model_or_config
            }
        else:
            self.model_config = model_or_config if model_or_config is not None else DTESNConfig()
            self._models = {}
        self._building: dict[int, trio.Event] = {}
        self._workers, self._blas = self.config.resolved_threads()
        self._slots = trio.CapacityLimiter(self.config.max_concurrent_processes)
        self._threads = trio.CapacityLimiter(self._workers)
        express = self.config.express_threads
        self._express = trio.CapacityLimiter(express) if express else None
        self._express_calls = 0
        self._gate = PriorityGate()
        self._processes: EngineProcesses | None = None
        self._closed_counts = (0, 0.0, 0)  # pauses, paused s, deaths of closed processes
        self._providers = {
            "concurrency_stats": concurrency_stats,
            "connection_pool_stats": connection_pool_stats,
            "queue_stats": queue_stats,
        }
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

    # ------------------------------------------------------------------ models
    @property
    def max_concurrent_processes(self) -> int:
        return int(self._slots.total_tokens)

    @max_concurrent_processes.setter
    def max_concurrent_processes(self, value: int) -> None:
        """Resize the slot limiter (an adaptive controller may move it)."""
        _checks.integer("processor.max_concurrent_processes", value, minimum=1)
        self._slots.total_tokens = value

    @property
    def model(self) -> DTESNModel:
        """The model at the configured depth (built here, synchronously, if not yet)."""
        depth = self.model_config.membrane_depth
        if depth not in self._models:
            self._models[depth] = DTESNModel(self.model_config)
        return self._models[depth]

    def cache_key(self, membrane_depth: int | None = None) -> str:
        """The model key for a result cache: config (at that depth) and readout."""
        depth = self._depth(membrane_depth)
        model = self._models.get(depth)
        if model is not None:
            return model.cache_key()
        return self._config_at(depth).cache_key()

    @asynccontextmanager
    async def open(self, *, warm_express: bool = True) -> AsyncIterator[DTESNProcessor]:
        """Run the executor for the block: with ``executor="process"``, start the worker
        processes (each loads the model before the block begins; the express ones too
        unless ``warm_express=False``: then on first use) and end them after; with
        threads, nothing to start."""
        if self.config.executor != "process":
            await trio.lowlevel.checkpoint()
            yield self
            return
        if self._processes is not None:
            raise RuntimeError("DTESNProcessor.open(): already open")
        async with open_engine_processes(blas=self._blas) as processes:
            model = await self._model_for(None)
            express = self.config.express_threads if warm_express else 0
            await processes.warm_up(model, self._workers + express)
            self._processes = processes
            try:
                yield self
            finally:
                self._processes = None
                pauses, paused, deaths = self._closed_counts
                self._closed_counts = (
                    pauses + processes.pauses,
                    paused + processes.paused_seconds,
                    deaths + processes.worker_deaths,
                )

    async def start_async_resources(self) -> None:
        """Build the default model in a worker thread (the seed's start-up hook)."""
        await self._model_for(None)

    async def stop_async_resources(self) -> None:
        """Nothing to release (threads belong to Trio's cache); kept for the seed."""
        await trio.lowlevel.checkpoint()

    def _depth(self, membrane_depth: int | None) -> int:
        if membrane_depth is None:
            return self.model_config.membrane_depth
        if (
            not isinstance(membrane_depth, int)
            or isinstance(membrane_depth, bool)
            or not 1 <= membrane_depth <= MAX_MEMBRANE_DEPTH
        ):
            raise InvalidRequest(
                f"membrane_depth must be an integer between 1 and {MAX_MEMBRANE_DEPTH} "
                f"(got {membrane_depth!r})",
                field="membrane_depth",
            )
        return membrane_depth

    def _config_at(self, depth: int) -> DTESNConfig:
        """The model config at ``depth``; a depth this reservoir cannot hold is the
        caller's error (too few units for that many membranes), named as such."""
        try:
            return replace(self.model_config, membrane_depth=depth)
        except ValueError as exc:
            raise InvalidRequest(str(exc), field="membrane_depth") from None

    async def _model_for(self, membrane_depth: int | None) -> DTESNModel:
        depth = self._depth(membrane_depth)
        while True:
            model = self._models.get(depth)
            if model is not None:
                await trio.lowlevel.checkpoint()
                return model
            building = self._building.get(depth)
            if building is not None:
                await building.wait()
                continue  # built, or the builder failed: look again
            cfg = self._config_at(depth)
            done = self._building[depth] = trio.Event()
            try:
                model = await trio.to_thread.run_sync(
                    self._build, cfg, limiter=self._threads, abandon_on_cancel=False
                )
                self._models[depth] = model
            finally:
                del self._building[depth]
                done.set()
            return model

    def _build(self, cfg: DTESNConfig) -> DTESNModel:
        with blas_threads(self._blas):
            return DTESNModel(cfg)

    # ------------------------------------------------------------------ processing
    async def process(
        self,
        input_data: object,
        *,
        membrane_depth: int | None = None,
        use_batching: bool = False,
        enable_concurrent: bool = True,
        priority: int | None = None,
        express: bool = False,
    ) -> DTESNResult:
        """Process one input on the model's single-input path.

        ``use_batching`` and ``enable_concurrent`` are the seed's keywords, accepted and
        without effect here: batching across callers is the runtime's queue, and the
        limits above decide concurrency. ``priority`` and ``express``: see the module's
        docstring. Raises :class:`InvalidRequest` for bad input.
        """
        results = await self._submit(
            [input_data], membrane_depth, batch=False, priority=priority, express=express
        )
        return results[0]

    async def process_batch(
        self,
        inputs: Sequence[object],
        *,
        membrane_depth: int | None = None,
        priority: int | None = None,
        express: bool = False,
    ) -> list[DTESNResult]:
        """Process a batch as one set of matrix products per step (one worker thread).

        With ``priority``, lower-priority computations pause while this one runs; with
        ``express``, it may compute on a reserved thread when every worker is busy (see
        the module's docstring).  A bad input raises :class:`InvalidRequest` naming
        ``inputs[i]``; nothing runs.
        """
        if isinstance(inputs, str | bytes | bytearray):
            raise InvalidRequest("inputs must be a list of inputs", field="inputs")
        return await self._submit(
            list(inputs), membrane_depth, batch=True, priority=priority, express=express
        )

    async def _submit(
        self,
        inputs: list[object],
        membrane_depth: int | None,
        *,
        batch: bool,
        priority: int | None,
        express: bool,
    ) -> list[DTESNResult]:
        if priority is not None and (type(priority) is not int or priority < 0):
            raise InvalidRequest(
                f"priority must be a non-negative integer (got {priority!r})", field="priority"
            )
        n = len(inputs)
        self._total += n
        if batch:
            self._batches += 1
        self._concurrent += n
        self._peak = max(self._peak, self._concurrent)
        try:
            dim = self.model_config.input_dim
            encs = [
                encode_input(x, dim, field=f"inputs[{i}]" if batch else "input")
                for i, x in enumerate(inputs)
            ]
            model = await self._model_for(membrane_depth)
            async with self._slots:
                limiter = self._threads
                if express and self._express is not None and not limiter.available_tokens:
                    # every worker is busy: compute beside them (preempting, with a
                    # priority above theirs) instead of waiting for one of them
                    limiter = self._express
                    self._express_calls += 1
                started = self._clock()
                if self.config.executor == "process":
                    if self._processes is None:
                        raise RuntimeError(
                            'processor.executor="process" computes inside '
                            "`async with processor.open():` (open_runtime opens it)"
                        )
                    results = await self._processes.run(model, encs, batch, priority, limiter)
                else:
                    results = await trio.to_thread.run_sync(
                        self._compute,
                        model,
                        encs,
                        batch,
                        priority,
                        limiter=limiter,
                        abandon_on_cancel=False,
                    )
                elapsed = self._clock() - started
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
        return results

    def _compute(
        self, model: DTESNModel, encs: list[EncodedInput], batch: bool, priority: int | None
    ) -> list[DTESNResult]:
        with blas_threads(self._blas):
            if priority is None:
                if batch:
                    return model.process_batch(encs)
                return [model.process_one(encs[0])]
            with self._gate.running(priority) as checkpoint:
                if batch:
                    return model.process_batch(encs, checkpoint=checkpoint)
                return [model.process_one(encs[0], checkpoint=checkpoint)]

    # ------------------------------------------------------------------ statistics
    def statistics(self) -> ProcessorStatistics:
        """A frozen snapshot; ``throughput`` is over the last ``throughput_window``."""
        gate = self._gate.statistics()
        procs = self._processes
        computing = gate.running if procs is None else procs.computing
        pauses, paused, deaths = self._closed_counts
        pauses += gate.pauses
        paused += gate.paused_seconds
        if procs is not None:
            pauses += procs.pauses
            paused += procs.paused_seconds
            deaths += procs.worker_deaths
        return ProcessorStatistics(
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
            model_depths=tuple(sorted(self._models)),
            busy_threads=self._workers - int(self._threads.available_tokens),
            express_threads=self.config.express_threads,
            express_calls=self._express_calls,
            computing=computing,
            preemptions=pauses,
            paused_seconds=paused,
            executor=self.config.executor,
            worker_deaths=deaths,
        )

    def get_processing_stats(self) -> dict[str, Any]:
        """The seed's stats dict, built from :meth:`statistics`."""
        st = self.statistics()
        out: dict[str, Any] = {
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
            "express_threads": st.express_threads,
            "express_calls": st.express_calls,
            "preemptions": st.preemptions,
        }
        for key, provider in self._providers.items():
            out[key] = dict(provider()) if provider is not None else {}
        return out

"""The embedded runtime: the ownership tree of DESIGN.md in one root nursery.

``async with open_runtime(config, engine=...) as rt:`` builds, in order, the engine
(its ``open()``) and the executor that runs it, the pools (Redis when configured,
SQLite for jobs), admission, the cache, the priority batch queue with its workers, and
the job service; ``await rt.process(...)`` runs one request through admission -> cache
-> queue -> batch -> engine.  The runtime knows the engine only through the protocol
of :mod:`dtesn_trio.engine`; without one it serves DTESN, built from ``config.model``.
Leaving the block stops intake, lets in-flight batches finish within the grace, answers everything
still queued with ``ShuttingDown``, and closes every connection.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
import sys
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from dtesn_trio._checks import check_priority
from dtesn_trio.cache import CacheStatistics, MemoryCache, ResultCache
from dtesn_trio.config import RuntimeConfig
from dtesn_trio.dtesn import DTESNEngine, DTESNModel
from dtesn_trio.engine import ResolvedEngine, check_outputs, resolve_engine
from dtesn_trio.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    DTESNError,
    EngineError,
    InvalidRequest,
    Overloaded,
    ShuttingDown,
)
from dtesn_trio.executor import Executor
from dtesn_trio.instrument import LoopMonitor, LoopStatistics, count_tasks
from dtesn_trio.jobs import JobService, JobStore, SQLiteJobStore, open_job_service
from dtesn_trio.jobs.postgres import PostgresJobStore
from dtesn_trio.limits import Admission, AdmissionConfig
from dtesn_trio.limits.admission import _Throttle
from dtesn_trio.limits.shared_rate import SharedRateLimiter
from dtesn_trio.models import (
    JOB_KINDS,
    ModelRegistry,
    postgres_model_store,
    run_job,
    sqlite_model_store,
)
from dtesn_trio.nurseries import (
    ConnectionPool,
    ConnectionPoolConfig,
    PostgresConnector,
    PriorityBatchQueue,
    RedisConnector,
    SQLiteConnector,
    open_batch_queue,
    open_pool,
)
from dtesn_trio.redis_cache import RedisCache
from dtesn_trio.sessions import (
    BuiltinModelSource,
    ModelSource,
    PostgresSessionStore,
    SessionManager,
    SessionStore,
    SQLiteSessionStore,
    open_sessions,
)

__all__ = [
    "BatchedOutcome",
    "ProcessOutcome",
    "Runtime",
    "RuntimeConfig",
    "RuntimeStatistics",
    "open_runtime",
]

log = logging.getLogger("dtesn_trio.runtime")


@dataclass(frozen=True)
class ProcessOutcome:
    """One request's answer: the engine's encoded output and how it was produced.

    ``result`` is the value of the engine's ``encode``, as JSON would give it back;
    ``encoded`` is the same as JSON bytes (``msgspec.Raw``, what the server sends).
    """

    encoded: Any
    cache_hit: bool
    priority: int
    batch_size: int
    timings: dict[str, float]

    @functools.cached_property
    def result(self) -> Any:
        encoded = self.encoded
        return msgspec.json.decode(encoded) if isinstance(encoded, msgspec.Raw) else encoded

    def to_dict(self) -> dict[str, Any]:
        """The answer's body (``result`` as JSON bytes, for ``msgspec`` to encode)."""
        return {
            "result": self.encoded,
            "cache_hit": self.cache_hit,
            "priority": self.priority,
            "batch_size": self.batch_size,
            "timings": self.timings,
        }


_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_new_object = object.__new__
_set_attribute = object.__setattr__


def _timings(start: float, started: float, finished: float, end: float) -> dict[str, float]:
    """A request's ``timings`` (ms): queued until its batch started, the batch's run,
    and the whole request from ``start`` to ``end``."""
    return {
        "queued_ms": (started - start) * 1000,
        "processing_ms": (finished - started) * 1000,
        "total_ms": (end - start) * 1000,
    }


def _outcome(
    encoded: Any, cache_hit: bool, priority: int, batch_size: int, timings: dict[str, float]
) -> ProcessOutcome:
    """``ProcessOutcome(...)`` for the request path: the same frozen record, its fields
    set as one ``__dict__`` (a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, which cost more than the rest of building the answer)."""
    outcome = _new_object(ProcessOutcome)
    _set_attribute(
        outcome,
        "__dict__",
        {
            "encoded": encoded,
            "cache_hit": cache_hit,
            "priority": priority,
            "batch_size": batch_size,
            "timings": timings,
        },
    )
    return outcome


@dataclass(frozen=True)
class BatchedOutcome:
    """The answer of ``Runtime.submit_batched``: the batch function's output for the
    item, the size of the batch it ran in, and ``queued_ms`` / ``processing_ms`` /
    ``total_ms``."""

    output: Any
    batch_size: int
    timings: dict[str, float]


@dataclass(frozen=True)
class RuntimeStatistics:
    """Every part's statistics, as frozen records."""

    admission: Any
    queue: Any
    processor: Any
    """The executor's ``ExecutorStatistics``."""
    engine: Any
    """The engine's own ``statistics()`` (None when it has none)."""
    cache: CacheStatistics | None
    pools: dict[str, Any]
    shared_limit: Any
    loop: LoopStatistics
    shutting_down: bool
    tasks: int
    """Live Trio tasks in the whole run (a steady count under steady load: no leak)."""
    sessions: Any = None
    """The session manager's ``SessionsStatistics`` (None without sessions)."""


_LOCAL = object()  # first member of a submit_batched group key: never an engine's key


class _Work:
    """A queued request that is more than the engine's item: it has a group, a cost, or
    the caller's batch function (``submit_batched``).  An engine with neither
    ``group_key`` nor ``cost`` has its items queued as they are (one record fewer a
    request)."""

    __slots__ = ("cost", "group", "item", "run")

    def __init__(
        self,
        item: Any,
        group: Hashable,
        cost: int = 1,
        run: Callable[[Sequence[Any]], Sequence[Any]] | None = None,
    ) -> None:
        self.item = item
        self.run = run  # not the engine: the caller's batch function (submit_batched)
        self.group = group
        self.cost = cost  # its share of the batch budget (queue.max_batch_size)


_BatchInfo = tuple[int, float, float]
"""(size, started, finished) of the batch that ran a request: the batch function
answers each member with ``(output, info)``, one ``info`` shared by the batch."""


@dataclass
class Runtime:
    """The running tree; create it with ``open_runtime``, never directly."""

    config: RuntimeConfig
    nursery: trio.Nursery
    engine: ResolvedEngine
    processor: Executor
    admission: Admission
    loop_monitor: LoopMonitor
    cache: ResultCache | None = None
    queue: PriorityBatchQueue[Any, tuple[Any, _BatchInfo]] | None = None
    jobs: JobService | None = None
    models: ModelRegistry | None = None
    """Named, versioned models (with durable jobs, on the DTESN engine only)."""
    sessions: SessionManager | None = None
    """Live sessions (``sessions.enabled`` and the DTESN engine), else ``None``."""
    shared_limiter: SharedRateLimiter | None = None
    pools: dict[str, ConnectionPool[Any]] = field(default_factory=dict)
    _shutdown_started: trio.Event = field(default_factory=trio.Event)
    _ready: bool = False
    # the run's clock, read directly (trio.current_time() costs two more calls)
    _clock: trio.abc.Clock = field(init=False, repr=False)
    _now: Callable[[], float] = field(init=False, repr=False)
    _levels: int = field(init=False, repr=False)
    _decode_fn: Callable[[Any], Any] = field(init=False, repr=False)
    _plain_items: bool = field(init=False, repr=False)
    """The engine has neither ``group_key`` nor ``cost``: its items are queued as they
    are, not in a ``_Work``."""

    def __post_init__(self) -> None:
        self._clock = trio.lowlevel.current_clock()
        self._now = self._clock.current_time
        self._levels = self.config.queue.priority_levels
        self._decode_fn = self.engine.decode_fn
        self._plain_items = self.engine.group_key is None and self.engine.cost is None

    # ---- state ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Pools up, workers running, not shutting down."""
        return self._ready and not self._shutdown_started.is_set()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_started.is_set()

    def begin_shutdown(self) -> None:
        """Stop intake: new requests get ``ShuttingDown``.  Idempotent."""
        if self._shutdown_started.is_set():
            return
        self._shutdown_started.set()
        if self.queue is not None:
            self.queue.close()

    async def wait_shutdown_started(self) -> None:
        """Return once ``begin_shutdown()`` was called (a server's shutdown trigger)."""
        await self._shutdown_started.wait()

    # ---- the request path ----------------------------------------------------

    async def process(
        self,
        input: Any,
        *,
        priority: int = 2,
        deadline: float | None = None,
        membrane_depth: int | None = None,
        use_cache: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> ProcessOutcome:
        """Run one input through admission, cache, queue and engine.

        ``options`` are the engine's request options (keyword arguments of its
        ``decode``); ``membrane_depth`` is DTESN's, the same as
        ``options={"membrane_depth": ...}``.  ``deadline`` is an absolute
        ``trio.current_time()``; raises only ``DTESNError``s.
        """
        if type(priority) is not int or not 0 <= priority < self._levels:
            check_priority(priority, self._levels)  # raises, naming the field
        if membrane_depth is None and not options:  # _decode, written out
            try:
                item = self._decode_fn(input)
            except InvalidRequest:
                raise
            except Exception as exc:
                raise _decode_failure(exc) from None
        else:
            item = self._decode(input, priority, membrane_depth, options)
        if self._shutdown_started.is_set():
            raise ShuttingDown("the runtime is shutting down", retry_after=1.0)
        start = admitted_at = self._now()
        if deadline is not None and deadline <= start:
            raise DeadlineExceeded("the deadline had passed before the request started")
        if self.shared_limiter is not None:
            await self.shared_limiter.try_acquire()
            admitted_at = self._now()
        # Admission without its own checkpoint: every path of _admitted checkpoints (the
        # cache, the refusal, the queue), so a second trip through the scheduler per
        # request would buy nothing.  A caller cancelled already is not admitted.
        await _checkpoint_if_cancelled()
        # throttle_request_nowait written out: no priority check (made above), and
        # admission times the request with the readings of the clock it takes anyway
        # (_admitted records the success at the instant of total_ms)
        admission = self.admission
        if admission._enabled:
            throttle = _Throttle._admit(admission, priority, self._clock, admitted_at)
        else:
            throttle = _Throttle(admission, priority, self._clock)  # a pass-through
        try:
            if deadline is None and (not use_cache or self.cache is None):
                # No deadline (no cancel scope to make), no cache: the hot path, with
                # _queued written out (a coroutine fewer a request).
                queue = self.queue
                assert queue is not None
                try:
                    output, (size, started, finished) = await queue.submit(
                        item if self._plain_items else self._work(item),
                        priority=priority,
                        wait=True,
                    )
                except DTESNError:
                    raise
                except Exception as exc:
                    # the engine failed on this input alone (see _queued)
                    raise _engine_failure(exc) from None
                end = self._now()
                timings = _timings(start, started, finished, end)
                throttle._exit_at(None, end)
                return _outcome(output, False, priority, size, timings)
            if deadline is None:
                return await self._admitted(item, priority, deadline, use_cache, start, throttle)
            with trio.move_on_at(deadline) as scope:
                return await self._admitted(item, priority, deadline, use_cache, start, throttle)
            assert scope.cancelled_caught
            waited = self._now() - start
            raise DeadlineExceeded(f"the deadline passed after {waited * 1000:.0f} ms")
        except BaseException as exc:
            throttle._exit_at(exc, self._now())
            raise

    async def process_batch(
        self,
        inputs: Sequence[Any],
        *,
        priority: int = 2,
        deadline: float | None = None,
        membrane_depth: int | None = None,
        use_cache: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> list[ProcessOutcome | DTESNError]:
        """Run several inputs concurrently; each gets its outcome or its own error."""
        if not inputs:
            raise InvalidRequest("inputs must not be empty", field="inputs")
        out: list[ProcessOutcome | DTESNError | None] = [None] * len(inputs)

        async def one(i: int) -> None:
            try:
                out[i] = await self.process(
                    inputs[i],
                    priority=priority,
                    deadline=deadline,
                    membrane_depth=membrane_depth,
                    use_cache=use_cache,
                    options=options,
                )
            except DTESNError as exc:
                out[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(inputs)):
                nursery.start_soon(one, i)
        # Every task set its slot or raised (and then so did the nursery): none is None,
        # and the answers stay aligned with the inputs.
        answers = [o for o in out if o is not None]
        assert len(answers) == len(inputs)
        return answers

    async def submit_batched(
        self,
        item: Any,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        group: Hashable = None,
        priority: int = 2,
        deadline: float | None = None,
    ) -> BatchedOutcome:
        """Run ``item`` through admission and the queue as ``process`` runs a request
        (same limiter, breaker, priorities, deadline rules), batched with the queued
        items of the same ``group`` by ``run(items) -> outputs`` instead of the engine.

        ``run`` is synchronous, gets the items of one group and returns one output per
        item (an exception instance fails that item alone); it runs in a worker thread
        of this process under the executor's limits, even with ``executor =
        "process"``.  Items of one group must share ``run``.  No result cache.
        Raises only ``DTESNError``s.
        """
        check_priority(priority, self._levels)
        if self._shutdown_started.is_set():
            raise ShuttingDown("the runtime is shutting down", retry_after=1.0)
        start = self._now()
        if deadline is not None and deadline <= start:
            raise DeadlineExceeded("the deadline had passed before the request started")
        if self.shared_limiter is not None:
            await self.shared_limiter.try_acquire()
        work = _Work(item, (_LOCAL, group), 1, run)
        async with self.admission.throttle_request(priority=priority):
            if deadline is None:
                output, info = await self._queued(work, priority, None)
            else:
                with trio.move_on_at(deadline) as scope:
                    output, info = await self._queued(work, priority, deadline)
                if scope.cancelled_caught:
                    waited = self._now() - start
                    raise DeadlineExceeded(f"the deadline passed after {waited * 1000:.0f} ms")
        size, started, finished = info
        timings = _timings(start, started, finished, self._now())
        return BatchedOutcome(output, size, timings)

    async def _queued(
        self, work: Any, priority: int, deadline: float | None
    ) -> tuple[Any, _BatchInfo]:
        """The output for ``work`` (an engine's item, or a ``_Work``) and its batch's
        record; an engine failure as ``_engine_failure`` makes it."""
        queue = self.queue
        assert queue is not None
        start_by = deadline
        if deadline is not None:
            run = queue.mean_batch_duration
            if run is not None:
                # The queue's deadline is for *starting*: a request that starts at its
                # deadline finishes a batch later, too late, after using the engine.
                start_by = deadline - run
                if start_by <= self._now():
                    await trio.lowlevel.checkpoint()
                    raise Overloaded(
                        f"the deadline cannot be met: a batch takes {run:.3f}s", retry_after=run
                    )
        # wait=True: a full level makes the caller wait for space (until its deadline),
        # as a trio.CapacityLimiter would, instead of refusing at once: a refused client
        # that retries at once costs more than one that waits.
        try:
            return await queue.submit(work, priority=priority, deadline=start_by, wait=True)
        except DTESNError:
            raise
        except Exception as exc:
            # The engine raised for this input alone (the queue ran it alone after its
            # batch failed: queue.retry_individually, which the runtime turns on).
            raise _engine_failure(exc) from None

    async def _admitted(
        self,
        item: Any,
        priority: int,
        deadline: float | None,
        use_cache: bool,
        start: float,
        throttle: _Throttle,
    ) -> ProcessOutcome:
        """``process`` once admitted; a success is recorded with ``throttle`` here (the
        caller records a failure)."""
        engine = self.engine
        key = None
        cache = self.cache
        if use_cache and cache is not None:
            key = engine.cache_key(item)
            if key is not None:
                if isinstance(cache, MemoryCache):
                    # synchronous: a miss goes on to the queue, which checkpoints (two
                    # scheduler trips a request fewer); a hit checkpoints here
                    hit = cache.get_nowait(key)
                    if hit is not None:
                        await trio.lowlevel.checkpoint()
                else:
                    hit = await cache.get(key)
                if hit is not None:
                    end = self._now()
                    timings = {
                        "queued_ms": 0.0,
                        "processing_ms": 0.0,
                        "total_ms": (end - start) * 1000,
                    }
                    throttle._exit_at(None, end)
                    return _outcome(hit, True, priority, 0, timings)
        result, (size, started, finished) = await self._queued(
            item if self._plain_items else self._work(item), priority, deadline
        )
        # result: the engine's encode, in JSON bytes (``_run_batch``)
        if key is not None and cache is not None:
            if isinstance(cache, MemoryCache):
                cache.set_nowait(key, result)
            else:
                await cache.set(key, result)
        end = self._now()
        timings = _timings(start, started, finished, end)
        throttle._exit_at(None, end)
        return _outcome(result, False, priority, size, timings)

    async def _run_batch(self, items: list[Any]) -> list[Any]:
        """The queue's batch function: one executor call per group in the batch.

        Each member gets ``(output, (size, started, finished))`` (one record for the
        batch), or the error of its own output: an output that is an exception fails
        that input alone; an engine call that raises fails the batch, and the queue
        runs each member again alone.  Members are the engine's items, or ``_Work``s.
        """
        size = len(items)
        now = self._now
        started = now()
        work_type = _Work
        for item in items:
            if type(item) is work_type:
                break
        else:  # the engine's items alone: one call, the common case
            outputs = await self._run_engine(items)
            info = (size, started, now())
            return [
                _engine_failure(o) if isinstance(o, BaseException) else (o, info) for o in outputs
            ]
        works = [w if type(w) is work_type else _Work(w, None) for w in items]
        out: list[Any] = [None] * size
        by_key: dict[Hashable, list[int]] = {}
        for i, work in enumerate(works):
            by_key.setdefault(work.group, []).append(i)
        for idxs in by_key.values():
            outputs = await self._run_group([works[i] for i in idxs])
            info = (size, started, now())
            for i, output in zip(idxs, outputs, strict=True):
                out[i] = (
                    _engine_failure(output) if isinstance(output, BaseException) else (output, info)
                )
        return out

    async def _run_engine(self, items: list[Any]) -> list[Any]:
        """One executor call of the engine: its outputs in JSON bytes, one per item
        (the executor checked their number before encoding them)."""
        return list(await self.processor.run(items, encode=True))

    async def _run_group(self, works: list[_Work]) -> list[Any]:
        """One executor call for the members of one group: the engine's outputs in JSON
        bytes, or (``submit_batched``) the caller's function's outputs as they are."""
        batch = [work.item for work in works]
        local = works[0].run
        if local is None:
            return await self._run_engine(batch)
        raw = await self.processor.run_local(local, batch)
        return check_outputs(getattr(local, "__qualname__", "run"), len(batch), raw)

    async def _run_job(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A durable job: already accepted, so it skips admission but not the queue.
        Training jobs (fit, search) go to the model registry."""
        if payload.get("kind") in JOB_KINDS and self.models is not None:
            enqueue = None if self.jobs is None else self.jobs.enqueue
            return await run_job(self.models, payload, enqueue)
        priority = payload.get("priority", 4)
        item = self._decode(payload["input"], priority, payload.get("membrane_depth"), None)
        work = item if self._plain_items else self._work(item)
        output, (size, _, _) = await self._queued(work, priority, None)
        return {"result": output, "batch_size": size}

    def _work(self, item: Any) -> _Work:
        """``item`` with its group and cost; an engine's ``group_key`` or ``cost`` that
        raises is an ``EngineError`` (logged), as a failing batch is."""
        engine = self.engine
        try:
            group = None if engine.group_key is None else engine.group_key(item)
            if engine.cost is None:
                return _Work(item, group)
            return _Work(item, group, _cost_units(engine.name, engine.cost(item)))
        except Exception as exc:
            raise _engine_failure(exc) from None

    # ---- validation ------------------------------------------------------------

    def _breaker_status(self) -> tuple[bool, int]:
        # the queue's get_queue_stats() reports the admission breaker (the engine's)
        breaker = self.admission.breaker.statistics()
        return breaker.open, breaker.failed_calls

    def _decode(
        self,
        data: object,
        priority: object,
        depth: int | None,
        options: Mapping[str, Any] | None,
    ) -> Any:
        """The engine's item for ``data``, or ``InvalidRequest``; a ``decode`` that
        raises anything else (another ``DTESNError`` too) is the engine's bug:
        ``EngineError``, logged with its traceback."""
        if type(priority) is not int or not 0 <= priority < self._levels:
            check_priority(priority, self._levels)  # raises, naming the field
        if depth is not None:
            options = {**(options or {}), "membrane_depth": depth}
        try:
            if not options:
                return self._decode_fn(data)
            return self.engine.decode(data, options)
        except InvalidRequest:
            raise
        except Exception as exc:
            raise _decode_failure(exc) from None

    # ---- statistics -------------------------------------------------------------

    def statistics(self) -> RuntimeStatistics:
        return RuntimeStatistics(
            admission=self.admission.statistics(),
            queue=self.queue.statistics() if self.queue is not None else None,
            processor=self.processor.statistics(),
            engine=self._engine_statistics(),
            cache=self.cache.statistics() if self.cache is not None else None,
            pools={name: pool.statistics() for name, pool in self.pools.items()},
            shared_limit=(
                self.shared_limiter.statistics() if self.shared_limiter is not None else None
            ),
            loop=self.loop_monitor.statistics(),
            shutting_down=self.shutting_down,
            tasks=count_tasks(),
            sessions=self.sessions.statistics() if self.sessions is not None else None,
        )

    def _engine_statistics(self) -> Any:
        stats = self.engine.statistics
        return None if stats is None else stats()

    def metrics_snapshot(self) -> dict[str, Any]:
        """Every number of ``statistics()``, nested, for gauges at scrape time.

        Tuples become per-index keys (``queue.queued.0`` is the depth of priority 0) and
        an enum state becomes one 0/1 flag per value (``breaker.state.open``).
        """
        snapshot = _numbers(self.statistics())
        assert isinstance(snapshot, dict)
        return snapshot

    def get_stats(self) -> dict[str, Any]:
        """The seed's stats dictionaries, built from ``statistics()`` of every part."""
        load = self.admission.get_current_load()
        queue = self.queue.get_queue_stats() if self.queue is not None else {}
        pools = {name: pool.get_stats() for name, pool in self.pools.items()}
        processing = self.processor.get_processing_stats()
        processing["concurrency_stats"] = load
        processing["queue_stats"] = queue
        processing["connection_pool_stats"] = pools
        loop = self.loop_monitor.statistics()
        cache = self.cache.statistics() if self.cache is not None else None
        engine = self._engine_statistics()
        if dataclasses.is_dataclass(engine) and not isinstance(engine, type):
            engine = dataclasses.asdict(engine)
        return {
            "engine": {"name": self.engine.name, **(dict(engine) if engine else {})},
            "processing": processing,
            "load": load,
            "queue": queue,
            "pool": pools,
            "cache": None if cache is None else cache.__dict__.copy(),
            "loop": {
                "max_step_ms": loop.max_step * 1000,
                "max_step_task": loop.max_step_task,
                "slow_steps": loop.slow_steps,
                "tasks": count_tasks(),
            },
            "sessions": (
                None if self.sessions is None else dataclasses.asdict(self.sessions.statistics())
            ),
            "ready": self.ready,
            "shutting_down": self.shutting_down,
        }


def _engine_admission(config: AdmissionConfig) -> AdmissionConfig:
    """``config`` with an engine breaker that ignores ``BackendUnavailable`` too.

    Inside admission, only the Redis cache raises it, and the cache has its own breaker:
    counted here, a Redis outage (with ``cache.fail_open = false``) would open the
    engine's breaker and keep refusing for ``wait_in_open`` after Redis is back.
    """
    ignore = config.breaker.ignore_exception

    def ignore_backend(exc: BaseException) -> bool:
        return isinstance(exc, BackendUnavailable) or ignore(exc)

    breaker = dataclasses.replace(config.breaker, ignore_exception=ignore_backend)
    return dataclasses.replace(config, breaker=breaker)


def _cost_units(name: str, cost: object) -> int:
    """An engine's ``cost(item)`` as whole units of the batch budget (at least 1)."""
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
        raise EngineError(f"{name}.cost returned {cost!r}, not a finite number")
    return max(1, math.ceil(cost))


def _work_cost(work: _Work) -> int:
    # with a cost function every queued request is a _Work (the engine's, or submit_batched's)
    return work.cost


def _decode_failure(exc: Exception) -> EngineError:
    """What a ``decode`` that raised anything but ``InvalidRequest`` gives the caller
    (logged here with its traceback)."""
    log.error("the engine's decode failed on one input: %r", exc, exc_info=exc)
    return EngineError("the engine failed to decode this input; the cause is in the server's log")


def _engine_failure(exc: BaseException) -> DTESNError:
    """What the caller of one failed input gets: a ``DTESNError`` as it is, anything else
    as ``EngineError`` (logged here with its traceback; no internals in the message)."""
    if isinstance(exc, DTESNError):
        return exc
    log.error("the engine failed on one input: %r", exc, exc_info=exc)
    return EngineError("the engine failed to process this input; the cause is in the server's log")


def _numbers(value: Any) -> Any:
    """The numeric content of a statistics record (strings and None dropped)."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, enum.Enum):
        return {
            m.value if isinstance(m.value, str) else m.name.lower(): m is value for m in type(value)
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items: Any = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, tuple | list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    out = {str(k): n for k, v in items if (n := _numbers(v)) is not None}
    return out or None


async def _open_job_store(
    config: RuntimeConfig, pools: dict[str, ConnectionPool[Any]], stack: AsyncExitStack
) -> JobStore:
    """The job store's pool (SQLite embedded, or PostgreSQL through trio-asyncio)."""
    if config.jobs.backend == "postgres":
        import trio_asyncio

        assert config.postgres.dsn is not None  # RuntimeConfig checked it
        await stack.enter_async_context(trio_asyncio.open_loop())
        connector = PostgresConnector(config.postgres.dsn)
        pools["jobs"] = await stack.enter_async_context(open_pool(connector, config.postgres.pool))
        return PostgresJobStore(pools["jobs"])
    sqlite = SQLiteConnector(config.jobs.sqlite_path)
    pool_config = ConnectionPoolConfig(
        max_connections=4, min_connections=1, max_concurrent_creates=1
    )
    pools["jobs"] = await stack.enter_async_context(open_pool(sqlite, pool_config))
    return SQLiteJobStore(pools["jobs"])


async def _open_registry(
    config: RuntimeConfig, pool: ConnectionPool[Any], engine: DTESNEngine
) -> ModelRegistry:
    """The model registry, in the job store's database (set up before the claimers
    start: a training job may be the first they claim)."""
    if config.jobs.backend == "postgres":
        store = postgres_model_store(pool)
    else:
        store = sqlite_model_store(pool)
    await store.setup()
    return ModelRegistry(store, lambda: engine.model, engine.config)


@asynccontextmanager
async def open_runtime(
    config: RuntimeConfig | None = None,
    *,
    engine: Any = None,
    model: DTESNModel | None = None,
    model_source: ModelSource | None = None,
) -> AsyncIterator[Runtime]:
    """Build the ownership tree; leaving the block stops all of it, in order.

    ``engine``: what the runtime serves, any object with the members of
    :class:`dtesn_trio.engine.Engine`; by default the DTESN engine built from
    ``config.model``.  ``model``, the older form of ``engine=DTESNEngine(model)``: a
    DTESN model built, trained or loaded by the caller; its config must equal
    ``config.model`` (the cache keys and the validation derive from it).
    ``model_source``: where sessions find the model a client names (default: the model
    registry when the job store is on, else only the engine's own model, as
    ``default``).

    The runtime always runs a failed batch's members again alone (the queue's
    ``retry_individually``), so that one poisoned input fails only itself.
    """
    config = config or RuntimeConfig()
    if model is not None:
        if engine is not None:
            raise TypeError("open_runtime: pass engine= or model=, not both")
        if model.config != config.model:
            raise ValueError("open_runtime(model=...): model.config must equal config.model")
        engine = DTESNEngine(model)
    resolved = resolve_engine(DTESNEngine(config.model) if engine is None else engine)
    monitor = LoopMonitor()
    switch_interval = sys.getswitchinterval()
    if config.processor.switch_interval is not None:
        sys.setswitchinterval(config.processor.switch_interval)
    try:
        async with trio.open_nursery() as root, AsyncExitStack() as stack:
            # a probe, not an instrument on every task step (see dtesn_trio.instrument)
            await root.start(monitor.run)
            # the engine (and its workers: processes, with processor.executor="process")
            # outlive the queue that feeds them: the stack closes the queue first
            if resolved.open is not None:
                await stack.enter_async_context(resolved.open())
            executor = Executor(resolved.engine, config.processor)
            await stack.enter_async_context(executor.open())
            rt = Runtime(
                config=config,
                nursery=root,
                engine=resolved,
                processor=executor,
                admission=Admission(_engine_admission(config.admission)),
                loop_monitor=monitor,
            )
            if config.redis.url is not None:
                connector = RedisConnector.from_url(config.redis.url)
                rt.pools["redis"] = await stack.enter_async_context(
                    open_pool(connector, config.redis.pool)
                )
            if config.shared_limit.enabled:
                rt.shared_limiter = SharedRateLimiter(rt.pools["redis"], config.shared_limit)
            if config.cache.enabled and resolved.cache_key_fn is not None:
                if config.cache.backend == "redis":
                    rt.cache = RedisCache(
                        rt.pools["redis"], config.cache, timeout=config.redis.timeout
                    )
                else:
                    rt.cache = MemoryCache(config.cache)
            queue_config = dataclasses.replace(config.queue, retry_individually=True)
            rt.queue = await stack.enter_async_context(
                open_batch_queue(
                    rt._run_batch,
                    queue_config,
                    # the engine's cost counts toward queue.max_batch_size (else 1 an item)
                    size_fn=None if resolved.cost is None else _work_cost,
                    breaker_status=rt._breaker_status,
                )
            )
            if config.jobs.enabled:
                store = await _open_job_store(config, rt.pools, stack)
                if isinstance(resolved.engine, DTESNEngine):
                    rt.models = await _open_registry(config, rt.pools["jobs"], resolved.engine)
                rt.jobs = await stack.enter_async_context(
                    open_job_service(store, rt._run_job, config.jobs)
                )
            if config.sessions.enabled and isinstance(resolved.engine, DTESNEngine):
                session_store: SessionStore | None = None
                jobs_pool = rt.pools.get("jobs")
                if jobs_pool is not None:
                    session_store = (
                        PostgresSessionStore(jobs_pool)
                        if config.jobs.backend == "postgres"
                        else SQLiteSessionStore(jobs_pool)
                    )
                source: ModelSource = (
                    model_source
                    if model_source is not None
                    else rt.models
                    if rt.models is not None
                    else BuiltinModelSource(resolved.engine.model)
                )
                rt.sessions = await stack.enter_async_context(
                    open_sessions(rt, config.sessions, models=source, store=session_store)
                )
            rt._ready = True
            try:
                yield rt
            finally:
                rt.begin_shutdown()
            # Leaving the stack closes jobs, then the queue (grace), then the pools;
            # anything the user started in rt.nursery (a server) is stopped last.
            await stack.aclose()
            root.cancel_scope.cancel()
    finally:
        sys.setswitchinterval(switch_interval)

"""Priority batch queue: bounded channels per priority, dynamic batching, batch workers.

``open_batch_queue(process_batch, config)`` owns a nursery of ``config.workers`` batch
workers.  ``await queue.submit(item, priority=p)`` puts the item on level ``p``'s bounded
memory channel and waits for that item's own result.  One worker at a time (holding the
forming lock) pulls items in priority order into a batch; the batch leaves when full,
when ``max_wait`` has passed since its oldest item was queued, or early when a member's
deadline would otherwise be missed.  The worker then runs ``process_batch`` and hands
each result to its own waiter, while the next idle worker forms the next batch.

Every submit ends in exactly one way: a result, the item's error, ``Overloaded``,
``DeadlineExceeded``, ``ShuttingDown``, ``InvalidRequest`` or its own cancellation.

The express lane (``express_levels``, off by default): one more worker, outside the
forming lock.  A priority-0 request that arrives while every shared worker runs a batch
of lower ones is batched at once -- urgent requests first, then the next levels' up to
``express_batch_size`` -- and handed to ``process_batch`` (the runtime's engine then
pauses the lower batch for it, see :mod:`dtesn_trio.dtesn.preemption`) instead of
waiting for one of those batches to finish.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from dtesn_trio.errors import DeadlineExceeded, InvalidRequest, Overloaded, ShuttingDown
from dtesn_trio.nurseries.adaptive_timeout import AdaptiveTimeout
from dtesn_trio.nurseries.queue_config import BatchQueueConfig

__all__ = [
    "AsyncRequestQueue",
    "BatchDoneCallback",
    "BatchQueueStatistics",
    "PriorityBatchQueue",
    "ProcessBatch",
    "open_batch_queue",
]

T = TypeVar("T")
R = TypeVar("R")

ProcessBatch = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]
BatchDoneCallback = Callable[[int, float, BaseException | None], None]

# Request states.  QUEUED: in its level's channel.  TAKEN: pulled by the forming worker
# (in the batch being formed, or in a level's delayed list).  RUNNING: handed to the
# engine.  DONE: answered.  GONE: its submitter left (cancelled or timed out) before
# it ran; it is skipped, never processed.
_QUEUED, _TAKEN, _RUNNING, _DONE, _GONE = range(5)
_INF = math.inf
_CHECKPOINT_EVERY = 32  # items a worker may answer between two of its own checkpoints


_reschedule = trio.lowlevel.reschedule
_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED


class _Request(Generic[T, R]):
    # The submitter parks on the request itself (``wait_task_rescheduled``) and the
    # answering side reschedules it: the same mechanism trio.Event uses, without an
    # Event and a ParkingLot per request (measured: the queue's per-item cost).
    __slots__ = ("error", "expires", "item", "level", "queued_at", "soft", "state", "task", "value")

    def __init__(self, item: T, level: int, queued_at: float, expires: float, soft: float) -> None:
        self.item = item
        self.level = level
        self.queued_at = queued_at
        self.expires = expires  # hard expiry (reject): DeadlineExceeded
        self.soft = soft  # delay-action expiry: moved behind its level
        self.state = _QUEUED
        self.value: R | None = None
        self.error: BaseException | None = None
        self.task: trio.lowlevel.Task | None = None  # set while its submitter is parked

    def abort(self, _: object) -> trio.lowlevel.Abort:
        # Cancelled while parked: nobody may reschedule this task any more.
        self.task = None
        return _SUCCEEDED

    def wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            _reschedule(task)


@dataclass(frozen=True, slots=True)
class BatchQueueStatistics:
    """A snapshot of a ``PriorityBatchQueue``.

    Outcome counters count submit calls by how they ended; once the queue is closed and
    idle, ``submitted`` equals the sum of ``completed``, ``failed``, ``expired``,
    ``cancelled``, ``shut_down``, ``rejected_full``, ``rejected_deadline`` and
    ``invalid``.  ``processed`` counts items handed to the engine (including retries'
    originals once); ``cancelled_running`` is the part of ``cancelled`` whose item was
    already running (its batch went on undisturbed).
    """

    priority_levels: int
    capacities: tuple[int, ...]
    queued: tuple[int, ...]
    total_queued: int
    max_queue_size: int
    workers: int
    running_batches: int
    running_items: int
    submitted: int
    completed: int
    failed: int
    expired: int
    cancelled: int
    cancelled_running: int
    shut_down: int
    rejected_full: int
    rejected_deadline: int
    invalid: int
    processed: int
    batches: int
    batch_failures: int
    consecutive_batch_failures: int
    batch_sizes: tuple[tuple[int, int], ...]
    mean_batch_duration: float | None
    adaptive_timeout: float
    p95_response_time: float | None
    avg_response_time: float | None
    success_rate: float | None
    max_batch_size: int
    batch_processing_enabled: bool


def _clone_error(exc: BaseException) -> BaseException:
    # One engine error goes to every member of a failed batch; each waiter raises its own
    # copy (chained to the original) so concurrent raises do not share one traceback.
    try:
        clone = copy.copy(exc)
    except Exception:
        return exc
    if type(clone) is not type(exc):
        return exc
    clone.__cause__ = exc
    clone.__traceback__ = None
    return clone


class PriorityBatchQueue(Generic[T, R]):
    """Bounded priority levels feeding batch workers; created by ``open_batch_queue``.

    ``submit`` is safe to call from any task in the same Trio run.  ``close`` stops
    intake; leaving ``open_batch_queue``'s block closes it and waits for in-flight
    batches (``close_grace``).
    """

    def __init__(
        self,
        process_batch: ProcessBatch[T, R],
        config: BatchQueueConfig,
        *,
        size_fn: Callable[[T], int] | None = None,
        on_batch_done: BatchDoneCallback | None = None,
        breaker_status: Callable[[], tuple[bool, int]] | None = None,
    ) -> None:
        self.config = config
        self._process_batch = process_batch
        self._size_fn = size_fn
        self._on_batch_done = on_batch_done
        self._breaker_status = breaker_status
        self._levels = config.priority_levels
        self._capacities = config.capacities
        self._max_batch = config.max_batch_size
        self._max_wait = config.max_wait
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._max_skips = config.max_skips
        self._adaptive_on = config.adaptive_timeout
        self._timeouts = config.timeouts
        self._reject = tuple(a == "reject" for a in config.actions)
        channels = [trio.open_memory_channel[_Request[T, R]](cap) for cap in self._capacities]
        self._send = [s for s, _ in channels]
        self._receive = [r for _, r in channels]
        # Requests whose timeout passed on a "delay" level wait here, behind their level.
        self._delayed: list[deque[_Request[T, R]]] = [deque() for _ in range(self._levels)]
        # A request that did not fit the last batch (size_fn) waits here, first in line.
        self._held: list[deque[_Request[T, R]]] = [deque() for _ in range(self._levels)]
        self._waiting = [0] * self._levels  # live, not yet running, per level
        self._dead = [0] * self._levels  # abandoned requests still inside a channel
        self._skips = [0] * self._levels
        self._starving = False
        # One worker forms a batch at a time.  A Semaphore, not a Lock: it guards no
        # resource owned by a task, and trio.Lock's per-acquire owner bookkeeping was a
        # measurable share of the per-batch cost.
        self._form_lock = trio.Semaphore(1)
        # expiry bookkeeping: per level in arrival order (level timeouts), and a heap for
        # requests whose own deadline is earlier than their level's timeout
        self._order: list[deque[_Request[T, R]]] = [deque() for _ in range(self._levels)]
        self._deadlines: list[tuple[float, int, _Request[T, R]]] = []
        self._seq = itertools.count()
        self._heap_limit = 1024
        self._reaper_at = _INF
        self._reaper_wakeup: trio.Event | None = None
        self._wakeup: trio.Event | None = None
        self._forming: list[_Request[T, R]] = []
        # the express lane's former (see the module docstring): its own wakeup and batch
        self._express_below = config.express_level_count
        self._express_wakeup: trio.Event | None = None
        self._express_forming: list[_Request[T, R]] = []
        self._express_batches = 0
        self._express_running = False
        self._express_max = config.express_batch_limit
        self._lower_levels = list(range(config.express_level_count, config.priority_levels))
        self._shared_running = 0  # batches the shared workers are running
        self._shared_urgent = 0  # ... of which hold a request of an express level
        self._taken_gone = 0  # taken requests abandoned so far (see _form_batch)
        self._workers_left = 0
        self._workers_done = trio.Event()
        self._adaptive = AdaptiveTimeout(
            initial=config.adaptive_initial,
            minimum=config.adaptive_min,
            maximum=config.adaptive_max,
        )
        self._batch_ewma: float | None = None
        self._estimate_bound = -_INF
        self._rounds_bound = config.total_capacity / (config.max_batch_size * config.workers)
        self._now: Callable[[], float] = trio.current_time
        self._all_levels = list(range(self._levels))
        self._running_batches = 0
        self._running_items = 0
        self._batch_sizes: dict[int, int] = {}
        # outcome counters (per submit call)
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._expired = 0
        self._cancelled = 0
        self._cancelled_running = 0
        self._shut_down = 0
        self._rejected_full = 0
        self._rejected_deadline = 0
        self._invalid = 0
        self._processed = 0
        self._batches = 0
        self._batch_failures = 0
        self._consecutive_failures = 0

    # ------------------------------------------------------------------ intake

    async def submit(
        self, item: T, *, priority: int = 2, deadline: float | None = None, wait: bool = False
    ) -> R:
        """Queue ``item`` at ``priority`` (0 = highest) and return its result.

        Raises the item's own error from the engine; ``Overloaded`` at once when the
        level is full (unless ``wait=True``, which waits for space) or when ``deadline``
        (an absolute ``trio.current_time()``) cannot be met given the estimated wait;
        ``DeadlineExceeded`` when the deadline or the level's reject timeout passes while
        queued (the item is then never processed); ``ShuttingDown`` once closed.  The
        timeout and deadline cover queueing only: once its batch runs, the call waits for
        the result.  Cancelled while queued, the item is dropped; cancelled while its
        batch runs, the batch is undisturbed.
        """
        self._submitted += 1
        if type(priority) is not int or not 0 <= priority < self._levels:
            await self._refusal_checkpoint()
            self._invalid += 1
            raise InvalidRequest(
                f"priority must be an integer from 0 to {self._levels - 1} (got {priority!r})",
                field="priority",
            )
        now = self._now()
        timeout = self._timeouts[priority]
        if timeout is None and self._adaptive_on:
            timeout = self._adaptive.value(now)
        level_expires = soft = _INF
        if timeout is not None:
            if self._reject[priority]:
                level_expires = now + timeout
            else:
                soft = now + timeout
        expires = level_expires
        if deadline is not None:
            if deadline != deadline:  # NaN
                await self._refusal_checkpoint()
                self._invalid += 1
                raise InvalidRequest(
                    f"deadline must be a number (got {deadline!r})", field="deadline"
                )
            if deadline <= now:
                await self._refusal_checkpoint()
                self._expired += 1
                raise DeadlineExceeded("the request's deadline had passed when it was submitted")
            expires = min(expires, deadline)
        if expires - now < self._estimate_bound:
            estimate = self.estimated_wait(priority)
            if now + estimate > expires:
                await self._refusal_checkpoint()
                self._rejected_deadline += 1
                raise Overloaded(
                    f"the deadline cannot be met: estimated queue wait {estimate:.3f}s",
                    retry_after=estimate,
                )
        req: _Request[T, R] = _Request(item, priority, now, expires, soft)
        # fast path inline: no extra coroutine per request
        waiting = self._waiting
        waiting[priority] += 1  # before any await: a worker may take it at once
        try:
            if self._delayed[priority]:
                raise trio.WouldBlock
            self._send[priority].send_nowait(req)
        except (trio.WouldBlock, trio.ClosedResourceError):
            waiting[priority] -= 1
            await self._enqueue(req, wait)
        else:
            wakeup = self._wakeup
            if wakeup is not None:
                self._wakeup = None
                wakeup.set()
            if priority < self._express_below or self._express_forming:
                self._wake_express()  # (a forming express batch fills from every level)
        if expires != _INF:
            # The reaper answers it with DeadlineExceeded if it is still queued at
            # ``expires``: one timer task for the queue, not a cancel scope per request.
            if expires < level_expires:
                heap = self._deadlines
                heapq.heappush(heap, (expires, next(self._seq), req))
                if len(heap) > self._heap_limit:
                    self._compact_deadlines()
            else:
                order = self._order[priority]
                while order and order[0].state >= _RUNNING:
                    order.popleft()  # keep it short: drop answered heads as we go
                order.append(req)
            if expires < self._reaper_at:
                self._wake_reaper()
        try:
            if req.state < _DONE:  # not answered yet (always so, unless it had to wait)
                req.task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(req.abort)
            else:
                await trio.lowlevel.checkpoint()
        except BaseException:
            self._cancelled += 1
            state = req.state
            if state < _RUNNING:
                self._abandon(req)
            elif state == _RUNNING:
                self._cancelled_running += 1
            raise
        error, value = req.error, req.value
        # ``req`` may outlive this call (an expired one keeps its channel slot until a
        # worker pulls it; answered ones stay in the deadline heap until due): keep
        # neither the result nor the exception alive through it -- once raised, its
        # traceback holds the frames of the caller's whole stack.
        req.error = req.value = None
        if req.state == _GONE:  # expired by the reaper
            self._expired += 1
            raise error  # type: ignore[misc]
        if error is None:
            self._completed += 1
            return value  # type: ignore[return-value]
        if isinstance(error, ShuttingDown):
            self._shut_down += 1
        else:
            self._failed += 1
        raise error

    async def _refusal_checkpoint(self) -> None:
        # A refusal still checkpoints; if that is where the caller is cancelled, the
        # submit ends as cancelled, not as the refusal (one outcome, counted once).
        try:
            await trio.lowlevel.checkpoint()
        except BaseException:
            self._cancelled += 1
            raise

    async def _enqueue(self, req: _Request[T, R], wait: bool) -> None:
        level = req.level
        send = self._send[level]
        self._waiting[level] += 1  # before any await: a worker may take it at once
        try:
            if self._delayed[level] and self._waiting[level] > self._capacities[level]:
                raise trio.WouldBlock
            try:
                send.send_nowait(req)
            except trio.WouldBlock:
                if not self._dead[level]:
                    raise
                self._compact(level)
                send.send_nowait(req)
        except trio.WouldBlock:
            if not wait:
                self._waiting[level] -= 1
                await self._refusal_checkpoint()
                self._rejected_full += 1
                raise Overloaded(
                    f"priority level {level} is full ({self._capacities[level]} requests)",
                    retry_after=self._retry_after(),
                ) from None
            try:
                await self._enqueue_waiting(req, send)
            except BaseException:
                self._waiting[level] -= 1
                raise
        except trio.ClosedResourceError:
            self._waiting[level] -= 1
            await self._refusal_checkpoint()
            self._shut_down += 1
            raise ShuttingDown("the queue is closed") from None
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
        if level < self._express_below or self._express_forming:
            self._wake_express()

    def _wake_express(self) -> None:
        wakeup = self._express_wakeup
        if wakeup is not None:
            self._express_wakeup = None
            wakeup.set()

    async def _enqueue_waiting(
        self, req: _Request[T, R], send: trio.MemorySendChannel[_Request[T, R]]
    ) -> None:
        try:
            with trio.move_on_at(req.expires) as scope:
                await send.send(req)
        except trio.ClosedResourceError:
            self._shut_down += 1
            raise ShuttingDown("the queue is closed") from None
        except BaseException:
            self._cancelled += 1
            raise
        if scope.cancelled_caught:
            self._expired += 1
            raise DeadlineExceeded("the deadline passed while waiting for queue space")

    def _compact(self, level: int) -> None:
        # Abandoned requests keep their channel slot until pulled; a full level drops
        # them (keeping FIFO order of the live ones) before it refuses anyone.
        receive, send = self._receive[level], self._send[level]
        live: list[_Request[T, R]] = []
        while True:
            try:
                req = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if req.state == _GONE:
                self._dead[level] -= 1
            else:
                live.append(req)
        for req in live:
            send.send_nowait(req)

    # ------------------------------------------------------------------ expiry

    def _wake_reaper(self) -> None:
        wakeup = self._reaper_wakeup
        if wakeup is not None:
            self._reaper_wakeup = None
            wakeup.set()

    def _compact_deadlines(self) -> None:
        # Answered requests stay in the heap until their deadline; drop them when the
        # heap has grown well past the number of requests still waiting.
        self._deadlines = [e for e in self._deadlines if e[2].state < _RUNNING]
        heapq.heapify(self._deadlines)
        self._heap_limit = max(1024, 2 * len(self._deadlines))

    def _expire_due(self, now: float) -> float:
        """Answer every waiting request whose expiry has come; return the next expiry."""
        next_at = _INF
        for order in self._order:
            while order:
                req = order[0]
                if req.state >= _RUNNING:
                    order.popleft()
                elif req.expires <= now:
                    order.popleft()
                    self._expire(req)
                else:
                    next_at = min(next_at, req.expires)
                    break
        heap = self._deadlines
        while heap:
            expires, _, req = heap[0]
            if req.state >= _RUNNING:
                heapq.heappop(heap)
            elif expires <= now:
                heapq.heappop(heap)
                self._expire(req)
            else:
                next_at = min(next_at, expires)
                break
        return next_at

    def _expire(self, req: _Request[T, R]) -> None:
        self._abandon(req)
        req.error = DeadlineExceeded(
            f"queued past its deadline at priority {req.level}", retry_after=None
        )
        self._adaptive.record_failures(1)
        req.wake()

    async def _reaper(self) -> None:
        while True:
            at = self._reaper_at = self._expire_due(trio.current_time())
            wakeup = self._reaper_wakeup = trio.Event()
            with trio.move_on_at(at):
                await wakeup.wait()

    def _abandon(self, req: _Request[T, R]) -> None:
        if req.state == _QUEUED:
            self._dead[req.level] += 1
        elif req.state == _TAKEN:
            self._taken_gone += 1  # a forming batch drops it at its next look
        self._waiting[req.level] -= 1
        req.state = _GONE

    def close(self) -> None:
        """Stop intake: new and space-waiting submits get ``ShuttingDown``, and so does
        every request still queued.  Batches already running finish.  Idempotent."""
        for send in self._send:
            send.close()
        error = ShuttingDown("the queue is shutting down")
        for level, receive in enumerate(self._receive):
            while True:
                try:
                    req = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if req.state == _GONE:
                    self._dead[level] -= 1
                else:
                    self._answer(req, None, error)
            for side in (self._held[level], self._delayed[level]):
                while side:
                    req = side.popleft()
                    if req.state == _TAKEN:
                        self._answer(req, None, error)
        for req in (*self._forming, *self._express_forming):
            if req.state == _TAKEN:
                self._answer(req, None, error)
        self._forming = []
        self._express_forming = []
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
        self._wake_express()

    def _answer(self, req: _Request[T, R], value: R | None, error: BaseException | None) -> None:
        # Answers a request that was not answered before (callers check its state); the
        # engine's results (_call) and expiry (_expire) set the slot the same way.
        if req.state < _RUNNING:
            self._waiting[req.level] -= 1
            if req.state == _TAKEN:
                self._taken_gone += 1  # answered from a forming batch (close)
        req.state = _DONE
        req.value = value
        req.error = error
        req.wake()

    # ------------------------------------------------------------------ estimates

    def _retry_after(self) -> float:
        ewma = self._batch_ewma
        return max(ewma if ewma is not None else self._max_wait, 0.001)

    @property
    def mean_batch_duration(self) -> float | None:
        """Recent mean seconds per batch (EWMA), ``None`` before the first batch."""
        return self._batch_ewma

    def estimated_wait(self, priority: int) -> float:
        """Estimated seconds until a request submitted now at ``priority`` starts running.

        Counts the live requests at this and higher levels, in rounds of
        ``max_batch_size × workers``, at the recent mean batch duration; while every
        worker is busy, half a batch more.  Zero before any batch has run.
        """
        if type(priority) is not int or not 0 <= priority < self._levels:
            raise InvalidRequest(
                f"priority must be an integer from 0 to {self._levels - 1} (got {priority!r})",
                field="priority",
            )
        ewma = self._batch_ewma
        if ewma is None:
            return 0.0
        ahead = sum(self._waiting[: priority + 1])
        workers = self.config.workers
        rounds = ahead // (self._max_batch * workers)
        busy = 0.5 if self._running_batches >= workers else 0.0
        return (rounds + busy) * ewma

    # ------------------------------------------------------------------ workers

    async def _worker(self, express: bool = False) -> None:
        """A batch worker: the shared lane's (one forms at a time, holding the forming
        lock, in service order), or the express lane's (alone, only while its levels
        have requests waiting and every shared worker runs lower work; its batches do not
        count as skips of the other levels)."""
        try:
            lock = self._form_lock
            max_batch = self._max_batch
            express_max = self._express_max
            waiting = self._waiting
            sizes = self._batch_sizes
            retry = self.config.retry_individually
            levels = self._levels
            workers = self.config.workers
            batch: list[_Request[T, R]] | None
            budget = 0
            while True:
                if express:
                    await trio.lowlevel.checkpoint()  # (the shared lane's is the lock)
                    if not self._express_due():
                        wakeup = self._express_wakeup = trio.Event()
                        await wakeup.wait()
                        continue
                    batch = []
                    size, closed = self._fill(batch, 0, self._now(), express=True)
                    if closed or size < express_max:
                        batch = await self._form_batch(batch, size, closed, express=True)
                        if batch is None:
                            return
                    self._express_batches += 1
                else:
                    # One worker forms a batch at a time.  The worker checkpoints at least
                    # once per _CHECKPOINT_EVERY items: when full batches are ready and the
                    # engine did not yield, it goes on without a trip through the scheduler.
                    if budget > 0 and lock.value:
                        lock.acquire_nowait()
                    else:
                        await lock.acquire()
                        budget = _CHECKPOINT_EVERY
                    try:
                        # fast path: a full batch is waiting; no coroutine, no timer
                        batch = []
                        size, closed = self._fill(batch, 0, self._now())
                        if closed or size < max_batch:
                            batch = await self._form_batch(batch, size, closed)
                            if batch is None:
                                return
                        if self._max_skips is not None:
                            self._count_skips(batch)
                    finally:
                        lock.release()
                    budget -= len(batch)
                # run it (inline, not another coroutine: this is the per-batch hot path)
                top = levels
                for req in batch:
                    level = req.level
                    waiting[level] -= 1
                    req.state = _RUNNING
                    if level < top:
                        top = level
                urgent = top < self._express_below
                if express:
                    self._express_running = True
                else:
                    self._shared_running += 1
                    if urgent:
                        self._shared_urgent += 1
                    elif self._express_below and self._shared_running >= workers:
                        self._wake_express()  # the express levels' waiters need it now
                n = len(batch)
                self._running_batches += 1
                self._running_items += n
                self._processed += n
                self._batches += 1
                sizes[n] = sizes.get(n, 0) + 1
                try:
                    error = await self._call(batch)
                    if error is not None and retry and n > 1:
                        for req in batch:
                            await self._call([req])
                finally:
                    self._running_batches -= 1
                    self._running_items -= n
                    if express:
                        self._express_running = False
                    else:
                        self._shared_running -= 1
                        if urgent:
                            self._shared_urgent -= 1
                    # Cancelled (the queue is being torn down) or KeyboardInterrupt: the
                    # batch never finished; its members still get an answer, and the
                    # breaker no verdict.
                    for req in batch:
                        if req.state == _RUNNING:
                            self._answer(req, None, ShuttingDown("the queue shut down mid-batch"))
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                self._workers_done.set()

    def _express_due(self) -> bool:
        """Whether the express lane should form a batch now: requests wait at its levels
        and every shared worker runs a batch with none of theirs (otherwise a shared
        worker takes them, in priority order, as it always does), or the queue closed."""
        if self._receive[0].statistics().open_send_channels == 0:
            return True  # closed: the lane's next look answers what it holds, and ends
        return (
            self._shared_running >= self.config.workers
            and not self._shared_urgent
            and any(self._waiting[: self._express_below])
        )

    def _service_order(self) -> list[int]:
        levels = self._all_levels
        max_skips = self._max_skips
        if max_skips is not None and self._starving:
            for level in levels:
                if self._skips[level] >= max_skips and self._waiting[level] > 0:
                    return [level, *(lv for lv in levels if lv != level)]
        return levels

    def _fill(
        self, batch: list[_Request[T, R]], size: int, now: float, express: bool = False
    ) -> tuple[int, bool]:
        """Pull live requests into ``batch`` in service order until it is full (the
        express lane: up to ``express_batch_size``, in strict priority order, its own
        levels first, then the next levels' requests: the engine computes a batch of ten
        in about three times a batch of one, and express batches of one request cut the
        other levels' answers ~10x at 10x load).

        With an express lane that is not running a batch, the shared lane leaves the
        express levels to it while lower levels have requests waiting: under load a
        shared batch would otherwise always carry one urgent request among many others,
        run at its priority, and keep the express lane idle (measured: no express batch
        at all at 10x).  With nothing else waiting, it serves them as any level.

        Returns the batch's size and whether the channels are closed.  Synchronous: no
        other task runs while it looks at the levels.
        """
        max_batch = self._express_max if express else self._max_batch
        size_fn = self._size_fn
        waiting = self._waiting
        closed = False
        below = self._express_below
        leave = (
            below
            and not express
            and not self._express_running
            and any(waiting[level] for level in self._lower_levels)
        )
        for level in self._all_levels if express else self._service_order():
            if size >= max_batch:
                break
            if leave and level < below:
                continue
            delayed = self._delayed[level]
            held = self._held[level]
            if not waiting[level] and not delayed and not held:
                continue  # nothing live there: skip the WouldBlock exception
            receive = self._receive[level]
            while size < max_batch:
                if held:
                    req = held.popleft()
                    if req.state != _TAKEN:
                        continue
                else:
                    try:
                        req = receive.receive_nowait()
                    except trio.WouldBlock:
                        if not delayed:
                            break
                        req = delayed.popleft()
                        if req.state != _TAKEN:
                            continue
                    except trio.EndOfChannel:
                        closed = True
                        break
                    else:
                        if req.state == _GONE:
                            self._dead[level] -= 1
                            continue
                        req.state = _TAKEN
                        if req.soft <= now:
                            delayed.append(req)
                            continue
                if size_fn is not None:
                    weight = size_fn(req.item)
                    if batch and size + weight > max_batch:
                        held.appendleft(req)  # next batch, still first in line
                        return max_batch, closed
                    size += weight
                else:
                    size += 1
                batch.append(req)
        return size, closed

    async def _form_batch(
        self, batch: list[_Request[T, R]], size: int, closed: bool, express: bool = False
    ) -> list[_Request[T, R]] | None:
        """Complete a partly filled batch: wait for more until it is full or due.

        Returns ``None`` (having answered its members) once the queue is closed.
        """
        if express:
            self._express_forming = batch
        else:
            self._forming = batch
        waited = False
        first = True
        # Per wakeup, look only at the members added since the last one: a batch of n
        # formed one arrival at a time must cost O(n), not O(n^2) (issue 8: a batch of
        # 10,000 took ~50 s of loop time to form when every wakeup rescanned it).
        seen = 0
        oldest = expires = _INF
        gone = self._taken_gone
        while True:
            now = self._now()
            if first:  # the worker has just filled it
                first = False
            else:
                size, closed = self._fill(batch, size, now, express)
            if closed:
                error = ShuttingDown("the queue is shutting down")
                for req in batch:
                    if req.state == _TAKEN:
                        self._answer(req, None, error)
                self._end_forming(express)
                return None
            if waited and batch and self._taken_gone != gone:
                # members whose submitters left (cancelled, expired) while we waited
                gone = self._taken_gone
                live = [req for req in batch if req.state == _TAKEN]
                if len(live) != len(batch):
                    batch[:] = live
                    seen = 0
                    oldest = expires = _INF
                    size = (
                        len(live)
                        if self._size_fn is None
                        else sum(self._size_fn(r.item) for r in live)
                    )
                    if not live:
                        continue
            if size >= (self._express_max if express else self._max_batch) or (
                batch and size in self._preferred
            ):
                break
            if batch:
                for req in batch[seen:] if seen else batch:
                    if req.queued_at < oldest:
                        oldest = req.queued_at
                    if req.expires < expires:
                        expires = req.expires
                seen = len(batch)
                leave_at = oldest + self._max_wait
                if expires != _INF:
                    leave_at = min(leave_at, expires - (self._batch_ewma or 0.0))
                if now >= leave_at:
                    break
            else:
                if self._receive[0].statistics().open_send_channels == 0:
                    self._end_forming(express)
                    return None  # closed, and close() answered whatever was queued
                leave_at = _INF
            wakeup = trio.Event()
            if express:
                self._express_wakeup = wakeup
            else:
                self._wakeup = wakeup
            with trio.move_on_at(leave_at):
                await wakeup.wait()
            waited = True
        self._end_forming(express)
        return batch

    def _end_forming(self, express: bool) -> None:
        if express:
            self._express_forming = []
        else:
            self._forming = []

    def _count_skips(self, batch: list[_Request[T, R]]) -> None:
        max_skips = self._max_skips
        assert max_skips is not None
        served = {req.level for req in batch}
        skips = self._skips
        waiting = self._waiting
        starving = False
        # the express levels have their own lane: passing them over is not starving them
        for level in self._lower_levels if self._express_below else self._all_levels:
            if waiting[level] > 0 and level not in served:
                skips[level] += 1
                if skips[level] >= max_skips:
                    starving = True
            else:
                skips[level] = 0
        self._starving = starving

    async def _call(self, batch: list[_Request[T, R]]) -> BaseException | None:
        """Run ``process_batch`` on ``batch`` and answer its members.

        Returns the batch-level error (members left unanswered for a retry when
        ``retry_individually``), or ``None``.
        """
        now = self._now
        started = now()
        try:
            results = await self._process_batch([req.item for req in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"process_batch returned {len(results)} results for {len(batch)} items"
                )
        except Exception as exc:
            finished = now()
            self._batch_done(len(batch), finished - started, exc)
            if self.config.retry_individually and len(batch) > 1:
                return exc
            for req in batch:
                self._answer(req, None, _clone_error(exc))
            self._adaptive.record([finished - req.queued_at for req in batch], False)
            return exc
        finished = now()
        duration = finished - started
        ewma = self._batch_ewma
        ewma = self._batch_ewma = duration if ewma is None else 0.8 * ewma + 0.2 * duration
        self._estimate_bound = (self._rounds_bound + 1.0) * ewma
        self._consecutive_failures = 0
        if self._on_batch_done is not None:
            self._on_batch_done(len(batch), duration, None)
        failed: list[float] | None = None
        for req, result in zip(batch, results, strict=True):
            req.state = _DONE
            if isinstance(result, BaseException):
                req.error = result
                if failed is None:
                    failed = []
                failed.append(finished - req.queued_at)
            else:
                req.value = result
            task = req.task  # inline req.wake(): this loop is the per-item hot path
            if task is not None:
                req.task = None
                _reschedule(task)
        self._adaptive.record_batch([finished - req.queued_at for req in batch], failed)
        return None

    def _batch_done(self, size: int, duration: float, error: BaseException | None) -> None:
        # (the success path in _call inlines this)
        ewma = self._batch_ewma
        ewma = self._batch_ewma = duration if ewma is None else 0.8 * ewma + 0.2 * duration
        # No estimate can exceed this: below it, submit skips estimating.
        self._estimate_bound = (self._rounds_bound + 1.0) * ewma
        if error is None:
            self._consecutive_failures = 0
        else:
            self._batch_failures += 1
            self._consecutive_failures += 1
        if self._on_batch_done is not None:
            self._on_batch_done(size, duration, error)

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> BatchQueueStatistics:
        """A frozen snapshot of levels, outcomes, batches and the adaptive timeout."""
        adaptive = self._adaptive.statistics(trio.current_time())
        queued = tuple(self._waiting)
        return BatchQueueStatistics(
            priority_levels=self._levels,
            capacities=self._capacities,
            queued=queued,
            total_queued=sum(queued),
            max_queue_size=self.config.total_capacity,
            workers=self.config.workers,
            running_batches=self._running_batches,
            running_items=self._running_items,
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            expired=self._expired,
            cancelled=self._cancelled,
            cancelled_running=self._cancelled_running,
            shut_down=self._shut_down,
            rejected_full=self._rejected_full,
            rejected_deadline=self._rejected_deadline,
            invalid=self._invalid,
            processed=self._processed,
            batches=self._batches,
            batch_failures=self._batch_failures,
            consecutive_batch_failures=self._consecutive_failures,
            batch_sizes=tuple(sorted(self._batch_sizes.items())),
            mean_batch_duration=self._batch_ewma,
            adaptive_timeout=adaptive.timeout,
            p95_response_time=adaptive.p95_response_time,
            avg_response_time=adaptive.avg_response_time,
            success_rate=adaptive.success_rate,
            max_batch_size=self._max_batch,
            batch_processing_enabled=self._max_batch > 1,
        )

    def get_queue_stats(self) -> dict[str, Any]:
        """The seed's ``AsyncRequestQueue.get_queue_stats()`` keys, built from ``statistics()``.

        ``circuit_breaker_open`` / ``circuit_breaker_failures`` come from the
        ``breaker_status`` callable given to ``open_batch_queue``; without one they
        report ``False`` and the count of consecutive failed batches.
        """
        s = self.statistics()
        if self._breaker_status is not None:
            breaker_open, breaker_failures = self._breaker_status()
        else:
            breaker_open, breaker_failures = False, s.consecutive_batch_failures
        return {
            "total_queued_requests": s.total_queued,
            "priority_queue_sizes": dict(enumerate(s.queued)),
            "queue_utilization": s.total_queued / s.max_queue_size,
            "circuit_breaker_open": breaker_open,
            "circuit_breaker_failures": breaker_failures,
            "success_rate": 1.0 if s.success_rate is None else s.success_rate,
            "avg_response_time": 0.0 if s.avg_response_time is None else s.avg_response_time,
            "adaptive_timeout": s.adaptive_timeout,
            "batch_processing_enabled": s.batch_processing_enabled,
            "batch_sizes": dict(s.batch_sizes),
        }


@asynccontextmanager
async def open_batch_queue(
    process_batch: ProcessBatch[T, R],
    config: BatchQueueConfig | None = None,
    *,
    size_fn: Callable[[T], int] | None = None,
    on_batch_done: BatchDoneCallback | None = None,
    breaker_status: Callable[[], tuple[bool, int]] | None = None,
) -> AsyncIterator[PriorityBatchQueue[T, R]]:
    """Open a priority batch queue whose ``config.workers`` batch workers run inside.

    ``process_batch(items)`` returns one result per item, in order; an exception
    instance in that sequence is delivered as that item's error.  If it raises, every
    member gets the error (or, with ``retry_individually``, is retried alone).
    ``on_batch_done(size, duration, error)`` is called after every engine call that
    finished (never for a cancelled one) — wire it to a circuit breaker.
    ``breaker_status() -> (open, failures)`` feeds ``get_queue_stats``.

    Leaving the block closes the queue (queued requests get ``ShuttingDown``), gives
    running batches ``close_grace`` seconds, then cancels them (their members get
    ``ShuttingDown``).
    """
    config = BatchQueueConfig() if config is None else config
    queue: PriorityBatchQueue[T, R] = PriorityBatchQueue(
        process_batch,
        config,
        size_fn=size_fn,
        on_batch_done=on_batch_done,
        breaker_status=breaker_status,
    )
    async with trio.open_nursery() as nursery:
        # the clock's own method: cheaper than trio.current_time() on the hot path
        queue._now = trio.lowlevel.current_clock().current_time
        queue._workers_left = config.workers + (1 if config.express_level_count else 0)
        for _ in range(config.workers):
            nursery.start_soon(queue._worker)
        if config.express_level_count:
            nursery.start_soon(queue._worker, True)
        nursery.start_soon(queue._reaper)
        try:
            yield queue
        finally:
            queue.close()
            with trio.move_on_after(config.close_grace, shield=True):
                await queue._workers_done.wait()
            nursery.cancel_scope.cancel()


class AsyncRequestQueue:
    """The seed's ``AsyncRequestQueue(...)`` constructor, kept for readers of the seed.

    It holds a ``BatchQueueConfig`` (``batch_processing=False`` means batches of one);
    ``async with AsyncRequestQueue(...).open(process_batch) as queue:`` runs it.
    """

    def __init__(
        self,
        max_queue_size: int = 10000,
        priority_levels: int = 5,
        batch_processing: bool = True,
        batch_size: int = 10,
        **config: Any,
    ) -> None:
        self.config = BatchQueueConfig(
            max_queue_size=max_queue_size,
            priority_levels=priority_levels,
            max_batch_size=batch_size if batch_processing else 1,
            **config,
        )

    def open(
        self,
        process_batch: ProcessBatch[T, R],
        *,
        size_fn: Callable[[T], int] | None = None,
        on_batch_done: BatchDoneCallback | None = None,
        breaker_status: Callable[[], tuple[bool, int]] | None = None,
    ) -> AbstractAsyncContextManager[PriorityBatchQueue[T, R]]:
        """``open_batch_queue(process_batch, self.config, ...)``."""
        return open_batch_queue(
            process_batch,
            self.config,
            size_fn=size_fn,
            on_batch_done=on_batch_done,
            breaker_status=breaker_status,
        )

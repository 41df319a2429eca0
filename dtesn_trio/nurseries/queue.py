"""Priority batch queue: priority levels, batches cut when a worker frees, batch workers.

``open_batch_queue(process_batch, config)`` owns a nursery of ``config.workers`` batch
workers and one timer task.  ``await queue.submit(item, priority=p)`` queues the item on
level ``p`` and waits for that item's own result.

What a caller can rely on:

- A worker that frees takes whatever is queued, up to ``max_batch_size``, in service
  order (strict priority; a level passed over by ``max_skips`` batches goes first).  A
  lone request on an idle queue starts at once; batches form only while every worker is
  busy.  ``max_wait > 0`` opts into holding a batch that is not full (Triton's queue
  delay, see ``BatchQueueConfig``).
- Within a level: FIFO while the queue is healthy; newest first once its oldest request
  has waited ``lifo_delay`` beyond one batch and half of its deadline (adaptive LIFO).
  Stale requests expire at their deadline or timeout and are never processed.
- ``submit`` refuses at once with ``Overloaded`` when the level is full, or when the
  deadline cannot be met by the estimated start (``estimated_wait``: the requests served
  before it / the measured throughput, in items per second).

Every submit ends in exactly one way: a result, the item's error, ``Overloaded``,
``DeadlineExceeded``, ``ShuttingDown``, ``InvalidRequest`` or its own cancellation.

How it is built (the shape of trio's ``_channel.py`` and httpcore's
``connection_pool.py``): the state is one ``_Level`` record per priority (its requests
waiting for space, queued and delayed, each an ``OrderedDict`` used as a deque with O(1)
removal of a cancelled request and either end for FIFO or LIFO), the idle and busy
``_Worker`` records, and an expiry index (per level, a deque in arrival order; a heap
for the requests out of that order).  Counts are the containers' lengths.
A request's ``state`` names the container that holds it; ``_move`` is the one place that
changes it, and only ``_schedule`` moves requests.  ``_schedule(now, ...)`` is
synchronous: it applies one event (an arrival, a submitter that left, a finished batch,
close), then expires what is due, admits requests waiting for space, hands batches to
idle workers and sets the timer.  Waking a task is synchronous in Trio
(``trio.lowlevel.reschedule``, as trio's own channels do), so it wakes the tasks it
answered or fed itself rather than returning them.  ``submit``, the workers and the timer
only wait and deliver.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import trio

from dtesn_trio._checks import check_priority
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

# A request's states; the three waiting ones (below NEW) are containers of its level.
# BLOCKED: waiting for space (submit(wait=True) on a full level).  QUEUED: waiting its
# turn.  DELAYED: its "delay" timeout passed; served after its level.  NEW: being
# submitted.  RUNNING: in a worker's batch.  DONE: answered, or its submitter left.
_BLOCKED, _QUEUED, _DELAYED, _NEW, _RUNNING, _DONE = range(6)
_INF = math.inf
_EXCEPTION = itertools.repeat(BaseException)  # map(isinstance, results, _EXCEPTION)
_CHECKPOINT_EVERY = 32  # items a worker may run between two of its own checkpoints
_OUTCOMES = (
    "failed",
    "expired",
    "cancelled",
    "cancelled_running",
    "shut_down",
    "rejected_full",
    "rejected_deadline",
    "invalid",
)

_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED


class _Request(Generic[T, R]):
    # The submitter parks on the request itself (``wait_task_rescheduled``) and
    # ``_move`` reschedules it: what trio.Event does, without an Event per request.
    __slots__ = (
        "due",
        "expires",
        "item",
        "level",
        "queued_at",
        "result",
        "soft",
        "state",
        "task",
    )

    def __init__(
        self,
        item: T,
        level: _Level[T, R],
        queued_at: float,
        expires: float,
        soft: float,
    ) -> None:
        self.item = item
        self.level = level
        self.queued_at = queued_at
        self.expires = expires  # DeadlineExceeded once still waiting at this time
        self.soft = soft  # a "delay" level's timeout: DELAYED from this time
        self.due = expires if expires < soft else soft  # its next expiry or delay time
        self.state = _NEW
        # once DONE: its value, or its error (an engine never returns an exception as a
        # value: an exception instance among the results is that item's error)
        self.result: R | BaseException | None = None
        self.task: trio.lowlevel.Task | None = None  # set while its submitter is parked

    def abort(self, _: object) -> trio.lowlevel.Abort:
        # its submitter was cancelled while parked
        self.task = None
        queue = self.level.queue
        queue._schedule(queue._now(), left=self)
        return _SUCCEEDED


_Box = OrderedDict[_Request[T, R], None]


class _Level(Generic[T, R]):
    """One priority level: its requests by state, its capacity and its skip count."""

    __slots__ = (
        "blocked",
        "boxes",
        "capacity",
        "delayed",
        "expiring",
        "index_limit",
        "last_due",
        "priority",
        "queue",
        "skips",
        "waiting",
    )

    def __init__(self, queue: PriorityBatchQueue[T, R], priority: int, capacity: int) -> None:
        self.queue = queue
        self.priority = priority
        self.capacity = capacity
        self.blocked: _Box[T, R] = OrderedDict()
        self.waiting: _Box[T, R] = OrderedDict()
        self.delayed: _Box[T, R] = OrderedDict()
        # the container of each state (indexed by state; None: not held by the level)
        self.boxes = (self.blocked, self.waiting, self.delayed, None, None, None)
        self.skips = 0  # consecutive batches that passed this level over
        # an index, not a state: requests in arrival order whose ``due`` never
        # decreases along it (the level's timeout; ``last_due``: the ``due`` of the last
        # one appended, which may have left since: a bound, not its tail's);
        # ``_expire_due`` reads its head; entries of requests that left are dropped
        # from the head as requests arrive, and all at once past ``index_limit``
        self.expiring: deque[_Request[T, R]] = deque()
        self.last_due = -_INF
        self.index_limit = 2 * capacity + 1024

    @property
    def queued(self) -> int:
        return len(self.waiting) + len(self.delayed)


class _Worker(Generic[T, R]):
    """A batch worker: its batch (``None`` while idle) and its task while parked."""

    __slots__ = ("batch", "task")

    def __init__(self) -> None:
        self.batch: list[_Request[T, R]] | None = None
        self.task: trio.lowlevel.Task | None = None

    def abort(self, _: object) -> trio.lowlevel.Abort:
        self.task = None
        return _SUCCEEDED


@dataclass(frozen=True, slots=True)
class BatchQueueStatistics:
    """A snapshot of a ``PriorityBatchQueue``.

    Outcome counters count submit calls by how they ended; once the queue is closed and
    idle, ``submitted`` equals the sum of ``completed``, ``failed``, ``expired``,
    ``cancelled``, ``shut_down``, ``rejected_full``, ``rejected_deadline`` and
    ``invalid``.  ``processed`` counts items handed to the engine (including retries'
    originals once); ``cancelled_running`` is the part of ``cancelled`` whose item was
    already running (its batch went on undisturbed).  ``waiting_for_space`` counts,
    per level, the ``submit(wait=True)`` calls waiting for room (not in ``queued``);
    ``throughput`` is the measured items per second (``None`` before the first batch).
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
    waiting_for_space: tuple[int, ...] = ()
    throughput: float | None = None


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
        self._levels: tuple[_Level[T, R], ...] = tuple(
            _Level(self, i, cap) for i, cap in enumerate(config.capacities)
        )
        self._timeouts = config.timeouts
        self._starving: _Level[T, R] | None = None  # max_skips: the next batch serves it first
        self._capacity = config.total_capacity
        self._adaptive_on = config.adaptive_timeout
        self._reject = tuple(a == "reject" for a in config.actions)
        self._idle: list[_Worker[T, R]] = [_Worker() for _ in range(config.workers)]
        self._workers = list(self._idle)  # those not ended; the busy ones have a batch
        self._workers_done = trio.Event()
        # (time, seq, request): the expiry (or "delay" time) of a request that is out of
        # its level's order (an earlier deadline of its own; the expiry after a delay).
        # Entries of requests that left are dropped when they come up.
        self._expiries: list[tuple[float, int, _Request[T, R]]] = []
        self._seq = itertools.count()
        self._heap_limit = 1024
        self._due = _INF  # no waiting request expires or is delayed before this time
        self._timer_at = _INF  # the timer task wakes by then (never later than _due)
        self._timer_wakeup: trio.Event | None = None
        self._closed = False
        self._adaptive = AdaptiveTimeout(
            initial=config.adaptive_initial,
            minimum=config.adaptive_min,
            maximum=config.adaptive_max,
        )
        self._batch_ewma: float | None = None  # seconds per batch
        self._rate_ewma: float | None = None  # items per second, per worker
        self._estimate_bound = 0.0  # no estimate exceeds this: below it, submit skips one
        self._now: Callable[[], float] = trio.current_time
        self._counts = dict.fromkeys(_OUTCOMES, 0)
        self._submitted = 0
        self._completed = 0  # (the other outcomes are counted in _counts)
        self._batch_failures = 0
        self._consecutive_failures = 0
        self._batch_sizes: defaultdict[int, int] = defaultdict(int)

    # ------------------------------------------------------------------ intake

    async def submit(
        self, item: T, *, priority: int = 2, deadline: float | None = None, wait: bool = False
    ) -> R:
        """Queue ``item`` at ``priority`` (0 = highest) and return its result.

        Raises the item's own error from the engine; ``Overloaded`` at once when the
        level is full (unless ``wait=True``, which waits for space) or when ``deadline``
        (an absolute ``trio.current_time()``) cannot be met given ``estimated_wait``;
        ``DeadlineExceeded`` when the deadline or the level's reject timeout passes while
        queued (the item is then never processed); ``ShuttingDown`` once closed.  The
        timeout and deadline cover queueing only: once its batch runs, the call waits for
        the result.  Cancelled while queued, the item is dropped; cancelled while its
        batch runs, the batch is undisturbed.
        """
        self._submitted += 1
        try:
            check_priority(priority, len(self._levels))
            if deadline is not None and deadline != deadline:  # NaN
                raise InvalidRequest(
                    f"deadline must be a number (got {deadline!r})", field="deadline"
                )
        except InvalidRequest as exc:
            await self._refuse("invalid", exc)
        now = self._now()
        timeout = self._timeouts[priority]
        if timeout is None and self._adaptive_on:
            timeout = self._adaptive.value(now)
        expires = soft = _INF
        if timeout is not None:
            if self._reject[priority]:
                expires = now + timeout
            else:
                soft = now + timeout
        if deadline is not None:
            if deadline <= now:
                await self._refuse(
                    "expired",
                    DeadlineExceeded("the request's deadline had passed when it was submitted"),
                )
            expires = min(expires, deadline)
        level = self._levels[priority]
        if self._closed:
            await self._refuse("shut_down", ShuttingDown("the queue is closed"))
        if not wait and len(level.waiting) + len(level.delayed) >= level.capacity:
            await self._refuse(
                "rejected_full",
                Overloaded(
                    f"priority level {priority} is full ({level.capacity} requests)",
                    retry_after=max(self._batch_ewma or self.config.max_wait, 0.001),
                ),
            )
        if expires - now < self._estimate_bound:
            estimate = self.estimated_wait(priority)
            if now + estimate > expires:
                await self._refuse(
                    "rejected_deadline",
                    Overloaded(
                        f"the deadline cannot be met: estimated queue wait {estimate:.3f}s",
                        retry_after=estimate,
                    ),
                )
        req: _Request[T, R] = _Request(item, level, now, expires, soft)
        self._schedule(now, arrived=req)
        req.task = _current_task()
        try:
            await _wait_task_rescheduled(req.abort)
        except BaseException:
            self._counts["cancelled"] += 1
            raise
        result = req.result
        # ``req`` may outlive this call (in the expiry index until its time comes): keep
        # neither the result nor the exception alive through it -- once raised, its
        # traceback holds the frames of the caller's whole stack.
        req.result = None
        if not isinstance(result, BaseException):
            self._completed += 1
            return result  # type: ignore[return-value]
        error = result
        if isinstance(error, ShuttingDown):
            self._counts["shut_down"] += 1
        elif isinstance(error, DeadlineExceeded):
            self._counts["expired"] += 1
        else:
            self._counts["failed"] += 1
        raise error

    async def _refuse(self, outcome: str, error: BaseException) -> NoReturn:
        # A refusal still checkpoints; if that is where the caller is cancelled, the
        # submit ends as cancelled, not as the refusal (one outcome, counted once).
        try:
            await trio.lowlevel.checkpoint()
        except BaseException:
            self._counts["cancelled"] += 1
            raise
        self._counts[outcome] += 1
        raise error

    def close(self) -> None:
        """Stop intake: new and space-waiting submits get ``ShuttingDown``, and so does
        every request still queued.  Batches already running finish.  Idempotent."""
        self._schedule(self._now(), closing=True)

    # ------------------------------------------------------------------ scheduling

    def _schedule(
        self,
        now: float,
        *,
        arrived: _Request[T, R] | None = None,
        left: _Request[T, R] | None = None,
        finished: _Worker[T, R] | None = None,
        results: Sequence[R | BaseException] | None = None,
        stopping: bool = False,
        closing: bool = False,
    ) -> None:
        """Every state change of the queue, in one synchronous step.

        Applies one event -- ``arrived`` (a new request, already checked), ``left`` (its
        submitter was cancelled), ``finished`` (a worker's batch ended with ``results``,
        ``None``: it never finished; ``stopping``: the worker exits), ``closing`` --
        then expires what is due, admits requests waiting for space, hands batches to
        idle workers and sets the timer.  Wakes every task it answers or feeds.
        """
        if finished is not None:
            batch = finished.batch
            if batch is not None:
                finished.batch = None
                move = self._move
                if results is None:
                    error = ShuttingDown("the queue shut down mid-batch")
                    for req in batch:
                        move(req, _DONE, error)
                else:
                    for req, result in zip(batch, results, strict=True):
                        move(req, _DONE, result)
            elif stopping:
                self._idle.remove(finished)
            if not stopping:
                self._idle.append(finished)
            else:
                self._workers.remove(finished)
                if not self._workers:
                    self._workers_done.set()
        if left is not None:
            state = left.state
            if state == _RUNNING:
                self._counts["cancelled_running"] += 1
            elif state != _DONE:
                self._move(left, _DONE)
                if state != _BLOCKED:
                    self._admit(left.level, now)
        if arrived is not None:
            level = arrived.level
            full = level.blocked or len(level.waiting) + len(level.delayed) >= level.capacity
            self._move(arrived, _BLOCKED if full else _QUEUED)
            at = arrived.due
            if at != _INF:
                # the expiry index: entries of requests that left go from its head
                index = level.expiring
                while index and index[0].state >= _NEW:
                    index.popleft()
                if not index:
                    level.last_due = at
                if at < level.last_due:
                    self._push(at, arrived)  # out of the level's order (a shorter timeout)
                else:
                    level.last_due = at
                    index.append(arrived)
                    if len(index) > level.index_limit:
                        level.expiring = deque(r for r in index if r.state < _NEW)
                if at < self._due:
                    self._due = at
                    self._timer_by(at)
        if closing and not self._closed:
            self._closed = True
            error = ShuttingDown("the queue is shutting down")
            for level in self._levels:
                for box in (level.blocked, level.waiting, level.delayed):
                    for req in list(box):
                        self._move(req, _DONE, error)
        if now >= self._due:
            self._expire_due(now)
        idle = self._idle
        while idle:
            batch = self._cut(now)
            if batch is None:
                break
            worker = idle.pop()  # the last to free first: often the caller itself
            worker.batch = batch
            n = len(batch)
            self._batch_sizes[n] += 1
            task = worker.task
            if task is not None:
                worker.task = None
                _reschedule(task)
        if self._closed:
            for worker in idle:  # nothing is left to hand out: let them end
                task = worker.task
                if task is not None:
                    worker.task = None
                    _reschedule(task)

    def _timer_by(self, at: float) -> None:
        """Wake the timer task by ``at``: an expiry, or when a held batch is due."""
        if at < self._timer_at:
            self._timer_at = at
            wakeup = self._timer_wakeup
            if wakeup is not None:
                wakeup.set()

    def _move(
        self,
        req: _Request[T, R],
        state: int,
        result: R | BaseException | None = None,
    ) -> None:
        """The one place a request's state changes: it leaves the container of its old
        state and joins that of the new one; once DONE, with ``result`` (its value or
        its error), its submitter is woken."""
        boxes = req.level.boxes
        box = boxes[req.state]
        if box is not None:
            del box[req]
        req.state = state
        box = boxes[state]
        if box is not None:
            box[req] = None
        elif state == _DONE:
            req.result = result
            task = req.task
            if task is not None:
                req.task = None
                _reschedule(task)

    def _push(self, at: float, req: _Request[T, R]) -> None:
        heap = self._expiries
        heapq.heappush(heap, (at, next(self._seq), req))
        if len(heap) > self._heap_limit:
            self._expiries = heap = [e for e in heap if e[2].state < _NEW]
            heapq.heapify(heap)
            self._heap_limit = max(1024, 2 * len(heap))

    def _admit(self, level: _Level[T, R], now: float) -> None:
        """Move requests waiting for space into ``level`` (oldest first) while it has
        room: called wherever a queued request of the level leaves."""
        blocked = level.blocked
        while blocked and len(level.waiting) + len(level.delayed) < level.capacity:
            req = next(iter(blocked))
            self._move(req, _DELAYED if req.soft <= now else _QUEUED)

    def _expire_due(self, now: float) -> None:
        """Answer the waiting requests whose expiry has come and delay those whose
        "delay" timeout has; admit requests waiting for the room that frees."""
        due: list[_Request[T, R]] = []
        for level in self._levels:
            index = level.expiring
            while index:
                req = index[0]
                if req.state < _NEW and req.due > now:
                    break
                due.append(index.popleft())
        heap = self._expiries
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        freed = False
        for req in due:
            state = req.state
            if state >= _NEW:
                continue  # it left, ran or was answered since
            if req.expires <= now:
                if state == _BLOCKED:
                    message = "the deadline passed while waiting for queue space"
                else:
                    message = f"queued past its deadline at priority {req.level.priority}"
                    freed = True
                self._move(req, _DONE, DeadlineExceeded(message, retry_after=None))
                self._adaptive.record_failures(1)
                continue
            if state == _QUEUED:
                self._move(req, _DELAYED)
            req.due = req.expires
            if req.expires != _INF:
                self._push(req.expires, req)
        self._due = self._next_due()
        if freed:
            for level in self._levels:
                if level.blocked:
                    self._admit(level, now)

    def _next_due(self) -> float:
        """The earliest expiry or "delay" time of a waiting request (dropping the index
        entries of requests that left)."""
        at = _INF
        for level in self._levels:
            index = level.expiring
            while index and index[0].state >= _NEW:
                index.popleft()
            if index:
                at = min(at, index[0].due)
        heap = self._expiries
        while heap and heap[0][2].state >= _NEW:
            heapq.heappop(heap)
        if heap:
            at = min(at, heap[0][0])
        return at

    def _lifo(self, level: _Level[T, R], now: float) -> bool:
        """Whether ``level`` (non-empty) is served newest first: its oldest request has
        waited beyond ``lifo_delay`` plus one batch (a standing queue) and beyond half
        of its time budget (first come, first served would make every request wait
        most of its deadline).  A queue that drains well inside the deadlines, or whose
        requests have none, stays in arrival order."""
        delay = self.config.lifo_delay
        if delay is None:
            return False
        oldest = next(iter(level.waiting))
        waited = now - oldest.queued_at
        budget = oldest.expires - oldest.queued_at
        return waited > delay + (self._batch_ewma or 0.0) and 2 * waited > budget

    def _service_order(self) -> Sequence[_Level[T, R]]:
        first = self._starving
        if first is None:
            return self._levels
        return [first, *(level for level in self._levels if level is not first)]

    def _due_at(self, now: float) -> float:
        """``max_wait``: when a batch of everything queued must leave."""
        oldest = _INF
        for level in self._levels:
            for box in (level.waiting, level.delayed):
                if box:
                    oldest = min(oldest, next(iter(box)).queued_at)
        # a member's deadline comes first: leave a batch before it
        return min(oldest + self.config.max_wait, self._next_due() - (self._batch_ewma or 0.0))

    def _cut(self, now: float) -> list[_Request[T, R]] | None:
        """The next batch, moved to RUNNING (requests waiting for space take the room it
        frees); ``None`` when nothing is queued or (with ``max_wait``) the batch is not
        due yet (the timer wakes when it is)."""
        config = self.config
        max_batch = config.max_batch_size
        size_fn = self._size_fn
        batch: list[_Request[T, R]] = []
        size = 0
        order = self._levels if self._starving is None else self._service_order()
        last = None  # the level the batch filled at (None: it took everything queued)
        for level in order:
            waiting, delayed = level.waiting, level.delayed
            if not waiting and not delayed:
                continue
            front = reversed(waiting) if waiting and self._lifo(level, now) else waiting
            for box in (front, delayed):
                if size_fn is None:
                    batch.extend(itertools.islice(box, max_batch - size))
                    size = len(batch)
                else:
                    for req in box:
                        weight = size_fn(req.item)
                        if batch and size + weight > max_batch:
                            size = max_batch  # it waits first in line for the next one
                            break
                        size += weight
                        batch.append(req)
                        if size >= max_batch:
                            break
                if size >= max_batch:
                    break
            if size >= max_batch:
                last = level
                break
        if not batch:
            return None
        if config.max_wait > 0 and size < max_batch and size not in config.preferred_batch_sizes:
            if size_fn is None:  # the batch is everything queued
                due = self._due_at(now)
            else:
                due = min(r.queued_at for r in batch) + config.max_wait
                due = min(due, min(r.expires for r in batch) - (self._batch_ewma or 0.0))
            if now < due:
                self._timer_by(due)
                return None
        move = self._move
        for req in batch:
            move(req, _RUNNING)
        # The levels it took from: their requests waiting for space take the room, and
        # their skip counts start again.  A level the batch filled before reaching in
        # the service order is passed over if it has requests (``max_skips``).
        starving = None
        max_skips = config.max_skips or 0  # 0: no starvation bound
        passed = False  # past the level the batch filled at
        for level in order:
            if passed:
                if level.waiting or level.delayed:
                    level.skips += 1
                    if level.skips >= max_skips and starving is None:
                        starving = level  # the next batch serves it first
                elif level.skips:
                    level.skips = 0
                continue
            if level.skips:
                level.skips = 0
            if level.blocked:
                self._admit(level, now)
            if level is last:
                if not max_skips:
                    break
                passed = True
        self._starving = starving
        return batch

    # ------------------------------------------------------------------ estimates

    @property
    def mean_batch_duration(self) -> float | None:
        """Recent mean seconds per batch (EWMA), ``None`` before the first batch."""
        return self._batch_ewma

    @property
    def throughput(self) -> float | None:
        """Measured items per second of all workers (EWMA over completed batches),
        ``None`` before the first batch."""
        rate = self._rate_ewma
        return None if rate is None else rate * self.config.workers

    def estimated_wait(self, priority: int) -> float:
        """Estimated seconds until a request submitted now at ``priority`` starts running.

        The requests that would be served before it (every higher level's, and its own
        level's unless that level is served newest first) divided by ``throughput``;
        while every worker is busy, half a batch more.  Zero before any batch has run.
        """
        check_priority(priority, len(self._levels))
        rate = self.throughput
        if rate is None:
            return 0.0
        levels = self._levels
        ahead = sum(level.queued for level in levels[:priority])
        own = levels[priority]
        if own.waiting and not self._lifo(own, self._now()):
            ahead += len(own.waiting)
        busy = 0.0 if self._idle else 0.5 * (self._batch_ewma or 0.0)
        return ahead / rate + busy

    # ------------------------------------------------------------------ workers

    async def _work(self, worker: _Worker[T, R]) -> None:
        """A batch worker: runs the batches ``_schedule`` hands it, parks while idle."""
        budget = _CHECKPOINT_EVERY
        try:
            while True:
                batch = worker.batch
                if batch is None:
                    if self._closed:
                        return
                    worker.task = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(worker.abort)
                    budget = _CHECKPOINT_EVERY
                    continue
                # When batches are ready and the engine did not yield, the worker goes on
                # without a trip through the scheduler, but checkpoints at least once per
                # _CHECKPOINT_EVERY items.
                if budget <= 0:
                    await trio.lowlevel.checkpoint()
                    budget = _CHECKPOINT_EVERY
                budget -= len(batch)
                results = await self._process(batch)
                self._schedule(self._now(), finished=worker, results=results)
        finally:
            # Cancelled (the queue is being torn down) or KeyboardInterrupt: a batch that
            # never finished still answers its members, and gives the breaker no verdict.
            self._schedule(self._now(), finished=worker, stopping=True)

    async def _process(self, batch: list[_Request[T, R]]) -> Sequence[R | BaseException]:
        """Run ``process_batch`` on ``batch``: one result or error per member.

        When it raises, every member gets its own copy of the error, or, with
        ``retry_individually``, is run again alone: the one place a failed batch's
        inputs are retried one by one.
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
                out: list[R | BaseException] = []
                for req in batch:
                    out.extend(await self._process([req]))
                return out
            self._adaptive.record([finished - req.queued_at for req in batch], False)
            return [_clone_error(exc) for _ in batch]
        finished = now()
        self._batch_done(len(batch), finished - started, None)
        times = [finished - req.queued_at for req in batch]
        self._adaptive.record_batch(times, sum(map(isinstance, results, _EXCEPTION)))
        return results

    def _batch_done(self, size: int, duration: float, error: BaseException | None) -> None:
        ewma = self._batch_ewma
        self._batch_ewma = duration if ewma is None else 0.8 * ewma + 0.2 * duration
        if duration > 0:
            rate, ewma = size / duration, self._rate_ewma
            rate = self._rate_ewma = rate if ewma is None else 0.8 * ewma + 0.2 * rate
            bound = self._capacity / (rate * self.config.workers)
            self._estimate_bound = bound + 0.5 * self._batch_ewma
        if error is None:
            self._consecutive_failures = 0
        else:
            self._batch_failures += 1
            self._consecutive_failures += 1
        if self._on_batch_done is not None:
            self._on_batch_done(size, duration, error)

    async def _timer(self) -> None:
        """Calls ``_schedule`` when an expiry or a held batch (``max_wait``) is due."""
        while True:
            self._timer_at = _INF
            self._schedule(self._now())  # (a batch it holds back sets _timer_at)
            if self._due < self._timer_at:
                self._timer_at = self._due
            wakeup = self._timer_wakeup = trio.Event()
            with trio.move_on_at(self._timer_at):
                await wakeup.wait()

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> BatchQueueStatistics:
        """A frozen snapshot of levels, outcomes, batches and the adaptive timeout."""
        adaptive = self._adaptive.statistics(trio.current_time())
        levels = self._levels
        queued = tuple(level.queued for level in levels)
        counts = self._counts
        config = self.config
        busy = [w.batch for w in self._workers if w.batch is not None]
        sizes = self._batch_sizes
        return BatchQueueStatistics(
            priority_levels=len(levels),
            capacities=config.capacities,
            queued=queued,
            total_queued=sum(queued),
            max_queue_size=config.total_capacity,
            workers=config.workers,
            running_batches=len(busy),
            running_items=sum(len(b) for b in busy),
            submitted=self._submitted,
            completed=self._completed,
            failed=counts["failed"],
            expired=counts["expired"],
            cancelled=counts["cancelled"],
            cancelled_running=counts["cancelled_running"],
            shut_down=counts["shut_down"],
            rejected_full=counts["rejected_full"],
            rejected_deadline=counts["rejected_deadline"],
            invalid=counts["invalid"],
            processed=sum(n * count for n, count in sizes.items()),
            batches=sum(sizes.values()),
            batch_failures=self._batch_failures,
            consecutive_batch_failures=self._consecutive_failures,
            batch_sizes=tuple(sorted(sizes.items())),
            mean_batch_duration=self._batch_ewma,
            adaptive_timeout=adaptive.timeout,
            p95_response_time=adaptive.p95_response_time,
            avg_response_time=adaptive.avg_response_time,
            success_rate=adaptive.success_rate,
            max_batch_size=config.max_batch_size,
            batch_processing_enabled=config.max_batch_size > 1,
            waiting_for_space=tuple(len(level.blocked) for level in levels),
            throughput=self.throughput,
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
        for worker in list(queue._idle):
            nursery.start_soon(queue._work, worker)
        nursery.start_soon(queue._timer)
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

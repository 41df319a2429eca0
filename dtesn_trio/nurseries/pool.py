"""A connection pool that owns real connections: ``open_pool`` / ``ConnectionPool``.

The pool's nursery owns every connection and every task the pool starts (creators,
keepalive checks, closers, the maintenance task).  What a caller can rely on:

- idle connections are reused most recently used first; waiters are served FIFO, and a
  connection coming back goes straight to the first waiter, so no late-comer steals it;
- connections are made by the pool's tasks, never by the waiter, at most
  ``max_concurrent_creates`` at a time; a waiter that goes away does not waste the
  connection made for it: it goes to the next waiter or to the idle connections;
- a connection idle for more than ``validation_bypass`` (or whose user raised) is
  checked before it is handed out; a broken one is closed and the caller gets another;
- idle connections retire at their lifetime or idle timeout, are checked every
  ``keepalive_interval``, and the pool refills to ``min_connections`` with back-off.

Shape (httpcore's pool): the state lives in containers (connection records by status, the
waiting tasks in order), and ``ConnectionPool._update`` is the one synchronous function
that changes it.  It returns what to start, wake and close; the async methods around it
only wait, connect, check and close.  There is no checkpoint between a decision and its
record, so cancellation cannot leak a connection or wedge the pool.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import random
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar

import outcome
import trio

from dtesn_trio.errors import BackendUnavailable, Overloaded, ShuttingDown
from dtesn_trio.nurseries.connectors.base import Connector
from dtesn_trio.nurseries.pool_config import ConnectionPoolConfig

__all__ = ["ConnectionPool", "PoolStatistics", "open_pool"]

C = TypeVar("C")

logger = logging.getLogger("dtesn_trio.nurseries.pool")


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "closed"


class _Status(enum.IntEnum):
    """Where a connection record is; each status is one container of the pool."""

    CONNECTING = 0  # being made; not a connection yet
    IDLE = 1
    CHECKING = 2  # keepalive check in flight
    IN_USE = 3  # handed to a caller (and maybe being checked for it)
    CLOSING = 4  # out of service, being closed


class _Event(enum.Enum):
    """What ``_update`` is told: about one waiter, one record, or the pool as a whole."""

    ARRIVED = enum.auto()  # a caller wants a connection (``waiter``)
    LEFT = enum.auto()  # a parked waiter was cancelled (``waiter``)
    CONNECTED = enum.auto()  # connect() returned: ``record.conn`` is set
    CONNECT_FAILED = enum.auto()  # gave up (``record.error``) or was cancelled (None)
    CHECKED = enum.auto()  # check() passed
    CHECK_FAILED = enum.auto()
    RELEASED = enum.auto()  # the caller's block ended; reusable
    SUSPECT = enum.auto()  # the caller's block raised: check before the next use
    BROKEN = enum.auto()  # is_broken, reset failed, or cancelled mid-check or mid-reset
    CLOSED = enum.auto()  # close() returned
    TICK = enum.auto()  # the maintenance task woke: do what is due
    RESCAN = enum.auto()  # started, stopping or resized: look at every idle connection
    DRAIN = enum.auto()  # replace every connection


# Module names for the members: looking a member up on its enum class is a Python-level
# call, and _update reads them on every acquire and release.
_NEW, _STARTING, _RUNNING, _STOPPED = _State
_CONNECTING, _IDLE, _CHECKING, _IN_USE, _CLOSING = _Status
(
    _ARRIVED,
    _LEFT,
    _CONNECTED,
    _CONNECT_FAILED,
    _CHECKED,
    _CHECK_FAILED,
    _RELEASED,
    _SUSPECT,
    _BROKEN,
    _CLOSED,
    _TICK,
    _RESCAN,
    _DRAIN,
) = _Event


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of one pool.  ``open`` counts connections that exist (idle + in use +
    being checked); ``connecting`` and ``closing`` count those on their way in and out.
    ``failed_requests`` counts acquisitions that raised (``Overloaded``,
    ``BackendUnavailable``, ``ShuttingDown``); cancelled ones are counted apart."""

    backend: str
    state: str
    open: int
    idle: int
    in_use: int
    checking: int
    connecting: int
    closing: int
    waiting: int
    min_connections: int
    max_connections: int
    total_requests: int
    served_requests: int
    failed_requests: int
    cancelled_requests: int
    overloaded_requests: int
    total_wait_time: float
    connections_created: int
    connections_closed: int
    connect_failures: int
    checks_failed: int
    leaks_reported: int
    last_error: str | None

    @property
    def avg_wait_time(self) -> float:
        """Mean time an acquisition waited for its connection (seconds)."""
        return self.total_wait_time / self.served_requests if self.served_requests else 0.0

    @property
    def utilization(self) -> float:
        """Connections in use as a fraction of ``max_connections``."""
        return self.in_use / self.max_connections


class _Record(Generic[C]):
    """One connection of the pool (or one on its way): its status and its timestamps."""

    __slots__ = (
        "acquired_at",
        "conn",
        "error",
        "expires_at",
        "fill_round",
        "generation",
        "last_checked",
        "last_used",
        "leak_reported",
        "stack",
        "status",
        "suspect",
    )

    conn: C

    def __init__(self, generation: int, fill_round: int) -> None:
        self.status: _Status | None = None  # None: not (or no longer) in the pool
        self.generation = generation
        self.fill_round = fill_round  # 0: made for a waiter or at start, with retries
        self.error: BackendUnavailable | None = None
        self.last_used = self.last_checked = self.acquired_at = 0.0
        self.expires_at = math.inf
        self.stack: str | None = None
        self.leak_reported = False
        self.suspect = False


class _Checkout(Generic[C]):
    """``async with pool.connection() as conn``; see ``ConnectionPool.connection``.

    While it acquires, it is also the pool's waiter (so a checkout served at once
    allocates nothing more): ``_update`` sets its ``result``, and wakes its ``task`` with
    it when it has ``parked``."""

    __slots__ = ("_entered", "_pool", "_record", "parked", "result", "task")

    def __init__(self, pool: ConnectionPool[C]) -> None:
        self._pool = pool
        self._entered = False  # from __aenter__ until __aexit__ (or a failed acquire)
        self._record: _Record[C] | None = None
        self.task: trio.lowlevel.Task | None = None  # set when it parks
        self.result: _Record[C] | BaseException | None = None  # what it is served
        self.parked = False  # asleep in wait_task_rescheduled: wake it with its result

    async def __aenter__(self) -> C:
        # (one object is one waiter: a second task entering it while the first still
        # acquires would take the first one's place in the pool's queue)
        if self._entered:
            raise RuntimeError("this pool.connection() context is already in use")
        self._entered = True
        try:
            self._record = await self._pool._acquire(self)
        except BaseException:
            self._entered = False
            raise
        finally:
            self.task = self.result = None
        return self._record.conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        record = self._record
        self._record = None
        self._entered = False
        if record is not None:
            await self._pool._release(record, failed=exc is not None)


_Todo = list["_Record[C] | _Checkout[C]"]
_Containers = tuple[dict["_Record[C]", None], ...]


def _move(records: _Containers[C], rec: _Record[C], to: _Status | None, todo: _Todo[C]) -> None:
    """Move ``rec`` to status ``to`` (None: out of the pool); todo what that needs.

    Only ``_update`` moves records.  It writes out the two moves of the hot path (a
    checkout served from idle, a release back to idle), which need nothing done and
    cost less than this call."""
    if rec.status is not None:
        del records[rec.status][rec]
    rec.status = to
    if to is not None:
        records[to][rec] = None
        if to is not _IN_USE and to is not _IDLE:
            todo.append(rec)


def _serve(waiter: _Checkout[C], result: _Record[C] | BaseException, todo: _Todo[C]) -> None:
    waiter.result = result
    if waiter.parked:
        todo.append(waiter)


class ConnectionPool(Generic[C]):
    """A pool of connections made by ``connector``; run it with ``open_pool`` or ``run``.

    Use: ``async with pool.connection() as conn: ...``.  Statistics: ``statistics()``
    (a frozen record) and ``get_stats()`` (the seed's dictionary, built from it).
    """

    def __init__(
        self,
        connector: Connector[C],
        config: ConnectionPoolConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        for attr in ("connect", "check", "close"):
            if not callable(getattr(connector, attr, None)):
                raise TypeError(f"connector {connector!r} has no {attr}() method")
        self._connector = connector
        self._name: str = getattr(connector, "name", type(connector).__name__)
        self._config = config if config is not None else ConnectionPoolConfig()
        self._rng = rng if rng is not None else random.Random()
        self._reset: Callable[[C], Awaitable[None]] | None = getattr(connector, "reset", None)
        self._is_broken: Callable[[C], bool] | None = getattr(connector, "is_broken", None)
        self._create_limiter = trio.CapacityLimiter(self._config.max_concurrent_creates)
        self._state = _NEW
        self._nursery: trio.Nursery | None = None  # set while RUNNING, and only then
        self._now: Callable[[], float] = trio.current_time

        # The state: one container per status (insertion order: the last idle one is
        # the most recently used), the waiters in order, and the schedule.
        self._records: _Containers[C] = tuple({} for _ in _Status)
        self._waiters: OrderedDict[_Checkout[C], None] = OrderedDict()
        self._generation = 0
        self._scan_at = -math.inf  # when _update next looks at every idle connection
        self._maintenance: trio.CancelScope | None = None  # sleeps until _scan_at
        self._next_fill_at = -math.inf
        self._fill_failures = 0
        self._fill_round = 0
        self._fill_round_failed = False
        # An idle connection's next scan comes no sooner after its last use than this
        # (resize changes the bounds only).
        cfg = self._config
        self._idle_gap = min(
            cfg.keepalive_interval if cfg.enable_keepalive else math.inf,
            math.inf if cfg.idle_timeout is None else cfg.idle_timeout,
        )

        self._total_requests = 0
        self._served = 0
        self._failed = 0
        self._cancelled = 0
        self._overloaded = 0
        self._total_wait = 0.0
        self._created = 0
        self._closed_count = 0
        self._connect_failures = 0
        self._checks_failed = 0
        self._leaks = 0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> ConnectionPoolConfig:
        return self._config

    @property
    def name(self) -> str:
        return self._name

    def connection(self) -> _Checkout[C]:
        """Borrow a connection for the ``async with`` block; it returns to the pool after.

        Waits FIFO for a connection, bounded by the caller's cancel scope and by
        ``acquire_timeout``.  Raises ``Overloaded`` when ``max_waiting`` callers already
        wait, or when ``acquire_timeout`` passes while every connection is in use and the
        backend is healthy (the pool is saturated); ``BackendUnavailable`` when the
        connection made for this caller failed after its retries, or when
        ``acquire_timeout`` passes while the pool cannot make connections; and
        ``ShuttingDown`` when the pool is not running.  If the block raises, the
        connection is checked before its next use (or discarded, when the connector's
        ``is_broken`` says so).
        """
        return _Checkout(self)

    async def run(
        self, *, task_status: trio.TaskStatus[ConnectionPool[C]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the pool in the caller's nursery: ``pool = await nursery.start(pool.run)``.

        Opens ``min_connections`` connections (at most ``max_concurrent_creates`` at a
        time) and reports started when they are ready; raises ``BackendUnavailable``
        (naming the backend and the last error) if one cannot be opened after its
        retries.  Runs until cancelled; then closes every connection within
        ``close_grace``.  A pool runs once.
        """
        if self._state is not _NEW:
            raise RuntimeError(f"pool {self._name!r} has already run")
        self._state = _STARTING
        # the clock's own method: cheaper than trio.current_time() on every acquire
        self._now = trio.lowlevel.current_clock().current_time
        leftover: list[_Record[C]] = []
        try:
            await self._open_initial()
            async with trio.open_nursery() as nursery:
                self._state = _RUNNING
                self._nursery = nursery
                try:
                    self._apply(self._update(trio.current_time(), _RESCAN))
                    nursery.start_soon(self._maintain)
                    task_status.started(self)
                    await trio.sleep_forever()
                finally:
                    # Before the nursery can close to new tasks: from here on whoever
                    # gives a connection up closes it itself.
                    leftover = self._stop()
                    nursery.cancel_scope.cancel()
        finally:
            leftover += self._stop()
            with trio.move_on_after(self._config.close_grace, shield=True):
                await self._close_all(leftover)

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's state and counters."""
        cfg = self._config
        n = [len(records) for records in self._records]
        return PoolStatistics(
            backend=self._name,
            state=self._state.value,
            open=n[_IDLE] + n[_IN_USE] + n[_CHECKING],
            idle=n[_IDLE],
            in_use=n[_IN_USE],
            checking=n[_CHECKING],
            connecting=n[_CONNECTING],
            closing=n[_CLOSING],
            waiting=len(self._waiters),
            min_connections=cfg.min_connections,
            max_connections=cfg.max_connections,
            total_requests=self._total_requests,
            served_requests=self._served,
            failed_requests=self._failed,
            cancelled_requests=self._cancelled,
            overloaded_requests=self._overloaded,
            total_wait_time=self._total_wait,
            connections_created=self._created,
            connections_closed=self._closed_count,
            connect_failures=self._connect_failures,
            checks_failed=self._checks_failed,
            leaks_reported=self._leaks,
            last_error=self._last_error,
        )

    def get_stats(self) -> dict[str, Any]:
        """The seed's pool statistics, current at the time of the call."""
        s = self.statistics()
        return {
            "active_connections": s.in_use,
            "idle_connections": s.idle,
            "total_requests": s.total_requests,
            "failed_requests": s.failed_requests,
            "avg_response_time": s.avg_wait_time,
            "pool_utilization": s.utilization,
            "last_updated": time.time(),
        }

    def resize(self, min_connections: int, max_connections: int) -> None:
        """Change the pool's bounds now.  Idle connections above the new maximum close at
        once; connections in use above it close when they come back."""
        self._config = dataclasses.replace(
            self._config, min_connections=min_connections, max_connections=max_connections
        )
        if self._state is _RUNNING:
            self._apply(self._update(trio.current_time(), _RESCAN))

    async def drain(self) -> None:
        """Replace every connection: idle ones are closed now (this waits for that),
        those in use when they come back; the pool refills to ``min_connections``."""
        todo = self._update(trio.current_time(), _DRAIN)
        with trio.move_on_after(self._config.close_grace, shield=True):
            await self._close_all(self._apply(todo, close_here=True))
        await trio.lowlevel.checkpoint()

    # ---------------------------------------------------------------- the state

    def _update(
        self,
        now: float,
        event: _Event,
        record: _Record[C] | None = None,
        waiter: _Checkout[C] | None = None,
    ) -> _Todo[C]:
        """Every change of the pool's state, at ``now``: what ``event`` means for
        ``waiter`` or ``record``, the retirement, checks and refill that are due (all of
        them on RESCAN and DRAIN), and hand-offs to waiters.  Returns what to do: records
        CONNECTING to connect, CHECKING to check, CLOSING to close, and parked waiters
        whose ``result`` is set, to wake.  An ARRIVED waiter reads its ``result`` on
        return: a connection, an error, or None (it waits).

        Arguments are positional and the events most frequent first: this runs twice
        for every checkout."""
        cfg = self._config
        recs = self._records
        idle = recs[_IDLE]
        waiters = self._waiters
        todo: _Todo[C] = []
        rescan = False

        if event is _ARRIVED:
            assert waiter is not None
            if self._state is not _RUNNING:
                waiter.result = ShuttingDown(
                    f"{self._name} pool is not running ({self._state.value})"
                )
            elif idle and not waiters:
                # The common case: the most recently used connection.
                rec = idle.popitem()[0]
                recs[_IN_USE][rec] = None
                rec.status = _IN_USE
                waiter.result = rec
            elif cfg.max_waiting is not None and len(waiters) >= cfg.max_waiting:
                self._overloaded += 1
                waiter.result = Overloaded(
                    f"{self._name} pool: {len(waiters)} callers already wait for a connection"
                    f" (pool.max_waiting={cfg.max_waiting})",
                    retry_after=self._retry_after(),
                )
            else:
                waiter.result = None
                waiter.parked = False
                waiters[waiter] = None
        elif event is _LEFT:
            # From the waiter's abort callback, which has no todo to apply: only forget
            # the waiter.  What is due stays the maintenance task's, and no hand-off or
            # connect can be owed to the waiters that remain.
            assert waiter is not None
            waiters.pop(waiter, None)
            return todo
        elif record is not None:
            reusable = False
            if event is _RELEASED or event is _SUSPECT:
                record.last_used = now
                record.stack = None
                record.suspect = event is _SUSPECT
                reusable = True
            elif event is _CLOSED:
                _move(recs, record, None, todo)
                self._closed_count += 1
                rescan = True
            elif event is _CONNECT_FAILED:
                _move(recs, record, None, todo)
                exc = record.error
                # The first failure of the current refill round backs the next one off.
                if (
                    exc is not None
                    and record.fill_round
                    and record.fill_round == self._fill_round
                    and not self._fill_round_failed
                ):
                    self._fill_round_failed = True
                    delay = min(cfg.reconnect_max_delay, cfg.retry_delay * 2**self._fill_failures)
                    self._fill_failures += 1
                    self._next_fill_at = now + self._jitter(delay)
                if exc is not None and len(waiters) > len(recs[_CONNECTING]):
                    _serve(waiters.popitem(last=False)[0], BackendUnavailable(exc.message), todo)
                rescan = True
            elif event is _CONNECTED:
                lifetime = math.inf
                if cfg.max_lifetime is not None:
                    lifetime = cfg.max_lifetime * (1 - cfg.lifetime_jitter * self._rng.random())
                record.last_used = record.last_checked = now
                record.expires_at = now + lifetime
                self._created += 1
                self._last_error = None
                self._fill_failures = 0
                self._next_fill_at = -math.inf
                reusable = True
            elif event is _CHECKED:
                record.last_checked = now
                record.suspect = False
                reusable = record.status is _CHECKING  # else checked for its caller
            else:  # CHECK_FAILED or BROKEN
                if event is _CHECK_FAILED:
                    self._checks_failed += 1
                _move(recs, record, _CLOSING, todo)
                rescan = True
            if reusable:
                n_open = len(idle) + len(recs[_IN_USE]) + len(recs[_CHECKING])
                if (
                    self._state is _STOPPED
                    or record.generation != self._generation
                    or record.expires_at <= now
                    or n_open + len(recs[_CONNECTING]) > cfg.max_connections
                ):
                    _move(recs, record, _CLOSING, todo)
                    rescan = True
                elif waiters:
                    _move(recs, record, _IN_USE, todo)
                    _serve(waiters.popitem(last=False)[0], record, todo)
                else:
                    assert record.status is not None
                    del recs[record.status][record]
                    idle[record] = None
                    record.status = _IDLE
                    # (its next scan is no sooner than its expiry or this, see _due)
                    if (
                        record.expires_at < self._scan_at
                        or record.last_used + self._idle_gap < self._scan_at
                    ):
                        due = self._due(record, n_open > cfg.min_connections)
                        if due < self._scan_at:
                            self._wake_at(due)

        elif event is _DRAIN:
            self._generation += 1
            rescan = True
        else:
            rescan = event is _RESCAN

        if rescan or now >= self._scan_at:
            while waiters and self._state is _STOPPED:
                _serve(
                    waiters.popitem(last=False)[0],
                    ShuttingDown(f"{self._name} pool is closing"),
                    todo,
                )
            deadline = math.inf
            surplus = self._open() - cfg.min_connections
            excess = self._total() - cfg.max_connections
            # Oldest first, so the idle timeout retires the longest-unused connections.
            for rec in list(idle):
                retire = (
                    self._state is _STOPPED
                    or excess > 0
                    or now >= rec.expires_at
                    or rec.generation != self._generation
                    or (
                        cfg.idle_timeout is not None
                        and surplus > 0
                        and now >= rec.last_used + cfg.idle_timeout
                    )
                )
                if retire:
                    _move(recs, rec, _CLOSING, todo)
                    surplus -= 1
                    excess -= 1
                elif (
                    cfg.enable_keepalive
                    and now >= max(rec.last_used, rec.last_checked) + cfg.keepalive_interval
                ):
                    _move(recs, rec, _CHECKING, todo)
                else:
                    deadline = min(deadline, self._due(rec, surplus > 0))
            threshold = cfg.leak_detection_threshold
            if threshold is not None:
                for rec in recs[_IN_USE]:
                    if rec.stack is None or rec.leak_reported:
                        continue
                    if now < rec.acquired_at + threshold:
                        deadline = min(deadline, rec.acquired_at + threshold)
                        continue
                    rec.leak_reported = True
                    self._leaks += 1
                    logger.warning(
                        "%s: a connection has been held for %.3fs (more than"
                        " pool.leak_detection_threshold=%gs); acquired at:\n%s",
                        self._name,
                        now - rec.acquired_at,
                        threshold,
                        rec.stack,
                    )
            missing = cfg.min_connections - self._total()
            running = self._state is _RUNNING
            # Starting, the pool makes min_connections once (run() fails if one fails).
            first = self._state is _STARTING and self._fill_round == 0
            if missing > 0 and (running or first):
                if now >= self._next_fill_at:
                    self._fill_round += 1
                    self._fill_round_failed = False
                    fill_round = self._fill_round if running else 0
                    for _ in range(missing):
                        _move(recs, _Record(self._generation, fill_round), _CONNECTING, todo)
                else:
                    deadline = min(deadline, self._next_fill_at)
            self._scan_at = math.inf
            self._wake_at(deadline)

        # Hand idle connections to waiters in order; make connections for the rest.
        if waiters:
            while waiters and idle:
                rec = next(reversed(idle))
                _move(recs, rec, _IN_USE, todo)
                _serve(waiters.popitem(last=False)[0], rec, todo)
            if self._state is _RUNNING and len(waiters) > len(recs[_CONNECTING]):
                n = min(len(waiters) - len(recs[_CONNECTING]), cfg.max_connections - self._total())
                for _ in range(n):
                    _move(recs, _Record(self._generation, 0), _CONNECTING, todo)
        return todo

    def _total(self) -> int:
        """Connections counted against ``max_connections``: open ones and those coming."""
        return self._open() + len(self._records[_CONNECTING])

    def _open(self) -> int:
        r = self._records
        return len(r[_IDLE]) + len(r[_IN_USE]) + len(r[_CHECKING])

    def _due(self, rec: _Record[C], retirable: bool) -> float:
        """When an idle ``rec`` next needs the maintenance scan."""
        cfg = self._config
        due = rec.expires_at
        if cfg.enable_keepalive:
            due = min(due, max(rec.last_used, rec.last_checked) + cfg.keepalive_interval)
        if retirable and cfg.idle_timeout is not None:
            due = min(due, rec.last_used + cfg.idle_timeout)
        return due

    def _wake_at(self, deadline: float) -> None:
        """Bring the next maintenance scan forward to ``deadline``."""
        if deadline < self._scan_at:
            self._scan_at = deadline
            if self._maintenance is not None:
                self._maintenance.deadline = deadline

    def _apply(self, todo: _Todo[C], *, close_here: bool = False) -> list[_Record[C]]:
        """Wake the waiters ``_update`` served and start its connects, checks and closes
        in the pool's nursery; return the records to close that the caller must close
        itself: all of them when ``close_here`` or when the pool is not running (its
        nursery may be closed to new tasks)."""
        leftover: list[_Record[C]] = []
        nursery = self._nursery
        for item in todo:
            if isinstance(item, _Checkout):
                r = item.result
                assert r is not None
                assert item.task is not None
                trio.lowlevel.reschedule(
                    item.task,
                    outcome.Error(r) if isinstance(r, BaseException) else outcome.Value(r),
                )
            elif item.status is _CLOSING and (close_here or nursery is None):
                leftover.append(item)
            else:
                # Only a running pool (whose nursery is open) connects or checks.
                assert nursery is not None
                if item.status is _CONNECTING:
                    nursery.start_soon(self._create, item)
                elif item.status is _CHECKING:
                    nursery.start_soon(self._check, item)
                else:
                    nursery.start_soon(self._close_one, item)
        return leftover

    def _stop(self) -> list[_Record[C]]:
        """Stop taking work: fail the waiters, give up the idle connections (returned,
        to be closed by the caller)."""
        self._state = _STOPPED
        self._nursery = None
        return self._apply(self._update(trio.current_time(), _RESCAN))

    async def _settle(self, record: _Record[C], event: _Event) -> None:
        """Report ``event`` on ``record``; close here what the pool's nursery cannot."""
        todo = self._update(self._now(), event, record)
        if todo and (leftover := self._apply(todo)):
            with trio.move_on_after(self._config.close_grace, shield=True):
                await self._close_all(leftover)

    # ------------------------------------------------------------- acquire / release

    async def _acquire(self, waiter: _Checkout[C]) -> _Record[C]:
        self._total_requests += 1
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            start = now = self._now()
            while True:
                todo = self._update(now, _ARRIVED, None, waiter)
                if todo:
                    self._apply(todo)
                result = waiter.result
                if result is None:
                    record = await self._wait(waiter, start)
                    now = self._now()
                elif isinstance(result, BaseException):
                    raise result
                else:
                    record = result
                    # Like CapacityLimiter.acquire: the connection is ours, so this yield
                    # must not be a place where cancellation can strand it.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                if (
                    record.suspect or now - record.last_used > self._config.validation_bypass
                ) and not await self._check(record):
                    now = self._now()
                    continue
                record.acquired_at = now
                threshold = self._config.leak_detection_threshold
                if threshold is not None:
                    record.stack = "".join(traceback.format_stack()[:-2])
                    record.leak_reported = False
                    self._wake_at(now + threshold)
                self._served += 1
                self._total_wait += now - start
                return record
        except trio.Cancelled:
            self._cancelled += 1
            raise
        except (Overloaded, BackendUnavailable, ShuttingDown):
            self._failed += 1
            raise

    async def _wait(self, waiter: _Checkout[C], start: float) -> _Record[C]:
        def abort(_: Any) -> trio.lowlevel.Abort:
            # Runs synchronously when the cancel arrives, so no hand-off can reach a
            # waiter that has gone.
            self._update(trio.current_time(), _LEFT, None, waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        waiter.task = trio.lowlevel.current_task()
        waiter.parked = True
        timeout = self._config.acquire_timeout
        with trio.move_on_at(math.inf if timeout is None else start + timeout):
            record: _Record[C] = await trio.lowlevel.wait_task_rescheduled(abort)
            return record
        raise self._timeout_error(trio.current_time() - start)

    def _timeout_error(self, waited: float) -> BackendUnavailable | Overloaded:
        busy = len(self._records[_IN_USE]) + len(self._records[_CHECKING])
        if self._last_error is None and busy >= self._config.max_connections:
            self._overloaded += 1
            return Overloaded(
                f"{self._name} pool: all {busy} connections stayed in use for"
                f" {waited:g}s (pool.acquire_timeout)",
                retry_after=self._retry_after(),
            )
        return BackendUnavailable(
            f"{self._name}: no connection within {waited:g}s (pool.acquire_timeout);"
            f" last error: {self._last_error or 'none (connecting is slow)'}"
        )

    def _retry_after(self) -> float:
        return self._config.validation_bypass or 0.1

    async def _check(self, record: _Record[C]) -> bool:
        """Check ``record``, in use by us (on checkout) or by keepalive, and report the
        result; False when it failed and was given up."""
        try:
            with trio.fail_after(self._config.validation_timeout):
                await self._connector.check(record.conn)
        except Exception as exc:
            logger.debug("%s: connection failed its check: %r", self._name, exc)
            if record.status is _CHECKING:  # idle: the backend may be failing
                self._last_error = f"{type(exc).__name__}: {exc}"
            await self._settle(record, _CHECK_FAILED)
            return False
        except BaseException:
            await self._settle(record, _BROKEN)  # cancelled mid-check: unknown state
            raise
        await self._settle(record, _CHECKED)
        return True

    async def _release(self, record: _Record[C], *, failed: bool) -> None:
        broken = self._is_broken is not None and self._is_broken(record.conn)
        if self._reset is not None and not broken:
            try:
                await self._reset(record.conn)
            except BaseException as exc:
                await self._settle(record, _BROKEN)
                if not isinstance(exc, Exception):
                    raise
                logger.debug("%s: reset failed, connection discarded: %r", self._name, exc)
                return
        if broken:
            event = _BROKEN
        elif failed and self._is_broken is None:
            event = _SUSPECT
        else:
            event = _RELEASED
        # _settle, inlined: this is every release's path.
        todo = self._update(self._now(), event, record)
        if todo and (leftover := self._apply(todo)):
            with trio.move_on_after(self._config.close_grace, shield=True):
                await self._close_all(leftover)

    # ------------------------------------------------------- connect, check, close

    async def _create(self, record: _Record[C]) -> None:
        attempts = 1 if record.fill_round else 1 + self._config.max_retries
        try:
            record.conn = await self._connect(attempts)
        except BackendUnavailable as exc:
            record.error = exc
            await self._settle(record, _CONNECT_FAILED)
            return
        except BaseException:
            await self._settle(record, _CONNECT_FAILED)
            raise
        await self._settle(record, _CONNECTED)

    async def _connect(self, attempts: int) -> C:
        cfg = self._config
        last: BaseException | None = None
        for i in range(attempts):
            if i:
                await trio.sleep(self._jitter(cfg.retry_delay * 2 ** (i - 1)))
            try:
                async with self._create_limiter:
                    with trio.fail_after(cfg.connection_timeout):
                        return await self._connector.connect()
            except trio.TooSlowError:
                last = TimeoutError(
                    f"connect took longer than {cfg.connection_timeout:g}s"
                    " (pool.connection_timeout)"
                )
            except Exception as exc:
                last = exc
            self._connect_failures += 1
            self._last_error = f"{type(last).__name__}: {last}"
        raise BackendUnavailable(
            f"{self._name}: could not connect after {attempts} attempt(s);"
            f" last error: {self._last_error}"
        ) from last

    def _jitter(self, delay: float) -> float:
        j = self._config.backoff_jitter
        return delay * (1 + j * (2 * self._rng.random() - 1)) if j else delay

    async def _open_initial(self) -> None:
        failed: list[_Record[C]] = []

        async def one(record: _Record[C], cancel_scope: trio.CancelScope) -> None:
            await self._create(record)
            if record.error is not None:
                failed.append(record)
                cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for record in self._update(trio.current_time(), _RESCAN):
                assert isinstance(record, _Record)
                nursery.start_soon(one, record, nursery.cancel_scope)
        if failed:
            error = failed[0].error
            assert error is not None
            raise BackendUnavailable(
                f"{self._name} pool could not start: {error.message}"
            ) from error

    async def _close_all(self, records: list[_Record[C]]) -> None:
        if records:
            async with trio.open_nursery() as nursery:
                for record in records:
                    nursery.start_soon(self._close_one, record)

    async def _close_one(self, record: _Record[C]) -> None:
        with trio.move_on_after(self._config.close_grace, shield=True):
            try:
                await self._connector.close(record.conn)
            except Exception as exc:
                logger.debug("%s: error closing a connection: %r", self._name, exc)
            finally:
                await self._settle(record, _CLOSED)

    async def _maintain(self) -> None:
        while True:
            with trio.move_on_at(self._scan_at) as self._maintenance:
                await trio.sleep_forever()
            self._maintenance = None
            self._apply(self._update(trio.current_time(), _TICK))


@asynccontextmanager
async def open_pool(
    connector: Connector[C],
    config: ConnectionPoolConfig | None = None,
    *,
    rng: random.Random | None = None,
) -> AsyncIterator[ConnectionPool[C]]:
    """Run a ``ConnectionPool`` for the ``async with`` block.

    Entry waits until ``min_connections`` are open (or raises ``BackendUnavailable``);
    exit, however the block ends, closes every connection within ``close_grace``.
    Exceptions from the block propagate as they are (not wrapped in a group).
    """
    pool = ConnectionPool(connector, config, rng=rng)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            try:
                yield pool
            finally:
                nursery.cancel_scope.cancel()
    except* BaseException as group:
        # Besides cancellation (delivered again at the caller's next checkpoint), only
        # the block or the start raise here: one error of theirs goes out unwrapped.
        errors = group.split(trio.Cancelled)[1]
        raise errors.exceptions[0] if errors and len(errors.exceptions) == 1 else group from None

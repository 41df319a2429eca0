"""A connection pool that owns real connections: ``open_pool`` / ``ConnectionPool``.

The pool's nursery owns every connection and every task the pool starts (creators,
keepalive checks, closers, the maintenance task).  All state changes are synchronous
methods, so there is never a checkpoint between "taken from the pool" and "recorded as
taken"; that is what keeps cancellation from leaking or wedging it (asyncpg #467,
httpcore #1093, psycopg #1401).

Design, after HikariCP / psycopg_pool / httpcore:

- idle connections are a LIFO stack (most recently used first); waiters are FIFO and a
  released connection is handed directly to the first waiter (``reschedule``), so no
  late-comer can steal it;
- connections are created by tasks of the pool, never by the waiter, at most
  ``max_concurrent_creates`` at a time; a waiter that goes away does not waste the
  connection created for it: it goes to the next waiter or to the idle stack;
- a connection idle for more than ``validation_bypass`` is checked before it is handed
  out; a broken one is discarded and the caller gets another;
- one maintenance task sleeps until the next deadline (idle timeout, lifetime,
  keepalive, leak report, refill back-off) and is woken early only when a state change
  moves that deadline.
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
    CLOSED = "closed"


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


class _Entry(Generic[C]):
    __slots__ = (
        "acquired_at",
        "conn",
        "created_at",
        "expires_at",
        "generation",
        "last_checked",
        "last_used",
        "leak_reported",
        "stack",
        "suspect",
    )

    def __init__(self, conn: C, now: float, expires_at: float, generation: int) -> None:
        self.conn = conn
        self.created_at = now
        self.expires_at = expires_at
        self.last_used = now
        self.last_checked = now
        self.generation = generation
        self.acquired_at = 0.0
        self.stack: str | None = None
        self.leak_reported = False
        self.suspect = False


class _Checkout(Generic[C]):
    """``async with pool.connection() as conn``; see ``ConnectionPool.connection``."""

    __slots__ = ("_entry", "_pool")

    def __init__(self, pool: ConnectionPool[C]) -> None:
        self._pool = pool
        self._entry: _Entry[C] | None = None

    async def __aenter__(self) -> C:
        if self._entry is not None:
            raise RuntimeError("this pool.connection() context is already in use")
        self._entry = await self._pool._acquire()
        return self._entry.conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        self._entry = None
        if entry is not None:
            await self._pool._return(entry, failed=exc is not None)


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
        self._state = _State.NEW
        self._nursery: trio.Nursery | None = None
        self._create_limiter = trio.CapacityLimiter(self._config.max_concurrent_creates)

        self._idle: list[_Entry[C]] = []  # LIFO: the end is the most recently used
        self._in_use: set[_Entry[C]] = set()
        self._checking: set[_Entry[C]] = set()
        self._waiters: OrderedDict[trio.lowlevel.Task, None] = OrderedDict()
        self._connecting = 0
        self._closing = 0
        self._generation = 0

        self._maint_wake = trio.Event()
        self._maint_deadline = -math.inf
        self._next_fill_at = -math.inf
        self._fill_failures = 0
        self._fill_round = 0
        self._fill_round_failed = False

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
        if self._state is not _State.NEW:
            raise RuntimeError(f"pool {self._name!r} has already run")
        self._state = _State.STARTING
        try:
            await self._open_initial()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    self._state = _State.RUNNING
                    nursery.start_soon(self._maintain)
                    task_status.started(self)
                    await trio.sleep_forever()
                finally:
                    # From here no new acquisition starts; tasks still running finish
                    # or are cancelled, and may still start closers in this nursery.
                    self._state = _State.CLOSED
                    self._fail_all_waiters()
                    nursery.cancel_scope.cancel()
        finally:
            self._state = _State.CLOSED  # also when the initial fill failed
            self._nursery = None
            idle, self._idle = self._idle, []
            self._closing += len(idle)
            with trio.move_on_after(self._config.close_grace, shield=True):
                async with trio.open_nursery() as closers:
                    for entry in idle:
                        closers.start_soon(self._close_entry, entry)

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's state and counters."""
        cfg = self._config
        return PoolStatistics(
            backend=self._name,
            state=self._state.value,
            open=len(self._idle) + len(self._in_use) + len(self._checking),
            idle=len(self._idle),
            in_use=len(self._in_use),
            checking=len(self._checking),
            connecting=self._connecting,
            closing=self._closing,
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
        if self._state is not _State.RUNNING:
            return
        excess = self._total() - max_connections
        while excess > 0 and self._idle:
            self._discard(self._idle.pop(0))
            excess -= 1
        self._spawn_creators()
        self._poke()

    async def drain(self) -> None:
        """Replace every connection: idle ones are closed now (this waits for that),
        those in use when they come back; the pool refills to ``min_connections``."""
        self._generation += 1
        idle, self._idle = self._idle, []
        self._closing += len(idle)
        try:
            with trio.move_on_after(self._config.close_grace, shield=True):
                async with trio.open_nursery() as closers:
                    for entry in idle:
                        closers.start_soon(self._close_entry, entry)
        finally:
            self._spawn_creators()
            self._poke()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------- acquire / return

    async def _acquire(self) -> _Entry[C]:
        self._total_requests += 1
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            start = trio.current_time()
            while True:
                if self._state is not _State.RUNNING:
                    raise ShuttingDown(f"{self._name} pool is not running ({self._state.value})")
                if self._idle and not self._waiters:
                    entry = self._idle.pop()
                    self._in_use.add(entry)
                    # Like CapacityLimiter.acquire: the entry is ours, so this yield must
                    # not be a place where cancellation can strand it.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    now = start
                else:
                    entry = await self._wait(start)
                    now = trio.current_time()
                if (
                    entry.suspect or now - entry.last_used > self._config.validation_bypass
                ) and not await self._validate(entry):
                    continue
                entry.acquired_at = now
                threshold = self._config.leak_detection_threshold
                if threshold is not None:
                    entry.stack = "".join(traceback.format_stack()[:-2])
                    entry.leak_reported = False
                    if now + threshold < self._maint_deadline:
                        self._poke()
                self._served += 1
                self._total_wait += now - start
                return entry
        except trio.Cancelled:
            self._cancelled += 1
            raise
        except (Overloaded, BackendUnavailable, ShuttingDown):
            self._failed += 1
            raise

    async def _wait(self, start: float) -> _Entry[C]:
        cfg = self._config
        if cfg.max_waiting is not None and len(self._waiters) >= cfg.max_waiting:
            self._overloaded += 1
            raise Overloaded(
                f"{self._name} pool: {len(self._waiters)} callers already wait for a connection"
                f" (pool.max_waiting={cfg.max_waiting})",
                retry_after=self._retry_after(),
            )
        task = trio.lowlevel.current_task()
        self._waiters[task] = None
        self._spawn_creators()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Runs synchronously when the cancel arrives, so no hand-off can reach a
            # waiter that has gone.
            self._waiters.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        if cfg.acquire_timeout is None:
            entry: _Entry[C] = await trio.lowlevel.wait_task_rescheduled(abort)
            return entry
        with trio.move_on_at(start + cfg.acquire_timeout):
            entry = await trio.lowlevel.wait_task_rescheduled(abort)
            return entry
        raise self._timeout_error(cfg.acquire_timeout)

    def _timeout_error(self, waited: float) -> BackendUnavailable | Overloaded:
        busy = len(self._in_use) + len(self._checking)
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

    async def _validate(self, entry: _Entry[C]) -> bool:
        """Check ``entry`` (in use by us); on failure discard it and return False."""
        try:
            with trio.fail_after(self._config.validation_timeout):
                await self._connector.check(entry.conn)
        except Exception as exc:
            self._checks_failed += 1
            self._in_use.discard(entry)
            leftover = self._discard(entry)
            logger.debug("%s: connection failed its check: %r", self._name, exc)
            if leftover is not None:
                await self._close_entry(leftover)
            return False
        except BaseException:
            # Cancelled mid-check: the connection's state is unknown.
            self._in_use.discard(entry)
            leftover = self._discard(entry)
            if leftover is not None:
                await self._close_entry(leftover)
            raise
        entry.last_checked = trio.current_time()
        entry.suspect = False
        return True

    async def _return(self, entry: _Entry[C], *, failed: bool) -> None:
        entry.stack = None
        if self._reset is not None and not (
            self._is_broken is not None and self._is_broken(entry.conn)
        ):
            try:
                await self._reset(entry.conn)
            except BaseException as exc:
                self._in_use.discard(entry)
                leftover = self._discard(entry)
                if leftover is not None:
                    await self._close_entry(leftover)
                if not isinstance(exc, Exception):
                    raise
                logger.debug("%s: reset failed, connection discarded: %r", self._name, exc)
                return
        self._in_use.discard(entry)
        if self._is_broken is not None:
            if self._is_broken(entry.conn):
                leftover = self._discard(entry)
                if leftover is not None:
                    await self._close_entry(leftover)
                return
        elif failed:
            entry.suspect = True
        now = entry.last_used = trio.current_time()
        leftover = self._reinstate(entry, now)
        if leftover is not None:
            await self._close_entry(leftover)

    # ------------------------------------------------------------ state transitions

    def _total(self) -> int:
        return len(self._idle) + len(self._in_use) + len(self._checking) + self._connecting

    def _reinstate(self, entry: _Entry[C], now: float) -> _Entry[C] | None:
        """Put a connection we hold back into service, or discard it."""
        cfg = self._config
        total = len(self._idle) + len(self._in_use) + len(self._checking) + self._connecting
        if (
            self._state is not _State.RUNNING
            or entry.generation != self._generation
            or entry.expires_at <= now
            or total >= cfg.max_connections
        ):
            return self._discard(entry)
        self._hand_off(entry)
        # Wake the maintenance task only if this connection is due before it would wake.
        due = entry.expires_at
        if cfg.enable_keepalive:
            due = min(due, max(entry.last_used, entry.last_checked) + cfg.keepalive_interval)
        if cfg.idle_timeout is not None and total >= cfg.min_connections:
            due = min(due, entry.last_used + cfg.idle_timeout)
        if due < self._maint_deadline:
            self._poke()
        return None

    def _hand_off(self, entry: _Entry[C]) -> None:
        if self._waiters:
            task, _ = self._waiters.popitem(last=False)
            self._in_use.add(entry)
            trio.lowlevel.reschedule(task, outcome.Value(entry))
        else:
            self._idle.append(entry)

    def _discard(self, entry: _Entry[C]) -> _Entry[C] | None:
        """Take ``entry`` (already out of every set) out of service and close it in the
        pool's nursery; when that nursery is gone, return it for the caller to close."""
        self._closing += 1
        self._spawn_creators()
        self._poke()
        if self._nursery is not None:
            try:
                self._nursery.start_soon(self._close_entry, entry)
            except RuntimeError:
                # The pool's nursery closed (trio closes it to new tasks before its
                # parent resumes); the caller, an async context, closes it instead.
                return entry
            return None
        return entry

    async def _close_entry(self, entry: _Entry[C]) -> None:
        try:
            with trio.move_on_after(self._config.close_grace, shield=True):
                await self._connector.close(entry.conn)
        except Exception as exc:
            logger.debug("%s: error closing a connection: %r", self._name, exc)
        finally:
            self._closing -= 1
            self._closed_count += 1

    def _fail_all_waiters(self) -> None:
        while self._waiters:
            task, _ = self._waiters.popitem(last=False)
            trio.lowlevel.reschedule(
                task, outcome.Error(ShuttingDown(f"{self._name} pool is closing"))
            )

    def _poke(self) -> None:
        self._maint_wake.set()

    # ------------------------------------------------------------------- creation

    def _spawn_creators(self) -> None:
        """Start one creator per waiter not already covered by a creation in flight."""
        if self._state is not _State.RUNNING or self._nursery is None:
            return
        assert self._nursery is not None
        n = min(
            len(self._waiters) - self._connecting,
            self._config.max_connections - self._total(),
        )
        for _ in range(n):
            self._connecting += 1
            self._nursery.start_soon(self._create, False, 0)

    async def _create(self, fill: bool, fill_round: int) -> None:
        attempts = 1 if fill else 1 + self._config.max_retries
        try:
            conn = await self._connect(attempts)
        except BackendUnavailable as exc:
            self._connecting -= 1
            self._create_failed(exc, fill, fill_round)
            return
        except BaseException:
            self._connecting -= 1
            raise
        self._connecting -= 1
        self._add_new(conn)

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

    def _add_new(self, conn: C) -> None:
        now = trio.current_time()
        cfg = self._config
        lifetime = math.inf
        if cfg.max_lifetime is not None:
            lifetime = cfg.max_lifetime * (1 - cfg.lifetime_jitter * self._rng.random())
        entry = _Entry(conn, now, now + lifetime, self._generation)
        self._created += 1
        self._last_error = None
        self._fill_failures = 0
        self._next_fill_at = -math.inf
        self._poke()
        if self._state is not _State.RUNNING and self._state is not _State.STARTING:
            self._discard(entry)
        else:
            self._hand_off(entry)

    def _create_failed(self, exc: BackendUnavailable, fill: bool, fill_round: int) -> None:
        if fill and fill_round == self._fill_round and not self._fill_round_failed:
            self._fill_round_failed = True
            cfg = self._config
            delay = min(cfg.reconnect_max_delay, cfg.retry_delay * 2**self._fill_failures)
            self._fill_failures += 1
            self._next_fill_at = trio.current_time() + self._jitter(delay)
        if len(self._waiters) > self._connecting:
            task, _ = self._waiters.popitem(last=False)
            trio.lowlevel.reschedule(task, outcome.Error(BackendUnavailable(exc.message)))
        self._poke()

    async def _open_initial(self) -> None:
        n = self._config.min_connections
        if n == 0:
            return
        errors: list[BackendUnavailable] = []

        async def one(cancel_scope: trio.CancelScope) -> None:
            self._connecting += 1
            try:
                conn = await self._connect(1 + self._config.max_retries)
            except BackendUnavailable as exc:
                errors.append(exc)
                cancel_scope.cancel()
                return
            finally:
                self._connecting -= 1
            self._add_new(conn)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one, nursery.cancel_scope)
        if errors:
            raise BackendUnavailable(
                f"{self._name} pool could not start: {errors[0].message}"
            ) from errors[0]

    # ---------------------------------------------------------------- maintenance

    async def _maintain(self) -> None:
        while True:
            wake = trio.Event()
            self._maint_wake = wake
            deadline = self._maintenance_step(trio.current_time())
            self._maint_deadline = deadline
            with trio.move_on_at(deadline):
                await wake.wait()

    def _maintenance_step(self, now: float) -> float:
        """Retire, check and refill what is due at ``now``; return the next deadline."""
        cfg = self._config
        assert self._nursery is not None
        deadline = math.inf
        surplus = len(self._idle) + len(self._in_use) + len(self._checking) - cfg.min_connections
        keep: list[_Entry[C]] = []
        # Oldest first, so the idle timeout retires the longest-unused connections.
        for entry in self._idle:
            if now >= entry.expires_at or entry.generation != self._generation:
                self._discard(entry)
                surplus -= 1
                continue
            if (
                cfg.idle_timeout is not None
                and surplus > 0
                and now >= entry.last_used + cfg.idle_timeout
            ):
                self._discard(entry)
                surplus -= 1
                continue
            if cfg.enable_keepalive:
                due = max(entry.last_used, entry.last_checked) + cfg.keepalive_interval
                if now >= due:
                    self._checking.add(entry)
                    self._nursery.start_soon(self._keepalive, entry)
                    continue
                deadline = min(deadline, due)
            deadline = min(deadline, entry.expires_at)
            keep.append(entry)
        self._idle = keep
        if cfg.idle_timeout is not None and surplus > 0:
            for entry in keep[:surplus]:
                deadline = min(deadline, entry.last_used + cfg.idle_timeout)
        if cfg.max_lifetime is not None:
            # Not retired while in use, but wake when it would be due, so that a
            # release need not wake this task for lifetimes it already knows.
            for entry in self._in_use:
                if entry.expires_at > now:
                    deadline = min(deadline, entry.expires_at)
        threshold = cfg.leak_detection_threshold
        if threshold is not None:
            for entry in self._in_use:
                if entry.stack is None or entry.leak_reported:
                    continue
                due = entry.acquired_at + threshold
                if now >= due:
                    entry.leak_reported = True
                    self._leaks += 1
                    logger.warning(
                        "%s: a connection has been held for %.3fs (more than"
                        " pool.leak_detection_threshold=%gs); acquired at:\n%s",
                        self._name,
                        now - entry.acquired_at,
                        threshold,
                        entry.stack,
                    )
                else:
                    deadline = min(deadline, due)
        missing = cfg.min_connections - self._total()
        if missing > 0:
            if now >= self._next_fill_at:
                self._fill_round += 1
                self._fill_round_failed = False
                for _ in range(missing):
                    self._connecting += 1
                    self._nursery.start_soon(self._create, True, self._fill_round)
            else:
                deadline = min(deadline, self._next_fill_at)
        return deadline

    async def _keepalive(self, entry: _Entry[C]) -> None:
        try:
            with trio.fail_after(self._config.validation_timeout):
                await self._connector.check(entry.conn)
        except Exception as exc:
            self._checks_failed += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._checking.discard(entry)
            self._discard(entry)
            return
        except BaseException:
            self._checking.discard(entry)
            self._discard(entry)
            raise
        self._checking.discard(entry)
        now = entry.last_checked = trio.current_time()
        self._reinstate(entry, now)


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
    # The block's exception is caught and re-raised outside the nursery, so that it
    # is not wrapped in an ExceptionGroup (trio's nurseries are strict).
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(pool.run)
            except BaseException as exc:
                error = exc
            else:
                try:
                    yield pool
                except BaseException as exc:
                    error = exc
                finally:
                    nursery.cancel_scope.cancel()
    except BaseException as exc:
        # The nursery's exit is a checkpoint and its tasks see an outer cancellation
        # too: cancellation alone must not replace the block's own error (the
        # cancellation is delivered again at the caller's next checkpoint).
        if error is None or not _only_cancelled(exc):
            raise
    if error is not None:
        raise error


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)

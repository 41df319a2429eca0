"""A circuit breaker after resilience4j's: sliding windows, failure and slow-call rates.

States: CLOSED (calls pass, outcomes recorded), OPEN (calls refused with
:class:`CircuitOpen` until ``wait_in_open`` has passed), HALF_OPEN (at most
``permitted_calls_in_half_open`` trial calls; their verdict closes or reopens),
FORCED_OPEN, DISABLED and METRICS_ONLY (recorded, never trips). OPEN becomes HALF_OPEN
lazily, on the first call after the wait: no background task.

Cancellation is neutral: a cancelled call is neither success nor failure, is not a slow
call, and gives its half-open trial slot back.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import ParamSpec, TypeVar

import trio

from dtesn_trio import _checks
from dtesn_trio.errors import (
    CircuitOpen,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ShuttingDown,
    Unauthorized,
)

__all__ = [
    "DEFAULT_IGNORED",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerStatistics",
    "Permit",
    "default_ignore",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Errors that say nothing about the protected service's health: the caller's own mistakes,
#: refusals made before the service was reached, and a request's own deadline passing.
#: Under overload most deadlines pass while the request is still *queued*: counted as
#: failures they would open the breaker and refuse everyone, priority 0 included, for
#: ``wait_in_open``.  Load is the adaptive limiter's signal (a deadline is a drop there);
#: a service that is merely slow shows as slow calls.
DEFAULT_IGNORED: tuple[type[BaseException], ...] = (
    trio.Cancelled,
    InvalidRequest,
    Unauthorized,
    PayloadTooLarge,
    RateLimited,
    Overloaded,
    DeadlineExceeded,
    CircuitOpen,
    ShuttingDown,
)


def default_ignore(exc: BaseException) -> bool:
    """True for cancellation and refusal/client errors (also when grouped, all of them)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(default_ignore(e) for e in exc.exceptions)
    return isinstance(exc, DEFAULT_IGNORED)


def _record_all(exc: BaseException) -> bool:
    return True


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


# The state the hot paths compare with, as a module global: ``BreakerState.CLOSED`` is
# an attribute lookup on the enum class each time, several times slower.
_CLOSED = BreakerState.CLOSED


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """resilience4j's settings and defaults, except ``wait_in_open`` = 30 s (the seed's).

    Rates are percentages. ``sliding_window_type`` "count" keeps the last
    ``sliding_window_size`` outcomes; "time" keeps ``sliding_window_size`` one-second
    buckets. An exception is ignored when ``ignore_exception`` says so, else it is a
    failure when ``record_exception`` says so, else it counts as a success.
    """

    sliding_window_type: str = "count"
    sliding_window_size: int = 100
    minimum_calls: int = 100
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration: float = 60.0
    wait_in_open: float = 30.0
    permitted_calls_in_half_open: int = 10
    max_wait_in_half_open: float = 0.0
    """Seconds before an unfinished half-open trial reopens the breaker (0: wait forever)."""
    half_open_retry_after: float = 1.0
    """``retry_after`` of calls refused because all half-open trial slots are taken."""
    record_exception: Callable[[BaseException], bool] = field(default=_record_all)
    ignore_exception: Callable[[BaseException], bool] = field(default=default_ignore)
    name: str = "breaker"

    def __post_init__(self) -> None:
        p = self.name
        _checks.one_of(f"{p}.sliding_window_type", self.sliding_window_type, ("count", "time"))
        _checks.integer(f"{p}.sliding_window_size", self.sliding_window_size, minimum=1)
        _checks.integer(f"{p}.minimum_calls", self.minimum_calls, minimum=1)
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not _checks._is_number(value) or not 0.0 < value <= 100.0:
                raise ValueError(f"{p}.{name} must be in (0, 100] (got {value!r})")
        _checks.positive(f"{p}.slow_call_duration", self.slow_call_duration)
        _checks.non_negative(f"{p}.wait_in_open", self.wait_in_open)
        _checks.integer(
            f"{p}.permitted_calls_in_half_open", self.permitted_calls_in_half_open, minimum=1
        )
        _checks.non_negative(f"{p}.max_wait_in_half_open", self.max_wait_in_half_open)
        _checks.non_negative(f"{p}.half_open_retry_after", self.half_open_retry_after)
        for name in ("record_exception", "ignore_exception"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{p}.{name} must be callable (got {getattr(self, name)!r})")


@dataclass(frozen=True, slots=True)
class CircuitBreakerStatistics:
    """A snapshot of a :class:`CircuitBreaker` (rates in percent, -1 below minimum calls)."""

    name: str
    state: BreakerState
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    failed_calls: int
    slow_calls: int
    successful_calls_total: int
    failed_calls_total: int
    ignored_calls_total: int
    not_permitted_calls_total: int
    half_open_in_flight: int
    half_open_permits_left: int
    retry_after: float | None
    """Seconds until an OPEN breaker lets trial calls through; None when not OPEN."""
    transitions: int

    @property
    def open(self) -> bool:
        """Whether the breaker refuses every call (OPEN or FORCED_OPEN): what the stats
        views report as ``circuit_breaker_open``."""
        return self.state in (BreakerState.OPEN, BreakerState.FORCED_OPEN)


# Outcome encoding in the windows: bit 0 = failure, bit 1 = slow.
_FAIL = 1
_SLOW = 2


class _CountWindow:
    __slots__ = ("calls", "failures", "pos", "ring", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = [-1] * size  # -1: no call recorded in this slot yet
        self.pos = 0
        self.calls = self.failures = self.slow = 0

    def add(self, outcome: int, now: float) -> None:
        pos = self.pos
        old = self.ring[pos]
        self.ring[pos] = outcome
        self.pos = pos + 1 if pos + 1 < self.size else 0
        if old < 0:
            self.calls += 1
        elif old:
            self.failures -= old & _FAIL
            self.slow -= old >> 1
        if outcome:
            self.failures += outcome & _FAIL
            self.slow += outcome >> 1

    def totals(self, now: float) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow


class _TimeWindow:
    """``size`` one-second buckets [calls, failures, slow], indexed by whole seconds."""

    __slots__ = ("buckets", "calls", "failures", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buckets: dict[int, list[int]] = {}
        self.calls = self.failures = self.slow = 0

    def _expire(self, second: int) -> None:
        oldest = second - self.size + 1
        for key in [k for k in self.buckets if k < oldest]:
            c, f, s = self.buckets.pop(key)
            self.calls -= c
            self.failures -= f
            self.slow -= s

    def add(self, outcome: int, now: float) -> None:
        second = math.floor(now)
        bucket = self.buckets.get(second)
        if bucket is None:
            self._expire(second)
            bucket = self.buckets[second] = [0, 0, 0]
        failure, slow = outcome & _FAIL, (outcome & _SLOW) >> 1
        bucket[0] += 1
        bucket[1] += failure
        bucket[2] += slow
        self.calls += 1
        self.failures += failure
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._expire(math.floor(now))
        return self.calls, self.failures, self.slow


# Outcome kinds passed to CircuitBreaker._record.
_SUCCESS, _FAILURE, _IGNORE = 0, 1, 2


class Permit:
    """Permission for one call. End it exactly once: ``on_success``, ``on_error``, ``on_ignore``."""

    __slots__ = ("_breaker", "_done", "epoch", "start")

    def __init__(self, breaker: CircuitBreaker, epoch: int, start: float) -> None:
        self._breaker = breaker
        self._done = False
        self.epoch = epoch
        self.start = start

    def _end(self, kind: int, duration: float | None) -> None:
        if self._done:
            raise RuntimeError("this permit was already ended")
        self._done = True
        self._breaker._record(self.epoch, self.start, trio.current_time(), duration, kind)

    def on_success(self, duration: float | None = None) -> None:
        """The call returned normally after ``duration`` seconds (default: since the permit)."""
        self._end(_SUCCESS, duration)

    def on_error(self, exc: BaseException, duration: float | None = None) -> None:
        """The call raised ``exc``; the config's predicates decide how it counts."""
        self._end(self._breaker.classify(exc), duration)

    def on_ignore(self) -> None:
        """No verdict (cancelled, or never reached the service): frees a half-open slot."""
        self._end(_IGNORE, None)


class CircuitBreaker:
    """Fail fast while a service is failing; see the module docstring for the states.

    Hot path: ``permit = breaker.acquire_permission()`` (sync; raises :class:`CircuitOpen`)
    then exactly one of ``permit.on_success()``, ``permit.on_error(exc)``,
    ``permit.on_ignore()``. Or ``async with breaker:`` / ``await breaker.call(fn, *args)``.
    """

    def __init__(self, config: CircuitBreakerConfig | None = None, name: str = "engine") -> None:
        self._config = config if config is not None else CircuitBreakerConfig()
        self._slow_call_duration = self._config.slow_call_duration
        self.name = name
        self._listeners: list[Callable[[BreakerState, BreakerState], object]] = []
        self._state = BreakerState.CLOSED
        # Bumped on every transition: a permit from an earlier state reports into totals
        # only, never into the new state's window or half-open slots.
        self._epoch = 0
        self._window: _CountWindow | _TimeWindow = self._new_window()
        self._opened_until = 0.0
        self._half_open_since = 0.0
        self._half_open_taken = 0
        self._half_open_in_flight = 0
        self._succeeded = 0
        self._failed = 0
        self._ignored = 0
        self._not_permitted = 0
        self._transitions = 0
        self._entered: dict[trio.lowlevel.Task, list[Permit]] = {}

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        return self._state

    def _new_window(self) -> _CountWindow | _TimeWindow:
        cfg = self._config
        if self._state is BreakerState.HALF_OPEN:
            return _CountWindow(cfg.permitted_calls_in_half_open)
        if cfg.sliding_window_type == "time":
            return _TimeWindow(cfg.sliding_window_size)
        return _CountWindow(cfg.sliding_window_size)

    # -- transitions ------------------------------------------------------------------

    def add_listener(self, callback: Callable[[BreakerState, BreakerState], object]) -> None:
        """Call ``callback(old, new)`` on every state change (synchronously; errors logged)."""
        self._listeners.append(callback)

    def _transition(self, new: BreakerState, *, force: bool = False) -> None:
        old = self._state
        if old is new and not force:
            return
        now = trio.current_time()
        self._state = new
        self._epoch += 1
        self._transitions += 1
        self._half_open_taken = 0
        self._half_open_in_flight = 0
        if new is BreakerState.OPEN:
            self._opened_until = now + self._config.wait_in_open
        elif new is BreakerState.HALF_OPEN:
            self._half_open_since = now
        self._window = self._new_window()
        logger.info("circuit breaker %r: %s -> %s", self.name, old.value, new.value)
        for callback in list(self._listeners):
            try:
                callback(old, new)
            except Exception:
                logger.exception("circuit breaker %r: state listener failed", self.name)

    def transition_to_forced_open(self) -> None:
        """Refuse every call until :meth:`reset` (or another manual transition)."""
        self._transition(BreakerState.FORCED_OPEN)

    def transition_to_metrics_only(self) -> None:
        """Record outcomes but never trip."""
        self._transition(BreakerState.METRICS_ONLY)

    def transition_to_open(self) -> None:
        """Open now (again, if already open): refuse calls for ``wait_in_open``."""
        self._transition(BreakerState.OPEN, force=True)

    def disable(self) -> None:
        """Let every call through and record nothing."""
        self._transition(BreakerState.DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with an empty window (totals are kept)."""
        self._transition(BreakerState.CLOSED, force=True)

    # -- permits ----------------------------------------------------------------------

    def acquire_permission(self) -> Permit:
        """Permit one call now, or raise :class:`CircuitOpen` with ``retry_after``."""
        now = trio.current_time()
        return Permit(self, self._permit_at(now), now)

    def classify(self, exc: BaseException) -> int:
        """How ``exc`` counts: 0 success, 1 failure, 2 ignored (see the config's predicates)."""
        cfg = self._config
        if cfg.ignore_exception(exc):
            return _IGNORE
        return _FAILURE if cfg.record_exception(exc) else _SUCCESS

    def _permit_at(self, now: float) -> int:
        """Take a permission at ``now``; returns the epoch to report the outcome with."""
        state = self._state
        if state is _CLOSED:
            return self._epoch
        if state is BreakerState.OPEN:
            if now < self._opened_until:
                self._not_permitted += 1
                raise CircuitOpen(
                    f"circuit {self.name!r} is open", retry_after=self._opened_until - now
                )
            self._transition(BreakerState.HALF_OPEN)
            state = BreakerState.HALF_OPEN
        if state is BreakerState.HALF_OPEN:
            cfg = self._config
            if (
                cfg.max_wait_in_half_open > 0.0
                and now - self._half_open_since >= cfg.max_wait_in_half_open
            ):
                self._transition(BreakerState.OPEN)
                self._not_permitted += 1
                raise CircuitOpen(
                    f"circuit {self.name!r} reopened: half-open trials took too long",
                    retry_after=self._opened_until - now,
                )
            if self._half_open_taken >= cfg.permitted_calls_in_half_open:
                self._not_permitted += 1
                raise CircuitOpen(
                    f"circuit {self.name!r} is half-open and all trial calls are taken",
                    retry_after=cfg.half_open_retry_after,
                )
            self._half_open_taken += 1
            self._half_open_in_flight += 1
        elif state is BreakerState.FORCED_OPEN:
            self._not_permitted += 1
            raise CircuitOpen(
                f"circuit {self.name!r} is forced open", retry_after=self._config.wait_in_open
            )
        return self._epoch

    def _record(
        self, epoch: int, start: float, now: float, duration: float | None, kind: int
    ) -> None:
        """The outcome of a call permitted in ``epoch``, started at ``start``, ended at ``now``."""
        if kind == _SUCCESS and epoch == self._epoch and self._state is _CLOSED:
            # The hot path: a clean success while closed.
            self._succeeded += 1
            if duration is None:
                duration = now - start
            window = self._window
            if duration >= self._slow_call_duration:
                window.add(_SLOW, now)
                self._evaluate(now)
            else:
                window.add(0, now)
                # A clean success can only trip the breaker when the window holds bad calls.
                if window.failures or window.slow:
                    self._evaluate(now)
            return
        current = epoch == self._epoch
        state = self._state
        if kind == _IGNORE:
            self._ignored += 1
            if current and state is BreakerState.HALF_OPEN:
                # The slot goes back: a cancelled trial is no verdict.
                self._half_open_taken -= 1
                self._half_open_in_flight -= 1
            return
        if kind == _FAILURE:
            self._failed += 1
        else:
            self._succeeded += 1
        # A permit from an earlier state reports into the totals only.
        if not current or state is BreakerState.DISABLED:
            return
        if duration is None:
            duration = now - start
        outcome = kind | (_SLOW if duration >= self._config.slow_call_duration else 0)
        window = self._window
        window.add(outcome, now)
        if state is BreakerState.HALF_OPEN:
            self._half_open_in_flight -= 1
            self._evaluate(now)
        elif state is BreakerState.CLOSED and (outcome or window.failures or window.slow):
            # A clean success can only trip the breaker when the window holds bad calls.
            self._evaluate(now)

    def _rates(self, now: float) -> tuple[float, float, int, int, int]:
        """(failure %, slow %, calls, failures, slow); rates are -1 below the minimum."""
        calls, failures, slow = self._window.totals(now)
        cfg = self._config
        if self._state is BreakerState.HALF_OPEN:
            minimum = cfg.permitted_calls_in_half_open
        elif cfg.sliding_window_type == "count":
            minimum = min(cfg.minimum_calls, cfg.sliding_window_size)
        else:
            minimum = cfg.minimum_calls
        if calls < minimum or calls == 0:
            return -1.0, -1.0, calls, failures, slow
        return 100.0 * failures / calls, 100.0 * slow / calls, calls, failures, slow

    def _evaluate(self, now: float) -> None:
        failure_rate, slow_rate, *_ = self._rates(now)
        if failure_rate < 0.0:
            return
        cfg = self._config
        tripped = (
            failure_rate >= cfg.failure_rate_threshold or slow_rate >= cfg.slow_call_rate_threshold
        )
        if tripped:
            self._transition(BreakerState.OPEN)
        elif self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.CLOSED)

    # -- async use --------------------------------------------------------------------

    async def __aenter__(self) -> CircuitBreaker:
        await trio.lowlevel.checkpoint()
        permit = self.acquire_permission()
        self._entered.setdefault(trio.lowlevel.current_task(), []).append(permit)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = trio.lowlevel.current_task()
        stack = self._entered[task]
        permit = stack.pop()
        if not stack:
            del self._entered[task]
        if exc is None:
            permit.on_success()
        else:
            permit.on_error(exc)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` under the breaker."""
        async with self:
            return await fn(*args, **kwargs)

    def statistics(self) -> CircuitBreakerStatistics:
        now = trio.current_time()
        failure_rate, slow_rate, calls, failures, slow = self._rates(now)
        half_open = self._state is BreakerState.HALF_OPEN
        return CircuitBreakerStatistics(
            name=self.name,
            state=self._state,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            buffered_calls=calls,
            failed_calls=failures,
            slow_calls=slow,
            successful_calls_total=self._succeeded,
            failed_calls_total=self._failed,
            ignored_calls_total=self._ignored,
            not_permitted_calls_total=self._not_permitted,
            half_open_in_flight=self._half_open_in_flight if half_open else 0,
            half_open_permits_left=(
                self._config.permitted_calls_in_half_open - self._half_open_taken
                if half_open
                else 0
            ),
            retry_after=(
                max(self._opened_until - now, 0.0) if self._state is BreakerState.OPEN else None
            ),
            transitions=self._transitions,
        )

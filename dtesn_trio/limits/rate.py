"""A GCRA (token bucket) rate limiter on Trio's clock, with FIFO waiting and a load-adaptive mode.

GCRA keeps one number, the theoretical arrival time ``tat``: a call of cost ``c`` is allowed
at ``now`` when ``max(tat, now) + c·T - now <= burst·T`` (``T = 1/rate``), and then moves
``tat`` there. That is exactly a token bucket holding ``burst`` tokens, full at start and
refilled at ``rate`` per second, so ``N`` calls at ``rate`` with ``burst`` finish at
``max(0, (k - burst + 1) / rate)`` for the k-th call (0-based).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import trio

from dtesn_trio import _checks
from dtesn_trio.errors import RateLimited

__all__ = ["RateLimiter", "RateLimiterConfig", "RateLimiterStatistics"]

# Float slack for "allowed at exactly this time": a waiter woken at its computed time must
# pass the check, or an autojump clock would spin on a one-ulp difference.
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class RateLimiterConfig:
    """Rate (calls per second), burst (bucket size) and the optional load-adaptive range.

    With ``adaptive=True`` the effective rate follows :meth:`RateLimiter.observe_load`:
    ``max_rate`` when idle (load 0), ``rate`` at ``load_target``, ``min_rate`` at load 1 and
    above, linear in between. ``max_rate`` defaults to 1.5 x rate, ``min_rate`` to 0.5 x rate
    (the seed's clamp, except that ours can actually reach the ceiling).
    """

    rate: float
    burst: int
    adaptive: bool = False
    max_rate: float | None = None
    min_rate: float | None = None
    load_target: float = 0.5
    name: str = "rate"

    def __post_init__(self) -> None:
        p = self.name
        _checks.positive(f"{p}.rate", self.rate)
        _checks.integer(f"{p}.burst", self.burst, minimum=1)
        if self.max_rate is not None:
            _checks.positive(f"{p}.max_rate", self.max_rate)
            _checks.at_least(f"{p}.max_rate", self.max_rate, f"{p}.rate", self.rate)
        if self.min_rate is not None:
            _checks.positive(f"{p}.min_rate", self.min_rate)
            _checks.at_least(f"{p}.rate", self.rate, f"{p}.min_rate", self.min_rate)
        if not _checks._is_number(self.load_target) or not 0.0 < self.load_target < 1.0:
            raise ValueError(
                f"{p}.load_target must be strictly between 0 and 1 (got {self.load_target!r})"
            )

    @property
    def ceiling(self) -> float:
        return self.max_rate if self.max_rate is not None else self.rate * 1.5

    @property
    def floor(self) -> float:
        return self.min_rate if self.min_rate is not None else self.rate * 0.5


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A snapshot of a :class:`RateLimiter`."""

    rate: float
    """The effective rate now (calls per second)."""
    base_rate: float
    burst: int
    adaptive: bool
    load: float
    """The last load passed to ``observe_load`` (0.0 until then)."""
    tokens_available: float
    """How much cost could be taken right now without waiting (0 … burst)."""
    waiting: int
    acquired: int
    """Calls that got through (``acquire`` and ``acquire_nowait``)."""
    acquired_cost: int
    refused: int
    """``acquire_nowait`` calls refused with ``RateLimited``."""
    recent_rate: float
    """Calls per second over the last window of at least one second."""


class _Waiter:
    __slots__ = ("cost", "event", "scope")

    def __init__(self, cost: int) -> None:
        self.cost = cost
        self.event = trio.Event()
        self.scope: trio.CancelScope | None = None


class RateLimiter:
    """GCRA rate limiter; safe to share between tasks of one Trio run.

    ``await acquire(cost)`` waits in FIFO order (a later small call never overtakes an
    earlier large one); bound the wait with the caller's cancel scope. ``acquire_nowait``
    never waits and raises :class:`RateLimited` with ``retry_after``. Nothing is held while
    sleeping: only the head waiter sleeps, until the exact time its cost fits.
    """

    def __init__(self, config: RateLimiterConfig) -> None:
        self._config = config
        self._base_rate = float(config.rate)
        self._burst = config.burst
        self._rate = self._base_rate
        self._interval = 1.0 / self._rate
        self._tau = self._burst * self._interval + _EPS
        self._tat = -math.inf
        self._load = 0.0
        self._waiters: deque[_Waiter] = deque()
        self._acquired = 0
        self._acquired_cost = 0
        self._refused = 0
        self._window_start = -math.inf
        self._window_count = 0
        self._recent_rate = 0.0

    @property
    def config(self) -> RateLimiterConfig:
        return self._config

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    # -- the GCRA core (synchronous) -------------------------------------------------

    def _check_cost(self, cost: int) -> None:
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
            raise ValueError(f"cost must be an integer >= 1 (got {cost!r})")
        if cost > self._burst:
            raise ValueError(f"cost {cost} can never fit in burst {self._burst}")

    def _delay(self, cost: int, now: float) -> float:
        """Seconds until ``cost`` fits (0.0 or less: fits now)."""
        new_tat = max(self._tat, now) + cost * self._interval
        return new_tat - now - self._burst * self._interval

    def _take(self, cost: int, now: float) -> None:
        self._tat = max(self._tat, now) + cost * self._interval
        self._count(cost, now)

    def _count(self, cost: int, now: float) -> None:
        self._acquired += 1
        self._acquired_cost += cost
        if now - self._window_start >= 1.0:
            self._recent_rate = self._window_count / (now - self._window_start)
            self._window_start = now
            self._window_count = 0
        self._window_count += 1

    def acquire_nowait(self, cost: int = 1) -> None:
        """Take ``cost`` now or raise :class:`RateLimited` (``retry_after`` = seconds to wait).

        Refused while others are waiting, so waiting callers are never overtaken.
        """
        if type(cost) is not int or cost != 1:
            self._check_cost(cost)
        self._acquire_at(cost, trio.current_time())

    def _acquire_at(self, cost: int, now: float) -> None:
        # The hot path of admission: kept flat on purpose.
        tat = self._tat
        if tat < now:
            tat = now
        new_tat = tat + cost * self._interval
        if new_tat - now > self._tau or self._waiters:
            self._refused += 1
            # Everyone queued goes first: their total cost on top of ours.
            queued = sum(w.cost for w in self._waiters)
            raise RateLimited(
                f"rate limit {self._rate:g}/s (burst {self._burst}) reached",
                retry_after=max(self._delay(cost + queued, now), 0.0),
            )
        self._tat = new_tat
        # _count(), written out.
        self._acquired += 1
        self._acquired_cost += cost
        if now - self._window_start >= 1.0:
            self._recent_rate = self._window_count / (now - self._window_start)
            self._window_start = now
            self._window_count = 0
        self._window_count += 1

    async def acquire(self, cost: int = 1) -> None:
        """Wait (FIFO) until ``cost`` fits, then take it. Cancellation leaves no trace."""
        self._check_cost(cost)
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        if not self._waiters and self._delay(cost, now) <= _EPS:
            self._take(cost, now)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter(cost)
        self._waiters.append(waiter)
        try:
            if self._waiters[0] is not waiter:
                await waiter.event.wait()
            # Head of the queue: sleep until our cost fits. set_rate() cancels the sleep's
            # scope so the time is recomputed with the new rate.
            while True:
                self._check_cost(cost)
                now = trio.current_time()
                delay = self._delay(cost, now)
                if delay <= _EPS:
                    self._take(cost, now)
                    break
                with trio.CancelScope() as waiter.scope:
                    await trio.sleep_until(now + delay)
                waiter.scope = None
        finally:
            head = self._waiters[0] is waiter
            self._waiters.remove(waiter)
            if head and self._waiters:
                self._waiters[0].event.set()

    # -- run-time changes -------------------------------------------------------------

    def set_rate(self, rate: float, burst: int | None = None) -> None:
        """Change the base rate (and burst). Tokens already spent stay spent.

        In adaptive mode the effective rate is recomputed from the last observed load
        around the new base.
        """
        _checks.positive(f"{self._config.name}.rate", rate)
        if burst is not None:
            _checks.integer(f"{self._config.name}.burst", burst, minimum=1)
            self._burst = burst
            self._tau = self._burst * self._interval + _EPS
            self._wake_head()
        self._base_rate = float(rate)
        self._apply_rate(self._target_rate() if self._config.adaptive else self._base_rate)

    def observe_load(self, load: float) -> None:
        """Report the system's load (utilization: 0 idle, 1 saturated; more is clamped).

        In adaptive mode this moves the rate between ``min_rate`` and ``max_rate``; otherwise
        it is only recorded.
        """
        if not isinstance(load, int | float) or isinstance(load, bool) or not load >= 0.0:
            raise ValueError(f"load must be a number >= 0 (got {load!r})")
        self._load = float(load)
        if self._config.adaptive:
            self._apply_rate(self._target_rate())

    def _target_rate(self) -> float:
        cfg = self._config
        base = self._base_rate
        scale = base / cfg.rate
        ceiling = max(cfg.ceiling * scale, base)
        floor = min(cfg.floor * scale, base)
        load = min(self._load, 1.0)
        if load <= cfg.load_target:
            return base + (ceiling - base) * (cfg.load_target - load) / cfg.load_target
        return base - (base - floor) * (load - cfg.load_target) / (1.0 - cfg.load_target)

    def _apply_rate(self, rate: float) -> None:
        if rate == self._rate:
            return
        now = trio.current_time()
        # Keep the spent tokens (the debt) the same in tokens, not in seconds.
        debt_tokens = max(self._tat - now, 0.0) / self._interval
        self._rate = rate
        self._interval = 1.0 / rate
        self._tau = self._burst * self._interval + _EPS
        self._tat = now + debt_tokens * self._interval
        self._wake_head()

    def _wake_head(self) -> None:
        """Make the sleeping head waiter recompute its time (the rate or burst changed)."""
        if self._waiters and self._waiters[0].scope is not None:
            self._waiters[0].scope.cancel()

    def statistics(self) -> RateLimiterStatistics:
        now = trio.current_time()
        debt = max(self._tat - now, 0.0) / self._interval
        recent = self._recent_rate
        if now - self._window_start >= 1.0:
            recent = self._window_count / (now - self._window_start)
        return RateLimiterStatistics(
            rate=self._rate,
            base_rate=self._base_rate,
            burst=self._burst,
            adaptive=self._config.adaptive,
            load=self._load,
            tokens_available=max(self._burst - debt, 0.0),
            waiting=len(self._waiters),
            acquired=self._acquired,
            acquired_cost=self._acquired_cost,
            refused=self._refused,
            recent_rate=recent,
        )

"""An adaptive concurrency limiter: a ``trio.CapacityLimiter`` whose tokens an algorithm moves.

Every call takes a :class:`Ticket` and ends it exactly once: ``on_success`` (its RTT is a
sample), ``on_dropped`` (a loss signal) or ``on_ignore`` (no signal: cancellation, client
errors). Samples are aggregated in windows (Netflix's ``WindowedLimit``); when a sample
closes a window the algorithm runs synchronously and the result is assigned to
``capacity_limiter.total_tokens``. Raising the limit wakes waiters; lowering it lets the
current holders finish. No background task is needed.

Priorities (0 = most important) share the limit like Netflix's partitioned limiter, but
with a hard cap: each level's guaranteed share is kept free for it against *less*
important levels, and otherwise every level may use spare capacity. So as the limit
fills up, the least important level is refused first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from dtesn_trio import _checks
from dtesn_trio.errors import Overloaded
from dtesn_trio.limits.algorithms import LimitAlgorithm, Sample

__all__ = ["AdaptiveLimiter", "AdaptiveLimiterConfig", "AdaptiveLimiterStatistics", "Ticket"]


@dataclass(frozen=True, slots=True)
class AdaptiveLimiterConfig:
    """Window, bounds and priority partitions of an :class:`AdaptiveLimiter`.

    ``partitions[p]`` is the share of the limit guaranteed to priority ``p`` against less
    important levels (shares sum to at most 1; default: none). A window closes on the first
    sample at least ``min_window_time`` after it opened (stretched to 2 x the window's RTT,
    at most ``max_window_time``); with fewer than ``window_size`` samples it is discarded.
    Successful calls faster than ``min_rtt_threshold`` are not samples (Netflix #176).
    """

    min_limit: int = 1
    max_limit: int = 1000
    min_window_time: float = 1.0
    max_window_time: float = 1.0
    window_size: int = 10
    min_rtt_threshold: float = 100e-6
    priority_levels: int = 1
    partitions: tuple[float, ...] | None = None
    overloaded_retry_after: float = 1.0
    name: str = "limiter"

    def __post_init__(self) -> None:
        p = self.name
        _checks.integer(f"{p}.min_limit", self.min_limit, minimum=1)
        _checks.integer(f"{p}.max_limit", self.max_limit, minimum=1)
        _checks.at_least(f"{p}.max_limit", self.max_limit, f"{p}.min_limit", self.min_limit)
        _checks.positive(f"{p}.min_window_time", self.min_window_time)
        _checks.positive(f"{p}.max_window_time", self.max_window_time)
        _checks.at_least(
            f"{p}.max_window_time",
            self.max_window_time,
            f"{p}.min_window_time",
            self.min_window_time,
        )
        _checks.integer(f"{p}.window_size", self.window_size, minimum=1)
        _checks.non_negative(f"{p}.min_rtt_threshold", self.min_rtt_threshold)
        _checks.integer(f"{p}.priority_levels", self.priority_levels, minimum=1)
        _checks.non_negative(f"{p}.overloaded_retry_after", self.overloaded_retry_after)
        if self.partitions is not None:
            if len(self.partitions) != self.priority_levels:
                raise ValueError(
                    f"{p}.partitions must have one share per priority level "
                    f"(got {len(self.partitions)} for {self.priority_levels} levels)"
                )
            for i, share in enumerate(self.partitions):
                _checks.in_range(f"{p}.partitions[{i}]", share, 0.0, 1.0)
            if sum(self.partitions) > 1.0 + 1e-9:
                raise ValueError(
                    f"{p}.partitions must sum to at most 1 (got {sum(self.partitions)!r})"
                )


@dataclass(frozen=True, slots=True)
class AdaptiveLimiterStatistics:
    """A snapshot of an :class:`AdaptiveLimiter`."""

    limit: int
    in_flight: int
    in_flight_by_priority: tuple[int, ...]
    waiting: int
    min_limit: int
    max_limit: int
    succeeded: int
    dropped: int
    ignored: int
    refused: int
    windows: int
    """Windows that produced a sample for the algorithm."""
    growth_blocked: int
    """Windows whose increase was not applied because in-flight < limit/2."""
    avg_rtt: float
    """Mean RTT of the last window (of the current one before the first closes); 0 if none."""
    last_sample: Sample | None


def _tokens_of(
    limiter: trio.CapacityLimiter,
) -> tuple[set[object], trio.lowlevel.ParkingLot] | tuple[None, None]:
    """The borrowers and the waiting tasks of a ``trio.CapacityLimiter`` (its own
    records), or ``(None, None)`` where this trio keeps them otherwise.

    Every admission takes and gives back one token without waiting, and trio's
    ``acquire_on_behalf_of_nowait`` / ``release_on_behalf_of`` cost more than the rest
    of admitting a request (the release looks for tasks to wake through a generator,
    each time).  So while no task waits for a token, the limiter adds and removes its
    calls in the borrower set itself, exactly as those two methods would; anything else
    (a task waiting in ``acquire``, a call taken or given back twice) goes through
    them.  ``borrowed_tokens``, ``statistics()`` and the waiters see the same state.
    """
    borrowers = getattr(limiter, "_borrowers", None)
    lot = getattr(limiter, "_lot", None)
    if type(borrowers) is not set or not isinstance(lot, trio.lowlevel.ParkingLot):
        return None, None
    return borrowers, lot


# Outcome kinds passed to AdaptiveLimiter._release_at.
_SUCCESS, _DROPPED, _IGNORED = 0, 1, 2


class _Call(Protocol):
    """What the limiter keeps about an admitted call (a Ticket, or admission's own object)."""

    priority: int
    start: float
    inflight: int


class Ticket:
    """One admitted call. End it exactly once with ``on_success``, ``on_dropped`` or ``on_ignore``."""

    __slots__ = ("_done", "_limiter", "inflight", "priority", "start")

    def __init__(
        self, limiter: AdaptiveLimiter, priority: int, start: float, inflight: int
    ) -> None:
        self._limiter = limiter
        self._done = False
        self.priority = priority
        self.start = start
        self.inflight = inflight

    def _end(self, kind: int, rtt: float | None) -> None:
        if self._done:
            raise RuntimeError("this ticket was already ended")
        self._done = True
        self._limiter._release_at(self, kind, rtt, trio.current_time())

    def on_success(self, rtt: float | None = None) -> None:
        """The call worked; ``rtt`` defaults to the time since admission."""
        self._end(_SUCCESS, rtt)

    def on_dropped(self) -> None:
        """The call was refused or timed out downstream: a sign of overload."""
        self._end(_DROPPED, None)

    def on_ignore(self) -> None:
        """No signal either way (cancelled, client error): just give the token back."""
        self._end(_IGNORED, None)


class AdaptiveLimiter:
    """Concurrency limit = ``capacity_limiter.total_tokens``, moved by ``algorithm``."""

    def __init__(
        self, algorithm: LimitAlgorithm, config: AdaptiveLimiterConfig | None = None
    ) -> None:
        self._config = config if config is not None else AdaptiveLimiterConfig()
        cfg = self._config
        self._algorithm = algorithm
        self.capacity_limiter = trio.CapacityLimiter(self._clamp(algorithm.limit))
        self._borrowers: set[object] | None
        self._lot: trio.lowlevel.ParkingLot | None
        self._borrowers, self._lot = _tokens_of(self.capacity_limiter)
        self._levels = cfg.priority_levels
        self._shares = cfg.partitions if cfg.partitions is not None else (0.0,) * self._levels
        # Level p can be kept out by at most this share of the limit (the shares above it).
        self._reserve_share = tuple(sum(self._shares[:p]) for p in range(self._levels))
        self._min_rtt = cfg.min_rtt_threshold
        self._by_priority = [0] * self._levels
        self._succeeded = 0
        self._dropped = 0
        self._ignored = 0
        self._refused = 0
        self._windows = 0
        self._growth_blocked = 0
        self._last_sample: Sample | None = None
        self._last_rtt = 0.0
        self._next_update = -math.inf
        self._window_listeners: list[Callable[[Sample, int], object]] = []
        self._reset_window()

    @property
    def config(self) -> AdaptiveLimiterConfig:
        return self._config

    @property
    def algorithm(self) -> LimitAlgorithm:
        return self._algorithm

    @property
    def limit(self) -> int:
        return int(self.capacity_limiter.total_tokens)

    @property
    def in_flight(self) -> int:
        return self.capacity_limiter.borrowed_tokens

    def add_window_listener(self, callback: Callable[[Sample, int], object]) -> None:
        """Call ``callback(sample, new_limit)`` synchronously whenever a window closes."""
        self._window_listeners.append(callback)

    def _clamp(self, limit: int) -> int:
        return max(self._config.min_limit, min(self._config.max_limit, int(limit)))

    # -- admission --------------------------------------------------------------------

    def acquire_nowait(self, priority: int = 0) -> Ticket:
        """Admit a call now or raise :class:`Overloaded` (with ``retry_after``);
        ``InvalidRequest`` for a priority outside ``0 .. priority_levels - 1``."""
        _checks.check_priority(priority, self._levels)
        now = trio.current_time()
        ticket = Ticket(self, priority, now, 0)
        ticket.inflight = self._admit_at(ticket, priority)
        return ticket

    def _admit_at(self, call: _Call, priority: int) -> int:
        """Take a token for ``call`` or raise Overloaded; returns the in-flight count."""
        cl = self.capacity_limiter
        borrowers = self._borrowers
        total = cl.total_tokens
        borrowed = cl.borrowed_tokens if borrowers is None else len(borrowers)
        free = total - borrowed
        # Only near the limit can the shares of more important levels be in the way.
        if free <= self._reserve_share[priority] * total:
            for q in range(priority):
                free -= max(0.0, self._shares[q] * total - self._by_priority[q])
        try:
            if free < 1:
                raise trio.WouldBlock
            if borrowers is None or self._lot or call in borrowers:
                cl.acquire_on_behalf_of_nowait(call)
            else:  # trio's acquire_on_behalf_of_nowait, when it would take the token
                borrowers.add(call)
        except trio.WouldBlock:
            self._refused += 1
            raise Overloaded(
                f"concurrency limit {self.limit} reached (priority {priority})",
                retry_after=self._config.overloaded_retry_after,
            ) from None
        self._by_priority[priority] += 1
        return borrowed + 1

    async def acquire(self, priority: int = 0) -> Ticket:
        """Wait (FIFO, regardless of priority) for a token; partitions do not apply here."""
        _checks.check_priority(priority, self._levels)
        ticket = Ticket(self, priority, 0.0, 0)
        await self.capacity_limiter.acquire_on_behalf_of(ticket)
        ticket.start = trio.current_time()
        ticket.inflight = self.capacity_limiter.borrowed_tokens
        self._by_priority[priority] += 1
        return ticket

    # -- samples and windows ----------------------------------------------------------

    def _reset_window(self) -> None:
        self._w_rtt_sum = 0.0
        self._w_count = 0
        self._w_drops = 0
        self._w_max_inflight = 0

    def _release_at(self, call: _Call, kind: int, rtt: float | None, now: float) -> None:
        """Give ``call``'s token back and record its outcome at ``now``."""
        borrowers = self._borrowers
        if borrowers is None or self._lot or call not in borrowers:
            self.capacity_limiter.release_on_behalf_of(call)
        else:  # trio's release_on_behalf_of with nobody waiting: nobody to wake
            borrowers.remove(call)
        self._by_priority[call.priority] -= 1
        if kind == _IGNORED:
            self._ignored += 1
            return
        if kind == _SUCCESS:
            self._succeeded += 1
            if rtt is None:
                rtt = now - call.start
            if rtt < self._min_rtt:
                return
            self._w_rtt_sum += rtt
            self._w_count += 1
        else:
            self._dropped += 1
            self._w_drops += 1
        if call.inflight > self._w_max_inflight:
            self._w_max_inflight = call.inflight
        if now >= self._next_update:
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        cfg = self._config
        n = self._w_count + self._w_drops
        rtt = self._w_rtt_sum / self._w_count if self._w_count else self._last_rtt
        if self._next_update == -math.inf:
            # The first sample only opens the first window.
            self._next_update = now + cfg.min_window_time
            return
        # A window of drops only still is a loss signal, even before any RTT is known.
        if n >= cfg.window_size and (rtt > 0.0 or self._w_drops):
            sample = Sample(
                rtt=rtt,
                inflight=self._w_max_inflight,
                dropped=self._w_drops > 0,
                success_rate=self._w_count / n,
            )
            self._windows += 1
            self._last_sample = sample
            if rtt > 0.0:
                self._last_rtt = rtt
            old = self.limit
            new = self._clamp(self._algorithm.update(sample))
            if new > old and sample.inflight * 2 < old:
                self._growth_blocked += 1
            elif new != old:
                self.capacity_limiter.total_tokens = new
            for callback in self._window_listeners:
                callback(sample, self.limit)
        self._reset_window()
        self._next_update = now + min(max(2.0 * rtt, cfg.min_window_time), cfg.max_window_time)

    def statistics(self) -> AdaptiveLimiterStatistics:
        cl = self.capacity_limiter.statistics()
        avg = self._last_rtt
        if self._last_sample is None and self._w_count:
            avg = self._w_rtt_sum / self._w_count
        return AdaptiveLimiterStatistics(
            limit=int(cl.total_tokens),
            in_flight=cl.borrowed_tokens,
            in_flight_by_priority=tuple(self._by_priority),
            waiting=cl.tasks_waiting,
            min_limit=self._config.min_limit,
            max_limit=self._config.max_limit,
            succeeded=self._succeeded,
            dropped=self._dropped,
            ignored=self._ignored,
            refused=self._refused,
            windows=self._windows,
            growth_blocked=self._growth_blocked,
            avg_rtt=avg,
            last_sample=self._last_sample,
        )

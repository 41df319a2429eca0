"""Configuration of the priority batch queue: one frozen, validated record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtesn_trio import _checks

__all__ = ["BatchQueueConfig", "TimeoutAction"]

TimeoutAction = Literal["reject", "delay"]
_ACTIONS: tuple[object, ...] = ("reject", "delay")


@dataclass(frozen=True, slots=True)
class BatchQueueConfig:
    """How the priority batch queue admits, orders, batches and times out requests.

    Levels run from 0 (highest) to ``priority_levels - 1``.  ``capacity_per_level``,
    ``default_timeout`` and ``timeout_action`` take one value for every level or a tuple
    with one value per level; the resolved tuples are ``capacities``, ``timeouts`` and
    ``actions``.

    - ``default_timeout``: queue timeout in seconds; ``None`` means the adaptive timeout
      (p95 of recent response times × 1.5, × 2.0 while the success rate is below 0.9,
      clamped to ``adaptive_min``..``adaptive_max``) when ``adaptive_timeout`` is on, and
      no timeout otherwise.  The timeout covers time spent queued, not processing.
    - ``timeout_action``: ``"reject"`` answers ``DeadlineExceeded`` when the timeout
      passes; ``"delay"`` keeps the request but serves it after every request of its own
      and higher levels that has not timed out (Triton's DELAY).  A per-request deadline
      always rejects.
    - ``max_skips``: starvation bound (weighted service).  A non-empty level passed over
      by this many consecutive batches is served first by the next batch.  ``None``
      means strict priority.
    - ``max_batch_size`` counts items, or the sum of ``size_fn(item)`` when a size
      function is given.  A worker that frees takes whatever is queued, up to
      ``max_batch_size``, in service order: no request waits for a batch to fill while
      a worker is idle, and batches grow only while every worker is busy.
    - ``max_wait`` (default ``0.0``): Triton's ``max_queue_delay``, opt in.  Above zero,
      an idle worker holds a batch that is not full for up to ``max_wait`` after its
      oldest member was queued (less when a member's deadline is near), or until its size
      is one of ``preferred_batch_sizes``.  It trades latency for batch size: set it only
      where a measurement shows the larger batches pay for the wait.
    - ``lifo_delay`` (adaptive LIFO, CoDel-style): once the oldest request of a level has
      waited longer than ``lifo_delay`` plus one mean batch duration (a standing queue,
      not a burst) and longer than half of its time budget (its deadline or timeout,
      from when it was queued), that level is served newest first, so the freshest
      requests meet their deadlines and the stale ones expire at theirs; FIFO again once
      the backlog is gone.  A standing queue that drains well inside the deadlines, or
      whose requests have none, stays FIFO.  ``None``: always FIFO.
    - ``retry_individually``: when ``process_batch`` raises, run each member alone so one
      poisoned input does not fail its neighbours.
    - ``close_grace``: seconds in-flight batches get to finish when the queue closes.
    """

    priority_levels: int = 5
    max_queue_size: int = 10000
    capacity_per_level: tuple[int, ...] | None = None
    max_batch_size: int = 10
    max_wait: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    workers: int = 2
    lifo_delay: float | None = 0.1
    default_timeout: float | tuple[float | None, ...] | None = None
    timeout_action: TimeoutAction | tuple[TimeoutAction, ...] = "reject"
    max_skips: int | None = 16
    adaptive_timeout: bool = True
    adaptive_initial: float = 30.0
    adaptive_min: float = 5.0
    adaptive_max: float = 120.0
    retry_individually: bool = False
    close_grace: float = 10.0

    def __post_init__(self) -> None:
        _checks.integer("queue.priority_levels", self.priority_levels, minimum=1)
        _checks.integer("queue.max_queue_size", self.max_queue_size, minimum=1)
        levels = self.priority_levels
        if self.capacity_per_level is not None:
            caps = self.capacity_per_level
            if not isinstance(caps, tuple) or len(caps) != levels:
                raise ValueError(
                    f"queue.capacity_per_level must be a tuple of {levels} integers (got {caps!r})"
                )
            for i, cap in enumerate(caps):
                _checks.integer(f"queue.capacity_per_level[{i}]", cap, minimum=1)
        elif self.max_queue_size < levels:
            raise ValueError(
                "queue.max_queue_size must be >= queue.priority_levels "
                f"(got {self.max_queue_size} < {levels})"
            )
        _checks.integer("queue.max_batch_size", self.max_batch_size, minimum=1)
        _checks.non_negative("queue.max_wait", self.max_wait)
        if not isinstance(self.preferred_batch_sizes, tuple):
            raise ValueError(
                f"queue.preferred_batch_sizes must be a tuple (got {self.preferred_batch_sizes!r})"
            )
        for size in self.preferred_batch_sizes:
            _checks.integer("queue.preferred_batch_sizes", size, minimum=1)
            if size > self.max_batch_size:
                raise ValueError(
                    "queue.preferred_batch_sizes must be <= queue.max_batch_size "
                    f"(got {size} > {self.max_batch_size})"
                )
        _checks.integer("queue.workers", self.workers, minimum=1)
        if self.lifo_delay is not None:
            _checks.non_negative("queue.lifo_delay", self.lifo_delay)
        for i, timeout in enumerate(self._per_level("default_timeout", self.default_timeout)):
            if timeout is not None:
                _checks.positive(f"queue.default_timeout[{i}]", timeout)  # type: ignore[arg-type]
        for action in self._per_level("timeout_action", self.timeout_action):
            _checks.one_of("queue.timeout_action", action, _ACTIONS)
        if self.max_skips is not None:
            _checks.integer("queue.max_skips", self.max_skips, minimum=1)
        _checks.one_of("queue.adaptive_timeout", self.adaptive_timeout, (True, False))
        _checks.positive("queue.adaptive_min", self.adaptive_min)
        _checks.positive("queue.adaptive_max", self.adaptive_max)
        _checks.at_least(
            "queue.adaptive_max", self.adaptive_max, "queue.adaptive_min", self.adaptive_min
        )
        _checks.in_range(
            "queue.adaptive_initial", self.adaptive_initial, self.adaptive_min, self.adaptive_max
        )
        _checks.one_of("queue.retry_individually", self.retry_individually, (True, False))
        _checks.non_negative("queue.close_grace", self.close_grace)

    def _per_level(self, name: str, value: object) -> tuple[object, ...]:
        if isinstance(value, tuple):
            if len(value) != self.priority_levels:
                raise ValueError(
                    f"queue.{name} must be one value or a tuple of {self.priority_levels} "
                    f"values (got {value!r})"
                )
            return value
        return (value,) * self.priority_levels

    @property
    def capacities(self) -> tuple[int, ...]:
        """Capacity of each level (``max_queue_size`` split evenly unless given)."""
        if self.capacity_per_level is not None:
            return self.capacity_per_level
        base, extra = divmod(self.max_queue_size, self.priority_levels)
        return tuple(base + (1 if i < extra else 0) for i in range(self.priority_levels))

    @property
    def timeouts(self) -> tuple[float | None, ...]:
        """The configured queue timeout of each level (``None``: adaptive or none)."""
        value = self.default_timeout
        if isinstance(value, tuple):
            return value
        return (value,) * self.priority_levels

    @property
    def actions(self) -> tuple[TimeoutAction, ...]:
        """The timeout action of each level."""
        value = self.timeout_action
        if isinstance(value, tuple):
            return value
        return (value,) * self.priority_levels

    @property
    def total_capacity(self) -> int:
        """Sum of the per-level capacities."""
        return sum(self.capacities)

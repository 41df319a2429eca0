"""How long the event loop was blocked; task and memory counts for endurance runs.

A task *step* is the time between two checkpoints of one task: while it runs, no other
task runs.  ``LoopMonitor`` records the longest step (overall and since the last
``reset_window()``) and the name of the task that took it, so a server can prove that
no request blocked the loop.  Two ways to run it:

- as a Trio instrument (``trio.lowlevel.add_instrument(monitor)`` or
  ``trio.run(..., instruments=[monitor])``): every step is timed.  Exact, but Trio then
  calls two Python hooks on every step of every task, which costs a light request's
  path more than the rest of the runtime does;
- ``await monitor.run()`` in a task (the runtime does this): a probe that wakes every
  ``interval`` and records how late it woke -- how long a task ready to run waited for
  the loop -- and, once a wake-up is later than ``slow_step_threshold``, installs the
  monitor as an instrument for ``trace_for`` seconds, so that the slow steps that follow
  are timed exactly and named (at most 5 % of the time: after a trace, the next waits
  ``19 × trace_for``, so a loop that is slow for good never pays for every step).

``count_tasks()`` and ``memory_statistics()`` tell a leak from noise in a long run: a
leaked task or object shows in the live counts, whereas RSS also holds memory the
allocators keep after a burst of requests (see docs/RELIABILITY.md, "Endurance").
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import trio

from dtesn_trio import _checks

__all__ = ["LoopMonitor", "LoopStatistics", "MemoryStatistics", "count_tasks", "memory_statistics"]


@dataclass(frozen=True)
class LoopStatistics:
    """The loop's longest steps, in seconds; ``steps`` counts the steps timed (and,
    under ``LoopMonitor.run``, the late wake-ups of its probe)."""

    max_step: float
    max_step_task: str
    window_max_step: float
    steps: int
    slow_steps: int
    slow_step_threshold: float


class LoopMonitor(trio.abc.Instrument):
    """Records the longest task step; ``slow_step_threshold`` counts steps above it.

    ``clock`` (seconds; default ``time.perf_counter``) is read before and after each step.
    Under :meth:`run`, a late wake-up of the probe counts as a step of its lateness
    (``max_step_task`` is then ``""``: not traced), and while the monitor is installed
    the steps are timed instead.
    """

    def __init__(
        self,
        slow_step_threshold: float = 0.05,
        *,
        clock: Callable[[], float] = time.perf_counter,
        trace_for: float = 0.5,
    ) -> None:
        _checks.positive("loop.slow_step_threshold", slow_step_threshold)
        _checks.positive("loop.trace_for", trace_for)
        self.slow_step_threshold = slow_step_threshold
        self.trace_for = trace_for
        self._clock = clock
        self._tracing = False  # installed by run()
        self._started: float | None = None
        self._max_step = 0.0
        self._max_step_task = ""
        self._window_max = 0.0
        self._steps = 0
        self._slow = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = self._clock()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is None:  # installed in the middle of this step
            return
        step = self._clock() - self._started
        self._started = None
        self._record(step, task.name)

    async def run(
        self,
        interval: float = 0.01,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch the loop from a task until cancelled (see the module docstring).

        Costs one wake-up per ``interval`` while the loop keeps up; a wake-up later than
        ``slow_step_threshold`` traces every step for the next ``trace_for`` seconds
        (then none for ``19 × trace_for``).
        Do not also install the monitor yourself while this runs.
        """
        _checks.positive("loop.interval", interval)
        clock = self._clock
        until = next_trace = -math.inf
        task_status.started()
        try:
            while True:
                due = clock() + interval
                await trio.sleep(interval)
                now = clock()
                if self._tracing:
                    if now >= until:
                        trio.lowlevel.remove_instrument(self)
                        self._tracing = False
                    continue
                lag = now - due
                if lag > 0.0:
                    self._record(lag, "")
                if lag > self.slow_step_threshold and now >= next_trace:
                    until = now + self.trace_for
                    next_trace = until + 19 * self.trace_for
                    self._started = None  # this step (the probe's) is not timed
                    trio.lowlevel.add_instrument(self)
                    self._tracing = True
        finally:
            if self._tracing:
                self._tracing = False
                trio.lowlevel.remove_instrument(self)

    def _record(self, step: float, task: str) -> None:
        self._steps += 1
        if step > self._window_max:
            self._window_max = step
            if step > self._max_step:
                self._max_step = step
                self._max_step_task = task
        if step > self.slow_step_threshold:
            self._slow += 1

    def reset_window(self) -> float:
        """Return the longest step since the last call, and start a new window."""
        longest, self._window_max = self._window_max, 0.0
        return longest

    def reset(self) -> None:
        """Forget everything recorded so far (e.g. after a warm-up)."""
        self._max_step = self._window_max = 0.0
        self._max_step_task = ""
        self._steps = self._slow = 0

    def statistics(self) -> LoopStatistics:
        return LoopStatistics(
            max_step=self._max_step,
            max_step_task=self._max_step_task,
            window_max_step=self._window_max,
            steps=self._steps,
            slow_steps=self._slow,
            slow_step_threshold=self.slow_step_threshold,
        )


def count_tasks(root: trio.lowlevel.Task | None = None) -> int:
    """The number of live tasks in the tree under ``root`` (default: the whole run).

    Walks ``child_nurseries`` / ``child_tasks`` (Trio's own bookkeeping): no instrument,
    nothing kept between calls, O(tasks).  Outside a Trio run (no ``root``) it returns 0.
    A count that grows under steady load is a task leak.
    """
    if root is None:
        try:
            root = trio.lowlevel.current_root_task()
        except RuntimeError:
            return 0
        if root is None:
            return 0
    count = 0
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@dataclass(frozen=True)
class MemoryStatistics:
    """This process's memory: what the OS sees, and what is live.

    - ``rss_bytes``: the resident set (``/proc/self/statm``; None where there is none).
      It includes memory the allocators keep for reuse after the objects in it were
      freed: pymalloc releases an arena only once all of it is free, glibc keeps free
      chunks in its heaps.  So RSS rises with the most requests ever in flight at once
      and stays there -- a high-water mark, not a leak.
    - ``allocated_blocks``: live blocks of Python's object allocator
      (``sys.getallocatedblocks()``, cheap; 0 under ``PYTHONMALLOC=malloc``).  It follows
      the live Python objects and the cyclic garbage not yet collected: growth from
      idle to idle after a full collection (``memory_statistics(collect=True)``) is a
      leak.
    - ``traced_bytes`` / ``traced_peak_bytes``: ``tracemalloc``'s current and peak
      traced memory when it is tracing (``PYTHONTRACEMALLOC=1`` in the server's
      environment; it slows the process), else None.
    """

    rss_bytes: int | None
    allocated_blocks: int
    traced_bytes: int | None
    traced_peak_bytes: int | None


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not on Linux
        return None


def memory_statistics(*, collect: bool = False) -> MemoryStatistics:
    """This process's ``MemoryStatistics`` now (no state kept, a few microseconds).

    ``collect=True`` runs a full garbage collection first, so that ``allocated_blocks``
    counts live objects only (cyclic garbage waits for a full collection, which Python
    runs only once the long-lived objects grew by a quarter).  It blocks the calling
    thread for the collection: tens of milliseconds in a server.
    """
    if collect:
        gc.collect()
    traced = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else None
    return MemoryStatistics(
        rss_bytes=_rss_bytes(),
        allocated_blocks=sys.getallocatedblocks(),
        traced_bytes=None if traced is None else traced[0],
        traced_peak_bytes=None if traced is None else traced[1],
    )

"""A Trio instrument that records how long the event loop was blocked.

A task *step* is the time between two checkpoints of one task: while it runs, no other
task runs.  ``LoopMonitor`` records the longest step (overall and since the last
``reset_window()``) and the name of the task that took it, so a server can prove that
no request blocked the loop.  Install it with ``trio.lowlevel.add_instrument`` (the
runtime does) or pass it to ``trio.run(..., instruments=[monitor])``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

__all__ = ["LoopMonitor", "LoopStatistics", "count_tasks"]


@dataclass(frozen=True)
class LoopStatistics:
    """The loop's longest steps, in seconds."""

    max_step: float
    max_step_task: str
    window_max_step: float
    steps: int
    slow_steps: int
    slow_step_threshold: float


class LoopMonitor(trio.abc.Instrument):
    """Records the longest task step; ``slow_step_threshold`` counts steps above it."""

    def __init__(self, slow_step_threshold: float = 0.05) -> None:
        self.slow_step_threshold = slow_step_threshold
        self._started: float | None = None
        self._max_step = 0.0
        self._max_step_task = ""
        self._window_max = 0.0
        self._steps = 0
        self._slow = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is None:  # installed in the middle of this step
            return
        step = time.perf_counter() - self._started
        self._started = None
        self._steps += 1
        if step > self._window_max:
            self._window_max = step
            if step > self._max_step:
                self._max_step = step
                self._max_step_task = task.name
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

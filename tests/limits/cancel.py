"""Cancel an operation at each of its checkpoints in turn.

``cancel_at_step(k, fn)`` runs ``await fn()`` in the current task and cancels it when the
task yields for the ``k``-th time (counted by a Trio instrument), so a loop over
``k = 1, 2, …`` until the operation completes uncancelled visits every checkpoint where a
cancellation can land, including waits that only a cancellation ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


class _CancelAtStep(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope, step: int) -> None:
        self.task = task
        self.scope = scope
        self.step = step
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps == self.step:
                self.scope.cancel()


async def cancel_at_step(step: int, fn: Callable[[], Awaitable[object]]) -> bool:
    """Run ``fn``; cancel it after the task's ``step``-th yield. True if it was cancelled."""
    task = trio.lowlevel.current_task()
    with trio.CancelScope() as scope:
        instrument = _CancelAtStep(task, scope, step)
        trio.lowlevel.add_instrument(instrument)
        try:
            await fn()
        finally:
            trio.lowlevel.remove_instrument(instrument)
    return scope.cancelled_caught

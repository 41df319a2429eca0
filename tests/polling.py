"""Waiting, from Trio, for a state that a worker thread or process will reach."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(condition: Callable[[], bool], interval: float = 0.001) -> None:
    """Poll ``condition`` until it holds (callers bound it with ``trio.fail_after``).

    Only for state that no Trio task signals -- a computation that has started inside a
    worker thread or process; ordering Trio tasks uses events and
    ``wait_all_tasks_blocked``, never this.
    """
    while not condition():  # noqa: ASYNC110 -- the state changes in another thread
        await trio.sleep(interval)

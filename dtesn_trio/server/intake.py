"""``LifoSlots``: at most ``limit`` requests in progress; the others wait, by priority
and newest first.

Netflix's ``LifoBlockingLimiter`` in Trio: a request that finds every slot taken waits
(a parked task costs nothing) until a slot frees or its deadline passes.  A freed slot
goes to the request that arrived last: it has the most of its deadline left, so under
a storm the requests that start are the ones that can still be answered in time, and
the oldest expire where they wait, before any work is spent on them.  A more urgent
priority (a lower number) always goes before a less urgent one, as in the queue.

Behind the lean server's read gate (``gate.py``) the few requests that wait here have
waited their turn already, unread: there a freed slot goes to the oldest
(``newest_first=False``), so that none waits out its deadline behind later ones.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import trio

__all__ = ["LifoSlots"]


class _Waiter:
    __slots__ = ("event", "granted", "since")

    def __init__(self, since: float) -> None:
        self.event = trio.Event()
        self.granted = False
        self.since = since


class LifoSlots:
    """``limit`` slots for ``levels`` priorities (0 the most urgent).  ``try_acquire()``
    takes a free one or none; ``await acquire(deadline, priority)`` takes one (True) or
    gives up at ``deadline`` (False); ``release()`` hands the slot to the newest waiter
    of the most urgent priority that has one (the oldest with ``newest_first=False``).
    After ``close()`` every waiter and every later ``acquire`` gets False."""

    def __init__(self, limit: int, levels: int = 1, *, newest_first: bool = True) -> None:
        self.limit = limit
        self.used = 0
        self.closed = False
        self.newest_first = newest_first
        self._levels: list[OrderedDict[_Waiter, None]] = [OrderedDict() for _ in range(levels)]

    @property
    def waiting(self) -> int:
        return sum(map(len, self._levels))

    def try_acquire(self) -> bool:
        """Take a free slot (True) without waiting, or none (False)."""
        if self.used < self.limit and not self.closed:  # a free slot means nobody waits
            self.used += 1
            return True
        return False

    async def acquire(self, deadline: float = math.inf, priority: int = 0) -> bool:
        if self.closed:
            return False
        if self.try_acquire():
            return True
        waiter = _Waiter(trio.current_time())
        waiters = self._levels[priority]
        waiters[waiter] = None
        try:
            with trio.move_on_at(deadline):
                await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # cancelled from outside after the slot was handed over
                self.release()
            raise
        finally:
            waiters.pop(waiter, None)
        return waiter.granted

    def oldest_since(self) -> float:
        """When the longest waiter began to wait (``math.inf``: nobody waits)."""
        return min((next(iter(w)).since for w in self._levels if w), default=math.inf)

    def release(self, *, newest: bool | None = None) -> None:
        """Give a slot back: to a waiter if there is one, the newest or the oldest of its
        level as ``newest`` says (``None``: as ``newest_first`` says)."""
        if not self.closed:
            last = self.newest_first if newest is None else newest
            for waiters in self._levels:
                if waiters:
                    waiter, _ = waiters.popitem(last=last)
                    waiter.granted = True
                    waiter.event.set()
                    return
        self.used -= 1

    def close(self) -> None:
        """Refuse from now on: wake every waiter without a slot."""
        self.closed = True
        for waiters in self._levels:
            while waiters:
                waiter, _ = waiters.popitem(last=False)
                waiter.event.set()

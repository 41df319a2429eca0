"""``ReadGate``: how many requests the lean server reads ahead of the work, in turn.

A request that is read costs the event loop (parse, decode, a timer, an answer) even
when it is only refused; under a storm of clients that retry at once, reading every
request spends the CPU the work needs on refusals.  The gate holds ``tokens`` (the
server's ``max_in_flight`` plus ``max_waiting``): a connection whose next request is for
``/v1/process`` reads it only with a token; without one it leaves the bytes in the
kernel's socket buffer (which costs nothing) and waits, first come first served, until
a token frees or ``max_wait`` seconds have passed.  Then it reads the request anyway,
marked as having waited too long, and the app answers it 503 ``overloaded`` at once.

First come first served, because in a closed loop a client comes back the moment it is
answered: every answer that comes sooner brings the next request sooner.  Served in
turn, each request waits its share and the clients' request rate falls to what the
server answers; refused only after ``max_wait``, a refusal costs one read and a short
answer, at most ``waiting / max_wait`` times a second.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import trio

__all__ = ["GateStatistics", "ReadGate"]


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False


@dataclasses.dataclass(frozen=True, slots=True)
class GateStatistics:
    """``tokens`` in all, ``held`` of them, connections ``waiting`` unread; since start,
    how many times a token was ``taken`` and how many waits ran ``max_wait`` out
    (``expired``)."""

    tokens: int
    held: int
    waiting: int
    taken: int
    expired: int


class ReadGate:
    """``tokens`` tokens.  ``try_take()`` takes a free one (True) or none; ``await
    wait()`` waits in turn for one: True with a token, False without (``max_wait``
    passed, or the gate was opened); ``release()`` gives a token back, to the oldest
    waiter if there is one.  ``open()`` (a graceful stop) wakes every waiter without a
    token, and from then on nobody waits."""

    def __init__(self, tokens: int, max_wait: float) -> None:
        self.tokens = tokens
        self.max_wait = max_wait
        self.held = 0
        self.taken = 0
        self.expired = 0
        self.opened = False
        self._waiters: OrderedDict[_Waiter, None] = OrderedDict()

    def statistics(self) -> GateStatistics:
        return GateStatistics(self.tokens, self.held, len(self._waiters), self.taken, self.expired)

    def try_take(self) -> bool:
        # A waiter means no token is free (release hands it over), so the two agree.
        if self.held < self.tokens and not self.opened:
            self.held += 1
            self.taken += 1
            return True
        return False

    async def wait(self) -> bool:
        if self.opened:
            return False
        waiter = _Waiter()
        self._waiters[waiter] = None
        try:
            with trio.move_on_after(self.max_wait) as scope:
                await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # cancelled from outside after the token was handed over
                self.release()
            raise
        finally:
            self._waiters.pop(waiter, None)
        if scope.cancelled_caught and not waiter.granted:
            self.expired += 1
        return waiter.granted

    def release(self) -> None:
        if self._waiters and not self.opened:
            waiter, _ = self._waiters.popitem(last=False)  # the oldest
            waiter.granted = True
            waiter.event.set()
            self.taken += 1
            return
        self.held -= 1

    def open(self) -> None:
        """Stop gating: wake every waiter without a token."""
        self.opened = True
        while self._waiters:
            waiter, _ = self._waiters.popitem(last=False)
            waiter.event.set()

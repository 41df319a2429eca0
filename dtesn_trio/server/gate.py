"""``ReadGate``: how many requests the lean server reads ahead of the work, in turn.

A request that is read costs the event loop (parse, decode, a timer, an answer) even
when it is only refused; under a storm of clients that retry at once, reading every
request spends the CPU the work needs on refusals.  The gate holds ``tokens`` (the
server's ``max_in_flight`` plus ``max_waiting``): a connection whose next request is for
``/v1/process`` reads it only with a token; without one it leaves the bytes in the
kernel's socket buffer (which costs nothing) and waits, in turn, until
a token frees or ``max_wait`` seconds have passed.  Then it reads the request anyway,
marked as having waited too long, and the app answers it 503 ``overloaded`` at once.

First come first served, because in a closed loop a client comes back the moment it is
answered: every answer that comes sooner brings the next request sooner.  Served in
turn, each request waits its share and the clients' request rate falls to what the
server answers; refused only after ``max_wait``, a refusal costs one read and a short
answer, at most ``waiting / max_wait`` times a second.  But once the oldest waiter has
waited a third of ``max_wait`` the newest goes first (adaptive LIFO, as in Facebook's
"Fail at Scale"): requests that arrive faster than they are answered, as from many
independent clients, would otherwise all wait until they are too late to be of use;
newest first, the ones served are fresh and the oldest wait ``max_wait`` out.
"""

from __future__ import annotations

import dataclasses

import trio

from dtesn_trio.server.intake import LifoSlots

__all__ = ["GateStatistics", "ReadGate"]


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
    waiter if there is one, or to the newest once the oldest has waited ``lifo_after``
    (a third of ``max_wait``).  ``open()`` (a graceful stop) wakes every waiter without a
    token, and from then on nobody waits."""

    def __init__(self, tokens: int, max_wait: float) -> None:
        self.max_wait = max_wait
        self.lifo_after = max_wait / 3
        self.taken = 0
        self.expired = 0
        self._slots = LifoSlots(tokens, newest_first=False)  # one level, oldest first

    @property
    def tokens(self) -> int:
        return self._slots.limit

    @property
    def held(self) -> int:
        return self._slots.used

    @property
    def opened(self) -> bool:
        return self._slots.closed

    def statistics(self) -> GateStatistics:
        slots = self._slots
        return GateStatistics(self.tokens, slots.used, slots.waiting, self.taken, self.expired)

    def try_take(self) -> bool:
        if self._slots.try_acquire():
            self.taken += 1
            return True
        return False

    async def wait(self) -> bool:
        if await self._slots.acquire(trio.current_time() + self.max_wait):
            self.taken += 1
            return True
        if not self._slots.closed:
            self.expired += 1
        return False

    def release(self) -> None:
        slots = self._slots
        if slots.waiting:
            # adaptive LIFO: first come first served until the oldest has waited
            # lifo_after, then the newest (the oldest wait out max_wait)
            newest = trio.current_time() - slots.oldest_since() >= self.lifo_after
            slots.release(newest=newest)
        else:
            slots.release()

    def open(self) -> None:
        """Stop gating: wake every waiter without a token."""
        self._slots.close()

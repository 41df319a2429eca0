"""The server's garbage-collector settings (``server.gc_*``) and a cheap pause monitor.

A server holding thousands of connections has a heap of millions of tracked objects;
each *full* (generation 2) collection walks all of them while the event loop waits
(docs/RELIABILITY.md, "The garbage collector", has the pauses measured).  ``serve``
applies, once the runtime is ready:

- ``gc_freeze``: ``gc.freeze()`` -- everything alive at start-up (imports, the model,
  the app) moves to the permanent generation and is never scanned again.  Once, at
  start-up only: freezing later would make per-connection objects permanent, and a
  frozen cycle is never collected.
- ``gc_threshold``: ``gc.set_threshold(gen0, gen1, gen2)``, or ``"default"`` to leave
  the interpreter's own.

and installs a ``GCMonitor`` (a ``gc.callbacks`` hook: two ``perf_counter`` calls per
collection) whose counts and longest pauses ``/v1/stats`` and ``/metrics`` report.
Leaving restores the threshold and unfreezes what it froze.  The GC is one per process:
when several ``serve`` run in one process, the first one's previous settings are the
ones restored and the last applied wins while they overlap.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["GCMonitor", "GCSettings", "GCStatistics", "applied_gc_settings"]

logger = logging.getLogger("dtesn_trio.server")

Threshold = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class GCStatistics:
    """Collections of each generation since the monitor started, and their pauses
    (seconds).  ``threshold`` / ``frozen`` are the interpreter's at the time of asking."""

    collections: tuple[int, int, int]
    longest_pause: tuple[float, float, float]
    total_pause: tuple[float, float, float]
    collected: tuple[int, int, int]
    threshold: tuple[int, int, int]
    frozen: int
    freeze: bool
    configured_threshold: tuple[int, int, int] | Literal["default"]


@dataclass(frozen=True, slots=True)
class GCSettings:
    """What ``applied_gc_settings`` did (for the start-up log line and the stats)."""

    freeze: bool
    threshold: tuple[int, int, int] | Literal["default"]


class GCMonitor:
    """Counts collections per generation and times them (``gc.callbacks``).

    The callback runs inside the collector, in whichever thread triggered it: it only
    reads the clock and updates a few lists (never raises, never allocates a tracked
    object)."""

    def __init__(self, settings: GCSettings) -> None:
        self.settings = settings
        self._collections = [0, 0, 0]
        self._longest = [0.0, 0.0, 0.0]
        self._total = [0.0, 0.0, 0.0]
        self._collected = [0, 0, 0]
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self._collections[generation] += 1
        self._total[generation] += pause
        self._collected[generation] += info["collected"]
        if pause > self._longest[generation]:
            self._longest[generation] = pause

    def statistics(self) -> GCStatistics:
        return GCStatistics(
            collections=(self._collections[0], self._collections[1], self._collections[2]),
            longest_pause=(self._longest[0], self._longest[1], self._longest[2]),
            total_pause=(self._total[0], self._total[1], self._total[2]),
            collected=(self._collected[0], self._collected[1], self._collected[2]),
            threshold=gc.get_threshold(),
            frozen=gc.get_freeze_count(),
            freeze=self.settings.freeze,
            configured_threshold=self.settings.threshold,
        )

    def get_stats(self) -> dict[str, Any]:
        """The ``gc`` section of ``/v1/stats`` (milliseconds, per generation 0-2)."""
        s = self.statistics()
        return {
            "freeze": s.freeze,
            "frozen_objects": s.frozen,
            "threshold": list(s.threshold),
            "configured_threshold": (
                s.configured_threshold
                if s.configured_threshold == "default"
                else list(s.configured_threshold)
            ),
            "collections": {str(g): n for g, n in enumerate(s.collections)},
            "collected": {str(g): n for g, n in enumerate(s.collected)},
            "longest_pause_ms": {str(g): p * 1000 for g, p in enumerate(s.longest_pause)},
            "total_pause_ms": {str(g): p * 1000 for g, p in enumerate(s.total_pause)},
        }


# One collector per process: how many ``applied_gc_settings`` blocks are open, and what
# the process had before the first of them (restored when the last one leaves).
_open_blocks = 0
_saved_threshold: Threshold = (700, 10, 10)
_saved_freeze_count = 0


@contextmanager
def applied_gc_settings(
    freeze: bool, threshold: Threshold | Literal["default"]
) -> Iterator[GCMonitor]:
    """Apply ``freeze`` / ``threshold`` and monitor collections until the block leaves;
    then remove the monitor and restore the threshold the process had before.  What
    was frozen is unfrozen only if nothing was frozen before (someone else's
    ``gc.freeze()`` stays as it was)."""
    global _open_blocks, _saved_threshold, _saved_freeze_count
    if _open_blocks == 0:
        _saved_threshold = gc.get_threshold()
        _saved_freeze_count = gc.get_freeze_count()
    _open_blocks += 1
    monitor = GCMonitor(GCSettings(freeze=freeze, threshold=threshold))
    callback = monitor.callback
    try:
        if threshold != "default":
            gc.set_threshold(*threshold)
        if freeze:
            gc.freeze()
        gc.callbacks.append(callback)
        yield monitor
    finally:
        if callback in gc.callbacks:
            gc.callbacks.remove(callback)
        _open_blocks -= 1
        if _open_blocks == 0:
            gc.set_threshold(*_saved_threshold)
            if _saved_freeze_count == 0 and gc.get_freeze_count():
                gc.unfreeze()

"""Keep BLAS from oversubscribing the cores while worker threads compute.

OpenBLAS and MKL keep one *process-wide* thread count, so a per-call
``threadpool_limits`` context in each worker thread would race: the first thread to
leave would restore the old count while the others still compute. Instead every
computing thread holds a :func:`blas_threads` lease; the first lease applies the limit
(``threadpoolctl``), the last one restores what was there before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["available_cores", "blas_threads", "current_blas_limit"]

_lock = threading.Lock()
_leases = 0
_limit: int | None = None
_restore: Any = None
_controller: Any = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def current_blas_limit() -> int | None:
    """The limit held by the leases now, or ``None`` when no lease is held."""
    with _lock:
        return _limit if _leases else None


@contextmanager
def blas_threads(limit: int) -> Iterator[None]:
    """Hold BLAS to at most ``limit`` threads (process-wide) while inside.

    Concurrent leases share one limit: the smallest requested so far during the
    overlap (a later, smaller request tightens it; nothing loosens it until all leases
    are gone).
    """
    global _leases, _limit, _restore, _controller
    if limit < 1:
        raise ValueError(f"processor.blas_threads must be >= 1 (got {limit})")
    with _lock:
        if _leases == 0 or _limit is None or limit < _limit:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
            limiter = _controller.limit(limits=limit, user_api="blas")
            if _restore is None:
                _restore = limiter  # remembers the counts from before the first lease
            _limit = limit
        _leases += 1
    try:
        yield
    finally:
        with _lock:
            _leases -= 1
            if _leases == 0:
                if _restore is not None:
                    _restore.restore_original_limits()
                _restore = None
                _limit = None

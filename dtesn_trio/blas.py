"""Keep BLAS from oversubscribing the cores while worker threads compute (any engine).

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
_original: list[tuple[Any, int | None]] | None = None
_libs: list[Any] | None = None


def _blas_libs() -> list[Any]:
    global _libs
    if _libs is None:
        from threadpoolctl import ThreadpoolController

        _libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libs


def _set(lib: Any, n: int) -> None:
    # threadpoolctl lets only one "controlling thread" change a process-wide OpenBLAS
    # pool, and silently ignores the others. Every change here happens under `_lock`,
    # from whichever worker thread holds it, so take control for the call and give it
    # back: changes must never be dropped.
    clear = getattr(type(lib), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    try:
        lib.set_num_threads(n)
    finally:
        if clear is not None:
            clear(force=True)


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
    global _leases, _limit, _original
    if limit < 1:
        raise ValueError(f"processor.blas_threads must be >= 1 (got {limit})")
    with _lock:
        libs = _blas_libs()
        if _leases == 0:
            _original = [(lib, lib.get_num_threads()) for lib in libs]
        if _limit is None or limit < _limit:
            for lib in libs:
                _set(lib, limit)
            _limit = limit
        _leases += 1
    try:
        yield
    finally:
        with _lock:
            _leases -= 1
            if _leases == 0:
                for lib, n in _original or []:
                    if n is not None:
                        _set(lib, n)
                _original = None
                _limit = None

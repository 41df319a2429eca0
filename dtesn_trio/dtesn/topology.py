"""The membrane tree: A000081 membranes per level, parents assigned round-robin."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

__all__ = ["MembraneSlot", "a000081", "membrane_count", "tree_layout"]


@cache
def a000081(n: int) -> int:
    """The number of unlabelled rooted trees with ``n`` nodes (OEIS A000081), n >= 1.

    ``a(n+1) = (1/n) · Σ_{k=1..n} (Σ_{d|k} d·a(d)) · a(n-k+1)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if n == 1:
        return 1
    m = n - 1
    total = 0
    for k in range(1, m + 1):
        s = sum(d * a000081(d) for d in range(1, k + 1) if k % d == 0)
        total += s * a000081(m - k + 1)
    return total // m


def membrane_count(depth: int) -> int:
    """Membranes in a tree of ``depth`` levels: ``Σ_{k=1..depth} A000081(k)``."""
    return sum(a000081(k) for k in range(1, depth + 1))


@dataclass(frozen=True)
class MembraneSlot:
    """Position of one membrane: global ``index`` (level order), 1-based ``level``,
    global index of its ``parent`` (``None`` for the root), and its ``units``."""

    index: int
    level: int
    parent: int | None
    units: int


def tree_layout(depth: int, reservoir_size: int) -> list[MembraneSlot]:
    """The membranes of a tree, in level order.

    Level k holds A000081(k) membranes; membrane j of level k (0-based within the level)
    is driven by membrane ``j mod A000081(k-1)`` of level k-1. ``reservoir_size`` units
    are split evenly; the first ``reservoir_size mod n`` membranes get one unit more.
    """
    n = membrane_count(depth)
    if reservoir_size < n:
        raise ValueError(f"reservoir_size must be >= {n} (got {reservoir_size})")
    base, extra = divmod(reservoir_size, n)
    slots: list[MembraneSlot] = []
    prev_start, prev_count = 0, 0
    for level in range(1, depth + 1):
        start = len(slots)
        count = a000081(level)
        for j in range(count):
            index = start + j
            parent = None if level == 1 else prev_start + j % prev_count
            units = base + (1 if index < extra else 0)
            slots.append(MembraneSlot(index, level, parent, units))
        prev_start, prev_count = start, count
    return slots

"""Validation helpers for the frozen config dataclasses.

Every failure is a ``ValueError`` naming the field and the value, e.g.
``ValueError("pool.max_connections must be >= pool.min_connections (got 5 < 10)")``;
``check_priority`` is the one request-side check and raises ``InvalidRequest``.
"""

from __future__ import annotations

import math

from dtesn_trio.errors import InvalidRequest


def positive(field: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    if not _is_number(value) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{field} must be > 0 (got {value!r})")


def non_negative(field: str, value: float) -> None:
    """``value`` must be a finite number >= 0."""
    if not _is_number(value) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{field} must be >= 0 (got {value!r})")


def in_range(field: str, value: float, low: float, high: float) -> None:
    """``low <= value <= high``."""
    if not _is_number(value) or not (low <= value <= high):
        raise ValueError(f"{field} must be between {low} and {high} (got {value!r})")


def integer(field: str, value: object, *, minimum: int | None = None) -> None:
    """``value`` must be an int (not a bool), at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an integer (got {value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{field} must be >= {minimum} (got {value!r})")


def at_least(field: str, value: float, other_field: str, other: float) -> None:
    """``value >= other``, naming both fields."""
    if value < other:
        raise ValueError(f"{field} must be >= {other_field} (got {value!r} < {other!r})")


def one_of(field: str, value: object, choices: tuple[object, ...]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{field} must be one of {allowed} (got {value!r})")


def check_priority(priority: object, levels: int) -> None:
    """A request's priority: an int (not a bool) in ``0 .. levels - 1``.

    The one check every layer uses (queue, runtime, admission, server), so a bad
    priority is refused with the same ``InvalidRequest(field="priority")`` message
    wherever it is caught.
    """
    if type(priority) is not int or not 0 <= priority < levels:
        raise InvalidRequest(
            f"priority must be an integer >= 0 and <= {levels - 1} (got {priority!r})",
            field="priority",
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

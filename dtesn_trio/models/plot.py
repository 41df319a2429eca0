"""The scores of a search's trials as a small, self-contained SVG (no plotting library).

``trials_svg(trials, title=...)`` draws one mark per trial: its validation NRMSE (log
scale) against its number, the best trial filled, a failed trial (no score) as a cross
along the top, and the best score so far as a step line.  Each mark is an element of
class ``trial`` (``trial best``, ``trial failed``) whose ``<title>`` holds the trial's
number, score and parameters, so a browser shows them on hover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["trials_svg"]

_W, _H = 640, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 40, 48


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _ticks(low: float, high: float) -> list[float]:
    """1, 2, 5 times powers of ten within ``[low, high]`` (at least the two ends)."""
    out = []
    for exp in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**exp
            if low <= v <= high:
                out.append(v)
    if len(out) > 8:
        out = [v for v in out if f"{v:.0e}".startswith("1")]
    return out or [low, high]


def trials_svg(trials: Sequence[dict[str, Any]], *, title: str) -> str:
    """The SVG document (text) of ``trials``: dicts with ``trial`` (its number),
    ``validation_nrmse`` (a number, or None for a trial that failed) and ``params``."""
    scores = [t["validation_nrmse"] for t in trials]
    finite = [s for s in scores if s is not None and s > 0]
    low = min(finite, default=0.1) / 1.25
    high = max(finite, default=1.0) * 1.25
    if high / low < 10:  # at least a decade: small differences stay readable
        mid = math.sqrt(low * high)
        low, high = mid / math.sqrt(10), mid * math.sqrt(10)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    n = max(len(trials), 1)

    def x_of(position: int) -> float:
        return _LEFT + plot_w * (position + 0.5) / n

    def y_of(score: float) -> float:
        frac = (math.log(score) - math.log(low)) / (math.log(high) - math.log(low))
        return _TOP + plot_h * (1 - frac)

    best = min((s for s in scores if s is not None), default=None)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}"'
        f' viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_W / 2}" y="20" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none"'
        ' stroke="#999"/>',
    ]
    for tick in _ticks(low, high):
        y = y_of(tick)
        parts.append(
            f'<line x1="{_LEFT - 4}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}"'
            ' stroke="#eee"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    step = max(1, math.ceil(n / 10))
    for position in range(0, len(trials), step):
        parts.append(
            f'<text x="{x_of(position):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">'
            f"{trials[position]['trial']}</text>"
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 12}" text-anchor="middle">trial</text>'
        f'<text x="16" y="{_TOP + plot_h / 2}" text-anchor="middle"'
        f' transform="rotate(-90 16 {_TOP + plot_h / 2})">validation NRMSE (log)</text>'
    )
    running: list[str] = []
    so_far = math.inf
    for position, score in enumerate(scores):
        if score is not None and score > 0:
            so_far = min(so_far, score)
        if math.isfinite(so_far):
            running.append(f"{x_of(position):.1f},{y_of(so_far):.1f}")
    if running:
        parts.append(
            f'<polyline class="best-so-far" points="{" ".join(running)}" fill="none"'
            ' stroke="#2a7" stroke-width="1.5"/>'
        )
    for position, trial in enumerate(trials):
        score = trial["validation_nrmse"]
        params = ", ".join(f"{k}={v}" for k, v in sorted(trial.get("params", {}).items()))
        label = escape(
            f"trial {trial['trial']}: "
            + ("failed" if score is None else f"NRMSE {_fmt(score)}")
            + (f" ({params})" if params else "")
        )
        x = x_of(position)
        if score is None or score <= 0:
            y = _TOP + 8.0
            parts.append(
                f'<path class="trial failed" d="M{x - 4:.1f},{y - 4:.1f}l8,8m0,-8l-8,8"'
                f' stroke="#c33" stroke-width="1.5"><title>{label}</title></path>'
            )
            continue
        y = min(max(y_of(score), _TOP), _TOP + plot_h)
        kind, fill = ("trial best", "#2a7") if score == best else ("trial", "#fff")
        parts.append(
            f'<circle class="{kind}" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}"'
            f' stroke="#2a7" stroke-width="1.5"><title>{label}</title></circle>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"

"""The live progress display (rich): elapsed/remaining, offered and achieved rate,
in flight, p50/p99 of the last second, errors by code."""

from __future__ import annotations

from collections.abc import Callable

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dtesn_trio.soak.loadgen import LoadConfig
from dtesn_trio.soak.recorder import RecorderStatistics

__all__ = ["LiveProgress", "render_progress"]


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f} ms"


def render_progress(stats: RecorderStatistics, load: LoadConfig, title: str) -> Group:
    """One frame of the display."""
    elapsed = max(stats.elapsed, 0.0)
    remaining = max(load.duration - elapsed, 0.0)
    offered = stats.sent / elapsed if elapsed > 0 else 0.0
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_column(style="bold")
    table.add_column()
    if load.mode == "open":
        target_rate = f"{load.rate:g}/s {load.arrivals}"
    else:
        target_rate = f"closed loop × {load.concurrency}"
    table.add_row("elapsed", f"{elapsed:6.1f} s", "remaining", f"{remaining:6.1f} s")
    table.add_row("load", target_rate, "in flight", f"{stats.in_flight:,}")
    table.add_row(
        "offered", f"{offered:,.1f}/s", "achieved (last s)", f"{stats.recent_rate:,.1f}/s"
    )
    table.add_row("sent", f"{stats.sent:,}", "ok", f"{stats.ok:,}")
    table.add_row(
        "p50 (last s)", _ms(stats.recent_p50_ms), "p99 (last s)", _ms(stats.recent_p99_ms)
    )
    errors = {k: n for k, n in stats.by_outcome.items() if not k.startswith("2")}
    if errors:
        err = Text(", ".join(f"{k}: {n:,}" for k, n in sorted(errors.items())), style="red")
    else:
        err = Text("none", style="green")
    return Group(Text(title, style="bold cyan"), table, Text.assemble("errors: ", err))


class LiveProgress:
    """Redraws the display a few times a second on ``console`` (stderr by default).

    Refreshing is driven from the Trio task, not rich's own refresh thread.
    """

    def __init__(
        self,
        load: LoadConfig,
        title: str,
        *,
        console: Console | None = None,
        interval: float = 0.25,
    ) -> None:
        self.load = load
        self.title = title
        self.console = console or Console(stderr=True)
        self.interval = interval

    async def run(self, statistics: Callable[[float], RecorderStatistics]) -> None:
        """Show ``statistics(trio.current_time())`` until cancelled; the last frame stays.

        Start it after the load has started (e.g. ``recorder.statistics`` once
        ``recorder.start()`` was called).
        """
        frame = render_progress(statistics(trio.current_time()), self.load, self.title)
        with Live(frame, console=self.console, auto_refresh=False, transient=False) as live:
            try:
                while True:
                    await trio.sleep(self.interval)
                    stats = statistics(trio.current_time())
                    live.update(render_progress(stats, self.load, self.title), refresh=True)
            finally:
                stats = statistics(trio.current_time())
                live.update(render_progress(stats, self.load, self.title), refresh=True)

"""The live display renders what the recorder says."""

from __future__ import annotations

from rich.console import Console

from dtesn_trio.soak.loadgen import LoadConfig
from dtesn_trio.soak.progress import render_progress
from dtesn_trio.soak.recorder import Outcome, Recorder


def test_frame_shows_rates_latencies_and_errors() -> None:
    rec = Recorder()
    rec.start(0.0)
    for i in range(100):
        t = i / 50
        rec.on_send(t)
        rec.on_done(t, t + 0.004, 2, Outcome(503, "overloaded") if i % 10 == 0 else Outcome.OK)
    rec.on_send(2.0)  # one still in flight
    console = Console(record=True, width=100)
    console.print(render_progress(rec.statistics(2.5), LoadConfig(duration=10, rate=50), "soak"))
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]
    assert "elapsed 2.5 s remaining 7.5 s" in lines
    assert "load 50/s constant in flight 1" in lines
    assert "offered 40.4/s achieved (last s) 50.0/s" in lines
    assert "sent 101 ok 90" in lines
    assert "p50 (last s) 4.0 ms p99 (last s) 4.0 ms" in lines
    assert "errors: 503 overloaded: 10" in lines

"""Open-loop accounting: a stalled server cannot hide its stall (no coordinated omission)."""

from __future__ import annotations

import trio
import trio.testing

from dtesn_trio.soak.loadgen import LoadConfig, run_load
from dtesn_trio.soak.recorder import Recorder
from dtesn_trio.soak.targets import open_http_target
from tests.soak.app import EchoApp, serve_app

RATE = 50.0
STALL_FROM, STALL_UNTIL = 1.0, 2.0


async def _soak_with_stall(max_connections: int | None) -> tuple[Recorder, float, EchoApp]:
    app = EchoApp()
    recorder = Recorder(keep_records=True)
    with trio.fail_after(60):
        async with (
            serve_app(app) as url,
            open_http_target(url, max_connections=max_connections) as target,
        ):
            start = trio.current_time()
            app.stall_from = start + STALL_FROM
            app.stall_until = start + STALL_UNTIL
            await run_load(LoadConfig(duration=3.0, rate=RATE), target, recorder)
    return recorder, start, app


def _check_stall(recorder: Recorder, start: float) -> int:
    assert recorder.records is not None
    assert recorder.sent == len(recorder.records) == recorder.answered + recorder.failed
    assert recorder.sent == 150
    stalled = 0
    for intended, end, _, key in recorder.records:
        assert key == "200"
        offset = intended - start
        if STALL_FROM <= offset < STALL_UNTIL:
            stalled += 1
            # The whole remaining stall is in this request's latency.
            assert end - intended >= (STALL_UNTIL - offset) - 1e-9, (offset, end - intended)
    return stalled


async def test_stall_is_in_every_latency_with_enough_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder, start, app = await _soak_with_stall(None)
    # Exactly the 50 requests due in [1 s, 2 s) carry the stall.
    assert _check_stall(recorder, start) == 50
    assert app.max_in_flight >= 50


async def test_stall_is_in_every_latency_when_connections_run_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # With only 4 connections, most requests due during the stall are not even sent until
    # it ends: a closed-loop client would time them from their late send and see no stall.
    # Timed from their intended send, they still carry it.
    recorder, start, app = await _soak_with_stall(4)
    assert _check_stall(recorder, start) == 50
    assert app.max_in_flight == 4
    # The server saw only 4 of the 50 requests due during the stall arrive during it; the
    # rest waited in the client, and that wait is in their latency.
    during = [t - start for t in app.arrivals if STALL_FROM <= t - start < STALL_UNTIL]
    assert len(during) == 4
    assert recorder.records is not None
    latencies = sorted(end - intended for intended, end, _, _ in recorder.records)
    assert latencies[-1] >= STALL_UNTIL - STALL_FROM - 1e-9

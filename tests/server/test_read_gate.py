"""The lean server's read gate (``server.max_waiting``): beyond ``max_in_flight +
max_waiting`` requests read, a request for the work stays unread and is read in turn,
first come first served; one that waits out ``max_unread_wait`` is answered 503
``overloaded`` unstarted; other routes are never held; a drain reads and answers the
unread ones; a request that trickles in holds no token."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from dtesn_trio.server import ServerConfig
from dtesn_trio.server.gate import ReadGate
from tests.polling import wait_until
from tests.server.harness import served
from tests.server.runtimes import open_test_runtime
from tests.server.test_intake import LONG, Recorder

# ---------------------------------------------------------------- the gate alone


async def test_a_released_token_goes_to_the_oldest_waiter(autojump_clock: trio.abc.Clock) -> None:
    gate = ReadGate(1, max_wait=math.inf)
    assert gate.try_take()
    assert not gate.try_take()
    order: list[str] = []

    async def wait(name: str) -> None:
        assert await gate.wait()
        order.append(name)

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(("first", "second", "third")):
            nursery.start_soon(wait, name)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.statistics().waiting == i + 1
        for expected in (["first"], ["first", "second"], ["first", "second", "third"]):
            gate.release()  # hands the one token over
            await trio.testing.wait_all_tasks_blocked()
            assert order == expected
            assert gate.held == 1
    gate.release()
    assert gate.statistics() == type(gate.statistics())(
        tokens=1, held=0, waiting=0, taken=4, expired=0
    )


async def test_once_the_oldest_has_waited_a_third_of_max_wait_the_newest_goes_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = ReadGate(1, max_wait=3.0)
    assert gate.lifo_after == 1.0
    assert gate.try_take()
    t0 = trio.current_time()
    got: list[tuple[str, bool, float]] = []

    async def wait(name: str) -> None:
        granted = await gate.wait()
        got.append((name, granted, round(trio.current_time() - t0, 9)))

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c", "d"):
            nursery.start_soon(wait, name)
            await trio.sleep(0.2)  # a waits from 0, b from 0.2, c from 0.4, d from 0.6
        await trio.sleep(0.1)
        gate.release()  # at 0.9: a has waited less than 1 s, so a goes first
        await trio.sleep(0.2)
        gate.release()  # at 1.1: b has waited 0.9 s, so b
        await trio.sleep(0.2)
        gate.release()  # at 1.3: c has waited 0.9 s, so c
        await trio.sleep(0.5)
        gate.release()  # at 1.8: d has waited 1.2 s, so d (the newest is the oldest too)
    assert got == [("a", True, 0.9), ("b", True, 1.1), ("c", True, 1.3), ("d", True, 1.8)]

    gate = ReadGate(1, max_wait=3.0)
    assert gate.try_take()
    t0 = trio.current_time()
    got.clear()
    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(wait, name)
            await trio.sleep(0.2)  # a from 0, b from 0.2, c from 0.4
        await trio.sleep(0.4)
        gate.release()  # at 1.0: a has waited 1 s, so the newest, c
        await trio.sleep(0.5)
        gate.release()  # at 1.5: a has waited 1.5 s, so the newest left, b
    # a waits max_wait out, unread
    assert got == [("c", True, 1.0), ("b", True, 1.5), ("a", False, 3.0)]
    assert gate.statistics().expired == 1


async def test_a_waiter_gives_up_after_exactly_max_wait(autojump_clock: trio.abc.Clock) -> None:
    gate = ReadGate(1, max_wait=2.0)
    assert gate.try_take()
    start = trio.current_time()
    assert not await gate.wait()
    assert trio.current_time() - start == 2.0
    stats = gate.statistics()
    assert (stats.held, stats.waiting, stats.expired) == (1, 0, 1)


async def test_open_wakes_every_waiter_without_a_token(autojump_clock: trio.abc.Clock) -> None:
    gate = ReadGate(1, max_wait=math.inf)
    assert gate.try_take()
    got: list[bool] = []

    async def wait() -> None:
        got.append(await gate.wait())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        gate.open()
    assert got == [False, False]
    assert gate.expired == 0  # woken, not expired
    assert not gate.try_take()  # nobody is gated after open()
    assert not await gate.wait()
    gate.release()
    assert gate.held == 0


async def test_a_waiter_cancelled_while_waiting_takes_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = ReadGate(1, max_wait=math.inf)
    assert gate.try_take()
    with trio.move_on_after(1.0):
        await gate.wait()
    stats = gate.statistics()
    assert (stats.held, stats.waiting, stats.expired) == (1, 0, 0)
    gate.release()
    assert gate.held == 0


async def test_a_token_handed_to_a_waiter_cancelled_before_it_ran_is_not_lost(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = ReadGate(1, max_wait=math.inf)
    assert gate.try_take()
    got: list[bool] = []

    async def wait(scope: trio.CancelScope) -> None:
        with scope:
            got.append(await gate.wait())

    doomed, patient = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, doomed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, patient)
        await trio.testing.wait_all_tasks_blocked()
        doomed.cancel()  # ``doomed`` is woken by the cancellation, but before it runs...
        gate.release()  # ...the token is handed to it: it passes the token on
    assert got == [True]
    assert gate.held == 1


# ---------------------------------------------------------------- through the server


def gated_config(**kwargs: object) -> ServerConfig:
    # one token: the request in progress holds it, every other one waits unread
    return ServerConfig(port=0, max_in_flight=1, max_waiting=0, **kwargs)  # type: ignore[arg-type]


async def test_requests_beyond_the_gate_wait_unread_and_are_read_in_turn(tmp_path: Path) -> None:
    config = gated_config(max_unread_wait=600.0)
    async with open_test_runtime(tmp_path) as rt:
        runtime = Recorder(rt)
        runtime.expect_held = 1
        with trio.fail_after(60):
            async with served(runtime, config, limits=httpx.Limits(max_connections=10)) as s:
                answers: dict[str, int] = {}

                async def post(text: str) -> None:
                    body = {"input": text, "deadline_ms": LONG}
                    answers[text] = (await s.client.post("/v1/process", json=body)).status_code

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(post, "!hold")
                    await runtime.all_held.wait()
                    for i, text in enumerate(("first", "second", "third")):
                        nursery.start_soon(post, text)
                        await wait_until(lambda i=i: s.state.statistics().unread == i + 1)
                    stats = s.state.statistics()
                    assert stats.waiting == 0  # none of them was read
                    assert stats.in_flight == 1
                    assert runtime.started == ["!hold"]
                    # other routes are not held at the gate
                    assert (await s.client.get("/healthz")).status_code == 200
                    assert (await s.client.get("/v1/stats")).status_code == 200
                    runtime.release.set()
                # one token: each was read only after the one before it had finished
                assert runtime.started == ["!hold", "first", "second", "third"]
                assert answers == dict.fromkeys(("!hold", "first", "second", "third"), 200)
                assert s.state.statistics().unread == 0
                assert s.state.gate.held == 0


async def test_a_request_that_waits_out_max_unread_wait_is_503_and_never_starts(
    tmp_path: Path,
) -> None:
    config = gated_config(max_unread_wait=0.05)
    async with open_test_runtime(tmp_path) as rt:
        runtime = Recorder(rt)
        runtime.expect_held = 1
        with trio.fail_after(60):
            async with served(runtime, config) as s:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        lambda: s.client.post("/v1/process", json={"input": "!hold"})
                    )
                    await runtime.all_held.wait()
                    r = await s.client.post("/v1/process", json={"input": "late"})
                    assert r.status_code == 503
                    error = r.json()["error"]
                    assert error["code"] == "overloaded"
                    assert "unread" in error["message"]
                    assert "server.max_waiting" in error["message"]
                    assert r.headers["retry-after"] == "1"
                    assert runtime.started == ["!hold"]
                    assert s.state.statistics().unread_refused == 1
                    runtime.release.set()
                # the connection that was refused is still good for the next request
                assert (await s.client.post("/v1/process", json={"input": "x"})).status_code == 200
                assert s.state.gate.held == 0
                metrics = (await s.client.get("/metrics")).text
                assert "dtesn_http_gate_tokens 1.0" in metrics
                assert "dtesn_http_gate_expired 1.0" in metrics
                # read with the free token, /metrics gave it back at once
                assert "dtesn_http_gate_held 0.0" in metrics


async def test_a_drain_reads_the_unread_requests_and_answers_them_503(tmp_path: Path) -> None:
    config = gated_config(max_unread_wait=600.0, graceful_timeout=5.0)
    async with open_test_runtime(tmp_path) as rt:
        runtime = Recorder(rt)
        runtime.expect_held = 1
        with trio.fail_after(60):
            async with served(runtime, config) as s:
                answers: list[httpx.Response] = []

                async def post(text: str) -> None:
                    body = {"input": text, "deadline_ms": LONG}
                    answers.append(await s.client.post("/v1/process", json=body))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(post, "!hold")
                    await runtime.all_held.wait()
                    nursery.start_soon(post, "unread")
                    await wait_until(lambda: s.state.statistics().unread == 1)
                    s.stop.set()  # a graceful stop
                    await wait_until(lambda: len(answers) == 1)
                    assert answers[0].status_code == 503
                    assert answers[0].json()["error"]["code"] == "shutting_down"
                    assert runtime.started == ["!hold"]
                    runtime.release.set()
                assert [a.status_code for a in answers] == [503, 200]
                await s.finished.wait()
                assert s.state.gate.held == 0


async def test_a_request_cancelled_by_a_drain_that_runs_out_gives_its_token_back(
    tmp_path: Path,
) -> None:
    config = gated_config(max_unread_wait=600.0, graceful_timeout=0.1)
    async with open_test_runtime(tmp_path) as rt:
        runtime = Recorder(rt)
        runtime.expect_held = 1
        with trio.fail_after(60):
            async with served(runtime, config) as s:

                async def post() -> None:
                    with contextlib.suppress(httpx.HTTPError):
                        await s.client.post(
                            "/v1/process", json={"input": "!hold", "deadline_ms": LONG}
                        )

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(post)
                    await runtime.all_held.wait()
                    assert s.state.gate.held == 1
                    s.stop.set()  # never released: the drain cancels it
                    await s.finished.wait()
                assert s.state.gate.held == 0
                runtime.release.set()


async def test_a_request_that_trickles_in_holds_no_token(tmp_path: Path) -> None:
    config = gated_config(max_unread_wait=600.0)
    async with open_test_runtime(tmp_path) as rt, served(rt, config) as s:
        with trio.fail_after(60):
            slow = await trio.open_tcp_stream("127.0.0.1", s.info.port)
            async with slow:
                await slow.send_all(b"POST /v1/process HTTP/1.1\r\nhost: x\r\n")
                # read (a token taken), and the token given back
                await wait_until(lambda: s.state.gate.taken == 1 and s.state.gate.held == 0)
                # so the next request is read at once
                r = await s.client.post("/v1/process", json={"input": "x"})
                assert r.status_code == 200
                assert s.state.statistics().unread_refused == 0


async def test_no_gate_with_max_waiting_none_or_hypercorn(tmp_path: Path) -> None:
    for i, config in enumerate(
        (
            ServerConfig(port=0, max_waiting=None),
            ServerConfig(port=0, http="hypercorn"),
            ServerConfig(port=0, max_in_flight=None),
        )
    ):
        (tmp_path / str(i)).mkdir()
        async with open_test_runtime(tmp_path / str(i)) as rt, served(rt, config) as s:
            assert s.state.gate is None
            assert s.state.intake is None or s.state.intake.newest_first
            r = await s.client.post("/v1/process", json={"input": "x"})
            assert r.status_code == 200, (config, r.text)


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_waiting", -1), ("max_waiting", 1.5), ("max_unread_wait", 0), ("max_unread_wait", -2)],
)
def test_gate_settings_are_checked(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"server\.{key}"):
        ServerConfig(**{key: value})  # type: ignore[arg-type]

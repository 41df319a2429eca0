"""``server.max_in_flight``: requests beyond it wait for a slot until their deadline,
newest first, unstarted; one that waits out its deadline is a 504; other routes never
wait; a drain answers the waiting ones 503."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dtesn_trio.server import ServerConfig
from tests.polling import wait_until
from tests.server.harness import Faults, served
from tests.server.runtimes import open_test_runtime

LONG = 60_000  # ms: a deadline no wait in these tests reaches, however busy the machine


class Recorder(Faults):
    """Faults that records the order in which requests reach the runtime."""

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.started: list[Any] = []

    async def process(self, input: Any, **kwargs: Any) -> Any:
        self.started.append(input)
        return await super().process(input, **kwargs)


async def test_requests_beyond_max_in_flight_wait_and_the_newest_goes_first(tmp_path: Path) -> None:
    # One slot, so each waiter starts only after the one before it has finished: the
    # order the runtime sees is the order of the slots (two waiters woken in the same
    # scheduling batch would run in Trio's random order).
    config = ServerConfig(port=0, max_in_flight=1, max_waiting=None)
    limits = httpx.Limits(max_connections=10)
    async with open_test_runtime(tmp_path) as rt:
        runtime = Recorder(rt)
        runtime.expect_held = 1
        with trio.fail_after(60):
            async with served(runtime, config, limits=limits) as s:
                answers: dict[str, int] = {}

                async def post(text: str) -> None:
                    body = {"input": text, "deadline_ms": LONG}  # waits never expire here
                    r = await s.client.post("/v1/process", json=body)
                    answers[text] = r.status_code

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(post, "!hold")
                    await runtime.all_held.wait()  # the slot is taken
                    for i, text in enumerate(("first", "second", "third")):
                        nursery.start_soon(post, text)
                        await wait_until(lambda i=i: s.state.statistics().waiting == i + 1)
                    # the waiting requests have not started
                    assert runtime.started == ["!hold"]
                    assert s.state.statistics().in_flight == 4
                    # other routes do not wait for a slot
                    assert (await s.client.get("/healthz")).status_code == 200
                    assert (await s.client.get("/v1/stats")).status_code == 200
                    runtime.release.set()
                assert runtime.started == ["!hold", "third", "second", "first"]
                assert answers == dict.fromkeys(("!hold", "first", "second", "third"), 200)
                assert s.state.statistics().waiting == 0


async def test_a_request_that_waits_out_its_deadline_is_504_and_never_starts(
    tmp_path: Path,
) -> None:
    config = ServerConfig(port=0, max_in_flight=1)
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
                    r = await s.client.post(
                        "/v1/process", json={"input": "late", "deadline_ms": 50}
                    )
                    assert r.status_code == 504
                    error = r.json()["error"]
                    assert error["code"] == "deadline_exceeded"
                    assert "server.max_in_flight" in error["message"]
                    assert runtime.started == ["!hold"]
                    runtime.release.set()
                assert s.state.statistics().waiting == 0
                assert s.state.intake.used == 0


async def test_a_drain_answers_the_waiting_requests_503(tmp_path: Path) -> None:
    config = ServerConfig(port=0, max_in_flight=1, graceful_timeout=5.0)
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
                    nursery.start_soon(post, "waiting")
                    await wait_until(lambda: s.state.statistics().waiting == 1)
                    s.state.begin_drain(5.0)
                    await wait_until(lambda: len(answers) == 1)
                    waiting = answers[0]
                    assert waiting.status_code == 503
                    assert waiting.json()["error"]["code"] == "shutting_down"
                    assert runtime.started == ["!hold"]
                    runtime.release.set()
                assert [a.status_code for a in answers] == [503, 200]


async def test_no_limit_when_max_in_flight_is_none(tmp_path: Path) -> None:
    async with open_test_runtime(tmp_path) as rt:
        runtime = Recorder(rt)
        runtime.expect_held = 3
        with trio.fail_after(60):
            async with served(runtime, ServerConfig(port=0, max_in_flight=None)) as s:
                assert s.state.intake is None
                codes: list[int] = []

                async def post() -> None:
                    r = await s.client.post("/v1/process", json={"input": "!hold"})
                    codes.append(r.status_code)

                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(post)
                    await runtime.all_held.wait()  # three at once: none waited for a slot
                    runtime.release.set()
                assert codes == [200, 200, 200]


@pytest.mark.parametrize("value", [0, -1, 1.5, "10"])
def test_max_in_flight_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match=r"server\.max_in_flight"):
        ServerConfig(max_in_flight=value)

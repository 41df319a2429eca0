"""Graceful stop of a served runtime: every request in flight gets an answer."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from dtesn_trio.errors import ShuttingDown
from dtesn_trio.server import ServerConfig, serve
from tests.server.harness import Faults, served
from tests.server.runtimes import open_test_runtime


async def test_graceful_stop_with_200_in_flight(tmp_path: Path) -> None:
    grace = 1.0
    async with open_test_runtime(tmp_path, shutdown_grace=grace) as rt:
        runtime = Faults(rt)
        runtime.expect_held = 200
        outcomes: Counter[str] = Counter()
        answered: dict[str, list[float]] = {"!hold": [], "!stuck": []}
        with trio.fail_after(60):
            async with served(
                runtime, limits=httpx.Limits(max_connections=250, max_keepalive_connections=250)
            ) as s:

                async def one(kind: str) -> None:
                    try:
                        r = await s.client.post("/v1/process", json={"input": kind})
                    except httpx.TransportError as exc:  # a reset or dropped connection
                        outcomes[f"{kind} {type(exc).__name__}"] += 1
                        return
                    answered[kind].append(trio.current_time())
                    code = r.json()["error"]["code"] if r.status_code != 200 else "ok"
                    outcomes[f"{kind} {r.status_code} {code}"] += 1

                async with trio.open_nursery() as clients:
                    # 100 finish their work but answer only after the stop has begun;
                    # 100 never finish and must be answered when the grace runs out.
                    for i in range(200):
                        clients.start_soon(one, "!hold" if i % 2 else "!stuck")
                    await runtime.all_held.wait()
                    assert s.state.in_flight == 200
                    stopped_at = trio.current_time()
                    s.stop.set()
                    await trio.testing.wait_all_tasks_blocked()
                    assert rt.shutting_down
                    assert s.state.draining
                    # New work is refused while draining: the runtime refuses it with
                    # ShuttingDown, and the listener is closed (a fresh connection is
                    # refused: the honest answer from a server that is going away).
                    with pytest.raises(ShuttingDown):
                        await rt.process("new work", use_cache=False)
                    with pytest.raises(OSError):
                        await trio.open_tcp_stream("127.0.0.1", s.info.port)
                    runtime.release.set()
                await s.finished.wait()
                elapsed = trio.current_time() - stopped_at
    assert outcomes == {"!hold 200 ok": 100, "!stuck 503 shutting_down": 100}
    # The stuck ones are answered when the grace runs out, not before ...
    assert min(answered["!stuck"]) >= stopped_at + grace
    assert elapsed >= grace
    # ... and then at once (real sockets: a busy machine is slow, but not by 10 s).
    assert elapsed < grace + 10.0


async def test_serve_reports_the_bound_port_and_returns_after_the_trigger(
    tmp_path: Path,
) -> None:
    async with open_test_runtime(tmp_path) as rt:
        with trio.fail_after(30):
            async with served(rt, ServerConfig(port=0)) as s:
                assert s.info.port > 0
                assert s.info.url == f"http://127.0.0.1:{s.info.port}"
                assert (await s.client.get("/healthz")).status_code == 200
                s.stop.set()
                await s.finished.wait()
                try:
                    await trio.open_tcp_stream("127.0.0.1", s.info.port)
                except OSError:
                    pass
                else:
                    raise AssertionError("still listening after the stop")


async def test_request_still_uploading_when_the_stop_begins_gets_503(tmp_path: Path) -> None:
    async with open_test_runtime(tmp_path, shutdown_grace=5.0) as rt:
        with trio.fail_after(30):
            async with served(rt) as s:
                stream = await trio.open_tcp_stream("127.0.0.1", s.info.port)
                async with stream:
                    body = b'{"input": "late"}'
                    await stream.send_all(
                        b"POST /v1/process HTTP/1.1\r\nhost: x\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(body), body[:5])
                    )
                    while s.state.in_flight == 0:  # noqa: ASYNC110 (waits on the socket peer)
                        await trio.sleep(0.01)
                    s.stop.set()
                    await trio.testing.wait_all_tasks_blocked()
                    await stream.send_all(body[5:])
                    response = b""
                    while chunk := await stream.receive_some():
                        response += chunk
                head, _, payload = response.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 ")
                assert b"connection: close" in head.lower()
                assert b"retry-after: 1" in head.lower()
                assert b'"code":"shutting_down"' in payload
                await s.finished.wait()


async def test_hard_stop_cancels_everything_at_once(tmp_path: Path) -> None:
    errors: Counter[str] = Counter()
    gone = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:

            async def run_runtime(*, task_status: trio.TaskStatus[Any]) -> None:
                try:
                    async with open_test_runtime(tmp_path, shutdown_grace=30.0) as rt:
                        runtime = Faults(rt)
                        runtime.expect_held = 20
                        info = await rt.nursery.start(partial(serve, runtime, ServerConfig(port=0)))
                        task_status.started((rt, runtime, info))
                        await trio.sleep_forever()
                finally:
                    gone.set()

            rt, runtime, info = await outer.start(run_runtime)
            async with httpx.AsyncClient(base_url=info.url, timeout=20) as client:

                async def one() -> None:
                    try:
                        r = await client.post("/v1/process", json={"input": "!stuck"})
                        errors[str(r.status_code)] += 1
                    except httpx.TransportError as exc:
                        errors[type(exc).__name__] += 1

                async with trio.open_nursery() as clients:
                    for _ in range(20):
                        clients.start_soon(one)
                    await runtime.all_held.wait()
                    stopped_at = trio.current_time()
                    # What a second signal does: cancel the whole tree, no drain.
                    rt.nursery.cancel_scope.cancel()
                    await gone.wait()
                    elapsed = trio.current_time() - stopped_at
    assert elapsed < 15.0  # not the 30 s grace (real time: half of it is generous slack)
    # every client learns at once that its connection is gone (no answer to give)
    assert errors == {"RemoteProtocolError": 20}

"""Graceful stop of a served runtime: every request in flight gets an answer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import trio

from dtesn_trio.server import ServerConfig
from tests.server.harness import Faults, served
from tests.server.runtimes import open_test_runtime


async def test_graceful_stop_with_200_in_flight(tmp_path: Path) -> None:
    grace = 1.0
    async with open_test_runtime(tmp_path, shutdown_grace=grace) as rt:
        runtime = Faults(rt)
        runtime.expect_held = 200
        outcomes: Counter[str] = Counter()
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
                    # new work is refused while draining (on a fresh connection, the
                    # listener is closed: connection refused is the honest answer)
                    runtime.release.set()
                await s.finished.wait()
                elapsed = trio.current_time() - stopped_at
    assert outcomes == {"!hold 200 ok": 100, "!stuck 503 shutting_down": 100}
    assert grace <= elapsed < grace + 3.0


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

"""``POST /v1/process`` is answered by ``_Guard`` itself (no Starlette routing, Request or
Response): refusals through the real admission keep their error body, ``Retry-After``,
request id and metrics; the body is read whole under the body limit and the body
deadline; the answers are those of the Starlette route."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from dtesn_trio.errors import DTESNError
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.server import ServerConfig
from dtesn_trio.server.errors import error_response_parts
from tests.server.harness import served
from tests.server.runtimes import open_test_runtime

HEX32_LEN = 32


async def test_rate_limited_refusal_keeps_body_retry_after_request_id_and_metrics(
    tmp_path: Path,
) -> None:
    # One token, refilled once a minute: the first request is admitted, the rest refused.
    admission = AdmissionConfig(
        max_requests_per_second=1 / 60, burst_limit=1, adaptive_scaling=False
    )
    with trio.fail_after(30):
        async with open_test_runtime(tmp_path, admission=admission) as rt, served(rt) as s:
            ok = await s.client.post("/v1/process", json={"input": "first"})
            assert ok.status_code == 200
            offered = await s.client.post(
                "/v1/process", json={"input": "x" * 1000}, headers={"x-request-id": "mine-1"}
            )
            generated = await s.client.post("/v1/process", json={"input": "y"})
            for r in (offered, generated):
                assert r.status_code == 429
                assert r.headers["content-type"] == "application/json"
                assert int(r.headers["content-length"]) == len(r.content)
                error = r.json()["error"]
                assert error["code"] == "rate_limited"
                assert "rate limit" in error["message"]
                assert error["retry_after"] > 0
                # Retry-After: whole seconds, at least 1, rounded up from the limiter's wait
                assert int(r.headers["retry-after"]) >= max(1, int(error["retry_after"]))
            assert offered.headers["x-request-id"] == "mine-1"
            assert len(generated.headers["x-request-id"]) == HEX32_LEN
            metrics = (await s.client.get("/metrics")).text
            assert (
                'dtesn_http_requests_total{method="POST",route="/v1/process",status="429"} 2.0'
                in metrics
            )
            assert (
                'dtesn_http_requests_total{method="POST",route="/v1/process",status="200"} 1.0'
                in metrics
            )
            await trio.testing.wait_all_tasks_blocked()  # the last request's bookkeeping
            assert s.state.in_flight == 0


async def test_deadline_refusal_after_admission_is_503_with_retry_after(tmp_path: Path) -> None:
    deadline_ms = 100
    config = ServerConfig(port=0, max_input_length=80_000)
    with trio.fail_after(60):
        async with open_test_runtime(tmp_path) as rt, served(rt, config) as s:
            # One long batch first (80,000 steps), so the runtime knows a batch takes
            # longer than the deadline below ...
            first = await s.client.post("/v1/process", json={"input": "z" * 80_000})
            assert first.status_code == 200
            batch = rt.queue.mean_batch_duration
            assert batch is not None
            assert batch > deadline_ms / 1000, "the precondition: a batch outlasts the deadline"
            # ... then a deadline shorter than that cannot be met: 503 at once, not 504
            # (100 ms is long enough for the request to reach the runtime in time).
            r = await s.client.post(
                "/v1/process",
                json={"input": "w" * 80_000, "deadline_ms": deadline_ms, "use_cache": False},
                headers={"x-request-id": "late-1"},
            )
            assert r.status_code == 503, r.text
            assert r.headers["x-request-id"] == "late-1"
            assert r.json()["error"]["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1
            # refused before the engine ran: it computed the first request only
            assert rt.processor.statistics().completed_requests == 1
            assert rt.queue.statistics().submitted == 1


async def _chunked(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_body_in_many_chunks_is_read_whole(tmp_path: Path) -> None:
    text = "abcdefghij" * 50
    raw = json.dumps({"input": text, "priority": 1}).encode()
    parts = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    with trio.fail_after(30):
        async with open_test_runtime(tmp_path) as rt, served(rt) as s:
            chunked = await s.client.post("/v1/process", content=_chunked(parts))
            whole = await s.client.post("/v1/process", content=raw)
    assert chunked.status_code == whole.status_code == 200
    assert chunked.json()["result"] == whole.json()["result"]
    assert chunked.json()["priority"] == 1


async def test_fast_path_answers_as_the_starlette_route(tmp_path: Path) -> None:
    """The same requests through the guard's fast path (served) and through the
    Starlette route alone (the router, over ASGI): same statuses, bodies, media type."""
    bodies: list[bytes] = [
        b'{"input": "same", "use_cache": false}',
        b'{"input": "x", "priority": 2.0}',
        b'{"input": [[0.5], [1.0]]}',
        b"{bad json",
        b"",
        b'{"input": "x", "colour": "red"}',
        b'{"input": "x", "deadline_ms": 700000}',
    ]

    def comparable(r: httpx.Response) -> tuple[int, str, Any]:
        data = r.json()
        if r.status_code == 200:
            data = data["result"]  # timings differ from call to call
        return r.status_code, r.headers["content-type"], data

    async def via_route(client: httpx.AsyncClient, body: bytes) -> tuple[int, str, Any]:
        # Without the guard an error is raised out of the app: map it as the guard does.
        try:
            return comparable(await client.post("/v1/process", content=body))
        except DTESNError as exc:
            status, headers, payload = error_response_parts(exc)
            return status, dict(headers)[b"content-type"].decode(), json.loads(payload)

    with trio.fail_after(30):
        async with open_test_runtime(tmp_path) as rt, served(rt) as s:
            transport = httpx.ASGITransport(app=s.info.app.router)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as direct:
                for body in bodies:
                    fast = await s.client.post("/v1/process", content=body)
                    assert comparable(fast) == await via_route(direct, body), body


async def test_body_limit_and_body_deadline_apply_to_the_fast_path(tmp_path: Path) -> None:
    config = ServerConfig(port=0, max_body_size=2048, body_timeout=0.5)
    with trio.fail_after(30):
        async with open_test_runtime(tmp_path) as rt, served(rt, config) as s:
            # chunked, no Content-Length: counted while read
            over = await s.client.post("/v1/process", content=_chunked([b"a" * 1000] * 3))
            assert over.status_code == 413
            assert over.json()["error"]["message"] == "request body is larger than 2048 bytes"
            assert over.headers["connection"] == "close"
            # chunked and complete in one write: handed over whole, still counted
            stream = await trio.open_tcp_stream("127.0.0.1", s.info.port)
            async with stream:
                chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"a" * 1000) for _ in range(3))
                await stream.send_all(
                    b"POST /v1/process HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                    b"\r\n" + chunks + b"0\r\n\r\n"
                )
                received = b""
                while data := await stream.receive_some():
                    received += data
            assert received.startswith(b"HTTP/1.1 413 "), received[:200]
            assert b"connection: close" in received.lower()
            # half a body, then nothing: 408 after body_timeout, connection closed
            stream = await trio.open_tcp_stream("127.0.0.1", s.info.port)
            async with stream:
                await stream.send_all(
                    b"POST /v1/process HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
                    b"x-request-id: loris-1\r\n\r\n" + b'{"input": "'
                )
                received = b""
                while data := await stream.receive_some():
                    received += data
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), received[:200]
            assert b"x-request-id: loris-1" in head.lower()
            assert json.loads(body)["error"]["code"] == "body_timeout"
            assert (await s.client.post("/v1/process", json={"input": "x"})).status_code == 200
            await trio.testing.wait_all_tasks_blocked()  # the last request's bookkeeping
            assert s.state.in_flight == 0

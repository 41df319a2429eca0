"""The lean HTTP/1.1 client against real servers: hypercorn, and raw trio sockets that
misbehave on purpose (close idle connections, close instead of answering, send garbage)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from dtesn_trio.soak.http_client import (
    ConnectError,
    ProtocolError,
    RemoteClosed,
    open_http_client,
    parse_base_url,
)
from tests.soak.app import EchoApp, serve_app

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
Handler = Callable[[trio.SocketStream, int], Awaitable[None]]


async def _read_request(stream: trio.SocketStream, buf: bytearray) -> bool:
    """Read one GET request (no body) into ``buf``; False on EOF."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(4096)
        if not data:
            return False
        buf += data
    del buf[: buf.index(b"\r\n\r\n") + 4]
    return True


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on port 0 calling ``handler(stream, connection_number)``."""
    count = 0

    async def serve_one(stream: trio.SocketStream) -> None:
        nonlocal count
        count += 1
        async with stream:
            await handler(stream, count)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_keep_alive_reuses_one_connection() -> None:
    app = EchoApp()
    with trio.fail_after(10):
        async with serve_app(app) as url, open_http_client(url) as client:
            for i in range(20):
                response = await client.post_json("/v1/process", {"input": "x" * i, "priority": 1})
                assert response.status == 200
                assert response.json()["result"] == {"echo": i}
                assert response.header(b"content-type") == b"application/json"
            stats = client.statistics()
            assert (stats.connects, stats.requests, stats.connections_idle) == (1, 20, 1)
        assert client.statistics().connections_open == 0


async def test_connection_close_from_server_reconnects() -> None:
    app = EchoApp(close_every=3)
    with trio.fail_after(10):
        async with serve_app(app) as url, open_http_client(url) as client:
            for _ in range(9):
                assert (await client.get("/v1/stats")).status == 200
                assert (
                    await client.post_json("/v1/process", {"input": "a", "priority": 0})
                ).status == 200
            # Every third /v1/process answer said "Connection: close": after the 3rd and
            # the 6th a new connection was needed; the 9th left none open.
            stats = client.statistics()
            assert (stats.connects, stats.retries, stats.connections_open) == (3, 0, 0)


async def test_idle_connection_closed_by_server_is_replaced_before_use() -> None:
    async def handler(stream: trio.SocketStream, n: int) -> None:
        buf = bytearray()
        if await _read_request(stream, buf):
            await stream.send_all(OK)
        # then close the idle keep-alive connection

    with trio.fail_after(10):
        async with raw_server(handler) as url, open_http_client(url) as client:
            assert (await client.get("/")).body == b"ok"
            # The server task has closed its end (loopback delivers the FIN at once).
            await trio.testing.wait_all_tasks_blocked()
            assert (await client.get("/")).body == b"ok"
            stats = client.statistics()
            assert (stats.connects, stats.stale_replaced, stats.retries) == (2, 1, 0)


async def test_reused_connection_closed_without_answer_is_retried_once() -> None:
    async def handler(stream: trio.SocketStream, n: int) -> None:
        buf = bytearray()
        await _read_request(stream, buf)
        await stream.send_all(OK)
        # Read the second request, then close without answering it.
        await _read_request(stream, buf)

    with trio.fail_after(10):
        async with raw_server(handler) as url, open_http_client(url) as client:
            assert (await client.get("/")).status == 200
            # Too quick for the stale check: the connection is idle and healthy when reused.
            assert (await client.get("/")).status == 200
            stats = client.statistics()
            assert (stats.connects, stats.retries) == (2, 1)


async def test_fresh_connection_closed_without_answer_is_not_retried() -> None:
    async def handler(stream: trio.SocketStream, n: int) -> None:
        await _read_request(stream, bytearray())

    with trio.fail_after(10):
        async with raw_server(handler) as url, open_http_client(url) as client:
            with pytest.raises(RemoteClosed, match="before responding") as info:
                await client.get("/")
            assert info.value.nothing_received
            assert client.statistics().connections_open == 0


async def test_close_mid_response_is_remote_closed() -> None:
    async def handler(stream: trio.SocketStream, n: int) -> None:
        await _read_request(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")

    with trio.fail_after(10):
        async with raw_server(handler) as url, open_http_client(url) as client:
            with pytest.raises(RemoteClosed, match="mid-response") as info:
                await client.get("/")
            assert not info.value.nothing_received


async def test_garbage_is_a_protocol_error() -> None:
    async def handler(stream: trio.SocketStream, n: int) -> None:
        await _read_request(stream, bytearray())
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")

    with trio.fail_after(10):
        async with raw_server(handler) as url, open_http_client(url) as client:
            with pytest.raises(ProtocolError):
                await client.get("/")
            assert client.statistics().connections_open == 0


async def test_connect_error_names_the_address() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with trio.fail_after(10):
        async with open_http_client(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
                await client.get("/")


async def test_cancelled_request_closes_its_connection_and_frees_its_slot() -> None:
    app = EchoApp(delay=5.0)
    with trio.fail_after(10):
        async with serve_app(app) as url, open_http_client(url, max_connections=1) as client:
            with trio.move_on_after(0.2) as scope:
                await client.post_json("/v1/process", {"input": "slow", "priority": 2})
            assert scope.cancelled_caught
            stats = client.statistics()
            assert (stats.connections_open, stats.connections_idle) == (0, 0)
            app.delay = 0.0
            # The only slot was freed: the next request gets a fresh connection at once.
            response = await client.post_json("/v1/process", {"input": "fast", "priority": 2})
            assert response.status == 200
            assert client.statistics().connects == 2


async def test_max_connections_bounds_concurrent_requests() -> None:
    app = EchoApp(delay=0.05)
    with trio.fail_after(10):
        async with serve_app(app) as url, open_http_client(url, max_connections=3) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(
                        client.post_json, "/v1/process", {"input": "", "priority": 2}
                    )
            assert app.max_in_flight == 3
            assert client.statistics().connects == 3


async def test_api_key_is_sent_as_bearer_token() -> None:
    app = EchoApp(api_key="s3cret")
    with trio.fail_after(10):
        async with serve_app(app) as url:
            async with open_http_client(url, api_key="s3cret") as client:
                assert (
                    await client.post_json("/v1/process", {"input": "", "priority": 2})
                ).status == 200
            async with open_http_client(url, api_key="wrong") as client:
                assert (
                    await client.post_json("/v1/process", {"input": "", "priority": 2})
                ).status == 401


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com", "http://"),
        ("ftp://x", "http://"),
        ("http://", "no host"),
        ("http://h:99999", "bad port"),
        ("http://h/?q=1", "query"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_base_url(url)


def test_base_url_prefix() -> None:
    assert parse_base_url("http://h:81/api/") == ("h", 81, "/api")
    assert parse_base_url("http://h") == ("h", 80, "")

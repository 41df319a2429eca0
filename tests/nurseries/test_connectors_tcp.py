"""The generic TCP connector against a small trio echo server."""

from __future__ import annotations

import pytest
import trio

from dtesn_trio.nurseries import ConnectionPoolConfig, TCPConnector, open_pool


async def _serve(
    handler_streams: list[trio.SocketStream], *, task_status: trio.TaskStatus[int]
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        handler_streams.append(stream)
        try:
            async for data in stream:
                await stream.send_all(data)
        except trio.ClosedResourceError:
            pass  # the test closed this end

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(port)


def test_bad_port() -> None:
    with pytest.raises(ValueError, match="tcp port"):
        TCPConnector("127.0.0.1", 0)


async def test_echo_and_stale_connection_is_replaced() -> None:
    server_side: list[trio.SocketStream] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_serve, server_side)
            config = ConnectionPoolConfig(
                min_connections=1, max_connections=2, validation_bypass=0.0
            )
            async with open_pool(TCPConnector("127.0.0.1", port), config) as pool:
                async with pool.connection() as stream:
                    await stream.send_all(b"ping")
                    assert await stream.receive_some(4) == b"ping"
                    first = stream
                # The server drops the connection while it is idle in the pool.
                await server_side[0].aclose()
                # the FIN reaching the client's socket makes it readable
                await trio.lowlevel.wait_readable(first.socket)
                async with pool.connection() as stream:
                    assert stream is not first
                    await stream.send_all(b"pong")
                    assert await stream.receive_some(4) == b"pong"
                assert pool.statistics().checks_failed == 1
            nursery.cancel_scope.cancel()

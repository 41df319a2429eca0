"""A generic TCP connector: the connection is a plain ``trio.SocketStream``."""

from __future__ import annotations

import trio

__all__ = ["TCPConnector"]


class TCPConnector:
    """Opens ``trio.SocketStream``s to ``host:port`` for users with their own protocol.

    ``check`` finds a connection the peer closed (or that has unread data, which a
    request/response protocol at rest should never have) without sending anything:
    an idle socket that is readable is stale.
    """

    def __init__(self, host: str, port: int) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"tcp port must be an integer in 1..65535 (got {port!r})")
        self.host = host
        self.port = port
        self.name = f"tcp://{host}:{port}"

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)

    async def check(self, conn: trio.SocketStream) -> None:
        await trio.lowlevel.checkpoint()
        if conn.socket.is_readable():
            raise ConnectionError(f"{self.name}: the peer closed the connection or sent data")

    async def close(self, conn: trio.SocketStream) -> None:
        await trio.aclose_forcefully(conn)

    def __repr__(self) -> str:
        return f"TCPConnector({self.host!r}, {self.port!r})"

"""A lean keep-alive HTTP/1.1 client on h11 over trio streams, for the load path.

It does one thing, cheaply enough for a load generator to overload the server it tests:
Content-Length request/response on keep-alive connections, one connection per
concurrent caller.

What a caller must know:
- `open_http_client(url)` owns every connection it opens; leaving the block closes them.
- A connection that the server closed while idle is noticed before reuse (a readable idle
  socket means EOF or garbage) and replaced; a request that fails on a *reused* connection
  before a single response byte arrived is retried once on a fresh connection (the server
  closed it under us). Any other failure is the caller's: `ConnectError`, `RemoteClosed`,
  `ProtocolError`, all `HTTPClientError`.
- A cancelled request closes its connection (its state is unknown) and frees its slot.
- Bound time with `trio.fail_after` / `move_on_after` around `request()`.
"""

from __future__ import annotations

import json
import select
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

__all__ = [
    "ClientStatistics",
    "ConnectError",
    "HTTPClient",
    "HTTPClientError",
    "HTTPConnection",
    "ProtocolError",
    "RemoteClosed",
    "Response",
    "open_http_client",
    "parse_base_url",
]

_READ_SIZE = 65536


class HTTPClientError(Exception):
    """A request got no HTTP response: the connection failed, closed, or spoke nonsense."""

    kind = "client_error"


class ConnectError(HTTPClientError):
    """The TCP connection could not be opened."""

    kind = "connect_error"


class RemoteClosed(HTTPClientError):
    """The server closed or reset the connection before the response was complete."""

    kind = "connection_closed"

    def __init__(self, message: str, *, nothing_received: bool = False) -> None:
        super().__init__(message)
        # True when not one byte of a response arrived: safe to retry on a new connection.
        self.nothing_received = nothing_received


class ProtocolError(HTTPClientError):
    """The server's bytes were not valid HTTP/1.1."""

    kind = "protocol_error"


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: status, raw headers (lower-case names) and the whole body."""

    status: int
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first header called ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


def parse_base_url(url: str) -> tuple[str, int, str]:
    """Split ``http://host:port/prefix`` into (host, port, path prefix without trailing /).

    Raises ValueError naming the problem for anything but plain http URLs.
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"url must start with http:// (got {url!r}); https is not supported")
    if not parts.hostname:
        raise ValueError(f"url has no host (got {url!r})")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ValueError(f"url has a bad port (got {url!r})") from exc
    if parts.query or parts.fragment:
        raise ValueError(f"url must not have a query or fragment (got {url!r})")
    return parts.hostname, port, parts.path.rstrip("/")


def _is_readable(stream: trio.SocketStream) -> bool:
    """True when an idle connection has something to read: EOF, a reset, or stray bytes."""
    try:
        fd = stream.socket.fileno()
    except OSError:
        return True
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, stream: trio.SocketStream, host_header: bytes) -> None:
        self._stream = stream
        self._h11 = h11.Connection(our_role=h11.CLIENT)
        self._host_header = host_header
        self.requests = 0
        # False once the connection must not be reused (closed, failed, cancelled).
        self.reusable = True

    def is_stale(self) -> bool:
        """True when this idle connection was closed by the server (or is unusable)."""
        return not self.reusable or _is_readable(self._stream)

    async def request(
        self,
        method: bytes,
        target: bytes,
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Response:
        """Send one request and read its whole response.

        On any exception (cancellation included) the connection is marked unusable; the
        caller closes it.
        """
        conn = self._h11
        ok = False
        try:
            all_headers = [
                (b"host", self._host_header),
                (b"content-length", str(len(body)).encode("ascii")),
                *headers,
            ]
            try:
                data = conn.send(h11.Request(method=method, target=target, headers=all_headers))
                if body:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError as exc:
                raise ValueError(f"bad request: {exc}") from exc
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise RemoteClosed(
                    f"connection closed while sending: {exc}", nothing_received=True
                ) from exc
            response = await self._read_response()
            ok = True
            return response
        finally:
            self.requests += 1
            if not ok:
                self.reusable = False

    async def _read_response(self) -> Response:
        conn = self._h11
        stream = self._stream
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        received = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(f"invalid response: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise RemoteClosed(
                        f"connection reset: {exc}", nothing_received=not received
                    ) from exc
                if not data:
                    raise RemoteClosed(
                        "server closed the connection"
                        + (" mid-response" if received else " before responding"),
                        nothing_received=not received,
                    )
                received = True
                conn.receive_data(data)
                continue
            event_type = type(event)
            if event_type is h11.Data:
                chunks.append(event.data)  # type: ignore[union-attr]
            elif event_type is h11.Response:
                status = event.status_code  # type: ignore[union-attr]
                headers = list(event.headers)  # type: ignore[union-attr]
            elif event_type is h11.EndOfMessage:
                break
            elif event_type is h11.InformationalResponse:
                continue
            elif event_type is h11.ConnectionClosed:
                raise RemoteClosed("server closed the connection mid-response")
            else:  # PAUSED or anything unexpected
                raise ProtocolError(f"unexpected HTTP event {event!r}")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            # "Connection: close" from either side: this connection is finished.
            self.reusable = False
        return Response(status, headers, b"".join(chunks))

    def close_nowait(self) -> None:
        """Close the socket at once (an idle connection has nothing to flush)."""
        self.reusable = False
        self._stream.socket.close()

    async def aclose(self) -> None:
        """Close the socket; always releases it, even when cancelled."""
        self.reusable = False
        await trio.aclose_forcefully(self._stream)


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of an HTTPClient's connections and requests."""

    connections_open: int
    connections_idle: int
    connects: int
    stale_replaced: int
    retries: int
    requests: int


class HTTPClient:
    """Keep-alive connections to one origin, one per concurrent caller, reused LIFO.

    Create with `open_http_client`. ``max_connections`` (None = unbounded) makes callers
    wait for a free connection; the wait is part of their request's time.
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        max_connections: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self._host_header = (host if port == 80 else f"{host}:{port}").encode("ascii")
        self._headers = tuple(headers)
        self._idle: list[HTTPConnection] = []
        self._open: set[HTTPConnection] = set()
        self._limiter = trio.CapacityLimiter(max_connections) if max_connections else None
        self._connects = 0
        self._stale = 0
        self._retries = 0
        self._requests = 0

    def statistics(self) -> ClientStatistics:
        """Connections open and idle, connects, stale connections replaced, retries."""
        return ClientStatistics(
            connections_open=len(self._open),
            connections_idle=len(self._idle),
            connects=self._connects,
            stale_replaced=self._stale,
            retries=self._retries,
            requests=self._requests,
        )

    async def _connect(self) -> HTTPConnection:
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._connects += 1
        conn = HTTPConnection(stream, self._host_header)
        self._open.add(conn)
        return conn

    def _take_idle(self) -> HTTPConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_stale():
                return conn
            self._stale += 1
            self._open.discard(conn)
            conn.close_nowait()
        return None

    async def _discard(self, conn: HTTPConnection) -> None:
        self._open.discard(conn)
        with trio.CancelScope(shield=True):
            await conn.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Response:
        """Send ``method path`` (path relative to the base URL) and return the response."""
        if self._limiter is None:
            return await self._request(method, path, body, headers)
        async with self._limiter:
            return await self._request(method, path, body, headers)

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Response:
        self._requests += 1
        target = (self.prefix + path).encode("ascii")
        method_b = method.encode("ascii")
        all_headers = (*self._headers, *headers)
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        else:
            await trio.lowlevel.checkpoint()
        try:
            response = await conn.request(method_b, target, body, all_headers)
        except RemoteClosed as exc:
            await self._discard(conn)
            if not (reused and exc.nothing_received):
                raise
            # The server closed a keep-alive connection just as we reused it: nothing was
            # answered, so one retry on a fresh connection is honest.
            self._retries += 1
            conn = await self._connect()
            try:
                response = await conn.request(method_b, target, body, all_headers)
            except BaseException:
                await self._discard(conn)
                raise
        except BaseException:
            await self._discard(conn)
            raise
        if conn.reusable:
            self._idle.append(conn)
        else:
            await self._discard(conn)
        return response

    async def get(self, path: str) -> Response:
        """GET ``path``."""
        return await self.request("GET", path)

    async def post_json(self, path: str, payload: Any) -> Response:
        """POST ``payload`` as JSON."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        return await self.request("POST", path, body, ((b"content-type", b"application/json"),))

    async def aclose(self) -> None:
        """Close every connection this client opened."""
        self._idle.clear()
        conns = list(self._open)
        self._open.clear()
        for conn in conns:
            await conn.aclose()


@asynccontextmanager
async def open_http_client(
    url: str,
    *,
    api_key: str | None = None,
    max_connections: int | None = None,
) -> AsyncIterator[HTTPClient]:
    """A client for the origin of ``url``; every connection is closed on exit.

    ``api_key`` is sent as ``Authorization: Bearer <key>`` on every request.
    """
    host, port, prefix = parse_base_url(url)
    headers: list[tuple[bytes, bytes]] = []
    if api_key is not None:
        headers.append((b"authorization", b"Bearer " + api_key.encode("latin-1")))
    client = HTTPClient(host, port, prefix, headers=headers, max_connections=max_connections)
    try:
        yield client
    finally:
        with trio.move_on_after(5, shield=True):
            await client.aclose()

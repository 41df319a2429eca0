"""A lean HTTP/1.1 server for ASGI apps on Trio: one task per connection, llhttp parsing.

``serve_http1(app, config, shutdown_trigger=...)`` is what ``dtesn-trio serve`` runs by
default (``server.http = "lean"``); hypercorn stays one setting away
(``server.http = "hypercorn"``) and any ASGI server can serve ``create_app(...)``.
A request costs this server a fraction of what it costs hypercorn's Trio worker, and
under a storm of clients most requests are refusals: what an answer costs decides how
much CPU is left for the work (docs/RELIABILITY.md, "Storms").

What it does: HTTP/1.0 and 1.1, keep-alive, pipelined requests answered in order,
``Expect: 100-continue``, bodies of any framing (decoded by llhttp, handed to the app
as they arrive), responses with ``content-length`` or chunked, ``HEAD``.  Headers and
the wait between requests are bounded by ``keep_alive_timeout``; header blocks by
``max_header_bytes``.  No HTTP/2, no WebSocket, no TLS: put a proxy in front for those.

With a ``gate`` (``gate.py``), a connection whose next request is ``POST /v1/process``
(seen with ``MSG_PEEK``) reads it only with one of the gate's tokens, held until the
answer is written: beyond them, requests wait unread in the kernel, in turn.

A graceful stop (``shutdown_trigger`` returns): stop accepting, close idle connections,
let each request in progress finish (the app's response carries ``connection: close``)
for up to ``graceful_timeout`` seconds, then cancel what is left.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools
import trio

from dtesn_trio.server.gate import ReadGate

__all__ = ["COMPLETE_BODY", "UNREAD_WAIT", "serve_http1"]

COMPLETE_BODY = "dtesn.complete_body"
"""The scope extension holding a request's whole body when it arrived with its head."""
UNREAD_WAIT = "dtesn.unread_wait"
"""The scope extension set (to the seconds waited) on a request that waited out the read
gate's ``max_wait`` unread: the app answers it 503 ``overloaded`` without doing it."""

logger = logging.getLogger("dtesn_trio.server.http1")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

_REASONS = {
    100: b"Continue",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    499: b"Client Closed Request",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BODYLESS = frozenset({204, 304})
_RECEIVE_SIZE = 65536
# Past this many body bytes left unread by the app, the connection closes rather than
# reading them to find the next request.
_DISCARD_LIMIT = 1 << 20
_LINGER_SECONDS = 2.0
_ACCEPT_BACKOFF = 0.1
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# The requests the read gate holds back: the work, not /healthz or /metrics.
_GATED_PATH = b"/v1/process"
_GATED = b"POST " + _GATED_PATH


class _Date:
    """The ``date`` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


_date = _Date()


class _Message:
    """One request as the parser saw it: head first, then body chunks, then its end."""

    __slots__ = (
        "body",
        "complete",
        "delivered",
        "expect_continue",
        "head_done",
        "headers",
        "keep_alive",
        "method",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.keep_alive = True
        self.expect_continue = False
        self.head_done = False
        self.body: deque[bytes] = deque()
        self.complete = False
        self.delivered = False  # the app has received the body's end


class _Protocol:
    """httptools' callbacks: they run inside ``feed_data`` and only record."""

    __slots__ = ("header_bytes", "max_header_bytes", "oversized", "parser", "pending")

    def __init__(self, max_header_bytes: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[_Message] = deque()  # requests seen, oldest first
        self.header_bytes = 0  # of the head being parsed
        self.max_header_bytes = max_header_bytes
        self.oversized = False

    def on_message_begin(self) -> None:
        self.pending.append(_Message())
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        message = self.pending[-1]
        message.url += url
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        message = self.pending[-1]
        message.headers.append((name, value))
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.max_header_bytes:
            self.oversized = True
        if name == b"expect" and value.lower() == b"100-continue":
            message.expect_continue = True

    def on_headers_complete(self) -> None:
        message = self.pending[-1]
        parser = self.parser
        message.method = parser.get_method()
        message.keep_alive = parser.should_keep_alive()
        message.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pending[-1].body.append(body)

    def on_message_complete(self) -> None:
        self.pending[-1].complete = True


class _Closed(Exception):
    """The client went away (or sent garbage): stop serving this connection."""


class _Connection:
    """One client connection: reads, parses, runs the app per request, writes."""

    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.proto = _Protocol(server.max_header_bytes)
        self.eof = False
        self.broken = False
        try:
            peer = stream.socket.getpeername()
            self.client: tuple[str, int] | None = (str(peer[0]), int(peer[1]))
        except OSError:
            self.client = None
        self.idle_scope: trio.CancelScope | None = None
        self.linger = False  # answered before the request's body ended
        self.head_fed = 0
        self.token = False  # holds one of the read gate's tokens
        self.unread_wait: float | None = None  # the gate's max_wait, waited out

    async def _next_request(self) -> bool:
        """Idle: wait (bounded by keep-alive) for the client to send; then, if the read
        gate has no free token and this is a request for the work, wait for one in
        turn; then read.  False: the connection is to close."""
        server = self.server
        with trio.move_on_after(server.keep_alive_timeout) as scope:
            self.idle_scope = scope
            await trio.lowlevel.wait_readable(self.stream.socket)
        self.idle_scope = None
        if scope.cancelled_caught:
            return False
        gate = server.gate
        if gate is not None:
            if gate.try_take():
                self.token = True
            elif not gate.opened and await self._gated():
                began = trio.current_time()
                self.token = await gate.wait()
                if not self.token and not gate.opened:
                    self.unread_wait = trio.current_time() - began
        await self._read()
        if self.token:
            # A token is kept only by a request for the work whose head arrived whole:
            # another route, or a head that trickles in (keep_alive_timeout bounds it),
            # must not hold the gate shut.
            pending = self.proto.pending
            message = pending[0] if pending else None
            if not (
                message is not None
                and message.head_done
                and message.method == b"POST"
                and message.url.startswith(_GATED_PATH)
            ):
                self._release_token()
        return True

    async def _gated(self) -> bool:
        """Whether the bytes waiting to be read begin a request the gate holds back."""
        try:
            head = await self.stream.socket.recv(len(_GATED), socket.MSG_PEEK)
        except OSError:
            return False  # the read will find what is wrong
        return bool(head) and (_GATED.startswith(head) or head.startswith(_GATED))

    def _release_token(self) -> None:
        if self.token:
            self.token = False
            gate = self.server.gate
            assert gate is not None
            gate.release()

    async def _read(self) -> None:
        """Feed the next bytes from the socket to the parser (raises ``_Closed``)."""
        if self.eof:
            raise _Closed
        try:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            raise _Closed
        proto = self.proto
        try:
            proto.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            await self._fail(400, b"protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            await self._fail(400, f"malformed HTTP request: {exc}".encode())
        # A head still incomplete after this read: count what it has taken so far (a
        # header too long arrives in many reads before the parser reports it).
        pending = proto.pending
        self.head_fed = self.head_fed + len(data) if pending and not pending[-1].head_done else 0
        if proto.oversized or self.head_fed > proto.max_header_bytes:
            await self._fail(431, b"request header fields too large")

    async def _fail(self, status: int, text: bytes) -> None:
        body = b'{"error": {"code": "bad_request", "message": "' + text.replace(b'"', b"'") + b'"}}'
        head = (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
            + _date.header()
            + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + b"connection: close\r\n\r\n"
        )
        await self._write(head + body)
        raise _Closed

    async def _write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken = True

    async def run(self) -> None:
        proto = self.proto
        server = self.server
        try:
            while not server.draining:
                pending = proto.pending
                if not pending and not await self._next_request():
                    return
                if not pending or not pending[0].head_done:
                    # Idle (or part of a head has arrived): bounded by keep-alive.
                    with trio.move_on_after(server.keep_alive_timeout) as scope:
                        self.idle_scope = scope
                        while not pending or not pending[0].head_done:
                            await self._read()
                    self.idle_scope = None
                    if scope.cancelled_caught:
                        return
                message = pending[0]
                try:
                    keep_alive = await self._respond(message)
                finally:
                    self._release_token()
                    self.unread_wait = None
                proto.pending.popleft()
                if not keep_alive or self.broken:
                    return
        except _Closed:
            return
        finally:
            self.idle_scope = None
            self._release_token()
            with trio.move_on_after(_LINGER_SECONDS, shield=True):
                if self.linger and not self.eof and not self.broken:
                    await self._lingering_close()
                await self.stream.aclose()

    async def _lingering_close(self) -> None:
        # The answer went out before the request's body ended (a 413, say): closing now
        # with unread bytes would make the kernel reset the connection, and a client
        # still sending would never read the answer.  Send FIN, discard what arrives.
        try:
            await self.stream.send_eof()
            budget = _DISCARD_LIMIT * 8
            while budget > 0:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return
                budget -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    async def _respond(self, message: _Message) -> bool:
        """Run the app for ``message``; returns whether the connection stays open."""
        server = self.server
        url = httptools.parse_url(message.url)
        raw_path = url.path or b"/"
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": message.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": message.headers,
            "client": self.client,
            "server": server.address,
        }
        if message.complete and not message.expect_continue:
            # The whole body is here already: an app that knows the extension takes it
            # without a receive() (``receive`` still delivers it to one that does not).
            chunks = message.body
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if len(chunks) > 1:
                chunks.clear()
                chunks.append(body)
            scope["extensions"] = {COMPLETE_BODY: body}
        if self.unread_wait is not None:
            scope.setdefault("extensions", {})[UNREAD_WAIT] = self.unread_wait
        head_only = message.method == b"HEAD"
        keep_alive = message.keep_alive
        response_started = head_sent = response_done = chunked = False
        continue_due = message.expect_continue
        status = 0
        start_headers: list[tuple[bytes, bytes]] = []

        async def receive() -> dict[str, Any]:
            nonlocal continue_due
            if message.delivered:
                if self.eof or self.broken:
                    return {"type": "http.disconnect"}
                # Body read whole: the next message is a disconnect, whenever it comes.
                await trio.sleep_forever()
            if continue_due:
                continue_due = False
                if not response_started:
                    await self._write(_CONTINUE)
            try:
                while not message.body and not message.complete:
                    await self._read()
            except _Closed:
                return {"type": "http.disconnect"}
            chunks = message.body
            body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            message.delivered = message.complete
            return {"type": "http.request", "body": body, "more_body": not message.complete}

        async def send(event: dict[str, Any]) -> None:
            nonlocal response_started, head_sent, response_done, chunked, keep_alive, status
            nonlocal start_headers
            kind = event["type"]
            if kind == "http.response.start":
                if response_started:
                    raise RuntimeError("http.response.start sent twice")
                response_started = True
                status = int(event["status"])
                start_headers = list(event.get("headers", ()))
                return
            if kind != "http.response.body" or response_done:
                return
            body: bytes = event.get("body", b"")
            more = bool(event.get("more_body", False))
            parts: list[bytes] = []
            if not response_started:
                raise RuntimeError("http.response.body sent before http.response.start")
            if not head_sent:
                head_sent = True
                head = self._head(status, start_headers, body, more, head_only, keep_alive)
                chunked = b"transfer-encoding: chunked\r\n" in head
                if b"connection: close\r\n" in head:
                    keep_alive = False
                parts.append(head)
            if not head_only and status not in _BODYLESS:
                if chunked:
                    if body:
                        parts.append(b"%x\r\n" % len(body) + body + b"\r\n")
                    if not more:
                        parts.append(b"0\r\n\r\n")
                elif body:
                    parts.append(body)
            if not more:
                response_done = True
            if parts:
                await self._write(parts[0] if len(parts) == 1 else b"".join(parts))

        try:
            await server.app(scope, receive, send)
        except Exception:
            logger.exception("unhandled error in the app on %s %s", scope["method"], scope["path"])
            if not response_started:
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"internal server error"})
            keep_alive = False
        if not response_started:
            logger.error("the app returned without a response on %s", scope["path"])
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        elif not response_done:
            keep_alive = False  # a response cut short: the framing is lost
        if keep_alive and not message.complete:
            keep_alive = await self._discard_body(message)
        if not keep_alive and not message.complete:
            self.linger = True
        if server.draining:
            keep_alive = False
        return keep_alive

    async def _discard_body(self, message: _Message) -> bool:
        """Read and drop what the app left of the body; False: close instead."""
        dropped = 0
        with trio.move_on_after(self.server.keep_alive_timeout):
            try:
                while not message.complete:
                    dropped += sum(map(len, message.body))
                    message.body.clear()
                    if dropped > _DISCARD_LIMIT:
                        return False
                    await self._read()
            except _Closed:
                return False
            message.body.clear()
            return True
        return False

    def _head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        more: bool,
        head_only: bool,
        keep_alive: bool,
    ) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), _date.header()]
        has_length = has_connection = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length":
                has_length = True
            elif name == b"connection":
                has_connection = True
                value = value.lower()
            lines.append(name + b": " + value + b"\r\n")
        if not has_length and status not in _BODYLESS:
            if more:
                lines.append(b"transfer-encoding: chunked\r\n")
            elif not head_only or body:
                lines.append(b"content-length: %d\r\n" % len(body))
        if not has_connection and (self.server.draining or not keep_alive):
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class _Server:
    def __init__(
        self,
        app: ASGIApp,
        keep_alive_timeout: float,
        max_header_bytes: int,
        gate: ReadGate | None,
    ) -> None:
        self.app = app
        self.gate = gate
        self.keep_alive_timeout = keep_alive_timeout
        self.max_header_bytes = max_header_bytes
        self.draining = False
        self.address: tuple[str, int] | None = None
        self.connections: set[_Connection] = set()
        self.all_closed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception:
            logger.exception("connection handler failed")
        finally:
            self.connections.discard(conn)
            if self.draining and not self.connections:
                self.all_closed.set()

    def begin_drain(self) -> None:
        self.draining = True
        if self.gate is not None:
            self.gate.open()  # the waiting requests are read, and answered 503
        for conn in list(self.connections):
            if conn.idle_scope is not None:
                conn.idle_scope.cancel()
        if not self.connections:
            self.all_closed.set()


async def _accept_loop(
    listener: trio.SocketListener, server: _Server, nursery: trio.Nursery
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRNOS:
                    raise
                logger.error(
                    "accept failed (%s): sleeping %.1fs",
                    errno.errorcode[exc.errno],
                    _ACCEPT_BACKOFF,
                )
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            nursery.start_soon(server.handle, stream)


async def serve_http1(
    app: ASGIApp,
    sock: socket.socket,
    *,
    keep_alive_timeout: float,
    graceful_timeout: float,
    max_header_bytes: int = 65536,
    gate: ReadGate | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound, listening ``sock`` (taken over) until
    ``shutdown_trigger`` returns, then drain (module docstring) and return.

    ``gate``: read requests for ``/v1/process`` only with one of its tokens (module
    docstring of ``gate``); a request that waited out its ``max_wait`` unread carries
    ``UNREAD_WAIT`` in its scope's extensions.  Reports ``(host, port)`` once accepting.
    Cancelling it stops at once.
    """
    server = _Server(app, keep_alive_timeout, max_header_bytes, gate)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    host, port = sock.getsockname()[:2]
    server.address = (str(host), int(port))
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(_accept_loop, listener, server, connections)
            task_status.started(server.address)
            await shutdown_trigger()
            accepting.cancel_scope.cancel()
        server.begin_drain()
        with trio.move_on_after(graceful_timeout):
            await server.all_closed.wait()
        connections.cancel_scope.cancel()


def listening_socket(host: str, port: int, *, backlog: int, reuse_port: bool) -> socket.socket:
    """A bound, listening TCP socket (``SO_REUSEPORT`` when asked: several processes may
    bind the same port and the kernel spreads connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock

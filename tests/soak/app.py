"""A small ASGI server speaking the dtesn-trio API, for the soak runner's tests.

It is a test *server* (a real HTTP peer on hypercorn's Trio worker), not a mock of the
soak runner: ``POST /v1/process`` echoes, ``GET /v1/stats`` and ``GET /metrics`` report
its own counters. Behaviour knobs: ``fail_every`` answers every Nth request 503
``overloaded`` with Retry-After; ``stall_from``/``stall_until`` (trio clock) hold every
request that arrives in that window until ``stall_until``; ``delay`` adds a sleep to each
request; ``close_every`` closes the connection after every Nth answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class EchoApp:
    fail_every: int = 0
    delay: float = 0.0
    stall_from: float | None = None
    stall_until: float | None = None
    close_every: int = 0
    api_key: str | None = None
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)
    _waiters: list[tuple[int, trio.Event]] = field(default_factory=list)

    async def wait_for_requests(self, n: int) -> None:
        """Return once ``n`` requests to /v1/process have arrived."""
        if self.requests < n:
            event = trio.Event()
            self._waiters.append((n, event))
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path == "/v1/process" and method == "POST":
            await self._process(scope, body, send)
        elif path == "/v1/stats" and method == "GET":
            stats = {
                "processing": {"total_requests": self.requests},
                "load": {
                    "effective_capacity": 64,
                    "concurrent_requests": self.in_flight,
                    "circuit_breaker_state": "closed",
                },
                "queue": {"total_queued_requests": max(0, self.in_flight - 1)},
                "loop": {"max_step_ms": 1.5},
            }
            await _respond(send, 200, stats)
        elif path == "/metrics" and method == "GET":
            text = (
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                "# TYPE process_resident_memory_bytes gauge\n"
                "process_resident_memory_bytes 5.0e+07\n"
                "# HELP dtesn_requests_total Requests.\n"
                "# TYPE dtesn_requests_total counter\n"
                f'dtesn_requests_total{{route="/v1/process"}} {self.requests}\n'
            )
            await _respond(send, 200, text.encode(), content_type=b"text/plain; version=0.0.4")
        else:
            await _respond(send, 404, {"error": {"code": "not_found", "message": path}})

    async def _process(self, scope: Scope, body: bytes, send: Send) -> None:
        if self.api_key is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if auth != b"Bearer " + self.api_key.encode():
                await _respond(send, 401, {"error": {"code": "unauthorized", "message": "key"}})
                return
        self.requests += 1
        n = self.requests
        for want, event in self._waiters:
            if n >= want:
                event.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            payload = json.loads(body)
            now = trio.current_time()
            self.arrivals.append(now)
            if (
                self.stall_from is not None
                and self.stall_until is not None
                and self.stall_from <= now < self.stall_until
            ):
                await trio.sleep_until(self.stall_until)
            if self.delay:
                await trio.sleep(self.delay)
            extra: list[tuple[bytes, bytes]] = []
            if self.close_every and n % self.close_every == 0:
                extra.append((b"connection", b"close"))
            if self.fail_every and n % self.fail_every == 0:
                await _respond(
                    send,
                    503,
                    {"error": {"code": "overloaded", "message": "queue full", "retry_after": 1}},
                    headers=[(b"retry-after", b"1"), *extra],
                )
                return
            await _respond(
                send,
                200,
                {"result": {"echo": len(payload["input"])}, "priority": payload["priority"]},
                headers=extra,
            )
        finally:
            self.in_flight -= 1


async def _respond(
    send: Send,
    status: int,
    body: Any,
    *,
    content_type: bytes = b"application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn's Trio worker on 127.0.0.1:0; yield its base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        try:
            yield binds[0]
        finally:
            nursery.cancel_scope.cancel()

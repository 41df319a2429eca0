"""``serve(runtime, config)``: the HTTP server inside the runtime's nursery.

``server.http`` picks it: ``"lean"`` (the default, ``http1.serve_http1``: one task per
connection, llhttp parsing) or ``"hypercorn"`` (hypercorn's Trio worker).

Graceful stop, in order: the shutdown trigger fires -> the runtime stops intake
(``begin_shutdown``: new work gets ``ShuttingDown``) and the app starts its drain clock
-> the server stops accepting and waits for open requests -> requests still running after
the runtime's ``shutdown_grace`` are answered 503 ``shutting_down`` -> the server closes
the connections and ``serve`` returns.  The server's own ``graceful_timeout`` is the grace
plus ``response_margin``, so every request gets its answer before the cut.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from dtesn_trio.server.app import AppState, RuntimeLike, create_app
from dtesn_trio.server.config import ServerConfig
from dtesn_trio.server.gctuning import applied_gc_settings
from dtesn_trio.server.http1 import listening_socket, serve_http1

__all__ = ["ServerInfo", "serve"]

logger = logging.getLogger("dtesn_trio.server")


@dataclasses.dataclass(frozen=True, slots=True)
class ServerInfo:
    """Where a started server listens (``port`` is the bound one, also for port 0)."""

    host: str
    port: int
    urls: tuple[str, ...]
    app: Any

    @property
    def url(self) -> str:
        return self.urls[0]


def _runtime_grace(runtime: RuntimeLike) -> float:
    config = getattr(runtime, "config", None)
    grace = getattr(config, "shutdown_grace", 10.0)
    return float(grace)


def _reuse_port_socket(config: ServerConfig) -> str:
    """A listening address several processes can bind at once (``SO_REUSEPORT``): the
    kernel spreads new connections over them.  Returned as hypercorn's ``fd://`` bind,
    which takes the socket over."""
    sock = listening_socket(config.host, config.port, backlog=config.backlog, reuse_port=True)
    sock.setblocking(True)
    return f"fd://{sock.detach()}"


def _hypercorn_config(config: ServerConfig, graceful_timeout: float) -> HypercornConfig:
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [_reuse_port_socket(config) if config.reuse_port else f"{host}:{config.port}"]
    hc.graceful_timeout = graceful_timeout
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.backlog = config.backlog
    hc.accesslog = None  # our own access log carries the request id
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def serve(
    runtime: RuntimeLike,
    config: ServerConfig | None = None,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    app: Any = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``create_app(runtime, config)`` (or ``app``) until ``shutdown_trigger``
    returns, then drain gracefully (module docstring) and return.

    Start it with ``await runtime.nursery.start(serve, runtime, config)``: it reports a
    ``ServerInfo`` once the socket is bound.  Cancelling it stops at once.
    """
    config = config or ServerConfig()
    app = app if app is not None else create_app(runtime, config)
    state: AppState | None = getattr(getattr(app, "state", None), "dtesn", None)
    grace = _runtime_grace(runtime)
    graceful_timeout = (
        config.graceful_timeout
        if config.graceful_timeout is not None
        else grace + config.response_margin
    )

    async def trigger() -> None:
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        logger.info("graceful shutdown: draining for up to %.1fs", grace)
        begin = getattr(runtime, "begin_shutdown", None)
        if begin is not None:
            begin()
        if state is not None:
            state.begin_drain(grace)

    # The runtime is ready and the app built: what is alive now lives as long as the
    # server, so this is when freezing it pays (gctuning's docstring).
    with applied_gc_settings(config.gc_freeze, config.gc_threshold) as gc_monitor:
        if state is not None:
            state.gc_monitor = gc_monitor
        logger.info(
            "gc: freeze=%s (%d objects frozen), threshold=%s",
            "on" if config.gc_freeze else "off",
            gc.get_freeze_count(),
            ",".join(map(str, gc.get_threshold())),
        )
        try:
            async with trio.open_nursery() as nursery:
                if config.http == "hypercorn":
                    hc = _hypercorn_config(config, graceful_timeout)
                    urls: list[str] = await nursery.start(
                        partial(hypercorn_serve, app, hc, shutdown_trigger=trigger, mode="asgi")
                    )
                    port = _port_of(urls[0])
                else:
                    sock = listening_socket(
                        config.host,
                        config.port,
                        backlog=config.backlog,
                        reuse_port=config.reuse_port,
                    )
                    entry = state.entry if state is not None else None
                    _, port = await nursery.start(
                        partial(
                            serve_http1,
                            entry or app,
                            sock,
                            keep_alive_timeout=config.keep_alive_timeout,
                            graceful_timeout=graceful_timeout,
                            gate=state.gate if state is not None else None,
                            shutdown_trigger=trigger,
                        )
                    )
                    host = f"[{config.host}]" if ":" in config.host else config.host
                    urls = [f"http://{host}:{port}"]
                info = ServerInfo(host=config.host, port=port, urls=tuple(urls), app=app)
                task_status.started(info)
        finally:
            if state is not None and state.gc_monitor is gc_monitor:
                state.gc_monitor = None

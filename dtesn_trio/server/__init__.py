"""The HTTP layer: ``create_app`` (ASGI, Starlette + msgspec) and ``serve`` (hypercorn's
Trio worker inside the runtime's nursery)."""

from dtesn_trio.server.app import AppState, RuntimeLike, ServerStatistics, create_app
from dtesn_trio.server.config import ServerConfig
from dtesn_trio.server.requestid import RequestIDFilter, current_request_id
from dtesn_trio.server.serve import ServerInfo, serve

__all__ = [
    "AppState",
    "RequestIDFilter",
    "RuntimeLike",
    "ServerConfig",
    "ServerInfo",
    "ServerStatistics",
    "create_app",
    "current_request_id",
    "serve",
]

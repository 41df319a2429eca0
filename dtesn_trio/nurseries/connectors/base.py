"""The ``Connector`` protocol: how a pool opens, checks, resets and closes connections."""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["C", "Connector", "Resettable", "SelfChecking"]

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


@runtime_checkable
class Connector(Protocol[C]):
    """Opens connections of one kind for a pool.

    ``connect()`` returns a new connection (the pool bounds it with
    ``connection_timeout``); ``check(conn)`` raises if the connection is broken;
    ``close(conn)`` releases it and must not raise for a connection already broken.
    ``name`` names the backend in errors and statistics.

    Two optional methods refine the pool's behaviour (found with ``getattr``):

    - ``async reset(conn)``: called when a connection comes back to the pool; if it
      raises (or is cancelled), the connection is discarded.
    - ``is_broken(conn) -> bool`` (sync, cheap): a connection for which this is true on
      release is discarded instead of reused.  Without it, a connection whose user
      raised is checked on its next checkout whatever the bypass window.
    """

    name: str

    async def connect(self) -> C: ...

    async def check(self, conn: C) -> None: ...

    async def close(self, conn: C) -> None: ...


class Resettable(Protocol[C_contra]):
    async def reset(self, conn: C_contra) -> None: ...


class SelfChecking(Protocol[C_contra]):
    def is_broken(self, conn: C_contra) -> bool: ...

"""A lean Redis connector: the ``hiredis`` C parser over a trio ``SocketStream``.

A command is one ``send_all`` and usually one ``receive_some``.

A connection whose command is interrupted (cancelled, socket error, EOF) may have a reply
still in flight, so it marks itself broken: every later call raises
``RedisConnectionError`` and the pool discards it on release.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import trio

from dtesn_trio.errors import BackendUnavailable

__all__ = [
    "RedisConnection",
    "RedisConnectionError",
    "RedisConnector",
    "RedisNoScriptError",
    "RedisResponseError",
]

Arg = str | bytes | int | float


def _pack(args: Sequence[Arg]) -> bytes:
    # hiredis' stub types the argument as a 1-tuple; it takes any tuple.
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


class RedisResponseError(Exception):
    """The server answered a command with an error (``-ERR ...``); the connection is fine."""


class RedisNoScriptError(RedisResponseError):
    """``EVALSHA`` of a script the server does not have (``NOSCRIPT``)."""


class RedisConnectionError(BackendUnavailable):
    """The connection to Redis is lost or unusable (the pool discards it)."""


def _raise_reply_error(reply: RedisResponseError) -> None:
    msg = str(reply)
    if msg.startswith("NOSCRIPT"):
        raise RedisNoScriptError(msg)
    raise RedisResponseError(msg)


class RedisConnection:
    """One connection to a Redis server.  Not for concurrent use by several tasks."""

    __slots__ = ("_broken", "_busy", "_reader", "_stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._reader = hiredis.Reader(replyError=RedisResponseError)
        self._broken: str | None = None
        self._busy = False

    @property
    def broken(self) -> bool:
        """True once a command was interrupted or the socket failed."""
        return self._broken is not None

    async def execute(self, *args: Arg) -> Any:
        """Send one command; return its reply (bytes, int, list or None).

        Raises ``RedisResponseError`` for an error reply and ``RedisConnectionError``
        when the connection is lost.
        """
        if not args:
            raise ValueError("execute() needs a command name")
        (reply,) = await self._roundtrip(_pack(args), 1)
        if isinstance(reply, RedisResponseError):
            _raise_reply_error(reply)
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send several commands in one write; return their replies in order.

        Every reply is read before the first error reply is raised, so the connection
        stays usable after a ``RedisResponseError``.
        """
        if not commands:
            await trio.lowlevel.checkpoint()
            return []
        payload = b"".join(_pack(cmd) for cmd in commands)
        replies = await self._roundtrip(payload, len(commands))
        for reply in replies:
            if isinstance(reply, RedisResponseError):
                _raise_reply_error(reply)
        return replies

    async def ping(self) -> bool:
        return bool(await self.execute("PING") == b"PONG")

    async def get(self, key: str | bytes) -> bytes | None:
        value: bytes | None = await self.execute("GET", key)
        return value

    async def set(
        self, key: str | bytes, value: Arg, *, ex: float | None = None, nx: bool = False
    ) -> bool:
        """``SET key value [PX ms] [NX]``; ``ex`` is seconds (fractions kept, as PX)."""
        args: list[Arg] = ["SET", key, value]
        if ex is not None:
            if not ex > 0:
                raise ValueError(f"set(ex=...) must be > 0 seconds (got {ex!r})")
            args += ["PX", max(1, round(ex * 1000))]
        if nx:
            args.append("NX")
        return await self.execute(*args) is not None

    async def delete(self, *keys: str | bytes) -> int:
        n: int = await self.execute("DEL", *keys)
        return n

    async def script_load(self, script: str) -> str:
        sha: bytes = await self.execute("SCRIPT", "LOAD", script)
        return sha.decode()

    async def evalsha(self, sha: str, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def eval_script(
        self, script: str, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """``EVALSHA`` by the script's SHA1; on ``NOSCRIPT``, ``SCRIPT LOAD`` and retry."""
        sha = hashlib.sha1(script.encode()).hexdigest()
        try:
            return await self.evalsha(sha, keys, args)
        except RedisNoScriptError:
            await self.script_load(script)
            return await self.evalsha(sha, keys, args)

    async def aclose(self) -> None:
        self._broken = self._broken or "closed"
        await trio.aclose_forcefully(self._stream)

    async def _roundtrip(self, payload: bytes, n: int) -> list[Any]:
        if self._broken is not None:
            await trio.lowlevel.checkpoint()
            raise RedisConnectionError(f"redis connection is unusable: {self._broken}")
        if self._busy:
            raise RuntimeError("a RedisConnection was used by two tasks at once")
        self._busy = True
        done = False
        try:
            await self._stream.send_all(payload)
            reader = self._reader
            replies: list[Any] = []
            while True:
                reply = reader.gets()
                if reply is False:
                    data = await self._stream.receive_some(65536)
                    if not data:
                        raise RedisConnectionError("redis server closed the connection")
                    reader.feed(data)
                    continue
                replies.append(reply)
                if len(replies) == n:
                    done = True
                    return replies
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._broken = f"{type(exc).__name__}: {exc}"
            raise RedisConnectionError(f"redis connection lost: {exc!r}") from exc
        except hiredis.ProtocolError as exc:
            self._broken = f"protocol error: {exc}"
            raise RedisConnectionError(f"redis protocol error: {exc}") from exc
        finally:
            self._busy = False
            if not done and self._broken is None:
                self._broken = "a command was interrupted before its reply was read"


_CLIENT_NAME = re.compile(r"^[!-~]*$")  # printable ASCII without spaces, as Redis demands


class RedisConnector:
    """Opens ``RedisConnection``s to one server; sets the client name on each."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        client_name: str | None = "dtesn-trio",
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"redis port must be an integer in 1..65535 (got {port!r})")
        if not isinstance(db, int) or isinstance(db, bool) or db < 0:
            raise ValueError(f"redis db must be an integer >= 0 (got {db!r})")
        if client_name is not None and not _CLIENT_NAME.match(client_name):
            raise ValueError(f"redis client_name must not contain spaces (got {client_name!r})")
        self.host = host
        self.port = port
        self.db = db
        self.password = password
        self.username = username
        self.client_name = client_name
        self.name = f"redis://{host}:{port}/{db}"

    @classmethod
    def from_url(cls, url: str, *, client_name: str | None = "dtesn-trio") -> RedisConnector:
        """``redis://[[user]:password@]host[:port][/db]``."""
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"redis url must start with redis:// (got {url!r})")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"redis url has a bad port or db number: {url!r}") from None
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            db=db,
            password=unquote(parts.password) if parts.password else None,
            username=unquote(parts.username) if parts.username else None,
            client_name=client_name,
        )

    async def connect(self) -> RedisConnection:
        stream = await trio.open_tcp_stream(self.host, self.port)
        try:
            conn = RedisConnection(stream)
            setup: list[list[Arg]] = []
            if self.password is not None:
                auth: list[Arg] = ["AUTH"]
                if self.username:
                    auth.append(self.username)
                setup.append([*auth, self.password])
            if self.db:
                setup.append(["SELECT", self.db])
            if self.client_name:
                setup.append(["CLIENT", "SETNAME", self.client_name])
                # Leaves PING, not CLIENT, as the connection's last command in CLIENT
                # LIST (tests/servers.py's client_count skips "cmd=client" lines).
                setup.append(["PING"])
            if setup:
                await conn.pipeline(setup)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return conn

    async def check(self, conn: RedisConnection) -> None:
        reply = await conn.execute("PING")
        if reply != b"PONG":
            raise RedisConnectionError(f"unexpected reply to PING: {reply!r}")

    async def close(self, conn: RedisConnection) -> None:
        await conn.aclose()

    def is_broken(self, conn: RedisConnection) -> bool:
        return conn.broken

    def __repr__(self) -> str:
        return f"RedisConnector({self.name!r}, client_name={self.client_name!r})"

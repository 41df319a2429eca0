"""The result cache: content hash -> result, with a TTL, in memory or in Redis.

``MemoryCache`` is an LRU bounded by ``max_entries`` whose entries expire after
``ttl_seconds`` (Trio's clock, so tests run on ``autojump_clock``).  ``RedisCache``
stores JSON with ``SET ... PX`` through a connection pool, behind its own circuit
breaker: while Redis is failing the cache is skipped (``fail_open``, the default) or
the request fails with ``BackendUnavailable``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import trio

from dtesn_trio import _checks

__all__ = [
    "CacheConfig",
    "CacheStatistics",
    "MemoryCache",
    "ResultCache",
    "cache_key",
]


@dataclass(frozen=True)
class CacheConfig:
    """Result cache settings (section ``cache``)."""

    enabled: bool = True
    ttl_seconds: float = 300.0
    max_entries: int = 10_000
    backend: str = "memory"  # "memory" or "redis" (needs redis.url)
    key_prefix: str = "dtesn:result:"
    fail_open: bool = True  # Redis failing: serve without the cache instead of failing

    def __post_init__(self) -> None:
        _checks.positive("cache.ttl_seconds", self.ttl_seconds)
        _checks.integer("cache.max_entries", self.max_entries, minimum=1)
        _checks.one_of("cache.backend", self.backend, ("memory", "redis"))


@dataclass(frozen=True)
class CacheStatistics:
    backend: str
    entries: int
    hits: int
    misses: int
    errors: int
    hit_rate: float


class ResultCache(Protocol):
    """What the runtime needs of a cache."""

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, value: dict[str, Any]) -> None: ...

    def statistics(self) -> CacheStatistics: ...


def cache_key(model_key: str, data: str | Sequence[Sequence[float]] | Any) -> str:
    """A stable content hash of (model configuration, input)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(model_key.encode())
    h.update(b"\x00")
    if isinstance(data, str):
        h.update(b"s")
        h.update(data.encode("utf-8", "surrogatepass"))
    else:
        h.update(b"n")
        h.update(msgspec.json.encode(_as_lists(data)))
    return h.hexdigest()


def _as_lists(data: Any) -> Any:
    tolist = getattr(data, "tolist", None)
    return tolist() if tolist is not None else data


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    errors: int = 0

    def record(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass
class MemoryCache:
    """An in-process LRU with per-entry expiry; every method is synchronous inside."""

    config: CacheConfig = field(default_factory=CacheConfig)
    _entries: OrderedDict[str, tuple[float, dict[str, Any]]] = field(default_factory=OrderedDict)
    _counters: _Counters = field(default_factory=_Counters)

    async def get(self, key: str) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return self.get_nowait(key)

    def get_nowait(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] <= trio.current_time():
            del self._entries[key]
            entry = None
        self._counters.record(entry is not None)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.set_nowait(key, value)

    def set_nowait(self, key: str, value: dict[str, Any]) -> None:
        self._entries[key] = (trio.current_time() + self.config.ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.config.max_entries:
            self._entries.popitem(last=False)

    def statistics(self) -> CacheStatistics:
        c = self._counters
        return CacheStatistics("memory", len(self._entries), c.hits, c.misses, c.errors, c.rate())

"""The result cache in Redis, shared by every instance, behind its own circuit breaker."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import trio

from dtesn_trio.cache import CacheConfig, CacheStatistics
from dtesn_trio.errors import BackendUnavailable, CircuitOpen
from dtesn_trio.limits import CircuitBreaker
from dtesn_trio.limits.shared_rate import REDIS_BREAKER
from dtesn_trio.nurseries import ConnectionPool, RedisConnection

__all__ = ["RedisCache"]

log = logging.getLogger(__name__)


def _timeout_error(exc: BaseException, timeout: float) -> BaseException:
    if isinstance(exc, trio.TooSlowError):
        return BackendUnavailable(f"redis did not answer within {timeout:g}s (redis.timeout)")
    return exc


class RedisCache:
    """``GET`` / ``SET PX`` of JSON results through the Redis pool.

    Each call is bounded by ``timeout`` (``redis.timeout``).  While Redis fails, the
    breaker opens and the cache answers "miss" at once
    (``fail_open``) or raises ``BackendUnavailable`` (``fail_open = False``); it
    half-opens after ``wait_in_open`` and closes again once Redis answers.
    """

    def __init__(
        self,
        pool: ConnectionPool[RedisConnection],
        config: CacheConfig,
        breaker: CircuitBreaker | None = None,
        *,
        timeout: float = 0.25,
    ) -> None:
        self.pool = pool
        self.config = config
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker(REDIS_BREAKER, name="redis-cache")
        self._ttl_ms = max(1, int(config.ttl_seconds * 1000))
        self._hits = self._misses = self._errors = 0
        self._decoder = msgspec.json.Decoder(dict[str, Any])

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self._guarded("GET", self.config.key_prefix + key)
        if raw is None:
            self._misses += 1
            return None
        self._hits += 1
        return self._decoder.decode(raw)

    async def set(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value``; never raises for Redis trouble (even with ``fail_open =
        False``): the result was computed, and losing a cache write only costs a miss."""
        payload = msgspec.json.encode(value)
        try:
            await self._guarded("SET", self.config.key_prefix + key, payload, "PX", self._ttl_ms)
        except BackendUnavailable:
            pass

    async def _guarded(self, *command: Any) -> Any:
        try:
            permit = self.breaker.acquire_permission()
        except CircuitOpen:
            return self._failed(None)
        start = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                async with self.pool.connection() as conn:
                    reply = await conn.execute(*command)
        except (BackendUnavailable, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            error = _timeout_error(exc, self.timeout)
            permit.on_error(error, trio.current_time() - start)
            return self._failed(error)
        except BaseException:
            permit.on_ignore()
            raise
        permit.on_success(trio.current_time() - start)
        return reply

    def _failed(self, exc: BaseException | None) -> None:
        self._errors += 1
        if not self.config.fail_open:
            raise BackendUnavailable(
                f"redis cache unavailable: {exc or 'circuit open'}", retry_after=1.0
            )
        if exc is not None:
            log.warning("redis cache skipped: %s", exc)
        return None

    def statistics(self) -> CacheStatistics:
        total = self._hits + self._misses
        return CacheStatistics(
            "redis",
            -1,
            self._hits,
            self._misses,
            self._errors,
            self._hits / total if total else 0.0,
        )

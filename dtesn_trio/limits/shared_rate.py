"""A rate limit shared by every instance: GCRA as a Lua script on the Redis server.

The script reads Redis's own clock (``TIME``), checks every rate of a key at once
(e.g. 100/s *and* 5000/min) and either admits the call (updating each rate's
theoretical arrival time, with a key expiry of exactly the time until it would be
full again) or refuses it with the exact ``retry_after`` — so a waiter sleeps that long
instead of polling.  The rates travel with every call, so adaptive changes apply at
once.  When Redis cannot be reached, a local fallback limiter takes over with this
instance's share of the global rate (``fail_open``) or calls are refused
(``BackendUnavailable``).  Each round trip is bounded by ``timeout``, and the limiter's
own circuit breaker opens on Redis failures: while it is open, calls go straight to the
fallback without touching the pool, so a dead or blackholed Redis costs requests nothing
but the breaker's few half-open trials.  The first call that Redis answers again is
shared again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from dtesn_trio import _checks
from dtesn_trio.errors import BackendUnavailable, CircuitOpen, RateLimited
from dtesn_trio.limits.breaker import CircuitBreaker, CircuitBreakerConfig
from dtesn_trio.limits.rate import RateLimiter, RateLimiterConfig
from dtesn_trio.nurseries import ConnectionPool, RedisConnection

__all__ = [
    "GCRA_SCRIPT",
    "REDIS_BREAKER",
    "Rate",
    "SharedRateLimiter",
    "SharedRateLimiterConfig",
    "SharedRateLimiterStatistics",
    "parse_rates",
]

log = logging.getLogger(__name__)

#: The breaker in front of Redis (shared limit and result cache): opens when half of
#: the last 10 calls (at least 5) failed, and lets 2 trial calls through 2 s later, so
#: that service is back (cache and global limit in use again) within ~2 s of Redis
#: answering again.
REDIS_BREAKER = CircuitBreakerConfig(
    sliding_window_size=10,
    minimum_calls=5,
    failure_rate_threshold=50.0,
    wait_in_open=2.0,
    permitted_calls_in_half_open=2,
)

# KEYS: one key per rate.  ARGV[1] = cost; then per rate: emission interval and
# burst tolerance, both in microseconds.  Returns {allowed, retry_after_us, remaining}.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local retry = 0
local remaining = -1
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local over = new_tat - now - tolerance
  if over > 0 then
    if over > retry then retry = over end
  else
    local left = math.floor((tolerance - (new_tat - now)) / interval)
    if remaining < 0 or left < remaining then remaining = left end
  end
  tats[i] = new_tat
end
if retry > 0 then
  return {0, retry, 0}
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], tats[i], 'PX', math.max(1, math.ceil((tats[i] - now) / 1000)))
end
return {1, 0, remaining}
"""


@dataclass(frozen=True)
class Rate:
    """``limit`` calls per ``period`` seconds, of which ``burst`` may come at once."""

    limit: float
    period: float = 1.0
    burst: int | None = None  # default: limit (a full period's worth)

    def __post_init__(self) -> None:
        _checks.positive("rate.limit", self.limit)
        _checks.positive("rate.period", self.period)
        if self.burst is not None:
            _checks.integer("rate.burst", self.burst, minimum=1)

    @property
    def per_second(self) -> float:
        return self.limit / self.period

    def script_args(self) -> tuple[int, int]:
        interval = self.period / self.limit * 1e6
        burst = self.burst if self.burst is not None else max(1, math.floor(self.limit))
        return round(interval), round(burst * interval)


_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_rates(spec: str) -> tuple[Rate, ...]:
    """``"100/s:20;5000/min"`` -> ``(Rate(100, 1, 20), Rate(5000, 60))``.

    Each rate is ``LIMIT/PERIOD[:BURST]``; PERIOD is s, min or h (or a number of
    seconds: ``10/5s``); rates are separated by ``;`` or ``,``.
    """
    rates = []
    for part in spec.replace(",", ";").split(";"):
        text = part.strip()
        if not text:
            continue
        try:
            limit_text, _, rest = text.partition("/")
            period_text, _, burst_text = rest.partition(":")
            period_text = period_text.strip()
            unit = period_text.lstrip("0123456789.")
            count = float(period_text[: len(period_text) - len(unit)] or 1)
            period = count * _PERIODS[unit or "s"]
            burst = int(burst_text) if burst_text else None
            rates.append(Rate(float(limit_text), period, burst))
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"shared_limit.rates: cannot read {text!r} (expected e.g. '100/s:20;5000/min')"
            ) from exc
    if not rates:
        raise ValueError(f"shared_limit.rates must name at least one rate (got {spec!r})")
    return tuple(rates)


@dataclass(frozen=True)
class SharedRateLimiterConfig:
    """Section ``shared_limit``: the global rates and what to do while Redis is down.

    ``rates`` is a spec such as ``"1000/s:100;50000/min"`` (see ``parse_rates``).
    """

    enabled: bool = False
    key: str = "dtesn:rate:global"
    rates: str = "1000/s:100"
    instances: int = 1  # this instance's share of the fallback rate is 1/instances
    fail_open: bool = True  # Redis down: local fallback (True) or refuse (False)
    # One round trip (a pooled connection + the script) may take this long; past it,
    # Redis counts as unavailable for that call.  A hung Redis must not hang requests.
    timeout: float = 0.25

    def __post_init__(self) -> None:
        parse_rates(self.rates)
        _checks.integer("shared_limit.instances", self.instances, minimum=1)
        _checks.positive("shared_limit.timeout", self.timeout)

    def parsed_rates(self) -> tuple[Rate, ...]:
        return parse_rates(self.rates)


@dataclass(frozen=True)
class SharedRateLimiterStatistics:
    admitted: int
    limited: int
    fallback_calls: int
    redis_errors: int
    using_fallback: bool


class SharedRateLimiter:
    """The global limit: ``await try_acquire()`` (one ``EVALSHA``) or ``await acquire()``."""

    def __init__(
        self,
        pool: ConnectionPool[RedisConnection],
        config: SharedRateLimiterConfig,
        breaker: CircuitBreaker | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        self.pool = pool
        self.config = config
        self.timeout = config.timeout if timeout is None else timeout
        self._rates = config.parsed_rates()
        self._keys = [f"{{{config.key}}}:{i}" for i in range(len(self._rates))]
        self._fallback = self._make_fallback(config)
        self.breaker = breaker or CircuitBreaker(REDIS_BREAKER, name="redis-shared-limit")
        self._admitted = self._limited = self._fallback_calls = self._errors = 0
        self._using_fallback = False
        self._probing = False  # in fallback: one call at a time asks Redis again

    @staticmethod
    def _make_fallback(config: SharedRateLimiterConfig) -> RateLimiter:
        strictest = min(config.parsed_rates(), key=lambda r: r.per_second)
        share = strictest.per_second / config.instances
        burst = strictest.burst if strictest.burst is not None else math.floor(strictest.limit)
        return RateLimiter(RateLimiterConfig(rate=share, burst=max(1, burst // config.instances)))

    def set_rates(self, rates: Sequence[Rate]) -> None:
        """Change the global rates; the next call carries them to Redis."""
        if len(rates) != len(self._rates):
            raise ValueError("shared_limit.rates: set_rates must keep the number of rates")
        self._rates = tuple(rates)
        strictest = min(self._rates, key=lambda r: r.per_second)
        self._fallback.set_rate(
            strictest.per_second / self.config.instances,
            max(1, (strictest.burst or math.floor(strictest.limit)) // self.config.instances),
        )

    async def try_acquire(self, cost: int = 1) -> None:
        """Admit ``cost`` calls now or raise ``RateLimited`` with the exact ``retry_after``.

        While Redis fails, the breaker opens and calls go straight to the fallback (or
        are refused) without waiting for a connection: a dead Redis costs each request
        nothing once the breaker has seen it.  Before it opens, once a call has failed,
        only one call at a time asks Redis again (the probe); the others do not wait.
        """
        if self._using_fallback and self._probing:
            await trio.lowlevel.checkpoint()
            self._unavailable(BackendUnavailable("another call is probing redis"), cost)
            return
        args: list[int] = [cost]
        for rate in self._rates:
            args.extend(rate.script_args())
        try:
            permit = self.breaker.acquire_permission()
        except CircuitOpen as exc:
            await trio.lowlevel.checkpoint()
            self._unavailable(exc, cost)
            return
        start = trio.current_time()
        probe = self._using_fallback
        self._probing = self._probing or probe
        try:
            with trio.fail_after(self.timeout):
                async with self.pool.connection() as conn:
                    reply = await conn.eval_script(GCRA_SCRIPT, self._keys, args)
        except (BackendUnavailable, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            error: BaseException = exc
            if isinstance(exc, trio.TooSlowError):
                error = BackendUnavailable(
                    f"redis did not answer within {self.timeout:g}s (shared_limit.timeout)"
                )
            permit.on_error(error, trio.current_time() - start)
            self._errors += 1
            self._unavailable(error, cost)
            return
        except BaseException:
            permit.on_ignore()
            raise
        finally:
            if probe:
                self._probing = False
        permit.on_success(trio.current_time() - start)
        if self._using_fallback:
            log.warning("shared rate limit: redis answers again; shared limit restored")
        self._using_fallback = False
        allowed, retry_us, _remaining = (int(v) for v in reply)
        if not allowed:
            self._limited += 1
            raise RateLimited("global rate limit reached", retry_after=retry_us / 1e6)
        self._admitted += 1

    def _unavailable(self, exc: BaseException, cost: int) -> None:
        if not self._using_fallback:
            log.warning("shared rate limit: redis unavailable (%s); local fallback", exc)
        self._using_fallback = True
        if not self.config.fail_open:
            raise BackendUnavailable(
                f"shared rate limit unavailable: {exc}", retry_after=1.0
            ) from exc
        self._fallback_calls += 1
        self._fallback.acquire_nowait(cost)

    async def acquire(self, cost: int = 1) -> None:
        """Wait until admitted, sleeping exactly each ``retry_after`` (no polling)."""
        while True:
            try:
                await self.try_acquire(cost)
                return
            except RateLimited as exc:
                await trio.sleep(exc.retry_after or 0.0)

    def statistics(self) -> SharedRateLimiterStatistics:
        return SharedRateLimiterStatistics(
            self._admitted, self._limited, self._fallback_calls, self._errors, self._using_fallback
        )

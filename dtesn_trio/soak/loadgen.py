"""The load generator: open loop (constant or Poisson arrivals) or closed loop.

Open loop: request k has an *intended* send time fixed in advance by the arrival process,
and its latency is measured from that time, not from when it actually left. A server that
stalls cannot hide the stall by slowing the generator down (no coordinated omission):
every request that should have been sent during a stall carries the stall in its latency,
whether it waited in the server, in a full connection pool, or behind a busy generator.

Closed loop: ``concurrency`` workers, each sending its next request as soon as the last one
is answered; latency is measured from the actual send.

A ramp raises the rate (open loop) or the number of workers (closed loop) linearly from 0
over the first ``ramp`` seconds. Every request has a client-side timeout measured from its
intended send time; one that runs out is recorded as ``timeout``.
"""

from __future__ import annotations

import bisect
import math
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from dtesn_trio._checks import integer, non_negative, one_of, positive
from dtesn_trio.soak.recorder import Outcome, Recorder

__all__ = [
    "InputGenerator",
    "InputSizes",
    "LoadConfig",
    "PriorityMix",
    "RequestSpec",
    "Target",
    "arrival_times",
    "run_load",
]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to send: its input text, priority and deadline."""

    input: str
    priority: int
    deadline_ms: int | None


class Target(Protocol):
    """Something to send requests to (an HTTP server or an embedded runtime)."""

    async def call(self, request: RequestSpec) -> Outcome:
        """Send one request; return its outcome. Raise only on cancellation."""
        ...


@dataclass(frozen=True)
class PriorityMix:
    """Weights per priority level, e.g. ``PriorityMix.parse("0:10,2:80,4:10")``."""

    weights: tuple[tuple[int, float], ...] = ((2, 1.0),)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("priority_mix must name at least one priority")
        for priority, weight in self.weights:
            if not 0 <= priority <= 4:
                raise ValueError(f"priority_mix: priority must be 0-4 (got {priority})")
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"priority_mix: weight must be >= 0 (got {weight})")
        if sum(w for _, w in self.weights) <= 0:
            raise ValueError("priority_mix: the weights must not all be 0")

    @classmethod
    def parse(cls, spec: str) -> PriorityMix:
        """Parse ``"P:W,P:W,..."`` (priority 0-4 : relative weight)."""
        weights: list[tuple[int, float]] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            p, sep, w = part.partition(":")
            try:
                priority = int(p)
                weight = float(w) if sep else 1.0
            except ValueError:
                raise ValueError(
                    f"priority_mix: expected PRIORITY:WEIGHT pairs like 0:10,2:80 (got {part!r})"
                ) from None
            weights.append((priority, weight))
        return cls(tuple(weights))

    def sampler(self, rng: random.Random) -> Callable[[], int]:
        """A fast function drawing one priority per call."""
        priorities = [p for p, _ in self.weights]
        cumulative: list[float] = []
        total = 0.0
        for _, w in self.weights:
            total += w
            cumulative.append(total)
        if len(priorities) == 1:
            only = priorities[0]
            return lambda: only
        rand = rng.random
        return lambda: priorities[bisect.bisect_right(cumulative, rand() * total)]

    def __str__(self) -> str:
        return ",".join(f"{p}:{w:g}" for p, w in self.weights)


@dataclass(frozen=True)
class InputSizes:
    """A distribution of input sizes in bytes: ``"64"``, ``"uniform:16-256"``,
    ``"choice:16,64,1024"`` or ``"exp:128"`` (exponential with that mean, at least 1)."""

    kind: Literal["fixed", "uniform", "choice", "exp"] = "fixed"
    values: tuple[int, ...] = (64,)

    def __post_init__(self) -> None:
        one_of("input_size.kind", self.kind, ("fixed", "uniform", "choice", "exp"))
        if not self.values or any(v < 1 for v in self.values):
            raise ValueError(f"input_size: sizes must be >= 1 (got {self.values})")
        if self.kind == "uniform" and (len(self.values) != 2 or self.values[0] > self.values[1]):
            raise ValueError(f"input_size: uniform needs LOW-HIGH with LOW <= HIGH ({self})")

    @classmethod
    def parse(cls, spec: str) -> InputSizes:
        """Parse a size spec (see the class docstring)."""
        text = spec.strip()
        kind, sep, rest = text.partition(":")
        try:
            if not sep:
                return cls("fixed", (int(text),))
            if kind == "uniform":
                low, _, high = rest.partition("-")
                return cls("uniform", (int(low), int(high)))
            if kind == "choice":
                return cls("choice", tuple(int(v) for v in rest.split(",") if v.strip()))
            if kind == "exp":
                return cls("exp", (int(rest),))
        except ValueError as exc:
            if "input_size" in str(exc):
                raise
        raise ValueError(
            f"input_size: expected N, uniform:LOW-HIGH, choice:A,B,.. or exp:MEAN (got {spec!r})"
        )

    def sampler(self, rng: random.Random) -> Callable[[], int]:
        """A fast function drawing one size per call."""
        values = self.values
        if self.kind == "fixed":
            only = values[0]
            return lambda: only
        if self.kind == "uniform":
            low, high = values
            return lambda: rng.randint(low, high)
        if self.kind == "choice":
            return lambda: rng.choice(values)
        mean = values[0]
        return lambda: max(1, round(rng.expovariate(1.0 / mean)))

    @property
    def max_size(self) -> int:
        """The largest size this distribution draws (exp: 20 × its mean)."""
        return 20 * self.values[0] if self.kind == "exp" else max(self.values)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(self.values[0])
        if self.kind == "uniform":
            return f"uniform:{self.values[0]}-{self.values[1]}"
        if self.kind == "choice":
            return "choice:" + ",".join(map(str, self.values))
        return f"exp:{self.values[0]}"


class InputGenerator:
    """Unique printable inputs of the drawn sizes, cheaply.

    Every input starts with a request counter, so no two are equal and a server's result
    cache does not turn the soak into a cache benchmark.
    """

    def __init__(self, sizes: InputSizes, rng: random.Random) -> None:
        self._size = sizes.sampler(rng)
        alphabet = string.ascii_letters + string.digits + " "
        length = max(4096, 2 * sizes.max_size)
        self._text = "".join(rng.choices(alphabet, k=length))
        self._rng = rng
        self._count = 0

    def __call__(self) -> str:
        size = self._size()
        self._count += 1
        prefix = f"{self._count:x}:"
        if len(prefix) >= size:
            return prefix[:size]
        n = size - len(prefix)
        start = self._rng.randrange(len(self._text) - n + 1)
        return prefix + self._text[start : start + n]


@dataclass(frozen=True)
class LoadConfig:
    """What to send, how fast, and for how long.

    Open loop when ``rate`` is set (``concurrency`` then caps the connections in use;
    requests beyond it wait, and the wait counts in their latency); closed loop with
    ``concurrency`` workers otherwise.
    """

    duration: float
    rate: float | None = None
    concurrency: int | None = None
    arrivals: Literal["constant", "poisson"] = "constant"
    ramp: float = 0.0
    priority_mix: PriorityMix = field(default_factory=PriorityMix)
    input_size: InputSizes = field(default_factory=InputSizes)
    deadline_ms: int | None = None
    timeout: float = 30.0
    seed: int = 0
    bucket: float = 1.0

    def __post_init__(self) -> None:
        positive("load.duration", self.duration)
        if self.rate is None and self.concurrency is None:
            raise ValueError("load: give a rate (open loop) or a concurrency (closed loop)")
        if self.rate is not None:
            positive("load.rate", self.rate)
        if self.concurrency is not None:
            integer("load.concurrency", self.concurrency, minimum=1)
        one_of("load.arrivals", self.arrivals, ("constant", "poisson"))
        non_negative("load.ramp", self.ramp)
        if self.ramp >= self.duration and self.ramp > 0:
            raise ValueError(
                f"load.ramp must be shorter than load.duration (got {self.ramp} >= {self.duration})"
            )
        if self.deadline_ms is not None:
            integer("load.deadline_ms", self.deadline_ms, minimum=1)
        positive("load.timeout", self.timeout)
        positive("load.bucket", self.bucket)

    @property
    def mode(self) -> Literal["open", "closed"]:
        """``open`` (fixed arrival rate) or ``closed`` (fixed concurrency)."""
        return "open" if self.rate is not None else "closed"

    def describe(self) -> dict[str, object]:
        """The config as plain JSON values."""
        return {
            "mode": self.mode,
            "duration_s": self.duration,
            "rate": self.rate,
            "concurrency": self.concurrency,
            "arrivals": self.arrivals,
            "ramp_s": self.ramp,
            "priority_mix": str(self.priority_mix),
            "input_size": str(self.input_size),
            "deadline_ms": self.deadline_ms,
            "timeout_s": self.timeout,
            "seed": self.seed,
        }


def _ramp_inverse(rate: float, ramp: float) -> Callable[[float], float]:
    """Inverse of the cumulative arrival count Λ(t) for a rate ramped linearly over ``ramp``."""
    if ramp <= 0:
        return lambda n: n / rate
    ramp_count = rate * ramp / 2.0

    def inverse(n: float) -> float:
        if n <= ramp_count:
            return math.sqrt(2.0 * n * ramp / rate)
        return ramp + (n - ramp_count) / rate

    return inverse


def arrival_times(config: LoadConfig, rng: random.Random | None = None) -> Callable[[], float]:
    """A function returning successive intended send offsets (seconds from the start).

    Constant arrivals put request k at Λ⁻¹(k); Poisson arrivals put it at Λ⁻¹(S_k) with S_k a
    sum of unit exponentials (the time-change construction of an inhomogeneous Poisson
    process), so the ramp shapes both the same way.
    """
    assert config.rate is not None
    inverse = _ramp_inverse(config.rate, config.ramp)
    rng = rng or random.Random(config.seed)
    state = [0.0]
    if config.arrivals == "constant":

        def next_constant() -> float:
            t = inverse(state[0])
            state[0] += 1.0
            return t

        return next_constant

    expo = rng.expovariate

    def next_poisson() -> float:
        state[0] += expo(1.0)
        return inverse(state[0])

    return next_poisson


class _Runner:
    def __init__(self, config: LoadConfig, target: Target, recorder: Recorder) -> None:
        self.config = config
        self.target = target
        self.recorder = recorder
        rng = random.Random(config.seed)
        self._priority = config.priority_mix.sampler(rng)
        self._input = InputGenerator(config.input_size, rng)
        self._rng = rng

    def _next_request(self) -> RequestSpec:
        return RequestSpec(self._input(), self._priority(), self.config.deadline_ms)

    async def one(self, intended: float, request: RequestSpec) -> None:
        recorder = self.recorder
        recorder.on_send(intended, trio.current_time())
        outcome: Outcome | None = None
        try:
            with trio.move_on_at(intended + self.config.timeout):
                outcome = await self.target.call(request)
            if outcome is None:
                outcome = Outcome.TIMEOUT
        finally:
            recorder.on_done(intended, trio.current_time(), request.priority, outcome)

    async def open_loop(self, start: float) -> None:
        next_offset = arrival_times(self.config, self._rng)
        end = start + self.config.duration
        async with trio.open_nursery() as nursery:
            while True:
                intended = start + next_offset()
                if intended >= end:
                    break
                await trio.sleep_until(intended)
                nursery.start_soon(self.one, intended, self._next_request())

    async def closed_loop(self, start: float) -> None:
        config = self.config
        assert config.concurrency is not None
        end = start + config.duration

        async def worker(i: int) -> None:
            await trio.sleep_until(start + config.ramp * i / config.concurrency)  # type: ignore[operator]
            while (now := trio.current_time()) < end:
                await self.one(now, self._next_request())

        async with trio.open_nursery() as nursery:
            for i in range(config.concurrency):
                nursery.start_soon(worker, i)


async def run_load(
    config: LoadConfig,
    target: Target,
    recorder: Recorder,
    *,
    task_status: trio.TaskStatus[float] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the load described by ``config`` against ``target``, recording into ``recorder``.

    Reports the start time (``trio.current_time()``) through ``task_status``. Returns when
    the duration is over and every request sent has been answered or timed out.
    Cancelled, it stops at once; requests cut short are counted as ``unfinished``.
    """
    runner = _Runner(config, target, recorder)
    start = trio.current_time()
    recorder.start(start)
    task_status.started(start)
    try:
        if config.mode == "open":
            await runner.open_loop(start)
        else:
            await runner.closed_loop(start)
    finally:
        recorder.finish(trio.current_time())

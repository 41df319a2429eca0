"""The embedded runtime in a plain Trio program: no HTTP anywhere.

Run: python examples/embedded.py
"""

from __future__ import annotations

import trio

from dtesn_trio import DTESNConfig, DTESNError, RuntimeConfig, open_runtime
from dtesn_trio.jobs import JobsConfig


async def main() -> None:
    config = RuntimeConfig(
        model=DTESNConfig(reservoir_size=256, membrane_depth=3),
        jobs=JobsConfig(enabled=False),
    )
    async with open_runtime(config) as rt:
        results: dict[int, str] = {}

        async def ask(i: int) -> None:
            try:
                outcome = await rt.process(f"request number {i}", priority=i % 5)
                head = ", ".join(f"{v:+.3f}" for v in outcome.result["features"][:3])
                results[i] = f"batch of {outcome.batch_size}, features [{head}, ...]"
            except DTESNError as exc:  # refusals are answers too
                results[i] = f"{exc.code}: {exc}"

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(ask, i)

        for i in range(0, 50, 10):
            print(f"request {i:2d}: {results[i]}")
        stats = rt.get_stats()
        print("completed:", stats["processing"]["total_requests"])
        print(f"longest loop step: {stats['loop']['max_step_ms']:.1f} ms")


if __name__ == "__main__":
    trio.run(main)

"""Stream NARMA10 through a live session over HTTP and print the NRMSE.

The readout is trained in this process (as ``examples/narma10.py`` does), served by a
``dtesn-trio`` server on a free local port, and the whole series is then sent to one
session in chunks: each answer holds the prediction for every step of its chunk, the
reservoir's state carried on between chunks.  The NRMSE on the test part is
``examples/narma10.py``'s, to the last digit: a session is one long run.  Needs httpx
(``pip install -e '.[dev]'``).

python examples/narma10_session.py [--steps 4000] [--chunk 250]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import trio

from dtesn_trio import JobsConfig, RuntimeConfig, ServerConfig, open_runtime, serve
from dtesn_trio.dtesn import DTESNConfig, DTESNModel
from dtesn_trio.dtesn.tasks import narma10, nrmse


async def stream(url: str, u: np.ndarray, chunk: int, washout: int) -> np.ndarray:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        opened = await client.post("/v1/sessions", json={"washout": washout})
        opened.raise_for_status()
        session = opened.json()["location"]
        predictions: list[list[float]] = []
        for i in range(0, len(u), chunk):
            step = await client.post(
                f"{session}/step", json={"input": u[i : i + chunk].reshape(-1, 1).tolist()}
            )
            step.raise_for_status()
            predictions += step.json()["predictions"]
        await client.delete(session)
    return np.array(predictions)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="series length (train 75 %%)")
    parser.add_argument("--chunk", type=int, default=250, help="steps per request")
    parser.add_argument("--washout", type=int, default=100)
    args = parser.parse_args()

    u, y = narma10(args.steps, seed=0)
    split = args.steps * 3 // 4
    model = DTESNModel(DTESNConfig())
    model.fit_readout([u[:split]], [y[:split]], mode="per_step", washout=args.washout)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = RuntimeConfig(jobs=JobsConfig(sqlite_path=str(Path(tmp) / "jobs.db")))
        async with open_runtime(config, model=model) as rt, trio.open_nursery() as nursery:
            info = await nursery.start(serve, rt, ServerConfig(port=0))
            predicted = await stream(info.url, u, args.chunk, args.washout)
            nursery.cancel_scope.cancel()
    # predictions start after the washout: session step `washout` is row 0
    score = nrmse(predicted[split - args.washout :], y[split:])
    print(f"NARMA10 over HTTP: {len(u)} steps in chunks of {args.chunk}")
    print(f"NRMSE = {score:.4f}  (streamed in {time.perf_counter() - started:.2f} s)")


if __name__ == "__main__":
    trio.run(main)

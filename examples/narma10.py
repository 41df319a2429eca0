"""Train a ridge readout on NARMA10 with the default DTESN model and print the NRMSE.

python examples/narma10.py [--steps 4000] [--depth 4] [--size 1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtesn_trio.dtesn import DTESNConfig, DTESNModel
from dtesn_trio.dtesn.tasks import narma10, nrmse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="series length (train 75 %%)")
    parser.add_argument("--depth", type=int, default=4, help="membrane_depth")
    parser.add_argument("--size", type=int, default=1024, help="reservoir_size")
    parser.add_argument("--washout", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=1e-6, help="ridge penalty")
    args = parser.parse_args()

    u, y = narma10(args.steps, seed=0)
    split = args.steps * 3 // 4
    started = time.perf_counter()
    model = DTESNModel(DTESNConfig(membrane_depth=args.depth, reservoir_size=args.size))
    built = time.perf_counter()
    # one long series: a per-step readout, fitted after a washout
    model.fit_readout(
        [u[:split]], [y[:split]], alpha=args.alpha, mode="per_step", washout=args.washout
    )
    # run the whole series (the test part continues from the trained part's state)
    result = model.process_one(u)
    assert result.prediction is not None
    score = nrmse(result.prediction[split:], y[split:])
    print(f"model: {model!r}, built in {built - started:.2f} s")
    print(f"NARMA10: train {split} steps, test {args.steps - split} steps")
    print(f"NRMSE = {score:.4f}  (total {time.perf_counter() - started:.2f} s)")


if __name__ == "__main__":
    main()

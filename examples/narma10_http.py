"""Train on NARMA10 over HTTP, activate the version, stream the series through a session.

The same task as ``examples/narma10.py`` (4,000 steps, the first 3,000 for training,
washout 100, alpha 1e-6, the default model), done by a client of the server:

1. ``POST /v1/models/narma10/fit`` with the training part: a durable job (202 +
   ``Location``), polled until it succeeds; its result names the new version;
2. ``POST /v1/models/narma10/versions/{v}/activate``;
3. ``POST /v1/sessions`` on ``narma10`` (the version just activated), then the whole
   series streamed through ``POST /v1/sessions/{id}/step`` in chunks of 250 steps: the
   reservoir state is carried from chunk to chunk, so the test half's predictions
   continue from the training part's state, exactly as one ``POST /v1/process`` of
   the whole series with ``"model": "narma10"`` gives them (printed beside it).

With ``--search``, a small hyperparameter search (``POST /v1/models/narma10/search``)
makes the version instead.  Without ``--url`` the script starts a ``dtesn-trio serve``
of its own (SQLite job store in a temporary folder) and stops it at the end.

python examples/narma10_http.py [--url http://127.0.0.1:8000] [--search]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dtesn_trio.dtesn.tasks import narma10, nrmse  # noqa: E402

STEPS, SPLIT, WASHOUT, CHUNK = 4000, 3000, 100, 250


@contextmanager
def own_server() -> Iterator[str]:
    """``dtesn-trio serve`` on a free port; its URL.  Stopped by its PID on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dtesn_trio",
                "serve",
                "--port",
                "0",
                "--log-level",
                "warning",
                "--set",
                f"jobs.sqlite_path={tmp}/jobs.db",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "listening on " not in line:
                raise SystemExit(f"the server did not start: {line!r}")
            yield line.split("listening on ", 1)[1].strip()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_job(client: httpx.Client, location: str) -> dict:
    while True:
        job = client.get(location).json()
        if job["status"] == "succeeded":
            return job["result"]
        if job["status"] == "failed":
            raise SystemExit(f"the job failed: {job['error']}")
        time.sleep(0.05)


def run(url: str, search: bool) -> None:
    u, y = narma10(STEPS, seed=0)
    train = {"inputs": u[:SPLIT].tolist(), "targets": y[:SPLIT].tolist(), "washout": WASHOUT}
    with httpx.Client(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        if search:
            space = {"input_scaling": [0.1, 1.0], "leak_rate": [0.3, 1.0]}
            body = {**train, "space": space, "trials": 4, "validation": 0.25}
            r = client.post("/v1/models/narma10/search", json=body)
        else:
            r = client.post("/v1/models/narma10/fit", json={**train, "alpha": 1e-6})
        r.raise_for_status()
        result = wait_job(client, r.headers["location"])
        version = result["version"]
        print(
            f"fitted narma10@{version} in {time.perf_counter() - started:.2f} s:"
            f" train NRMSE {result['scores']['train_nrmse']:.4f}"
        )
        client.post(f"/v1/models/narma10/versions/{version}/activate").raise_for_status()
        opened = client.post("/v1/sessions", json={"model": "narma10"})
        opened.raise_for_status()
        session = opened.headers["location"]
        streamed: list[float] = []
        for i in range(0, STEPS, CHUNK):
            step = client.post(f"{session}/step", json={"input": u[i : i + CHUNK].tolist()})
            step.raise_for_status()
            streamed += [p[0] if isinstance(p, list) else p for p in step.json()["predictions"]]
        client.delete(session).raise_for_status()
        r = client.post("/v1/process", json={"input": u.tolist(), "model": "narma10"})
        r.raise_for_status()
        whole = np.asarray(r.json()["result"]["prediction"])
    prediction = np.asarray(streamed)
    print(f"NARMA10: train {SPLIT} steps, test {STEPS - SPLIT} steps, over HTTP ({url})")
    print(f"NRMSE = {nrmse(prediction[SPLIT:], y[SPLIT:]):.4f} (a session, {CHUNK}-step chunks)")
    print(f"NRMSE = {nrmse(whole[SPLIT:], y[SPLIT:]):.4f} (one POST /v1/process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--search", action="store_true", help="a 4-trial search, not one fit")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.search)
        return
    with own_server() as url:
        run(url, args.search)


if __name__ == "__main__":
    main()

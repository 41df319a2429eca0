"""The peer a user would otherwise write: a plain FastAPI app on uvicorn (issue 8).

Same model, same input, same answer as ``POST /v1/process`` of dtesn-trio, but the
obvious way: a synchronous endpoint, so FastAPI runs each request's
``model.process_one(input)`` in its default thread pool (anyio's 40 threads); no
batching, no admission control, no deadline handling. Run it with
``OPENBLAS_NUM_THREADS=1`` (``benchmarks/_servers.py`` does): with default BLAS
threading every pool thread starts a BLAS thread per core and a 2-core machine stalls.

    OPENBLAS_NUM_THREADS=1 python benchmarks/peer_fastapi.py --port 0 \
        --reservoir-size 256 --membrane-depth 4      # prints "peer listening on URL"

It is measured by ``benchmarks/overload.py``; on its own with ``--json`` (as
``run_all.py`` calls every benchmark) it only says so.
"""

# No ``from __future__ import annotations``: FastAPI must see the endpoint's local
# request model as a class, not as a string it cannot resolve.
import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

# benchmarks/ holds queue.py and http.py: take it off the path (they shadow the stdlib).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))


def build_app(reservoir_size: int, membrane_depth: int) -> Any:
    """The FastAPI app: ``POST /v1/process`` with the dtesn-trio request body."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    from dtesn_trio.dtesn import DTESNConfig, DTESNModel

    model = DTESNModel(DTESNConfig(reservoir_size=reservoir_size, membrane_depth=membrane_depth))

    class ProcessRequest(BaseModel):
        input: str
        priority: int = 2
        deadline_ms: int | None = None
        use_cache: bool = True

    app = FastAPI()

    @app.post("/v1/process")
    def process(req: ProcessRequest) -> dict[str, Any]:
        result = model.process_one(req.input)
        return {"result": result.to_dict(), "priority": req.priority}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--reservoir-size", type=int, default=256)
    parser.add_argument("--membrane-depth", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.port is None:
        note = {"note": "the FastAPI peer server; measured by benchmarks/overload.py"}
        print(json.dumps(note) if args.json else note["note"])
        return
    from _deps import require

    require("fastapi", "uvicorn")

    import uvicorn

    app = build_app(args.reservoir_size, args.membrane_depth)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048)
    server = uvicorn.Server(config)
    print(f"peer listening on http://{args.host}:{port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()

"""dtesn_trio.soak: the load/soak runner, its lean HTTP client and its report.

From the command line::

    dtesn-trio soak --url http://127.0.0.1:8000 --rate 500 --duration 60 --ramp 10 \
        --priority-mix 0:10,2:80,4:10 --input-size uniform:16-256 --deadline-ms 2000 \
        --report soak-report --slo-p99-ms 250 --max-error-rate 0.01
    dtesn-trio soak --url http://127.0.0.1:8000 --concurrency 64 --duration 30 --json
    dtesn-trio soak --embedded --rate 50 --duration 10

From Python (benchmarks, scripts)::

    report = await soak_url(url, LoadConfig(duration=10, rate=200, deadline_ms=1000))
    report["goodput"], report["latency_ms"]["all"]["p99"], report["by_status"]

Open loop (``--rate``) times every request from its *intended* send time, so a stalled
server shows its stall in every latency it caused (no coordinated omission); closed loop
(``--concurrency``) times from the actual send. ``sent == answered + failed`` (plus
``unfinished`` for an interrupted run). Exit status: 0 ok, 1 SLO violated, 2 bad flags or
unreachable target, 130 interrupted.
"""

from dtesn_trio.soak.http_client import (
    ConnectError,
    HTTPClient,
    HTTPClientError,
    ProtocolError,
    RemoteClosed,
    Response,
    open_http_client,
)
from dtesn_trio.soak.loadgen import InputSizes, LoadConfig, PriorityMix, RequestSpec, run_load
from dtesn_trio.soak.recorder import LoadResult, Outcome, Recorder
from dtesn_trio.soak.report import SLO, build_report, check_slo, write_report
from dtesn_trio.soak.runner import SoakRun, run_soak, soak_url
from dtesn_trio.soak.targets import (
    EmbeddedTarget,
    HTTPTarget,
    TargetUnreachable,
    open_embedded_target,
    open_http_target,
)

__all__ = [
    "SLO",
    "ConnectError",
    "EmbeddedTarget",
    "HTTPClient",
    "HTTPClientError",
    "HTTPTarget",
    "InputSizes",
    "LoadConfig",
    "LoadResult",
    "Outcome",
    "PriorityMix",
    "ProtocolError",
    "Recorder",
    "RemoteClosed",
    "RequestSpec",
    "Response",
    "SoakRun",
    "TargetUnreachable",
    "build_report",
    "check_slo",
    "open_embedded_target",
    "open_http_client",
    "open_http_target",
    "run_load",
    "run_soak",
    "soak_url",
    "write_report",
]

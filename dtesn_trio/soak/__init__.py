"""dtesn_trio.soak: the load/soak runner, its lean HTTP client and its report."""

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

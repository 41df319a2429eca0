"""``dtesn-trio soak``: drive a server (or an embedded runtime) and report how it held up.

Exit status: 0 when the run met its SLO flags, 1 when it violated one, 2 for bad flags or
an unreachable target, 130 when interrupted (the partial report is still written).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import click
import trio

from dtesn_trio.soak.http_client import parse_base_url
from dtesn_trio.soak.loadgen import InputSizes, LoadConfig, PriorityMix
from dtesn_trio.soak.progress import LiveProgress
from dtesn_trio.soak.report import SLO, write_report
from dtesn_trio.soak.runner import SoakRun, run_soak
from dtesn_trio.soak.targets import (
    SoakTarget,
    TargetUnreachable,
    open_embedded_target,
    open_http_target,
)
from dtesn_trio.soak.workers import run_workers, split_load, worker_main

__all__ = ["soak", "summary"]

EXIT_SLO = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _require_soak_extra() -> None:
    """Exit 2 with one sentence when the soak extra (histograms, plots) is not installed."""
    needed = {"hdrhistogram": "hdrh", "matplotlib": "matplotlib"}  # distribution: module
    missing = [dist for dist, module in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        click.echo(
            f"dtesn-trio soak needs {' and '.join(missing)}, which the runtime does not"
            " install: pip install 'dtesn-trio[soak]'",
            err=True,
        )
        sys.exit(EXIT_USAGE)


def _priority_mix(ctx: click.Context, param: click.Parameter, value: str) -> PriorityMix:
    try:
        return PriorityMix.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _input_size(ctx: click.Context, param: click.Parameter, value: str) -> InputSizes:
    try:
        return InputSizes.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _embedded_config(config_file: str | None, sets: tuple[str, ...]) -> Any:
    """The runtime config for --embedded, layered as for ``serve``: TOML file < DTESN_*
    environment < --set. Raises ValueError (a SettingsError) naming a bad key.
    """
    from dtesn_trio.server.cli import load_serve_config

    runtime_config, _ = load_serve_config(config_file=config_file, sets=sets)
    return runtime_config


def summary(report: dict[str, Any], report_dir: str | None = None) -> dict[str, Any]:
    """The one-object JSON summary ``--json`` prints."""
    lat = report["latency_ms"]["all"] or {}
    return {
        "target": report["target"],
        "mode": report["load"]["mode"],
        "duration_s": report["duration_s"],
        **report["counts"],
        "error_rate": report["error_rate"],
        "offered_rate": report["offered_rate"],
        "achieved_rate": report["achieved_rate"],
        "goodput": report["goodput"],
        "p50_ms": lat.get("p50"),
        "p90_ms": lat.get("p90"),
        "p99_ms": lat.get("p99"),
        "max_ms": lat.get("max"),
        "by_status": {k: v["count"] for k, v in report["by_status"].items()},
        "client_cpu_ms_per_request": report["client"].get("cpu_ms_per_request"),
        "client_send_lag_p99_ms": (report["client"].get("send_lag_ms") or {}).get("p99"),
        "warnings": report.get("warnings", []),
        "slo_passed": report["slo"]["passed"],
        "slo_violations": report["slo"]["violations"],
        "interrupted": report["interrupted"],
        "report_dir": report_dir,
    }


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="soak summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key in (
        "sent",
        "answered",
        "failed",
        "unfinished",
        "ok",
        "error_rate",
        "offered_rate",
        "achieved_rate",
        "goodput",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "client_cpu_ms_per_request",
        "client_send_lag_p99_ms",
    ):
        table.add_row(key, "–" if s[key] is None else f"{s[key]:,}")
    for key, n in s["by_status"].items():
        table.add_row(f"  {key}", f"{n:,}")
    console = Console()
    console.print(table)
    for warning in s["warnings"]:
        console.print(f"[yellow bold]warning:[/] {warning}")
    if s["slo_violations"]:
        console.print("[red bold]SLO violated:[/] " + "; ".join(s["slo_violations"]))
    if s["report_dir"]:
        console.print(f"report: {s['report_dir']}/report.html")


async def _soak_main(
    target_cm: AbstractAsyncContextManager[SoakTarget] | None,
    load: LoadConfig,
    *,
    show_progress: bool,
    sample_interval: float,
    url: str | None = None,
    api_key: str | None = None,
    workers: int = 1,
) -> SoakRun:
    interrupt = trio.Event()

    async def on_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                if interrupt.is_set():  # a second signal: stop now
                    raise KeyboardInterrupt
                interrupt.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(on_signals)
        if target_cm is None:
            assert url is not None
            title = f"dtesn-trio soak → {url} ({workers} workers)"
            run = await run_workers(
                url,
                load,
                workers,
                api_key=api_key,
                sample_interval=sample_interval,
                progress=LiveProgress(load, title) if show_progress else None,
                interrupt=interrupt,
            )
        else:
            async with target_cm as target:
                title = f"dtesn-trio soak → {target.describe().get('url') or target.kind}"
                run = await run_soak(
                    target,
                    load,
                    sample_interval=sample_interval,
                    progress=LiveProgress(load, title) if show_progress else None,
                    interrupt=interrupt,
                )
        nursery.cancel_scope.cancel()
    return run


@click.command("soak")
@click.option("--url", help="Base URL of a dtesn-trio server, e.g. http://127.0.0.1:8000.")
@click.option("--embedded", is_flag=True, help="Drive an in-process runtime (no HTTP).")
@click.option("--rate", type=float, help="Open loop: requests per second.")
@click.option(
    "--arrivals",
    type=click.Choice(["constant", "poisson"]),
    default="constant",
    show_default=True,
    help="Open-loop arrival process.",
)
@click.option(
    "--concurrency",
    type=int,
    help="Closed loop: this many workers. With --rate: at most this many connections.",
)
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option(
    "--ramp", type=float, default=0.0, show_default=True, help="Seconds of linear ramp-up."
)
@click.option(
    "--priority-mix",
    default="2:100",
    show_default=True,
    callback=_priority_mix,
    help="PRIORITY:WEIGHT,... e.g. 0:10,2:80,4:10",
)
@click.option(
    "--input-size",
    default="64",
    show_default=True,
    callback=_input_size,
    help="Bytes per input: N, uniform:LOW-HIGH, choice:A,B,.. or exp:MEAN",
)
@click.option("--deadline-ms", type=int, help="deadline_ms sent with every request.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Client timeout (s), from the intended send time.",
)
@click.option("--api-key", envvar="DTESN_API_KEY", help="Bearer token (or $DTESN_API_KEY).")
@click.option(
    "--report", "report_dir", type=click.Path(file_okay=False), help="Write the report here."
)
@click.option("--slo-p99-ms", type=float, help="Exit 1 when p99 latency exceeds this.")
@click.option(
    "--max-error-rate", type=float, help="Exit 1 when the non-2xx share exceeds this (0-1)."
)
@click.option(
    "--workers", type=int, default=1, show_default=True, help="Load-generating processes."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for arrivals, sizes, priorities."
)
@click.option(
    "--sample-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between samples of the target's stats.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Live display (default: on a terminal, without --json).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="With --embedded: the runtime's TOML config (as for serve).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="With --embedded: override one runtime setting (repeatable).",
)
@click.option("--worker-spec", hidden=True, help="Internal: run as a --workers load process.")
def soak(
    url: str | None,
    embedded: bool,
    rate: float | None,
    arrivals: str,
    concurrency: int | None,
    duration: float,
    ramp: float,
    priority_mix: PriorityMix,
    input_size: InputSizes,
    deadline_ms: int | None,
    timeout: float,
    api_key: str | None,
    report_dir: str | None,
    slo_p99_ms: float | None,
    max_error_rate: float | None,
    workers: int,
    seed: int,
    sample_interval: float,
    progress: bool | None,
    as_json: bool,
    config_file: str | None,
    sets: tuple[str, ...],
    worker_spec: str | None,
) -> None:
    """Drive a server at a fixed rate (or concurrency) and report how it held up.

    Latency is measured from each request's intended send time (no coordinated omission).
    Exit 1 on an SLO violation, 2 on bad flags or an unreachable target.
    """
    _require_soak_extra()
    if worker_spec is not None:
        sys.exit(trio.run(worker_main, json.loads(worker_spec)))
    if (url is None) == (not embedded):
        raise click.UsageError("give exactly one target: --url URL or --embedded")
    if rate is None and concurrency is None:
        raise click.UsageError("give --rate (open loop) or --concurrency (closed loop)")
    if workers < 1:
        raise click.BadParameter(f"must be >= 1 (got {workers})", param_hint="--workers")
    if (config_file is not None or sets) and not embedded:
        raise click.UsageError("--config and --set configure the embedded runtime: use --embedded")
    if workers > 1 and embedded:
        raise click.UsageError(
            "--workers > 1 needs --url (each worker would embed its own runtime)"
        )
    if sample_interval <= 0:
        raise click.BadParameter("must be > 0", param_hint="--sample-interval")
    try:
        load = LoadConfig(
            duration=duration,
            rate=rate,
            concurrency=concurrency,
            arrivals=arrivals,  # type: ignore[arg-type]
            ramp=ramp,
            priority_mix=priority_mix,
            input_size=input_size,
            deadline_ms=deadline_ms,
            timeout=timeout,
            seed=seed,
        )
        slo = SLO(p99_ms=slo_p99_ms, max_error_rate=max_error_rate)
        target_cm: AbstractAsyncContextManager[SoakTarget] | None
        if url is not None:
            parse_base_url(url)
            split_load(load, workers)
            max_conn = concurrency if rate is not None else None
            if workers > 1:
                target_cm = None
            else:
                target_cm = open_http_target(url, api_key=api_key, max_connections=max_conn)
        else:
            target_cm = open_embedded_target(_embedded_config(config_file, sets))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    show_progress = progress if progress is not None else (not as_json and sys.stderr.isatty())
    unreachable: list[str] = []
    aborted = False
    try:
        run = trio.run(
            lambda: _soak_main(
                target_cm,
                load,
                show_progress=show_progress,
                sample_interval=sample_interval,
                url=url,
                api_key=api_key,
                workers=workers,
            )
        )
    except* TargetUnreachable as group:
        unreachable = [str(e) for e in group.exceptions]
    except* KeyboardInterrupt:  # a second Ctrl-C: stopped at once, nothing to report
        aborted = True
    if aborted:
        click.echo("soak: stopped at once (second interrupt); no report", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if unreachable:
        click.echo(f"error: {unreachable[0]}", err=True)
        sys.exit(EXIT_USAGE)

    report = run.report(slo)
    if report_dir is not None:
        write_report(report, report_dir)
    s = summary(report, report_dir)
    if as_json:
        click.echo(json.dumps(s))
    else:
        _print_summary(s)
    if run.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not report["slo"]["passed"]:
        sys.exit(EXIT_SLO)

"""``dtesn-trio serve``: load the config, open the runtime, serve until a signal."""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import signal
import sys
import tomllib
import typing
from collections.abc import Callable
from typing import Any

import click
import trio

from dtesn_trio.executor import ProcessorConfig
from dtesn_trio.server.config import ServerConfig
from dtesn_trio.server.requestid import RequestIDFilter
from dtesn_trio.settings import SettingsError, load_settings, parse_set_option

__all__ = ["load_engine_options", "load_serve_config", "serve_command"]

ENV_ALIASES = {"API_KEYS": "server.api_keys"}

# Where ``serve`` starts from other defaults than ``open_runtime``: the engine computes
# in worker processes, because the server's event loop holds the GIL while it answers
# (in threads, a storm of clients starves the engine: docs/RELIABILITY.md, "Storms").
# An embedding program keeps threads: processes need its ``__main__`` guard.
SERVE_DEFAULTS: dict[str, Callable[[], Any]] = {
    "processor": lambda: ProcessorConfig(executor="process"),
}
LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def _settings_class() -> type[Any]:
    """``RuntimeConfig``'s sections plus ``[server]``: the tree a config file holds."""
    from dtesn_trio.runtime import RuntimeConfig

    hints = typing.get_type_hints(RuntimeConfig)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(RuntimeConfig):
        if f.name in SERVE_DEFAULTS:
            spec = dataclasses.field(default_factory=SERVE_DEFAULTS[f.name])
        elif f.default is not dataclasses.MISSING:
            spec = dataclasses.field(default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            spec = dataclasses.field(default_factory=f.default_factory)
        else:
            spec = dataclasses.field(default_factory=hints[f.name])
        fields.append((f.name, hints[f.name], spec))
    fields.append(("server", ServerConfig, dataclasses.field(default_factory=ServerConfig)))
    return dataclasses.make_dataclass("ServeSettings", fields, frozen=True)


_ENGINE = "engine"
_ENGINE_ENV = "DTESN_ENGINE__"


def _read_toml(config_file: str | None) -> dict[str, Any] | None:
    if config_file is None:
        return None
    try:
        with open(config_file, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise SettingsError("--config", f"cannot read {config_file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("--config", f"{config_file} is not valid TOML: {exc}") from None


def _literal(text: str) -> Any:
    """A ``--set engine.KEY=VALUE`` value: a TOML literal (``3``, ``0.5``, ``true``,
    ``[1, 2]``, ``"x"``) when it parses as one, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_engine_options(
    *,
    config_file: str | None = None,
    sets: typing.Sequence[str] = (),
    environ: typing.Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``engine`` section, free-form: keyword arguments for the ``--engine``
    factory, from the TOML ``[engine]`` table < ``DTESN_ENGINE__KEY`` < ``--set
    engine.KEY=VALUE``."""
    options: dict[str, Any] = {}
    table = (_read_toml(config_file) or {}).get(_ENGINE, {})
    if not isinstance(table, dict):
        raise SettingsError(_ENGINE, "expected a table of factory arguments", source="--config")
    options.update(table)
    env = os.environ if environ is None else environ
    for name in sorted(env):
        if name.upper().startswith(_ENGINE_ENV):
            options[name[len(_ENGINE_ENV) :].lower()] = _literal(env[name])
    for option in sets:
        key, value = parse_set_option(option)
        if key.startswith(_ENGINE + "."):
            options[key.removeprefix(_ENGINE + ".")] = _literal(value)
    return options


def load_serve_config(
    *,
    config_file: str | None = None,
    sets: typing.Sequence[str] = (),
    flags: typing.Mapping[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> tuple[Any, ServerConfig]:
    """``(RuntimeConfig, ServerConfig)`` from a TOML file < ``DTESN_*`` < ``--set`` <
    the named flags (``{"server.port": 9000}``).  The ``engine`` section is left out:
    see ``load_engine_options``.  Raises ``SettingsError``."""
    from dtesn_trio.runtime import RuntimeConfig

    cls = _settings_class()
    data = _read_toml(config_file)
    if data is not None:
        data = {k: v for k, v in data.items() if k != _ENGINE}
    env = os.environ if environ is None else environ
    env = {k: v for k, v in env.items() if not k.upper().startswith(_ENGINE_ENV)}
    pairs = [parse_set_option(s) for s in sets]
    overrides: list[tuple[str, Any]] = [p for p in pairs if not p[0].startswith(_ENGINE + ".")]
    overrides += [(k, v) for k, v in (flags or {}).items() if v is not None]
    settings = load_settings(
        cls,
        toml_data=data,
        environ=env,
        overrides=overrides,
        aliases=ENV_ALIASES,
    )
    runtime_fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(RuntimeConfig)}
    try:
        runtime_config = RuntimeConfig(**runtime_fields)
    except ValueError as exc:
        raise SettingsError("runtime", str(exc)) from None
    return runtime_config, settings.server


_NOFILE_CAP = 1 << 20


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one (as Go's runtime does): a socket is
    a file, and the common soft default of 1,024 would refuse the 1,025th connection
    (EMFILE) however much memory is free."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_CAP if hard == resource.RLIM_INFINITY else min(hard, _NOFILE_CAP)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            logging.getLogger("dtesn_trio.server").warning(
                "could not raise the open-file limit from %d: %s", soft, exc
            )
            return
    logging.getLogger("dtesn_trio.server").info(
        "open-file limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    )


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIDFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def _serve_main(runtime_config: Any, server_config: ServerConfig, engine: Any = None) -> int:
    """Serve until signalled; the exit status: 0 after a graceful stop, 130 after a
    second signal cut the drain short."""
    from dtesn_trio.runtime import open_runtime
    from dtesn_trio.server.serve import ServerInfo, serve

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_runtime(runtime_config, engine=engine) as rt:
            stop = trio.Event()
            stopped = trio.Event()
            forced = False

            async def run_server(*, task_status: trio.TaskStatus[ServerInfo]) -> None:
                try:
                    await serve(
                        rt, server_config, shutdown_trigger=stop.wait, task_status=task_status
                    )
                finally:
                    stopped.set()

            info: ServerInfo = await rt.nursery.start(run_server)
            click.echo(f"dtesn-trio listening on {info.url}")
            sys.stdout.flush()
            async with trio.open_nursery() as watch:

                async def on_signals() -> None:
                    nonlocal forced
                    async for signum in signals:
                        if not stop.is_set():
                            click.echo(
                                f"received {signal.Signals(signum).name}: stopping gracefully"
                                " (again to stop at once)"
                            )
                            stop.set()
                        else:
                            click.echo("stopping now")
                            forced = True
                            rt.nursery.cancel_scope.cancel()
                            return

                watch.start_soon(on_signals)
                await stopped.wait()
                watch.cancel_scope.cancel()
    click.echo("dtesn-trio stopped" + (" (forced)" if forced else ""))
    return 130 if forced else 0


@click.command("serve")
@click.option("--host", default=None, help="Listen address (server.host; default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (server.port; default 8000).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file.",
)
@click.option(
    "--engine",
    "engine_spec",
    default=None,
    metavar="MODULE:FACTORY",
    help="Serve the engine FACTORY(**engine options) returns (default: DTESN), e.g."
    " examples.sklearn_digits:factory; options: --set engine.KEY=VALUE.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one setting (repeatable), e.g. --set jobs.workers=4.",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
def serve_command(
    host: str | None,
    port: int | None,
    config_file: str | None,
    engine_spec: str | None,
    sets: tuple[str, ...],
    log_level: str,
) -> None:
    """Serve the HTTP API on hypercorn's Trio worker.

    Settings: TOML file < DTESN_SECTION__KEY environment variables < --set < --host/--port.
    SIGINT/SIGTERM drain gracefully (exit 0); a second signal stops at once (exit 130).
    """
    try:
        runtime_config, server_config = load_serve_config(
            config_file=config_file,
            sets=sets,
            flags={"server.host": host, "server.port": port},
        )
        options = load_engine_options(config_file=config_file, sets=sets)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    _setup_logging(log_level)
    engine = None
    if engine_spec is not None:
        from dtesn_trio.engine import load_engine

        try:
            engine = load_engine(engine_spec, options)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    elif options:
        raise click.UsageError(
            f"engine options ({', '.join(sorted(options))}) need --engine MODULE:FACTORY"
        )
    _raise_open_file_limit()
    status = trio.run(_serve_main, runtime_config, server_config, engine)
    if status:
        sys.exit(status)

"""The settings loader: TOML < DTESN_* < --set, types from the dataclasses, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from dtesn_trio.jobs import JobsConfig
from dtesn_trio.nurseries import ConnectionPoolConfig
from dtesn_trio.server.config import ServerConfig
from dtesn_trio.settings import SettingsError, load_settings, parse_set_option, settings_keys


@dataclass(frozen=True, slots=True)
class Redis:
    url: str | None = None
    pool: ConnectionPoolConfig = field(default_factory=ConnectionPoolConfig)


@dataclass(frozen=True, slots=True)
class Root:
    server: ServerConfig = field(default_factory=ServerConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    redis: Redis = field(default_factory=Redis)
    shutdown_grace: float = 10.0
    mode: Literal["a", "b"] = "a"
    ratio: tuple[float, float] = (0.5, 0.5)


ALIASES = {"API_KEYS": "server.api_keys"}


def load(tmp_path: Path | None = None, toml: str | None = None, **kw: object) -> Root:
    path = None
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "c.toml"
        path.write_text(toml)
    kw.setdefault("environ", {})
    return load_settings(Root, toml_path=path, aliases=ALIASES, **kw)  # type: ignore[arg-type]


def test_defaults_without_any_source() -> None:
    assert load() == Root()


def test_precedence_toml_then_env_then_flags(tmp_path: Path) -> None:
    toml = """
shutdown_grace = 3
[server]
port = 9001
host = "0.0.0.0"
max_body_size = 2048
[redis.pool]
max_connections = 20
min_connections = 2
"""
    env = {
        "DTESN_SERVER__PORT": "9002",
        "DTESN_REDIS__POOL__MIN_CONNECTIONS": "3",
        "DTESN_SHUTDOWN_GRACE": "4.5",
        "DTESN_API_KEYS": "key-one-123,key-two-456",
        "DTESN_API_KEY": "belongs-to-the-soak-client",  # single level, unknown: left alone
        "OTHER": "x",
    }
    root = load(
        tmp_path,
        toml,
        environ=env,
        overrides=[("server.port", "9003"), ("jobs.workers", "7")],
    )
    assert root.server.port == 9003  # flag beats env beats file
    assert root.server.host == "0.0.0.0"  # file only
    assert root.server.max_body_size == 2048
    assert root.server.api_keys == ("key-one-123", "key-two-456")
    assert root.shutdown_grace == 4.5
    assert root.redis.pool.max_connections == 20
    assert root.redis.pool.min_connections == 3
    assert root.jobs.workers == 7
    assert root.jobs.lease_seconds == 30.0  # untouched default


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("YES", True),
        ("1", True),
        ("off", False),
        ("0", False),
    ],
)
def test_bool_words(raw: str, expected: bool) -> None:
    assert (
        load(overrides=[("server.metrics_require_auth", raw)]).server.metrics_require_auth
        is expected
    )


def test_optional_literal_and_tuple_values() -> None:
    root = load(
        overrides=[
            ("server.graceful_timeout", "none"),
            ("redis.url", "redis://h:1"),
            ("mode", "b"),
            ("ratio", "0.25, 0.75"),
            ("jobs.backend", "postgres"),
        ]
    )
    assert root.server.graceful_timeout is None
    assert root.redis.url == "redis://h:1"
    assert root.mode == "b"
    assert root.ratio == (0.25, 0.75)
    assert root.jobs.backend == "postgres"
    assert load(overrides=[("server.graceful_timeout", "2.5")]).server.graceful_timeout == 2.5


@pytest.mark.parametrize(
    ("kwargs", "key", "words"),
    [
        ({"overrides": [("server.prot", "1")]}, "server.prot", "unknown key server.prot"),
        ({"overrides": [("sever.port", "1")]}, "sever.port", "unknown key sever"),
        ({"overrides": [("server.port", "eighty")]}, "server.port", "expected an integer"),
        ({"overrides": [("server.docs", "maybe")]}, "server.docs", "expected true or false"),
        ({"overrides": [("mode", "c")]}, "mode", "one of 'a', 'b'"),
        ({"overrides": [("ratio", "1,2,3")]}, "ratio", "expected"),
        ({"overrides": [("server", "1")]}, "server", "is a section"),
        ({"overrides": [("server.port.x", "1")]}, "server.port.x", "not a section"),
        ({"environ": {"DTESN_SERVER__PORTT": "1"}}, "server.portt", "DTESN_SERVER__PORTT"),
        ({"environ": {"DTESN_JOBS__WORKERS": "two"}}, "jobs.workers", "DTESN_JOBS__WORKERS"),
        # values the dataclasses themselves reject
        ({"overrides": [("server.port", "70000")]}, "server", "server.port must be <= 65535"),
        ({"overrides": [("jobs.workers", "-1")]}, "jobs", "jobs.workers must be >= 0"),
        (
            {"overrides": [("redis.pool.min_connections", "900")]},
            "redis.pool",
            "pool.max_connections must be >= pool.min_connections",
        ),
    ],
)
def test_bad_keys_and_values_name_the_key(kwargs: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    assert words in str(info.value)


def test_bad_toml_names_the_key_and_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"server\.nope .*c\.toml"):
        load(tmp_path, "[server]\nnope = 1\n")
    with pytest.raises(SettingsError, match=r"server\.port .*expected an integer, got '80'"):
        load(tmp_path, '[server]\nport = "80"\n')  # TOML has types: no coercion from text
    with pytest.raises(SettingsError, match="expected a table"):
        load(tmp_path, "server = 3\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load(tmp_path, "[server\n")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(Root, toml_path=tmp_path / "missing.toml", environ={})


def test_api_keys_are_never_echoed_in_errors() -> None:
    with pytest.raises(SettingsError) as info:
        load(environ={"DTESN_API_KEYS": "short"})
    assert "server.api_keys" in str(info.value)
    assert "short" not in str(info.value).replace("DTESN_API_KEYS", "")


def test_parse_set_option_and_keys() -> None:
    assert parse_set_option("a.b=c=d") == ("a.b", "c=d")
    with pytest.raises(SettingsError, match=r"expected section\.key=value"):
        parse_set_option("a.b")
    keys = settings_keys(Root)
    assert "server.port" in keys
    assert "redis.pool.max_connections" in keys
    assert "shutdown_grace" in keys


@dataclass(frozen=True, slots=True)
class Unions:
    timeout: float | tuple[float | None, ...] | None = None
    action: Literal["reject", "delay"] | tuple[Literal["reject", "delay"], ...] = "reject"
    shares: tuple[float, ...] | None = None


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("timeout", "2.5", 2.5),
        ("timeout", "none", None),
        ("timeout", "1, none, 3", (1.0, None, 3.0)),
        ("action", "delay", "delay"),
        ("action", "reject,delay", ("reject", "delay")),
        ("shares", "0.5,0.5", (0.5, 0.5)),
    ],
)
def test_unions_of_scalars_and_tuples(key: str, raw: str, expected: object) -> None:
    loaded = load_settings(Unions, environ={}, overrides=[(key, raw)])
    assert getattr(loaded, key) == expected


def test_unions_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "u.toml"
    path.write_text('timeout = [1.0, 2]\naction = ["delay", "reject"]\n')
    loaded = load_settings(Unions, toml_path=path, environ={})
    assert loaded.timeout == (1.0, 2.0)
    assert loaded.action == ("delay", "reject")
    with pytest.raises(SettingsError, match=r"action .*expected"):
        load_settings(Unions, environ={}, overrides=[("action", "later")])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"environ": {"DTESN_SERVER__PORT": "eighty"}},
            "invalid setting server.port (from DTESN_SERVER__PORT):"
            " expected an integer, got 'eighty'",
        ),
        (
            {"overrides": [("shutdown_grace", "soon")]},
            "invalid setting shutdown_grace (from --set): expected a number, got 'soon'",
        ),
        (
            {"overrides": [("ratio", "0.5, half")]},
            "invalid setting ratio (from --set): expected tuple[float, float], got ['0.5', 'half']",
        ),
        (
            {"overrides": [("server.graceful_timeout", "later")]},
            "invalid setting server.graceful_timeout (from --set):"
            " expected a number or none, got 'later'",
        ),
        (
            {"toml_data": {"shutdown_grace": "3"}},
            "invalid setting shutdown_grace (from config): expected a number, got '3'",
        ),
        (
            {"toml_data": {"server": {"docs": 1}}},
            "invalid setting server.docs (from config): expected true or false, got 1",
        ),
        (
            {"environ": {"DTESN_SERVER__DOCS": "perhaps"}},
            "invalid setting server.docs (from DTESN_SERVER__DOCS):"
            " expected true or false, got 'perhaps'",
        ),
    ],
)
def test_a_bad_value_names_the_key_the_source_and_the_value(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


@dataclass(frozen=True, slots=True)
class Hooks:
    on_error: Callable[[BaseException], bool] = bool


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"overrides": [("on_error", "os.system")]}, "--set"),
        ({"environ": {"DTESN_ON_ERROR": "os.system"}}, "DTESN_ON_ERROR"),
        ({"toml_data": {"on_error": "os.system"}}, "config"),
    ],
)
def test_a_function_is_set_in_code_not_from_configuration(
    kwargs: dict[str, object], source: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(Hooks, **{"environ": {}, **kwargs})  # type: ignore[arg-type]
    assert str(info.value) == (
        f"invalid setting on_error (from {source}): expected a function"
        " (set in code, not in configuration), got 'os.system'"
    )
    assert load_settings(Hooks, environ={}, overrides=[("on_error", callable)]).on_error is callable

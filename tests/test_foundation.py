"""The package's skeleton: errors, config checks, the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dtesn_trio
from dtesn_trio import _checks
from dtesn_trio.errors import DTESNError, InvalidRequest, Overloaded, RateLimited
from tests.servers import RedisServer


def test_errors_carry_code_status_and_retry_after() -> None:
    err = RateLimited("rate limit of 10/s hit", retry_after=0.25)
    assert isinstance(err, DTESNError)
    assert (err.code, err.http_status) == ("rate_limited", 429)
    assert err.to_dict() == {
        "code": "rate_limited",
        "message": "rate limit of 10/s hit",
        "retry_after": 0.25,
    }
    assert InvalidRequest("bad", field="priority").to_dict()["field"] == "priority"
    assert Overloaded("full").http_status == 503


@pytest.mark.parametrize(
    ("check", "args", "message"),
    [
        (_checks.positive, ("pool.max_connections", 0), "pool.max_connections must be > 0 (got 0)"),
        (_checks.non_negative, ("x.delay", -1.0), "x.delay must be >= 0 (got -1.0)"),
        (_checks.integer, ("q.size", 2.5), "q.size must be an integer (got 2.5)"),
        (_checks.in_range, ("a.leak", 2, 0, 1), "a.leak must be between 0 and 1 (got 2)"),
        (_checks.at_least, ("p.max", 5, "p.min", 10), "p.max must be >= p.min (got 5 < 10)"),
    ],
)
def test_checks_name_the_field_and_value(
    check: object, args: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check(*args)  # type: ignore[operator]


def test_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dtesn_trio", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert dtesn_trio.__version__ in out.stdout


def test_redis_fixture_counts_clients(redis: RedisServer) -> None:
    assert redis.command("PING") == "PONG"
    assert redis.client_count() == 0

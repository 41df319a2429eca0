"""Every endpoint and every error path, over a real hypercorn on port 0, driven by httpx."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dtesn_trio.server import RequestIDFilter, ServerConfig
from tests.server.harness import Faults, served
from tests.server.runtimes import open_test_runtime

KEY = "test-key-0123456789"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Faults]:
    async with open_test_runtime(tmp_path) as rt:
        yield Faults(rt)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


async def raw_post_endless(port: int) -> bytes:
    """POST a chunked body that never ends; return the response's status line."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream, trio.open_nursery() as nursery:

        async def send_forever() -> None:
            await stream.send_all(
                b"POST /v1/process HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
            try:
                while True:
                    await stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(send_forever)
        while b"\r\n" not in received:
            data = await stream.receive_some()
            if not data:
                break
            received += data
        nursery.cancel_scope.cancel()
    return received.split(b"\r\n", 1)[0]


# ---------------------------------------------------------------------- happy paths


async def test_process_returns_the_outcome_and_echoes_the_request_id(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            r = await s.client.post(
                "/v1/process",
                json={"input": "hello", "priority": 1, "deadline_ms": 5000},
                headers={"X-Request-ID": "abc-123"},
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"] == "abc-123"
            body = r.json()
            assert set(body) >= {"result", "cache_hit", "priority", "batch_size", "timings"}
            assert body["priority"] == 1
            assert isinstance(body["result"], dict)
            # JSON Schema's integers include 2.0 (the OpenAPI document says "integer")
            integral = await s.client.post(
                "/v1/process", content=b'{"input": "x", "priority": 2.0, "deadline_ms": 5e3}'
            )
            assert integral.status_code == 200, integral.text
            assert integral.json()["priority"] == 2
            numeric = await s.client.post("/v1/process", json={"input": [[0.5], [1.0], [-1.0]]})
            assert numeric.status_code == 200, numeric.text
            assert HEX32.match(numeric.headers["x-request-id"])  # generated
            # an id that is not sane is replaced, not echoed
            odd = await s.client.post(
                "/v1/process", json={"input": "x"}, headers={"X-Request-ID": "a b"}
            )
            assert HEX32.match(odd.headers["x-request-id"])


async def test_batch_has_one_outcome_per_input(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            r = await s.client.post(
                "/v1/process/batch",
                json={"inputs": ["a", "!error:rate_limited", "ccc"], "priority": 0},
            )
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert [i["index"] for i in results] == [0, 1, 2]
            assert [i["status"] for i in results] == [200, 429, 200]
            assert results[1]["error"]["code"] == "rate_limited"
            assert "outcome" not in results[1]
            assert results[0]["outcome"]["priority"] == 0


async def test_job_is_accepted_then_runs(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            r = await s.client.post("/v1/jobs", json={"input": "job input", "priority": 3})
            assert r.status_code == 202, r.text
            body = r.json()
            assert HEX32.match(body["job_id"])
            assert r.headers["location"] == body["location"] == f"/v1/jobs/{body['job_id']}"
            while True:
                status = await s.client.get(r.headers["location"])
                assert status.status_code == 200
                job = status.json()
                if job["status"] == "succeeded":
                    break
                assert job["status"] in ("queued", "running")
                await trio.sleep(0.01)
            assert job["attempts"] == 1
            assert set(job["result"]) >= {"result", "batch_size"}
            assert job["error"] is None
            missing = await s.client.get("/v1/jobs/" + "0" * 32)
            assert missing.status_code == 404
            assert error_of(missing)["code"] == "not_found"
            assert (await s.client.get("/v1/jobs/not-an-id")).status_code == 404
            bad = await s.client.post("/v1/jobs", json={"input": "x", "deadline_ms": 5})
            assert bad.status_code == 422
            assert error_of(bad)["field"] == "deadline_ms"


async def test_stats_gc_needs_debug_memory(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            refused = await s.client.get("/v1/stats", params={"gc": "1"})
            assert refused.status_code == 422
            assert error_of(refused)["field"] == "gc"
            assert "server.debug_memory" in error_of(refused)["message"]
        async with served(runtime, ServerConfig(port=0, debug_memory=True)) as s:
            collected = await s.client.get("/v1/stats", params={"gc": "1"})
            assert collected.status_code == 200
            assert collected.json()["memory"]["allocated_blocks"] > 0
            bad = await s.client.get("/v1/stats", params={"gc": "yes"})
            assert bad.status_code == 422
            assert error_of(bad)["field"] == "gc"


async def test_stats_health_ready(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            stats = (await s.client.get("/v1/stats")).json()
            assert set(stats) >= {"processing", "load", "queue", "pool", "jobs", "server"}
            assert stats["jobs"]["store"] == {
                "queued": 0,
                "running": 0,
                "succeeded": 0,
                "failed": 0,
            }
            assert stats["server"] == {
                "in_flight": 1,
                "requests": 0,
                "draining": False,
                "waiting": 0,
                "unread": 0,
                "unread_refused": 0,
            }
            memory = stats["memory"]
            assert set(memory) == {
                "rss_bytes",
                "allocated_blocks",
                "traced_bytes",
                "traced_peak_bytes",
            }
            assert memory["rss_bytes"] > 0
            assert memory["allocated_blocks"] > 0
            again = (await s.client.get("/v1/stats")).json()
            assert again["server"]["requests"] == 1
            health = await s.client.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            ready = await s.client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
            runtime.begin_shutdown()
            gone = await s.client.get("/readyz")
            assert gone.status_code == 503
            assert gone.headers["retry-after"] == "1"
            assert error_of(gone)["code"] == "shutting_down"
            assert (await s.client.get("/healthz")).status_code == 200


async def test_metrics(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            await s.client.post("/v1/process", json={"input": "abc", "priority": 4})
            await s.client.post("/v1/process", json={"input": 5})
            r = await s.client.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            text = r.text
            assert (
                'dtesn_http_requests_total{method="POST",route="/v1/process",status="200"} 1.0'
                in text
            )
            assert (
                'dtesn_http_requests_total{method="POST",route="/v1/process",status="422"} 1.0'
                in text
            )
            assert 'dtesn_process_latency_seconds_count{priority="4"} 1.0' in text
            assert "dtesn_http_requests_in_flight 1.0" in text
            # the runtime's numbers, read at scrape time: queue depth per level, limiter,
            # breaker state, pools, longest loop step
            for level in range(5):
                assert f'dtesn_runtime_queue_queued{{level="{level}"}} 0.0' in text
            for name in (
                "dtesn_runtime_admission_limiter_limit",
                "dtesn_runtime_admission_limiter_in_flight",
                "dtesn_runtime_admission_breaker_state_closed",
                "dtesn_runtime_pools_jobs_open",
                "dtesn_runtime_loop_max_step",
            ):
                assert re.search(rf"^{name} [0-9.e+-]+$", text, re.M), name


async def test_stats_and_metrics_report_the_admission_breaker(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            breaker = runtime.admission.breaker
            for _ in range(breaker.config.minimum_calls):  # the engine failing
                breaker.acquire_permission().on_error(RuntimeError("engine down"))
            for is_open, state in ((True, "open"), (False, "closed")):
                stats = (await s.client.get("/v1/stats")).json()
                assert stats["queue"]["circuit_breaker_open"] is is_open
                assert stats["processing"]["queue_stats"]["circuit_breaker_open"] is is_open
                assert stats["load"]["circuit_breaker_state"] == state
                text = (await s.client.get("/metrics")).text
                assert f"dtesn_runtime_admission_breaker_state_{state} 1.0" in text
                breaker.reset()


async def test_openapi_and_docs(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime, ServerConfig(port=0, api_keys=(KEY,))) as s:
            assert (await s.client.get("/openapi.json")).status_code == 401
            doc = (
                await s.client.get("/openapi.json", headers={"authorization": f"Bearer {KEY}"})
            ).json()
            assert doc["openapi"] == "3.1.0"
            assert set(doc["paths"]) >= {
                "/v1/process",
                "/v1/process/batch",
                "/v1/jobs",
                "/v1/jobs/{job_id}",
                "/v1/stats",
                "/healthz",
                "/readyz",
                "/metrics",
            }
            schema = doc["components"]["schemas"]["ProcessRequest"]
            assert schema["additionalProperties"] is False
            assert schema["properties"]["priority"] == {
                "type": "integer",
                "minimum": 0,
                "maximum": 4,
                "description": "0 is the most urgent.",
                "default": 2,
            }
            assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
            assert doc["paths"]["/healthz"]["get"]["security"] == []
            docs = await s.client.get("/docs", headers={"authorization": f"Bearer {KEY}"})
            assert docs.status_code == 200
            assert "/openapi.json" in docs.text
            assert "<code>POST /v1/process</code>" in docs.text
            assert "text/html" in docs.headers["content-type"]


# ---------------------------------------------------------------------- auth


async def test_api_keys(runtime: Faults) -> None:
    config = ServerConfig(port=0, api_keys=(KEY, "second-key-abcdef"))
    with trio.fail_after(30):
        async with served(runtime, config) as s:
            c = s.client
            none = await c.post("/v1/process", json={"input": "x"})
            assert none.status_code == 401
            assert none.headers["www-authenticate"].startswith("Bearer")
            assert error_of(none)["code"] == "unauthorized"
            wrong = await c.post(
                "/v1/process", json={"input": "x"}, headers={"authorization": f"Bearer {KEY}x"}
            )
            assert wrong.status_code == 401
            basic = await c.get("/v1/stats", headers={"authorization": f"Basic {KEY}"})
            assert basic.status_code == 401
            for key in (KEY, "second-key-abcdef"):
                ok = await c.post(
                    "/v1/process", json={"input": "x"}, headers={"authorization": f"bearer {key}"}
                )
                assert ok.status_code == 200
            # 401 comes before the body is even looked at
            assert (await c.post("/v1/jobs", content=b"{not json")).status_code == 401
            assert (await c.get("/v1/jobs/" + "0" * 32)).status_code == 401
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
    locked = ServerConfig(port=0, api_keys=(KEY,), metrics_require_auth=True)
    with trio.fail_after(30):
        async with served(runtime, locked) as s:
            assert (await s.client.get("/metrics")).status_code == 401
            auth = {"authorization": f"Bearer {KEY}"}
            assert (await s.client.get("/metrics", headers=auth)).status_code == 200


# ---------------------------------------------------------------------- bad requests


async def test_body_over_the_limit_is_413_with_content_length(runtime: Faults) -> None:
    config = ServerConfig(port=0, max_body_size=1024)
    with trio.fail_after(30):
        async with served(runtime, config) as s:
            big = b'{"input": "' + b"x" * 300_000 + b'"}'
            r = await s.client.post("/v1/process", content=big)
            assert r.status_code == 413
            assert error_of(r)["code"] == "payload_too_large"
            assert r.headers["connection"] == "close"
            # the server is fine afterwards
            ok = await s.client.post("/v1/process", json={"input": "x"})
            assert ok.status_code == 200


async def test_streamed_body_over_the_limit_is_413_while_reading(runtime: Faults) -> None:
    config = ServerConfig(port=0, max_body_size=4096)
    sent = 0

    async def chunks(n: int) -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"input": "'
        for _ in range(n):
            sent += 1000
            yield b"y" * 1000
        yield b'"}'

    with trio.fail_after(30):
        async with served(runtime, config) as s:
            # chunked, no Content-Length: the limit is enforced while the body streams in
            body = chunks(20)
            r = await s.client.post("/v1/process", content=body)
            await body.aclose()
            assert r.status_code == 413
            assert error_of(r)["message"] == "request body is larger than 4096 bytes"
            assert sent == 20_000  # the client could finish: the rest was read and dropped
            # A body far over the limit (raw socket: the client keeps sending): the server
            # stops discarding after a bound and closes, but the 413 went out first.
            status_line = await raw_post_endless(s.info.port)
            assert status_line.startswith(b"HTTP/1.1 413 ")
            assert (await s.client.post("/v1/process", json={"input": "x"})).status_code == 200


BAD_BODIES: list[tuple[bytes, int, str | None, str]] = [
    (b"{bad json", 400, None, "not valid JSON"),
    (b"", 400, None, "empty"),
    (b'{"input": "\xff\xfe"}', 400, None, "UTF-8"),
    (b'{"input": "ok"} trailing', 400, None, "not valid JSON"),
    (b"[]", 422, None, "Expected `object`"),
    (b'{"input": 5}', 422, "input", "Expected `str | array`"),
    (b'{"input": "x", "priority": "high"}', 422, "priority", "Expected `int`"),
    (b'{"input": "x", "priority": 5}', 422, "priority", "<= 4"),
    (b'{"input": "x", "priority": -1}', 422, "priority", ">= 0"),
    (b'{"input": "x", "deadline_ms": 0}', 422, "deadline_ms", ">= 1"),
    (b'{"input": "x", "deadline_ms": 700000}', 422, "deadline_ms", "<= 600000"),
    (b'{"input": "x", "colour": "red"}', 422, "colour", "unknown field"),
    (b'{"priority": 1}', 422, "input", "missing required field"),
    (b'{"input": ""}', 422, "input", "length >= 1"),
    (b'{"input": [[1, 2], [3]]}', 422, "input", "rectangular"),
    (b'{"input": [[]]}', 422, "input[0]", "length >= 1"),
    (b'{"input": [[1e999]]}', 422, "input[0][0]", "out of range"),
    (b'{"input": "' + b"z" * 101 + b'"}', 422, "input", "longer than 100"),
    (b'{"input": "x", "use_cache": "yes"}', 422, "use_cache", "Expected `bool`"),
    (b'{"input": "x", "priority": 1.5}', 422, "priority", "Expected `int`, got `float`"),
    (b'{"input": "x", "priority": 9.0}', 422, "priority", "<= 4"),
    (b'{"input": "x", "priority": 1.0, "nope": 1}', 422, "nope", "unknown field"),
    (b"null", 422, None, "Expected `object`"),
    # checked by the runtime against its model: input width, depth of the tree
    (b'{"input": [[1, 2], [3, 4]]}', 422, "input", "T x 1 array"),
    (b'{"input": "x", "membrane_depth": 7}', 422, "membrane_depth", "reservoir_size"),
]


async def test_bad_process_bodies(runtime: Faults) -> None:
    config = ServerConfig(port=0, max_input_length=100)
    with trio.fail_after(60):
        async with served(runtime, config) as s:
            for body, status, field, words in BAD_BODIES:
                r = await s.client.post(
                    "/v1/process", content=body, headers={"content-type": "application/json"}
                )
                assert r.status_code == status, (body, r.text)
                error = error_of(r)
                assert error["code"] == "invalid_request", body
                assert error.get("field") == field, (body, error)
                assert words in error["message"], (body, error)


async def test_bad_batch_bodies(runtime: Faults) -> None:
    config = ServerConfig(port=0, max_batch_inputs=3)
    with trio.fail_after(30):
        async with served(runtime, config) as s:
            many = await s.client.post("/v1/process/batch", json={"inputs": ["a"] * 4})
            assert many.status_code == 422
            assert error_of(many)["field"] == "inputs"
            hundred_one = await s.client.post("/v1/process/batch", json={"inputs": ["a"] * 101})
            assert error_of(hundred_one)["field"] == "inputs"
            inner = await s.client.post("/v1/process/batch", json={"inputs": ["a", 7]})
            assert error_of(inner)["field"] == "inputs[1]"
            empty = await s.client.post("/v1/process/batch", json={"inputs": []})
            assert empty.status_code == 422


async def test_unknown_route_and_method(runtime: Faults) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            nope = await s.client.get("/v2/nothing")
            assert nope.status_code == 404
            assert error_of(nope)["code"] == "not_found"
            wrong = await s.client.get("/v1/process")
            assert wrong.status_code == 405
            assert error_of(wrong)["code"] == "method_not_allowed"
            assert "POST" in wrong.headers["allow"]


# ---------------------------------------------------------------------- runtime errors


async def test_runtime_errors_map_to_the_design_table(runtime: Faults) -> None:
    table = [
        ("rate_limited", 429, "3"),
        ("overloaded", 503, "1"),
        ("circuit_open", 503, "7"),
        ("backend_unavailable", 503, "1"),
        ("shutting_down", 503, "1"),
        ("deadline_exceeded", 504, None),
    ]
    with trio.fail_after(30):
        async with served(runtime) as s:
            for code, status, retry_after in table:
                r = await s.client.post("/v1/process", json={"input": f"!error:{code}"})
                assert r.status_code == status, code
                assert error_of(r)["code"] == code
                assert r.headers.get("retry-after") == retry_after, code


async def test_unexpected_exception_is_500_without_internals_and_logged(
    runtime: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIDFilter())
    caplog.set_level(logging.ERROR, "dtesn_trio.server")
    with trio.fail_after(30):
        async with served(runtime) as s:
            r = await s.client.post(
                "/v1/process", json={"input": "!bug"}, headers={"x-request-id": "req-500"}
            )
    assert r.status_code == 500
    assert error_of(r) == {"code": "internal_error", "message": "internal server error"}
    assert "hunter2" not in r.text
    (record,) = [rec for rec in caplog.records if rec.name == "dtesn_trio.server"]
    assert record.request_id == "req-500"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert "hunter2" in caplog.text  # the traceback is in the log


async def test_deadline_ms_becomes_an_absolute_trio_deadline(tmp_path: Path) -> None:
    seen: list[float | None] = []

    class Recorder(Faults):
        async def process(self, input: Any, **kwargs: Any) -> Any:
            seen.append(kwargs["deadline"])
            return await super().process(input, **kwargs)

    async with open_test_runtime(tmp_path) as rt:
        with trio.fail_after(30):
            async with served(Recorder(rt)) as s:
                before = trio.current_time()
                await s.client.post("/v1/process", json={"input": "x", "deadline_ms": 2500})
                after = trio.current_time()
                # no deadline_ms: server.default_deadline_ms (2.5 s)
                await s.client.post("/v1/process", json={"input": "x"})
                after_default = trio.current_time()
            config = ServerConfig(port=0, default_deadline_ms=None)
            async with served(Recorder(rt), config) as s:
                await s.client.post("/v1/process", json={"input": "x"})
    assert seen[0] is not None
    assert before + 2.5 <= seen[0] <= after + 2.5
    assert seen[1] is not None
    assert after + 2.5 <= seen[1] <= after_default + 2.5
    assert seen[2] is None


async def test_access_log_lines_carry_the_request_id(
    runtime: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIDFilter())
    caplog.set_level(logging.INFO, "dtesn_trio.access")
    with trio.fail_after(30):
        async with served(runtime, ServerConfig(port=0, access_log=True)) as s:
            await s.client.post("/v1/process", json={"input": "x"}, headers={"x-request-id": "r-1"})
            await s.client.get("/nowhere", headers={"x-request-id": "r-2"})
    lines = [
        (r.request_id, r.getMessage()) for r in caplog.records if r.name == "dtesn_trio.access"
    ]  # type: ignore[attr-defined]
    assert [rid for rid, _ in lines] == ["r-1", "r-2"]
    assert lines[0][1].startswith("POST /v1/process 200 ")
    assert lines[1][1].startswith("GET /nowhere 404 ")

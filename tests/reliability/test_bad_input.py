"""Bad input over a real socket: schemathesis against /openapi.json, hand-written cases
and slow-loris clients.  No 5xx, no crash, and every refusal says what was wrong.

``tests/server/test_app.py`` already covers malformed JSON, invalid UTF-8 in
``/v1/process``, wrong types, priority 5 / -1, deadline 0 / over the limit, unknown and
missing fields, empty input, ragged arrays and bodies over the limit (declared and
streamed); the cases here are the ones it does not have.

``DTESN_SCHEMATHESIS_CASES`` sets the number of generated cases (default 1000).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dtesn_trio.server import ServerConfig
from tests.server.harness import served
from tests.server.runtimes import open_test_runtime

CASES = int(os.environ.get("DTESN_SCHEMATHESIS_CASES", "1000"))
MiB = 1024 * 1024


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with open_test_runtime(tmp_path) as rt:
        yield rt


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"]
    assert error["message"]
    return error


# ---------------------------------------------------------------------- schemathesis


def _fuzz(url: str, doc: dict[str, Any], cases: int) -> tuple[collections.Counter[Any], list[Any]]:
    """Run schemathesis (in a worker thread: it is synchronous) against ``url``."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(doc)
    ops = [result.ok() for result in schema.get_all_operations()]
    # Negative data only where there is data: operations without a body or parameters
    # have nothing to break (hypothesis finds their negative space empty).
    runs = [
        (op, mode) for op in ops for mode in GenerationMode if op.body or mode.value == "positive"
    ]
    bodiless = [op for op, _ in runs if not op.body and not op.path_parameters]
    per_run = max(1, (cases - len(bodiless)) // (len(runs) - len(bodiless)))
    seen: collections.Counter[Any] = collections.Counter()
    problems: list[Any] = []
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    with requests.Session() as session:

        def run(op: Any, mode: Any, examples: int) -> None:
            @given(case=op.as_strategy(mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                response = case.call(base_url=url, session=session, timeout=30)
                status = response.status_code
                seen[(op.label, mode.value, status)] += 1
                try:
                    case.validate_response(response, checks=checks)
                except Exception as exc:  # a conformance failure: collect, report all
                    problems.append((op.label, mode.value, status, str(exc)[:300]))
                problem = _refusal_problem(status, case.body, response)
                if problem:
                    problems.append((op.label, mode.value, status, problem, repr(case.body)[:200]))

            check()

        for op, mode in runs:
            run(op, mode, 1 if op in bodiless else per_run)
    return seen, problems


def _refusal_problem(status: int, body: Any, response: Any) -> str | None:
    """Why this answer breaks "no 5xx, every refusal says what was wrong", or None."""
    if status < 400:
        return None
    if status == 504 and isinstance(body, dict) and body.get("deadline_ms", 100) < 100:
        return None  # a deadline too short to meet, answered as DESIGN.md says
    if status == 503 and isinstance(body, dict) and "deadline_ms" in body:
        # A deadline shorter than one batch is refused at once (overloaded, with
        # Retry-After) rather than queued to expire: an answer that says why.
        error = response.json().get("error", {})
        if error.get("code") == "overloaded" and "deadline" in error.get("message", ""):
            return None
    if status >= 500:
        return f"server error {status}: {response.text[:200]}"
    if status == 404 and response.request.method == "GET":
        # not_found, or what was not found: session_not_found, model_not_found
        code = response.json()["error"]["code"]
        return None if code == "not_found" or code.endswith("_not_found") else "bad 404"
    error = response.json().get("error", {})
    if not error.get("code") or not error.get("message"):
        return f"refusal without code/message: {response.text[:200]}"
    if status == 422 and isinstance(body, dict) and not error.get("field"):
        return f"422 without a field: {response.text[:200]}"
    return None


@pytest.mark.slow
async def test_schemathesis_no_5xx_and_every_refusal_names_the_problem(runtime: Any) -> None:
    with trio.fail_after(120):
        async with served(runtime) as s:
            doc = (await s.client.get("/openapi.json")).json()
            seen, problems = await trio.to_thread.run_sync(_fuzz, s.info.url, doc, CASES)
            assert (await s.client.get("/healthz")).status_code == 200  # still up
    total = sum(seen.values())
    summary = collections.Counter()
    for (_op, mode, status), n in seen.items():
        summary[f"{mode} {status}"] += n
    print(f"\nschemathesis: {total} cases: {json.dumps(dict(sorted(summary.items())))}")
    assert total >= 0.9 * CASES
    assert not problems, problems[:10]
    # It did exercise both sides: accepted cases and refusals of several kinds.
    statuses = {status for (_op, _mode, status) in seen}
    assert {200, 202, 400, 404, 422} <= statuses


# ---------------------------------------------------------------------- hand-written

DEEP = 100_000


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        # deeply nested JSON, as the input, at the top, and in an unknown field
        (b'{"input": ' + b"[" * DEEP + b"]" * DEEP + b"}", 422, "input[0][0]", "Expected"),
        (b"[" * DEEP + b"]" * DEEP, 422, None, "Expected `object`"),
        (b'{"x": ' + b"[" * DEEP + b"]" * DEEP + b', "input": "a"}', 422, "x", "unknown field"),
        (b'{"input": {"a": {"b": {"c": {}}}}}', 422, "input", "got `object`"),
        (b'{"input": "x", "": 1}', 422, '""', "unknown field"),  # found by schemathesis
        # priority, deadlines
        (b'{"input": "x", "priority": 99}', 422, "priority", "<= 4"),
        (b'{"input": "x", "priority": 1e400}', 422, "priority", "out of range"),
        (b'{"input": "x", "deadline_ms": -5}', 422, "deadline_ms", ">= 1"),
        (b'{"input": "x", "deadline_ms": ' + b"9" * 400 + b"}", 422, "deadline_ms", "<= "),
        (b'{"input": "x", "deadline_ms": 1e300}', 422, "deadline_ms", "deadline_ms: Expected"),
        (b'{"input": "x", "deadline_ms": "soon"}', 422, "deadline_ms", "got `str`"),
        (b'{"input": "x", "membrane_depth": 9}', 422, "membrane_depth", "<= 8"),
        # empty and wrongly typed inputs
        (b'{"input": []}', 422, "input", "length >= 1"),
        (b'{"input": null}', 422, "input", "got `null`"),
        (b'{"input": true}', 422, "input", "got `bool`"),
        (b'{"input": [[1, 2]]}', 422, "input", "T x 1"),
        (b'{"input": [["a"]]}', 422, "input[0][0]", "Expected `float`"),
        (b'{"input": [[NaN]]}', 400, None, "not valid JSON"),
        (b'{"input": "\\ud800"}', 400, None, "not valid JSON"),
        (b"\xef\xbb\xbf{}", 400, None, "not valid JSON"),
        (b"null", 422, None, "Expected `object`"),
    ],
)
async def test_hand_written_bad_bodies(
    runtime: Any, body: bytes, status: int, field: str | None, words: str
) -> None:
    with trio.fail_after(30):
        async with served(runtime) as s:
            r = await s.client.post(
                "/v1/process", content=body, headers={"content-type": "application/json"}
            )
            assert (await s.client.get("/healthz")).status_code == 200
    assert r.status_code == status, r.text
    error = _error(r)
    assert error["code"] == "invalid_request"
    assert error.get("field") == field
    assert words in error["message"]


async def test_bad_bodies_on_the_other_endpoints(runtime: Any) -> None:
    cases = [
        ("/v1/process/batch", b'{"inputs": "abc"}', 422, "inputs"),
        ("/v1/process/batch", b'{"inputs": ["a", "\xff"]}', 400, None),
        ("/v1/process/batch", b'{"inputs": ["a", [[1], [2, 3]]]}', 422, "inputs[1]"),
        ("/v1/process/batch", b'{"inputs": ["a"], "priority": 99}', 422, "priority"),
        ("/v1/jobs", b'{"input": "\xc3\x28"}', 400, None),
        ("/v1/jobs", b'{"input": [[1e999]]}', 422, "input[0][0]"),
        ("/v1/jobs", b'{"input": ""}', 422, "input"),
        ("/v1/jobs", b'{"input": "x", "priority": 99}', 422, "priority"),
    ]
    with trio.fail_after(30):
        async with served(runtime) as s:
            for path, body, status, field in cases:
                r = await s.client.post(path, content=body)
                assert r.status_code == status, (path, body, r.text)
                assert _error(r).get("field") == field, (path, body, r.text)
            traversal = await s.client.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd")
            assert traversal.status_code == 404
            assert _error(traversal)["code"] == "not_found"
            # Headers over hypercorn's limit: refused by the HTTP layer, server fine.
            big = await s.client.get("/v1/stats", headers={"x-big": "a" * 70_000})
            assert big.status_code == 431
            assert (await s.client.get("/v1/stats")).status_code == 200
            stats = (await s.client.get("/v1/stats")).json()
    assert stats["jobs"]["store"]["queued"] + stats["jobs"]["store"]["running"] == 0


async def _raw_post(port: int, body: bytes) -> bytes:
    """POST ``body`` over a raw socket (the server may answer before it is all sent;
    httpx then leaves its body generator unfinished); return the whole response."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    head = (
        b"POST /v1/process HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
        % len(body)
    )
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            try:
                await stream.send_all(head)
                for i in range(0, len(body), 65536):
                    await stream.send_all(body[i : i + 65536])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(send)
        data = await _read_until_closed(stream)
        nursery.cancel_scope.cancel()
    return data


async def test_ten_megabyte_input(runtime: Any) -> None:
    body = b'{"input": "' + b"x" * (10 * MiB) + b'"}'
    with trio.fail_after(60):
        # Default limit (1 MiB): 413 before the body is parsed.
        async with served(runtime) as s:
            data = await _raw_post(s.info.port, body)
            assert data.startswith(b"HTTP/1.1 413 "), data[:200]
            assert b'"code":"payload_too_large"' in data
            assert (await s.client.post("/v1/process", json={"input": "x"})).status_code == 200
        # A 16 MiB body limit lets it in: the input limit names the field.
        async with served(runtime, ServerConfig(port=0, max_body_size=16 * MiB)) as s:
            data = await _raw_post(s.info.port, body)
            assert data.startswith(b"HTTP/1.1 422 "), data[:200]
            r = httpx.Response(422, content=data.split(b"\r\n\r\n", 1)[1])
            error = _error(r)
            assert error["field"] == "input"
            assert "longer than 16384 characters" in error["message"]


# ---------------------------------------------------------------------- slow loris


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while True:
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk


async def _drip(port: int, head: bytes, piece: bytes, interval: float) -> tuple[bytes, float]:
    """Send ``head`` at once, then ``piece`` every ``interval``; returns everything the
    server sent before closing, and when it closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    start = trio.current_time()
    async with stream, trio.open_nursery() as nursery:

        async def drip() -> None:
            await stream.send_all(head)
            try:
                while True:
                    await trio.sleep(interval)
                    await stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(drip)
        data = await _read_until_closed(stream)
        nursery.cancel_scope.cancel()
    return data, trio.current_time() - start


async def _slow_body(port: int, interval: float) -> tuple[bytes, float]:
    """Headers at once, then the body one byte per ``interval``."""
    head = (
        b"POST /v1/process HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )
    return await _drip(port, head, b" ", interval)


async def _slow_headers(port: int, interval: float) -> tuple[bytes, float]:
    """The request line, then one header line per ``interval``, never the blank line."""
    return await _drip(port, b"POST /v1/process HTTP/1.1\r\nhost: x\r\n", b"x-a: b\r\n", interval)


@pytest.mark.slow
async def test_slow_loris_is_cut_off_and_does_not_starve_others(runtime: Any) -> None:
    config = ServerConfig(port=0, body_timeout=1.0, keep_alive_timeout=1.0)
    results: dict[str, list[tuple[bytes, float]]] = {"body": [], "headers": []}
    with trio.fail_after(30):
        async with served(runtime, config) as s:

            async def body_loris() -> None:
                results["body"].append(await _slow_body(s.info.port, 0.2))

            async def header_loris() -> None:
                results["headers"].append(await _slow_headers(s.info.port, 0.2))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(body_loris)
                    nursery.start_soon(header_loris)
                await trio.sleep(0.3)
                # 40 slow clients hold connections: everyone else is served meanwhile.
                r = await s.client.post("/v1/process", json={"input": "still served"})
                assert r.status_code == 200
            # All cut off, and nothing is left in flight.
            assert s.state.in_flight == 0
    for data, elapsed in results["body"]:
        status_line, _, rest = data.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"connection: close" in rest.lower()
        body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "body_timeout"
        assert "server.body_timeout" in body["error"]["message"]
        assert elapsed < 5
    body_s = max(e for _, e in results["body"])
    headers_s = max(e for _, e in results["headers"])
    print(f"\nslow loris: body cut off after max {body_s:.2f}s, headers after {headers_s:.2f}s")
    for data, elapsed in results["headers"]:
        # hypercorn's keep-alive timer covers a request whose headers never end: closed.
        assert not data.startswith(b"HTTP/1.1 2"), data[:200]
        assert elapsed < 5

"""The session routes over a real hypercorn on port 0, driven by httpx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio

from tests.server.harness import served
from tests.sessions.helpers import session_runtime, trained


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_open_step_read_and_end_over_http(tmp_path: Path) -> None:
    model = trained()
    text = "a series sent over HTTP in chunks of sixteen bytes.."
    with trio.fail_after(30):
        async with session_runtime(tmp_path, model) as rt, served(rt) as s:
            r = await s.client.post("/v1/sessions", json={"washout": 2})
            assert r.status_code == 201, r.text
            opened = r.json()
            sid = opened["session_id"]
            assert r.headers["location"] == f"/v1/sessions/{sid}" == opened["location"]
            assert (opened["model"], opened["position"], opened["washout"]) == ("default@0", 0, 2)
            predictions: list[Any] = []
            for i in range(0, len(text), 16):
                r = await s.client.post(
                    f"/v1/sessions/{sid}/step",
                    json={"input": text[i : i + 16], "priority": 1, "deadline_ms": 20000},
                )
                assert r.status_code == 200, r.text
                body = r.json()
                predictions += body["predictions"]
                assert body["position"] == min(i + 16, len(text))
                assert "state" not in body
            r = await s.client.post(
                f"/v1/sessions/{sid}/step", json={"input": "!", "return_state": True}
            )
            assert len(r.json()["state"]) == model.config.reservoir_size
            r = await s.client.get(f"/v1/sessions/{sid}")
            assert r.json()["position"] == len(text) + 1
            r = await s.client.delete(f"/v1/sessions/{sid}")
            assert r.status_code == 200
            r = await s.client.post(f"/v1/sessions/{sid}/step", json={"input": "x"})
            assert r.status_code == 404
            assert error_of(r)["code"] == "session_not_found"
            assert "ended by DELETE" in error_of(r)["message"]
            assert sid in error_of(r)["message"]
    ref = model.process_one(text).prediction
    assert ref is not None
    assert np.array_equal(np.array(predictions), ref[2:])  # JSON floats round-trip exactly


async def test_bad_session_requests_get_a_clear_4xx(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with session_runtime(tmp_path) as rt, served(rt) as s:
            r = await s.client.post("/v1/sessions", json={"model": "narma10@2"})
            assert r.status_code == 404
            assert error_of(r)["code"] == "model_not_found"
            assert error_of(r)["field"] == "model"
            assert "narma10" in error_of(r)["message"]
            r = await s.client.post("/v1/sessions", json={"washout": -1})
            assert r.status_code == 422
            assert error_of(r)["field"] == "washout"
            r = await s.client.post("/v1/sessions", json={"colour": "red"})
            assert r.status_code == 422
            sid = (await s.client.post("/v1/sessions", json={})).json()["session_id"]
            r = await s.client.post(f"/v1/sessions/{sid}/step", json={"input": [[1.0, 2.0]]})
            assert r.status_code == 422
            assert error_of(r)["field"] == "input"
            assert "T x 1" in error_of(r)["message"]
            r = await s.client.post(f"/v1/sessions/{sid}/step", content=b"{")
            assert r.status_code == 400
            r = await s.client.post("/v1/sessions/0123/step", json={"input": "x"})
            assert r.status_code == 404
            assert "'0123'" in error_of(r)["message"]
            r = await s.client.get("/v1/sessions/0123")
            assert r.status_code == 404
            r = await s.client.delete("/v1/sessions/0123")
            assert r.status_code == 404


async def test_the_openapi_document_describes_every_session_route(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with session_runtime(tmp_path) as rt, served(rt) as s:
            doc = (await s.client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths["/v1/sessions"]) == {"post"}
    assert set(paths["/v1/sessions/{session_id}"]) == {"get", "delete"}
    step = paths["/v1/sessions/{session_id}/step"]["post"]
    assert {"200", "404", "409", "410", "422", "503", "504"} <= set(step["responses"])
    assert "StepRequest" in doc["components"]["schemas"]
    assert "StepResponse" in doc["components"]["schemas"]
    assert "OpenSessionRequest" in doc["components"]["schemas"]
    for ops in paths.values():
        for op in ops.values():
            for response in op["responses"].values():
                for content in response.get("content", {}).values():
                    ref = content["schema"].get("$ref")
                    if ref is not None:
                        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]

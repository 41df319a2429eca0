"""The model routes over a real socket, on the real runtime (SQLite, tiny model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from dtesn_trio.dtesn import DTESNModel
from dtesn_trio.dtesn.tasks import narma10, nrmse
from dtesn_trio.runtime import Runtime
from tests.server.harness import served
from tests.server.runtimes import TINY_MODEL, open_test_runtime

STEPS, SPLIT, WASHOUT = 600, 450, 50


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with open_test_runtime(tmp_path) as rt:
        yield rt


async def wait_job(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    while True:
        job = (await client.get(location)).json()
        if job["status"] in ("succeeded", "failed"):
            return job  # type: ignore[no-any-return]
        await trio.sleep(0.01)


def narma_body(**extra: Any) -> dict[str, Any]:
    u, y = narma10(STEPS, seed=0)
    return {
        "inputs": u[:SPLIT].tolist(),
        "targets": y[:SPLIT].tolist(),
        "washout": WASHOUT,
        **extra,
    }


async def fit(client: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/models/{name}/fit", json=narma_body(**extra))
    assert r.status_code == 202, r.text
    assert r.headers["location"] == r.json()["location"]
    job = await wait_job(client, r.headers["location"])
    assert job["status"] == "succeeded", job
    return job["result"]  # type: ignore[no-any-return]


async def test_fit_over_http_matches_fit_readout_in_process(runtime: Runtime) -> None:
    u, y = narma10(STEPS, seed=0)
    local = DTESNModel(TINY_MODEL)
    local.fit_readout([u[:SPLIT]], [y[:SPLIT]], alpha=1e-6, mode="per_step", washout=WASHOUT)
    expected = local.process_one(u).prediction
    assert expected is not None
    with trio.fail_after(60):
        async with served(runtime) as s:
            result = await fit(s.client, "narma")
            assert (result["name"], result["version"]) == ("narma", 1)
            r = await s.client.post("/v1/process", json={"input": u.tolist(), "model": "narma"})
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["result"]["prediction"])
            # the default model has no readout: the registry's version answers
            plain = await s.client.post("/v1/process", json={"input": u.tolist()})
            assert plain.json()["result"]["prediction"] is None
            listed = (await s.client.get("/v1/models")).json()
            described = (await s.client.get("/v1/models/narma")).json()
    assert abs(nrmse(got[SPLIT:], y[SPLIT:]) - nrmse(expected[SPLIT:], y[SPLIT:])) <= 1e-9
    assert listed == {"models": [{"name": "narma", "versions": 1, "active_version": 1}]}
    assert described["active_version"] == 1
    (version,) = described["versions"]
    assert version["active"]
    assert version["config"] == TINY_MODEL.to_dict()
    assert version["fit"]["washout"] == WASHOUT
    assert version["scores"]["train_nrmse"] > 0


async def test_versions_activation_and_cache_keyed_by_version(runtime: Runtime) -> None:
    u, _ = narma10(STEPS, seed=0)
    with trio.fail_after(60):
        async with served(runtime) as s:
            await fit(s.client, "m", alpha=1e-6)
            second = await fit(s.client, "m", alpha=[1e-2, 1.0, 100.0], validation=0.25)
            assert second["version"] == 2
            alphas = second["scores"]["alphas"]
            assert [a["alpha"] for a in alphas] == [1e-2, 1.0, 100.0]
            assert second["scores"]["validation_nrmse"] == min(
                a["validation_nrmse"] for a in alphas
            )
            body = {"input": u[:100].tolist(), "model": "m"}
            first = (await s.client.post("/v1/process", json=body)).json()
            again = (await s.client.post("/v1/process", json=body)).json()
            assert again["cache_hit"]  # version 1 is still active: the second fit did not switch
            r = await s.client.post("/v1/models/m/versions/2/activate")
            assert r.status_code == 200, r.text
            after = (await s.client.post("/v1/process", json=body)).json()
            pinned = (await s.client.post("/v1/process", json={**body, "model": "m@1"})).json()
    assert runtime.models is not None
    assert runtime.models.statistics().loads == 2  # each version built once
    assert not after["cache_hit"]
    assert after["result"]["prediction"] != first["result"]["prediction"]
    assert pinned["result"]["prediction"] == first["result"]["prediction"]
    assert pinned["cache_hit"]


async def test_bad_requests_name_what_was_wrong(runtime: Runtime) -> None:
    u, y = narma10(100, seed=0)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/v1/models/m/fit", {"inputs": u.tolist(), "targets": y[:99].tolist()}, 422, "targets"),
        ("/v1/models/m/fit", {"inputs": u.tolist()}, 422, "targets"),
        (
            "/v1/models/m/fit",
            {"inputs": u.tolist(), "targets": y.tolist(), "alpha": -1},
            422,
            "alpha",
        ),
        (
            "/v1/models/m/fit",
            {"inputs": u.tolist(), "targets": y.tolist(), "config": {"leak_rate": 2}},
            422,
            "config",
        ),
        (
            "/v1/models/m/fit",
            {"inputs": u.tolist(), "targets": y.tolist(), "config": {"reservoir_size": 10**6}},
            422,
            "config",
        ),
        ("/v1/models/bad name/fit", {"inputs": u.tolist(), "targets": y.tolist()}, 422, "name"),
        ("/v1/process", {"input": "abc", "model": "nope"}, 404, "model"),
        ("/v1/process", {"input": "abc", "model": "m@x"}, 422, "model"),
        ("/v1/models/nope/versions/1/activate", {}, 404, "name"),
        (
            "/v1/models/m/search",
            {"inputs": u.tolist(), "targets": y.tolist(), "space": {"seed": [1]}},
            422,
            "space.seed",
        ),
    ]
    with trio.fail_after(60):
        async with served(runtime) as s:
            for path, body, status, field in cases:
                r = await s.client.post(path, json=body)
                assert r.status_code == status, (path, body, r.text)
                assert r.json()["error"]["field"] == field, (path, r.text)
            await fit(s.client, "m")
            r = await s.client.post("/v1/process", json={"input": "abc", "model": "m@7"})
            assert r.status_code == 404
            assert r.json()["error"]["message"] == "model 'm' has no version 7"
            r = await s.client.post("/v1/models/m/versions/7/activate")
            assert (r.status_code, r.json()["error"]["field"]) == (404, "version")
            assert (await s.client.get("/v1/models/nope")).status_code == 404


async def test_sequences_fit_final_and_per_step_like_fit_readout(runtime: Runtime) -> None:
    rng = np.random.default_rng(3)
    seqs = [rng.uniform(0, 0.5, size=(int(n), 1)) for n in rng.integers(20, 40, size=12)]
    final_targets = [float(s.mean()) for s in seqs]
    step_targets = [np.cumsum(s[:, 0]) for s in seqs]
    local = DTESNModel(TINY_MODEL)
    local.fit_readout(seqs, final_targets, mode="final")
    want_final = local.process_one(seqs[0]).prediction
    local.fit_readout(seqs, step_targets, mode="per_step", washout=5)
    want_steps = local.process_one(seqs[1]).prediction
    as_lists = [s.tolist() for s in seqs]
    with trio.fail_after(60):
        async with served(runtime) as s:
            r = await s.client.post(
                "/v1/models/final/fit",
                json={"inputs": as_lists, "targets": final_targets, "mode": "final"},
            )
            assert r.status_code == 202, r.text
            assert (await wait_job(s.client, r.headers["location"]))["status"] == "succeeded"
            body = {
                "inputs": as_lists,
                "targets": [t.tolist() for t in step_targets],
                "washout": 5,
            }
            r = await s.client.post("/v1/models/steps/fit", json=body)
            assert (await wait_job(s.client, r.headers["location"]))["status"] == "succeeded"
            r = await s.client.post(
                "/v1/process/batch", json={"inputs": as_lists[:2], "model": "final"}
            )
            got_final = r.json()["results"][0]["outcome"]["result"]["prediction"]
            r = await s.client.post("/v1/process", json={"input": as_lists[1], "model": "steps"})
            got_steps = r.json()["result"]["prediction"]
    assert want_final is not None
    assert want_steps is not None
    np.testing.assert_allclose(got_final, want_final, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_steps, want_steps, rtol=0, atol=1e-12)


async def test_bad_chunks_name_what_was_wrong(runtime: Runtime) -> None:
    u, y = narma10(100, seed=0)
    with trio.fail_after(60):
        async with served(runtime) as s:
            r = await s.client.post("/v1/models/c/fit", json={"chunked": True, "alpha": [1, 2]})
            assert (r.status_code, r.json()["error"]["field"]) == (422, "alpha")
            r = await s.client.post(
                "/v1/models/c/fit", json={"chunked": True, "inputs": u.tolist()}
            )
            assert (r.status_code, r.json()["error"]["field"]) == (422, "inputs")
            r = await s.client.post("/v1/models/c/fit", json={"chunked": True})
            chunks = r.headers["location"]
            part = {"inputs": u.tolist(), "targets": y[:-1].tolist()}
            r = await s.client.post(chunks, json=part)
            assert (r.status_code, r.json()["error"]["field"]) == (422, "targets")
            good = {"inputs": u.tolist(), "targets": y.tolist(), "index": 0}
            ok = await s.client.post(chunks, json=good)
            assert (ok.json()["chunks"], ok.json()["steps"]) == (1, 100)
            resent = await s.client.post(chunks, json=good)  # its answer was lost, say
            assert (resent.status_code, resent.json()["chunks"]) == (200, 1)
            early = await s.client.post(chunks, json={**good, "index": 2})
            assert (early.status_code, early.json()["error"]["field"]) == (409, "index")
            wide = {"inputs": u.tolist(), "targets": np.stack([y, y], axis=1).tolist()}
            r = await s.client.post(chunks, json=wide)
            assert (r.status_code, r.json()["error"]["field"]) == (422, "targets")
            elsewhere = chunks.replace("/models/c/", "/models/d/")
            r = await s.client.post(elsewhere, json=part)
            assert (r.status_code, r.json()["error"]["field"]) == (404, "job")
            r = await s.client.post("/v1/models/c/fit/" + "0" * 32 + "/chunks", json=part)
            assert r.status_code == 404


def test_an_item_on_a_version_pickles_without_its_reservoir() -> None:
    import pickle

    from dtesn_trio.dtesn import DTESNEngine
    from dtesn_trio.models import ModelVersion

    u, y = narma10(200, seed=0)
    model = DTESNModel(TINY_MODEL)
    model.fit_readout([u], [y], mode="per_step", washout=10)
    item = DTESNEngine(TINY_MODEL).decode(u.tolist(), model=ModelVersion("m", 1, model))
    blob = pickle.dumps(item)
    again = pickle.loads(blob)
    assert len(blob) < len(pickle.dumps(model)) / 10
    assert again.ref == "m@1"
    assert again.model is not model
    assert pickle.loads(blob).model is again.model  # built once per process
    a, b = model.process_one(u).prediction, again.model.process_one(u).prediction
    assert a is not None
    assert b is not None
    assert np.array_equal(a, b)


async def test_versions_run_in_worker_processes(tmp_path: Path) -> None:
    from dtesn_trio.executor import ProcessorConfig

    u, y = narma10(STEPS, seed=0)
    local = DTESNModel(TINY_MODEL)
    local.fit_readout([u[:SPLIT]], [y[:SPLIT]], alpha=1e-6, mode="per_step", washout=WASHOUT)
    expected = local.process_one(u).prediction
    processor = ProcessorConfig(executor="process", worker_threads=1)
    with trio.fail_after(120):
        async with open_test_runtime(tmp_path, processor=processor) as rt, served(rt) as s:
            await fit(s.client, "p")
            body = {"input": u.tolist(), "model": "p", "use_cache": False}
            first = (await s.client.post("/v1/process", json=body)).json()
            second = (await s.client.post("/v1/process", json=body)).json()
    assert first["result"]["prediction"] == second["result"]["prediction"]
    np.testing.assert_allclose(first["result"]["prediction"], expected, rtol=0, atol=1e-12)


async def test_done_when_every_bad_input_of_the_issue_gets_a_4xx_naming_it(
    runtime: Runtime,
) -> None:
    """Issue 17's list: targets of the wrong length, an unknown model, a version that
    does not exist, a chunk to an ended session (or to a chunked fit already solved)."""
    u, y = narma10(100, seed=0)
    short = {"inputs": u.tolist(), "targets": y[:99].tolist()}
    with trio.fail_after(60):
        async with served(runtime) as s:
            await fit(s.client, "m")
            checks: list[tuple[httpx.Response, int, str, str]] = []

            async def post(path: str, status: int, field: str, words: str, **body: Any) -> None:
                checks.append((await s.client.post(path, json=body), status, field, words))

            async def get(path: str, status: int, field: str, words: str) -> None:
                checks.append((await s.client.get(path), status, field, words))

            # targets of the wrong length
            for path in ("/v1/models/m/fit", "/v1/models/m/search"):
                await post(path, 422, "targets", "targets has 99 steps, inputs has 100", **short)
            r = await s.client.post("/v1/models/c/fit", json={"chunked": True})
            chunks = r.headers["location"]
            await post(chunks, 422, "targets", "targets has 99 steps", **short)
            # an unknown model
            await post(
                "/v1/process", 404, "model", "no model named 'nope'", input="a", model="nope"
            )
            await post("/v1/sessions", 404, "model", "no model named 'nope'", model="nope")
            await get("/v1/models/nope", 404, "name", "no model named 'nope'")
            await post("/v1/models/nope/versions/1/activate", 404, "name", "no model named")
            # a version that does not exist
            await post(
                "/v1/process", 404, "model", "model 'm' has no version 7", input="a", model="m@7"
            )
            await post("/v1/sessions", 404, "model", "model 'm' has no version 7", model="m@7")
            await post("/v1/models/m/versions/7/activate", 404, "version", "has no version 7")
            await get("/v1/models/m/versions/7/plot.svg", 404, "version", "has no version 7")
            # a chunk to an ended session
            opened = await s.client.post("/v1/sessions", json={"model": "m"})
            assert opened.status_code == 201, opened.text
            sid = opened.json()["session_id"]
            assert (await s.client.delete(f"/v1/sessions/{sid}")).status_code == 200
            r = await s.client.post(f"/v1/sessions/{sid}/step", json={"input": [[0.1]]})
            checks.append((r, 404, "session_id", f"session {sid!r} was ended by DELETE"))
            # ... and to a chunked fit whose last chunk was sent (it is solved)
            last = {"inputs": u.tolist(), "targets": y.tolist(), "last": True}
            done = await s.client.post(chunks, json=last)
            assert (await wait_job(s.client, done.headers["location"]))["status"] == "succeeded"
            await post(chunks, 404, "job", "is solved", **last)
    for r, status, field, words in checks:
        where = (r.request.method, r.request.url.path, r.text)
        assert r.status_code == status, where
        error = r.json()["error"]
        assert error.get("field", "") == field, where
        assert words in error["message"], where


async def test_the_openapi_document_describes_every_route(runtime: Runtime) -> None:
    from starlette.routing import Route

    from dtesn_trio.server.app import create_app

    app = create_app(runtime)
    served_routes = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route) and route.methods is not None
        for method in route.methods
        if method != "HEAD" and route.path not in ("/openapi.json", "/docs")
    }
    with trio.fail_after(30):
        async with served(runtime) as s:
            doc = (await s.client.get("/openapi.json")).json()
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served_routes == documented
    for path in (
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/fit",
        "/v1/models/{name}/fit/{job}/chunks",
        "/v1/models/{name}/search",
        "/v1/models/{name}/versions/{version}/activate",
        "/v1/models/{name}/versions/{version}/plot.svg",
        "/v1/sessions",
        "/v1/sessions/{session_id}/step",
    ):
        assert path in doc["paths"], path
    plot = doc["paths"]["/v1/models/{name}/versions/{version}/plot.svg"]["get"]
    assert set(plot["responses"]["200"]["content"]) == {"image/svg+xml"}
    assert "made by a plain fit" in plot["responses"]["404"]["description"]
    schemas = doc["components"]["schemas"]
    assert "model" in schemas["ProcessRequest"]["properties"]
    search = schemas["SearchRequest"]
    assert "space" not in search.get("required", [])
    assert "default space" in search["description"]
    assert "SearchRange" in schemas

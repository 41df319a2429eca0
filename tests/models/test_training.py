"""Training as durable work: activation vs in-flight requests, chunked vs one-shot fits,
a fit that survives a restart mid-job, a search that resumes from its stored trials."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from dtesn_trio.dtesn.tasks import narma10, nrmse
from dtesn_trio.models.training import FIT, SEARCH, run_job
from dtesn_trio.runtime import Runtime
from tests.models.test_http import SPLIT, STEPS, WASHOUT, fit, narma_body, wait_job
from tests.polling import wait_until
from tests.server.harness import served
from tests.server.runtimes import TINY_MODEL, open_test_runtime


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with open_test_runtime(tmp_path) as rt:
        yield rt


class Gate:
    """The runtime; while ``holding``, ``process`` waits at a gate before it starts
    (after the app resolved the request's model)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.holding = False
        self.entered = trio.Event()
        self.release = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    async def process(self, input: Any, **kwargs: Any) -> Any:
        if self.holding:
            self.entered.set()
            await self.release.wait()
        return await self._runtime.process(input, **kwargs)


async def test_a_request_in_flight_finishes_on_the_version_it_started_with(
    runtime: Runtime,
) -> None:
    u, _ = narma10(STEPS, seed=0)
    body = {"input": u[:200].tolist(), "model": "m", "use_cache": False}
    gate = Gate(runtime)
    answers: list[Any] = []
    with trio.fail_after(60):
        async with served(gate) as s:
            await fit(s.client, "m", alpha=1e-6)
            await fit(s.client, "m", alpha=10.0)
            v1 = (await s.client.post("/v1/process", json={**body, "model": "m@1"})).json()
            v2 = (await s.client.post("/v1/process", json={**body, "model": "m@2"})).json()
            gate.holding = True
            async with trio.open_nursery() as nursery:

                async def in_flight() -> None:
                    answers.append((await s.client.post("/v1/process", json=body)).json())

                nursery.start_soon(in_flight)
                await gate.entered.wait()
                gate.holding = False
                r = await s.client.post("/v1/models/m/versions/2/activate")
                assert r.status_code == 200, r.text
                gate.release.set()
            later = (await s.client.post("/v1/process", json=body)).json()
    assert v1["result"]["prediction"] != v2["result"]["prediction"]
    assert "result" in answers[0], answers
    assert answers[0]["result"]["prediction"] == v1["result"]["prediction"]
    assert later["result"]["prediction"] == v2["result"]["prediction"]


async def test_chunked_fit_equals_the_one_shot_fit(runtime: Runtime) -> None:
    u, y = narma10(STEPS, seed=0)
    with trio.fail_after(60):
        async with served(runtime) as s:
            one = await fit(s.client, "one")
            r = await s.client.post(
                "/v1/models/chunked/fit", json={"chunked": True, "washout": WASHOUT}
            )
            assert r.status_code == 202, r.text
            chunks = r.headers["location"]
            assert chunks == f"/v1/models/chunked/fit/{r.json()['job_id']}/chunks"
            cuts = [0, 30, 200, 333, SPLIT]  # the washout ends inside the second chunk
            for i, (a, b) in enumerate(itertools.pairwise(cuts)):
                last = b == SPLIT
                part = {"inputs": u[a:b].tolist(), "targets": y[a:b].tolist(), "last": last}
                r = await s.client.post(chunks, json=part)
                assert r.status_code == (202 if last else 200), r.text
                assert (r.json()["chunks"], r.json()["steps"]) == (i + 1, b)
            job = await wait_job(s.client, r.headers["location"])
            assert job["status"] == "succeeded", job
            assert job["result"]["model"] == "chunked@1"
            gone = await s.client.post(chunks, json=part)
            assert gone.status_code == 404
            a = await s.client.post("/v1/process", json={"input": u.tolist(), "model": "one"})
            b = await s.client.post("/v1/process", json={"input": u.tolist(), "model": "chunked"})
    pa = np.asarray(a.json()["result"]["prediction"])
    pb = np.asarray(b.json()["result"]["prediction"])
    assert np.max(np.abs(pa - pb)) < 1e-6
    assert abs(nrmse(pa[SPLIT:], y[SPLIT:]) - nrmse(pb[SPLIT:], y[SPLIT:])) < 1e-7
    chunk_train = job["result"]["scores"]["train_nrmse"]
    assert abs(chunk_train - one["scores"]["train_nrmse"]) < 1e-7


async def test_a_fit_survives_a_restart_mid_job(tmp_path: Path) -> None:
    with trio.fail_after(120):
        with trio.CancelScope() as crash:
            async with open_test_runtime(tmp_path) as rt, served(rt) as s:
                r = await s.client.post("/v1/models/m/fit", json=narma_body())
                assert r.status_code == 202
                location = r.headers["location"]
                assert rt.jobs is not None
                jobs = rt.jobs
                await wait_until(lambda: jobs.statistics().busy == 1)
                crash.cancel()  # the fit is running in its worker thread: stop everything
        async with open_test_runtime(tmp_path) as rt, served(rt) as s:
            job = await wait_job(s.client, location)
            models = (await s.client.get("/v1/models")).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["model"] == "m@1"
    assert models == {"models": [{"name": "m", "versions": 1, "active_version": 1}]}


async def test_a_job_run_again_after_storing_its_version_adds_none(runtime: Runtime) -> None:
    u, y = narma10(300, seed=0)
    assert runtime.models is not None
    payload = {
        "kind": FIT,
        "fit_id": "f" * 32,
        "name": "m",
        "inputs": u.tolist(),
        "targets": y.tolist(),
        "mode": "per_step",
        "washout": 10,
        "alphas": [1e-6],
        "validation": 0.2,
        "config": TINY_MODEL.to_dict(),
    }
    with trio.fail_after(60):
        first = await run_job(runtime.models, payload)
        again = await run_job(runtime.models, payload)
        versions = await runtime.models.store.versions("m")
    assert first == again
    assert [v.version for v in versions] == [1]


async def test_search_keeps_every_trial_and_resumes_from_stored_ones(runtime: Runtime) -> None:
    assert runtime.models is not None
    space = {"input_scaling": [0.1, 1.0], "alpha": [1e-6, 1e-2]}
    with trio.fail_after(60):
        async with served(runtime) as s:
            r = await s.client.post(
                "/v1/models/s/search",
                json={**narma_body(), "space": space, "trials": 4, "validation": 0.25},
            )
            assert r.status_code == 202, r.text
            job = await wait_job(s.client, r.headers["location"])
            assert job["status"] == "succeeded", job
            scores = job["result"]["scores"]
            assert runtime.jobs is not None
            # the search and one trial job per input_scaling (its alphas share a run)
            counts = await runtime.jobs.counts()
            assert counts == {"queued": 0, "running": 0, "succeeded": 3, "failed": 0}
            # the same search, with trial 3 already scored (as by a run that crashed)
            payload = {
                "kind": SEARCH,
                "fit_id": "e" * 32,
                "name": "resumed",
                **narma_body(),
                "mode": "per_step",
                "alpha": 1e-6,
                "space": space,
                "strategy": "grid",
                "trials": 4,
                "validation": 0.25,
                "seed": 0,
                "config": TINY_MODEL.to_dict(),
            }
            await runtime.models.store.add_trial("e" * 32, 3, {"fake": True}, 1e-9)
            resumed = await run_job(runtime.models, payload)
    trials = scores["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    assert {tuple(sorted(t["params"].items())) for t in trials} == {
        (("alpha", a), ("input_scaling", i)) for a in (1e-6, 1e-2) for i in (0.1, 1.0)
    }
    best = min(trials, key=lambda t: t["validation_nrmse"])
    assert scores["best_params"] == best["params"]
    assert scores["validation_nrmse"] == best["validation_nrmse"]
    assert job["result"]["version"] == 1
    # the stored score of trial 3 was kept, not computed again: it wins
    assert resumed["scores"]["best_trial"] == 3
    assert resumed["scores"]["trials"][3]["validation_nrmse"] == 1e-9

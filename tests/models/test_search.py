"""The search's default space, its ranges and alphas, and the plot of a search's trials."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from dtesn_trio.dtesn import DTESNConfig
from dtesn_trio.dtesn.tasks import narma10, nrmse
from dtesn_trio.errors import InvalidRequest
from dtesn_trio.models.plot import trials_svg
from dtesn_trio.models.search import (
    DEFAULT_ALPHAS,
    DEFAULT_SPACE,
    DEFAULT_TRIALS,
    plan_trials,
    search_strategy,
)
from dtesn_trio.runtime import Runtime
from tests.models.test_http import fit, narma_body, wait_job
from tests.server.harness import served
from tests.server.runtimes import open_test_runtime

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with open_test_runtime(tmp_path) as rt:
        yield rt


def marks(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return [e for e in root.iter() if "trial" in e.get("class", "").split()]


def test_the_default_space_draws_within_its_ranges_the_same_every_time() -> None:
    planned = plan_trials(DEFAULT_SPACE, None, DEFAULT_TRIALS, seed=0)
    assert planned == plan_trials(DEFAULT_SPACE, None, DEFAULT_TRIALS, seed=0)
    assert planned != plan_trials(DEFAULT_SPACE, None, DEFAULT_TRIALS, seed=1)
    assert len(planned) == DEFAULT_TRIALS
    assert len({tuple(sorted(p.items())) for p in planned}) == DEFAULT_TRIALS
    for params in planned:
        assert set(params) == set(DEFAULT_SPACE)
        for key, value in params.items():
            spec = DEFAULT_SPACE[key]
            if isinstance(spec, list):
                assert value in spec, (key, value)
                continue
            assert spec["low"] <= value <= spec["high"], (key, value)
            assert value == float(f"{value:.3g}")  # 3 significant digits
        DTESNConfig(**params)  # every draw is a valid config
    # log-uniform: about half of the draws below the geometric middle of the range
    scaling = DEFAULT_SPACE["input_scaling"]
    middle = math.sqrt(scaling["low"] * scaling["high"])
    below = sum(p["input_scaling"] < middle for p in planned)
    assert 8 <= below <= 22, below
    assert search_strategy(DEFAULT_SPACE, None) == "random"
    assert search_strategy({"leak_rate": [0.5, 1.0]}, None) == "grid"


@pytest.mark.parametrize(
    ("space", "strategy", "field", "words"),
    [
        ({"leak_rate": {"low": 0.3, "high": 1.0}}, "grid", "space.leak_rate", "random"),
        ({"membrane_depth": {"low": 1, "high": 3}}, None, "space.membrane_depth", "list"),
        ({"leak_rate": {"low": 1.0, "high": 0.3}}, None, "space.leak_rate", "low must be <"),
        ({"input_scaling": {"low": 0, "high": 1, "log": True}}, None, "space.input_scaling", "> 0"),
        ({"input_scaling": {"low": 0.1}}, None, "space.input_scaling", "a range is"),
        ({"input_scaling": []}, None, "space.input_scaling", "non-empty"),
    ],
)
def test_a_bad_range_is_refused_naming_it(
    space: dict[str, Any], strategy: str | None, field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        plan_trials(space, strategy, 4, seed=0)
    assert info.value.field == field
    assert words in info.value.message


def test_the_plot_has_one_mark_per_trial_and_the_best_filled() -> None:
    trials = [
        {"trial": 0, "params": {"leak_rate": 0.5}, "validation_nrmse": 0.4},
        {"trial": 1, "params": {"leak_rate": 1.0}, "validation_nrmse": 0.13},
        {"trial": 2, "params": {"leak_rate": 0.7}, "validation_nrmse": None},
        {"trial": 3, "params": {"leak_rate": 0.9}, "validation_nrmse": 12.0},
    ]
    svg = trials_svg(trials, title="a <search> & its trials")
    found = marks(svg)
    assert [e.get("class") for e in found] == ["trial", "trial best", "trial failed", "trial"]
    labels = [e.find(f"{SVG}title") for e in found]
    assert [t.text if t is not None else None for t in labels] == [
        "trial 0: NRMSE 0.4 (leak_rate=0.5)",
        "trial 1: NRMSE 0.13 (leak_rate=1.0)",
        "trial 2: failed (leak_rate=0.7)",
        "trial 3: NRMSE 12 (leak_rate=0.9)",
    ]
    y = [float(e.get("cy", "nan")) for e in found if e.tag == f"{SVG}circle"]
    assert y[1] > y[0] > y[2]  # lower NRMSE lower on the plot (SVG's y grows downward)
    # the best so far steps down at trial 1 and stays there
    line = ET.fromstring(svg).find(f".//{SVG}polyline")
    assert line is not None
    heights = [float(p.split(",")[1]) for p in line.get("points", "").split()]
    assert heights[0] < heights[1] == heights[2] == heights[3]
    assert len(marks(trials_svg([], title="none"))) == 0


async def search(client: httpx.AsyncClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/v1/models/{name}/search", json=body)
    assert r.status_code == 202, r.text
    job = await wait_job(client, r.headers["location"])
    assert job["status"] == "succeeded", job
    return job["result"]  # type: ignore[no-any-return]


async def test_a_search_without_a_space_uses_the_default_and_plots_its_trials(
    runtime: Runtime,
) -> None:
    with trio.fail_after(60):
        async with served(runtime) as s:
            result = await search(s.client, "d", {**narma_body(), "trials": 3})
            described = (await s.client.get("/v1/models/d")).json()
            assert result["plot"] == "/v1/models/d/versions/1/plot.svg"
            plot = await s.client.get(result["plot"])
    scores = result["scores"]
    assert len(scores["trials"]) == 3
    for t in scores["trials"]:
        assert t["params"]["alpha"] in DEFAULT_ALPHAS
        assert [a["alpha"] for a in t["alphas"]] == list(DEFAULT_ALPHAS)
        assert t["validation_nrmse"] == min(a["validation_nrmse"] for a in t["alphas"])
    # the planned draws, each scored with every default alpha
    planned = plan_trials(DEFAULT_SPACE, None, 3, seed=0)
    assert [{k: v for k, v in t["params"].items() if k != "alpha"} for t in scores["trials"]] == (
        planned
    )
    best = min(scores["trials"], key=lambda t: t["validation_nrmse"])
    assert scores["best_params"] == best["params"]
    (version,) = described["versions"]
    assert version["fit"]["alpha"] == best["params"]["alpha"]
    assert version["fit"]["search"] == {
        "strategy": "random",
        "trials": 3,
        "space": DEFAULT_SPACE,
        "alphas": list(DEFAULT_ALPHAS),
    }
    for key in ("input_scaling", "spectral_radius", "leak_rate"):
        assert version["config"][key] == best["params"][key]
    assert plot.status_code == 200
    assert plot.headers["content-type"].startswith("image/svg+xml")
    found = marks(plot.text)
    assert len(found) == 3
    assert [e.get("class") for e in found].count("trial best") == 1


async def test_alphas_are_scored_within_each_trial_and_a_space_alpha_is_a_trial(
    runtime: Runtime,
) -> None:
    with trio.fail_after(60):
        async with served(runtime) as s:
            listed = await search(
                s.client,
                "a",
                {**narma_body(), "space": {"leak_rate": [0.5, 1.0]}, "alpha": [1e-4, 1.0]},
            )
            one = await search(
                s.client, "b", {**narma_body(), "space": {"leak_rate": [0.5]}, "alpha": 1e-4}
            )
    trials = listed["scores"]["trials"]
    assert [t["params"]["leak_rate"] for t in trials] == [0.5, 1.0]  # a grid: in order
    assert all([a["alpha"] for a in t["alphas"]] == [1e-4, 1.0] for t in trials)
    (only,) = one["scores"]["trials"]
    assert "alphas" not in only
    assert only["params"] == {"leak_rate": 0.5, "alpha": 1e-4}
    # the same trial scored alone gives the same score as within the list
    same = next(a for a in trials[0]["alphas"] if a["alpha"] == 1e-4)
    assert only["validation_nrmse"] == same["validation_nrmse"]


async def test_the_plot_route_names_what_is_missing(runtime: Runtime) -> None:
    with trio.fail_after(60):
        async with served(runtime) as s:
            await fit(s.client, "plain")
            await search(s.client, "s", {**narma_body(), "trials": 2})
            cases = [
                ("/v1/models/nope/versions/1/plot.svg", 404, "name", "no model named 'nope'"),
                ("/v1/models/s/versions/2/plot.svg", 404, "version", "model 's' has no version 2"),
                ("/v1/models/plain/versions/1/plot.svg", 404, "version", "made by a fit"),
                ("/v1/models/s/versions/x/plot.svg", 422, "version", "integer"),
            ]
            for path, status, field, words in cases:
                r = await s.client.get(path)
                assert r.status_code == status, (path, r.text)
                error = r.json()["error"]
                assert error["field"] == field, (path, error)
                assert words in error["message"], (path, error)
            assert (await s.client.get("/v1/models/s/versions/1/plot.svg")).status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(600)  # 30 trials at the default size take tens of seconds
async def test_the_default_search_reaches_the_narma10_target_through_the_api(
    tmp_path: Path,
) -> None:
    """At the default size (1,024 units, depth 4), 3,000 training steps, washout 100: the
    default search's version scores NRMSE <= 0.15 on the 1,000 test steps, in 30 trials."""
    u, y = narma10(4000, seed=0)
    body = {"inputs": u[:3000].tolist(), "targets": y[:3000].tolist(), "washout": 100}
    with trio.fail_after(600):
        async with open_test_runtime(tmp_path, model=DTESNConfig()) as rt, served(rt) as s:
            result = await search(s.client, "narma", body)
            r = await s.client.post("/v1/process", json={"input": u.tolist(), "model": "narma"})
    prediction = np.asarray(r.json()["result"]["prediction"])
    assert len(result["scores"]["trials"]) <= 30
    assert nrmse(prediction[3000:], y[3000:]) <= 0.15

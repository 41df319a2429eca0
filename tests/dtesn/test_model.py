"""The DTESN model: equations, batching, determinism, topology, config, persistence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dtesn_trio.dtesn import (
    DTESNConfig,
    DTESNModel,
    RidgeReadout,
    a000081,
    membrane_count,
    spectral_radius,
    tree_layout,
)
from dtesn_trio.errors import InvalidRequest

SMALL = DTESNConfig(membrane_depth=3, reservoir_size=60, seed=7)


def reference_tree(model: DTESNModel, inputs: np.ndarray) -> np.ndarray:
    """A plain loop over time and membranes of the leaky ESN equation (DESIGN.md)."""
    a = model.config.leak_rate
    states = [np.zeros(m.units) for m in model.membranes]
    for u in inputs:
        for m in model.membranes:  # level order: a parent is updated before its children
            pre = m.W_in @ u + m.W.toarray() @ states[m.index] + m.bias
            if m.parent is not None:
                pre = pre + m.W_parent.toarray() @ states[m.parent]
            states[m.index] = (1 - a) * states[m.index] + a * np.tanh(pre)
    return np.concatenate(states)


def test_depth_1_matches_a_plain_loop_leaky_esn() -> None:
    cfg = DTESNConfig(membrane_depth=1, reservoir_size=40, input_dim=2, seed=3)
    model = DTESNModel(cfg)
    (mem,) = model.membranes
    W_in, W, b = mem.W_in, mem.W.toarray(), mem.bias
    U = np.random.default_rng(0).uniform(-1, 1, size=(50, 2))
    x = np.zeros(40)
    for u in U:
        x = (1 - cfg.leak_rate) * x + cfg.leak_rate * np.tanh(W_in @ u + W @ x + b)
    np.testing.assert_allclose(model.process_one(U).features, x, rtol=0, atol=1e-12)
    states = model.run_states(U)
    assert states.shape == (50, 40)
    np.testing.assert_allclose(states[-1], x, rtol=0, atol=1e-12)


def test_tree_matches_a_plain_loop_over_membranes() -> None:
    model = DTESNModel(SMALL)
    U = np.random.default_rng(1).uniform(-1, 1, size=(30, 1))
    np.testing.assert_allclose(
        model.process_one(U).features, reference_tree(model, U), rtol=0, atol=1e-12
    )


def test_text_is_one_step_per_utf8_byte() -> None:
    model = DTESNModel(SMALL)
    text = "héllo ✓"
    data = text.encode("utf-8")
    u = ((np.frombuffer(data, dtype=np.uint8).astype(float) - 127.5) / 127.5)[:, None]
    result = model.process_one(text)
    assert result.steps == len(data) == 10
    np.testing.assert_allclose(result.features, reference_tree(model, u), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(model.process_one(data).features, result.features)


def test_recurrent_weights_have_the_spectral_radius() -> None:
    model = DTESNModel(DTESNConfig(membrane_depth=2, reservoir_size=600, spectral_radius=0.8))
    for m in model.membranes:  # 300 units each: the sparse eigen solver path
        radius = float(np.max(np.abs(np.linalg.eigvals(m.W.toarray()))))
        assert radius == pytest.approx(0.8, abs=1e-8)
        assert spectral_radius(m.W) == pytest.approx(0.8, abs=1e-8)
        assert m.W.nnz == round(0.1 * 300 * 300)


def test_membranes_form_the_a000081_tree() -> None:
    model = DTESNModel(DTESNConfig(membrane_depth=4, reservoir_size=80))
    assert [m.level for m in model.membranes] == [1, 2, 3, 3, 4, 4, 4, 4]
    assert [m.parent for m in model.membranes] == [None, 0, 1, 1, 2, 3, 2, 3]
    assert [m.units for m in model.membranes] == [10] * 8
    assert [m.offset for m in model.membranes] == list(range(0, 80, 10))
    for m in model.membranes[1:]:
        assert m.W_parent.shape == (m.units, model.membranes[m.parent].units)
    assert model.membranes[0].W_parent is None


def test_a000081_counts() -> None:
    assert [a000081(n) for n in range(1, 13)] == [
        1, 1, 2, 4, 9, 20, 48, 115, 286, 719, 1842, 4766,
    ]  # fmt: skip
    assert membrane_count(8) == 200
    slots = tree_layout(5, 103)  # 17 membranes: 103 = 6·17 + 1
    assert [s.units for s in slots] == [7] + [6] * 16


def test_text_batch_equals_alone() -> None:
    model = DTESNModel(SMALL)
    texts = ["héllo", "a", "a much longer line of text than the others", b"\x00\xff", "ab"]
    for x, r in zip(texts, model.process_batch(texts), strict=True):
        np.testing.assert_allclose(r.features, model.process_one(x).features, rtol=0, atol=1e-12)


def test_batched_equals_alone() -> None:
    model = DTESNModel(SMALL)
    rng = np.random.default_rng(2)
    inputs: list[object] = [rng.uniform(-1, 1, size=(int(n), 1)) for n in (5, 40, 1, 17, 40, 33)]
    inputs += ["a", "some longer text input", b"\x00\xff bytes", [0.5, -0.25, 1.0]]
    batched = model.process_batch(inputs)
    for x, r in zip(inputs, batched, strict=True):
        alone = model.process_one(x)
        assert r.steps == alone.steps
        np.testing.assert_allclose(r.features, alone.features, rtol=0, atol=1e-12)
        for got, want in zip(r.level_summary, alone.level_summary, strict=True):
            assert got == pytest.approx(want, rel=0, abs=1e-12)


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    a, b = DTESNModel(SMALL), DTESNModel(SMALL)
    c = DTESNModel(dataclasses.replace(SMALL, seed=8))
    for ma, mb in zip(a.membranes, b.membranes, strict=True):
        np.testing.assert_array_equal(ma.W.toarray(), mb.W.toarray())
        np.testing.assert_array_equal(ma.W_in, mb.W_in)
        np.testing.assert_array_equal(ma.bias, mb.bias)
    np.testing.assert_array_equal(a.process_one("x y").features, b.process_one("x y").features)
    assert not np.allclose(a.process_one("x y").features, c.process_one("x y").features)


def test_echo_state_property() -> None:
    model = DTESNModel(dataclasses.replace(SMALL, reservoir_size=90))
    U = np.random.default_rng(3).uniform(-1, 1, size=(600, 1))
    starts = np.random.default_rng(4).uniform(-1, 1, size=(3, 90))
    runs = [model.run_states(U, initial_state=x0) for x0 in starts] + [model.run_states(U)]
    first_gap = max(np.abs(r[0] - runs[-1][0]).max() for r in runs[:-1])
    mid_gap = max(np.abs(r[299] - runs[-1][299]).max() for r in runs[:-1])
    last_gap = max(np.abs(r[-1] - runs[-1][-1]).max() for r in runs[:-1])
    assert first_gap > 0.1
    assert last_gap < 1e-3 * mid_gap
    assert last_gap < 1e-9


def test_result_to_dict_is_plain_json() -> None:
    model = DTESNModel(SMALL)
    result = model.process_one("abc")
    d = result.to_dict()
    text = json.dumps(d)
    assert json.loads(text)["steps"] == 3
    assert len(d["features"]) == 60
    assert isinstance(d["features"][0], float)
    assert [lv["level"] for lv in d["level_summary"]] == [1, 2, 3]
    assert [lv["units"] for lv in d["level_summary"]] == [15, 15, 30]
    assert [lv["membranes"] for lv in d["level_summary"]] == [1, 1, 2]
    assert d["prediction"] is None
    lv = d["level_summary"][2]
    part = result.features[30:60]
    assert lv["norm"] == pytest.approx(float(np.linalg.norm(part)))
    assert lv["mean_activation"] == pytest.approx(float(part.mean()))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "input must not be empty"),
        (np.zeros((3, 2)), r"input must be a T x 1 array \(got shape \(3, 2\)\)"),
        ([1.0, float("nan")], "input must contain only finite numbers"),
        ([[1.0], [2.0, 3.0]], "input must be text or a T x 1 array"),
        (object(), "input must be"),
    ],
)
def test_bad_input_is_rejected_naming_it(bad: object, message: str) -> None:
    model = DTESNModel(SMALL)
    with pytest.raises(InvalidRequest, match=message) as info:
        model.process_one(bad)
    assert info.value.field == "input"


def test_bad_input_in_a_batch_names_its_index() -> None:
    model = DTESNModel(SMALL)
    with pytest.raises(InvalidRequest, match=r"inputs\[1\] must not be empty") as info:
        model.process_batch(["ok", b""])
    assert info.value.field == "inputs[1]"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"membrane_depth": 9}, r"model\.membrane_depth must be between 1 and 8 \(got 9\)"),
        ({"membrane_depth": 0}, r"model\.membrane_depth must be between 1 and 8 \(got 0\)"),
        ({"membrane_depth": 2.0}, r"model\.membrane_depth must be an integer"),
        ({"reservoir_size": 7}, r"model\.reservoir_size must be >= 8 for membrane_depth 4"),
        ({"membrane_depth": 8, "reservoir_size": 199}, r"model\.reservoir_size must be >= 200"),
        ({"spectral_radius": -0.1}, r"model\.spectral_radius must be >= 0"),
        ({"leak_rate": 1.5}, r"model\.leak_rate must be between 0.0 and 1.0"),
        ({"leak_rate": 0}, r"model\.leak_rate must be > 0"),
        ({"sparsity": 0.0}, r"model\.sparsity must be > 0"),
        ({"sparsity": 2}, r"model\.sparsity must be between"),
        ({"input_scaling": float("inf")}, r"model\.input_scaling must be >= 0"),
        ({"seed": -1}, r"model\.seed must be >= 0"),
        ({"input_dim": 0}, r"model\.input_dim must be >= 1"),
    ],
)
def test_invalid_config_names_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DTESNConfig(**kwargs)  # type: ignore[arg-type]


def test_cache_key_is_stable_and_covers_every_field() -> None:
    key = DTESNConfig().cache_key()
    assert key == DTESNConfig().cache_key()
    assert len(key) == 32
    seen = {key}
    for f in dataclasses.fields(DTESNConfig):
        value = getattr(DTESNConfig(), f.name)
        other = value + 1 if isinstance(value, int) else value / 2
        if f.name == "membrane_depth":
            other = 3
        seen.add(dataclasses.replace(DTESNConfig(), **{f.name: other}).cache_key())
    assert len(seen) == 1 + len(dataclasses.fields(DTESNConfig))
    assert DTESNConfig.from_dict(DTESNConfig().to_dict()) == DTESNConfig()


def test_model_cache_key_covers_the_readout() -> None:
    model = DTESNModel(SMALL)
    assert model.cache_key() == SMALL.cache_key()
    model.fit_readout(["ab", "cd", "ef"], [1.0, 2.0, 3.0])
    with_readout = model.cache_key()
    assert with_readout != SMALL.cache_key()
    model.fit_readout(["ab", "cd", "ef"], [1.0, 2.0, 4.0])
    assert model.cache_key() not in (with_readout, SMALL.cache_key())


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = DTESNModel(SMALL)
    rng = np.random.default_rng(5)
    inputs = [rng.uniform(-1, 1, size=(12, 1)) for _ in range(30)]
    model.fit_readout(inputs, [x[-1, 0] for x in inputs], alpha=1e-4)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = DTESNModel.load(path)
    assert loaded.config == model.config
    for ma, mb in zip(model.membranes, loaded.membranes, strict=True):
        np.testing.assert_array_equal(ma.W.toarray(), mb.W.toarray())
        if ma.W_parent is not None:
            np.testing.assert_array_equal(ma.W_parent.toarray(), mb.W_parent.toarray())
    a, b = model.process_one(inputs[0]), loaded.process_one(inputs[0])
    np.testing.assert_array_equal(a.features, b.features)
    assert a.prediction is not None
    assert b.prediction is not None
    np.testing.assert_array_equal(a.prediction, b.prediction)
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(Exception):  # noqa: B017 - numpy decides which
        DTESNModel.load(tmp_path / "junk.npz")


def test_final_readout_learns_a_tiny_task() -> None:
    model = DTESNModel(SMALL)
    rng = np.random.default_rng(6)
    inputs = [rng.uniform(-1, 1, size=(int(rng.integers(5, 15)), 1)) for _ in range(160)]
    targets = np.array([x[-1, 0] for x in inputs])  # recall the last input
    model.fit_readout(inputs[:120], targets[:120], alpha=1e-6)
    pred = np.array([r.prediction[0] for r in model.process_batch(inputs[120:])])  # type: ignore[index]
    nrmse = np.sqrt(np.mean((pred - targets[120:]) ** 2)) / np.std(targets[120:])
    assert nrmse < 0.3  # predicting the mean scores 1.0


def test_per_step_readout_learns_a_delay() -> None:
    model = DTESNModel(SMALL)
    U = np.random.default_rng(7).uniform(-0.5, 0.5, size=(700, 1))
    y = np.roll(U[:, 0], 1)  # u[t-1]
    ro = RidgeReadout(alpha=1e-7, mode="per_step", washout=20).fit(model, [U[:500]], [y[:500]])
    model.readout = ro
    pred = model.process_one(U[500:]).prediction
    assert pred is not None
    assert pred.shape == (200,)
    err = pred[20:] - y[520:]
    assert np.sqrt(np.mean(err**2)) / np.std(y[520:]) < 0.5  # the mean predicts 1.0
    # a batch records per-step states too, and agrees with the single path
    both = model.process_batch([U[500:], U[600:]])
    np.testing.assert_allclose(both[0].prediction, pred, rtol=0, atol=1e-10)  # type: ignore[arg-type]


def test_readout_rejects_mismatched_targets() -> None:
    model = DTESNModel(SMALL)
    with pytest.raises(ValueError, match="one row per sample"):
        RidgeReadout().fit(model, ["ab", "cd"], [1.0])
    with pytest.raises(ValueError, match=r"readout\.mode must be one of"):
        RidgeReadout(mode="sometimes")

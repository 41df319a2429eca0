"""The ridge readout's numbers against NumPy's least squares; the NARMA10 task and NRMSE
against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dtesn_trio.dtesn import DTESNConfig, DTESNModel
from dtesn_trio.dtesn.readout import RidgeReadout
from dtesn_trio.dtesn.tasks import narma10, nrmse

TINY = DTESNConfig(reservoir_size=16, membrane_depth=2, seed=3)


def ridge_by_lstsq(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """``[bias; w]`` minimising ``|y - b - x w|^2 + alpha |w|^2`` (the bias unpenalised),
    as one least-squares problem: ``[1 x; 0 sqrt(alpha) I] [b; w] ~ [y; 0]``."""
    n, d = x.shape
    design = np.vstack(
        [
            np.hstack([np.ones((n, 1)), x]),
            np.hstack([np.zeros((d, 1)), math.sqrt(alpha) * np.eye(d)]),
        ]
    )
    rhs = np.vstack([y.reshape(n, -1), np.zeros((d, y.reshape(n, -1).shape[1]))])
    solution, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    return solution


@pytest.mark.parametrize("alpha", [0.0, 0.1, 3.0])
def test_fit_states_and_predict_states_equal_least_squares(alpha: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = x @ np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 1.0], [2.0, 0.3], [-1.0, 1.0]])
    y += 0.7 + 0.1 * rng.normal(size=y.shape)
    readout = RidgeReadout(alpha=alpha).fit_states(x, y)
    expected = ridge_by_lstsq(x, y, alpha)
    assert readout.weights is not None
    np.testing.assert_allclose(readout.weights, expected, rtol=1e-9, atol=1e-10)
    fresh = rng.normal(size=(7, 5))
    np.testing.assert_allclose(
        readout.predict_states(fresh),
        expected[0] + fresh @ expected[1:],
        rtol=1e-9,
        atol=1e-10,
    )
    # 1-D targets: 1-D predictions
    flat = RidgeReadout(alpha=alpha).fit_states(x, y[:, 0])
    assert flat.predict_states(fresh).shape == (7,)
    np.testing.assert_allclose(flat.predict_states(fresh), readout.predict_states(fresh)[:, 0])


def test_predict_runs_the_model_and_equals_least_squares_on_its_states() -> None:
    model = DTESNModel(TINY)
    rng = np.random.default_rng(2)
    inputs = [rng.uniform(-1, 1, size=(int(rng.integers(5, 30)), 1)) for _ in range(60)]
    targets = np.array([x[-3:, 0].sum() for x in inputs])
    readout = RidgeReadout(alpha=1e-3).fit(model, inputs, targets)
    states = model.features(inputs)
    expected = ridge_by_lstsq(states, targets, 1e-3)
    tests = [*inputs[:5], rng.uniform(-1, 1, size=(12, 1))]
    got = readout.predict(model, tests)
    assert isinstance(got, np.ndarray)
    assert got.shape == (6,)
    want = expected[0, 0] + model.features(tests) @ expected[1:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_per_step_predict_gives_one_output_per_step() -> None:
    model = DTESNModel(TINY)
    rng = np.random.default_rng(4)
    inputs = [rng.uniform(-1, 1, size=(40, 1)) for _ in range(4)]
    targets = [np.roll(x[:, 0], 1) for x in inputs]
    readout = RidgeReadout(alpha=1e-4, mode="per_step", washout=5).fit(model, inputs, targets)
    states = np.concatenate([model.run_states(x)[5:] for x in inputs])
    expected = ridge_by_lstsq(states, np.concatenate([t[5:] for t in targets]), 1e-4)
    got = readout.predict(model, inputs[:2])
    assert isinstance(got, list)
    assert [g.shape for g in got] == [(40,), (40,)]  # the washout steps are predicted too
    for x, g in zip(inputs[:2], got, strict=True):
        want = expected[0, 0] + model.run_states(x) @ expected[1:, 0]
        np.testing.assert_allclose(g, want, rtol=1e-8, atol=1e-10)


def test_predict_before_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        RidgeReadout().predict(DTESNModel(TINY), ["x"])


def test_narma10_follows_its_recurrence() -> None:
    u, y = narma10(300, seed=5)
    assert u.shape == (300, 1)
    assert y.shape == (300,)
    assert float(u.min()) >= 0.0
    assert float(u.max()) <= 0.5
    v = u[:, 0]
    for t in range(9, 299):
        step = 0.3 * y[t] + 0.05 * y[t] * y[t - 9 : t + 1].sum() + 1.5 * v[t - 9] * v[t] + 0.1
        assert y[t + 1] == pytest.approx(step, rel=1e-12), t
    # seeded: the same seed gives the same series, another seed another one
    u2, y2 = narma10(300, seed=5)
    np.testing.assert_array_equal(u, u2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(narma10(300, seed=6)[0], u)


def test_nrmse_by_hand() -> None:
    # errors (0, 0, 2): rmse sqrt(4/3); target std sqrt(26)/3; ratio sqrt(6/13)
    assert nrmse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0])) == pytest.approx(
        math.sqrt(6 / 13), rel=1e-12
    )
    target = np.array([[1.0], [2.0], [5.0]])  # n x 1 against n: compared element-wise
    assert nrmse(np.array([1.0, 2.0, 5.0]), target) == 0.0
    assert nrmse(np.full(3, target.mean()), target) == pytest.approx(1.0, rel=1e-12)

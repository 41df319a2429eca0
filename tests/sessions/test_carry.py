"""A session's carried state: bit for bit the long run over the concatenated chunks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import trio

from dtesn_trio.dtesn import DTESNModel
from dtesn_trio.dtesn.encoding import encode_input
from dtesn_trio.sessions import StepItem, run_steps
from tests.sessions.helpers import NUMERIC, session_runtime, trained

TEXTS = [
    "streaming bytes into a reservoir, one chunk at a time; the state carries on",
    "another series, shorter",
    "0123456789abcdef" * 5,
    "é ü ß — unicode is bytes too",
]


def chunks_of(text: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for n in sizes:
        if i < len(text):
            out.append(text[i : i + n])
        i += n
    if i < len(text):
        out.append(text[i:])
    return out


async def test_sessions_stepping_together_equal_one_long_process_one(tmp_path: Path) -> None:
    model = trained()
    async with session_runtime(tmp_path, model) as rt:
        assert rt.sessions is not None
        manager = rt.sessions
        ids = [(await manager.open()).session_id for _ in TEXTS]
        data = [t.encode() for t in TEXTS]
        # chunk sizes differ per session (so batches mix lengths), 1-byte chunks included
        plans = [chunks_of(d, [16, 1, 7, 16, 3, 16, 16]) for d in data]
        got: list[list[np.ndarray]] = [[] for _ in TEXTS]
        states: list[np.ndarray] = [np.empty(0)] * len(TEXTS)
        sizes: list[int] = []
        for round_ in range(max(len(p) for p in plans)):

            async def one(i: int, r: int = round_) -> None:
                if r < len(plans[i]):
                    res = await manager.step(ids[i], plans[i][r])
                    assert res.predictions is not None
                    got[i].append(res.predictions)
                    states[i] = res.state
                    sizes.append(res.batch_size)

            async with trio.open_nursery() as nursery:
                for i in range(len(TEXTS)):
                    nursery.start_soon(one, i)
        assert max(sizes) > 1  # the sessions' steps did share batches
        for i, d in enumerate(data):
            ref = model.process_one(d)
            assert ref.prediction is not None
            assert np.array_equal(np.concatenate(got[i]), ref.prediction)
            assert np.array_equal(states[i], ref.features)
            assert np.array_equal(states[i], model.run_states(d)[-1])


async def test_numeric_chunks_equal_one_long_run(tmp_path: Path) -> None:
    model = trained(NUMERIC)
    rng = np.random.default_rng(5)
    series = [rng.normal(size=(n, 3)) for n in (41, 17, 1, 33)]
    async with session_runtime(tmp_path, model) as rt:
        assert rt.sessions is not None
        manager = rt.sessions
        ids = [(await manager.open()).session_id for _ in series]
        got: list[list[np.ndarray]] = [[] for _ in series]
        cuts = [0, 1, 9, 25, 26, 41]
        for a, b in itertools.pairwise(cuts):

            async def one(i: int, a: int = a, b: int = b) -> None:
                part = series[i][a:b]
                if len(part):
                    res = await manager.step(ids[i], part.tolist())
                    assert res.predictions is not None
                    got[i].append(res.predictions)

            async with trio.open_nursery() as nursery:
                for i in range(len(series)):
                    nursery.start_soon(one, i)
        for i, x in enumerate(series):
            ref = model.process_one(x)
            assert np.array_equal(np.concatenate(got[i]), ref.prediction)


async def test_washout_withholds_the_first_predictions_across_chunks(tmp_path: Path) -> None:
    model = trained()
    text = b"warming up the reservoir before it predicts"
    async with session_runtime(tmp_path, model) as rt:
        assert rt.sessions is not None
        info = await rt.sessions.open(washout=10)
        first = await rt.sessions.step(info.session_id, text[:6])
        second = await rt.sessions.step(info.session_id, text[6:16])
        third = await rt.sessions.step(info.session_id, text[16:])
    ref = model.process_one(text).prediction
    assert ref is not None
    assert first.predictions is not None
    assert first.predictions.shape[0] == 0
    assert first.first_prediction is None
    assert second.first_prediction == 10
    assert second.predictions is not None
    assert np.array_equal(second.predictions, ref[10:16])
    assert third.first_prediction == 16
    assert third.predictions is not None
    assert np.array_equal(third.predictions, ref[16:])
    assert third.position == len(text)


def test_run_steps_refuses_items_of_two_models() -> None:
    a, b = DTESNModel(NUMERIC), DTESNModel(NUMERIC)
    enc = encode_input([[0.0, 0.0, 0.0]], 3)
    state = np.zeros(NUMERIC.reservoir_size)
    with pytest.raises(ValueError, match="share one model"):
        run_steps([StepItem(a, state, enc, 0), StepItem(b, state, enc, 0)])


def test_run_states_batch_from_given_states_equals_run_states() -> None:
    model = DTESNModel(NUMERIC)
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(n, 3)) for n in (5, 1, 12)]
    starts = rng.normal(size=(3, NUMERIC.reservoir_size)) * 0.1
    for x, start, rec in zip(
        xs, starts, model.run_states_batch(xs, initial_states=starts), strict=True
    ):
        assert np.array_equal(rec, model.run_states(x, initial_state=start))
    finals = model.final_states_batch(xs, initial_states=starts)
    for x, start, final in zip(xs, starts, finals, strict=True):
        assert np.array_equal(final, model.run_states(x, initial_state=start)[-1])
    with pytest.raises(ValueError, match="initial_states must have shape"):
        model.run_states_batch(xs, initial_states=starts[:2])


async def test_a_model_without_readout_carries_the_state_alone(tmp_path: Path) -> None:
    model = DTESNModel(trained().config)
    text = b"no readout: the state is all there is"
    async with session_runtime(tmp_path, model) as rt:
        assert rt.sessions is not None
        sid = (await rt.sessions.open()).session_id
        for i in range(0, len(text), 5):
            result = await rt.sessions.step(sid, text[i : i + 5])
            assert result.predictions is None
    assert np.array_equal(result.state, model.process_one(text).features)


def test_a_batch_wider_than_a_block_gives_each_session_its_own_numbers() -> None:
    model = trained()
    rng = np.random.default_rng(4)
    chunks = [
        bytes(rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8)) for _ in range(70)
    ]
    starts = rng.normal(size=(70, model.config.reservoir_size)) * 0.1
    items = [
        StepItem(model, start, encode_input(c, 1), i % 3)
        for i, (c, start) in enumerate(zip(chunks, starts, strict=True))
    ]
    for i, out in enumerate(run_steps(items)):
        rec = model.run_states(chunks[i], initial_state=starts[i])
        assert np.array_equal(out.state, rec[-1])
        assert model.readout is not None
        assert out.predictions is not None
        assert np.array_equal(out.predictions, model.readout.predict_states(rec[i % 3 :]))

"""Tests for minicap.sequence_training: the explicit loop lessons 03 and 04 train with."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from minicap.optim import SGD, Adam
from minicap.sequence_tasks import SequenceRegressor, adding_problem
from minicap.sequence_training import TrainingHistory, adding_batches, global_norm, train_regressor


def small_model(cell: str = "lstm", seed: int = 0) -> SequenceRegressor:
    return SequenceRegressor(input_size=2, hidden_size=8, cell=cell, seed=seed)


def test_adding_batches_are_reproducible_and_sized():
    a = list(adding_batches(3, batch_size=5, T=7, seed=4))
    b = list(adding_batches(3, batch_size=5, T=7, seed=4))
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (5, 7, 2) and ya.shape == (5,)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], a[1][0])  # fresh data every step


def test_global_norm_matches_definition_and_changes_nothing(rng):
    arrays = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    copies = {k: v.copy() for k, v in arrays.items()}
    expected = math.sqrt(sum(float(np.sum(v**2)) for v in arrays.values()))
    assert global_norm(arrays) == pytest.approx(expected, rel=1e-12)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], copies[k])


def test_history_records_every_step_and_training_reduces_the_loss():
    model = small_model()
    val = adding_problem(200, 6, np.random.default_rng(1))
    before = model.mse(*val)
    h = train_regressor(model, Adam(1e-2), adding_batches(60, 16, 6, seed=2), validation=val, eval_every=20)
    assert h.steps == h.updates == 60 and not h.diverged
    assert len(h.loss) == len(h.grad_norm) == len(h.clipped) == 60
    assert all(math.isfinite(v) for v in h.loss + h.grad_norm)
    assert h.clipped == [False] * 60  # no max_norm: measured only
    assert h.val_step == [0, 20, 40, 60]
    assert h.val_mse[0] == pytest.approx(before)
    assert h.val_mse[-1] < 0.5 * before  # a trained regressor beats its initialisation
    assert h.seconds > 0


def test_same_seeds_give_identical_histories():
    runs = [
        train_regressor(small_model(seed=3), SGD(0.1), adding_batches(10, 8, 5, seed=9), max_norm=0.5) for _ in range(2)
    ]
    assert runs[0].loss == runs[1].loss
    assert runs[0].grad_norm == runs[1].grad_norm


def test_clipping_flags_and_norm_before_clipping():
    batches = list(adding_batches(5, 8, 5, seed=0))
    measured = train_regressor(small_model(), SGD(0.0), batches)  # lr 0: params never move
    clipped = train_regressor(small_model(), SGD(0.0), batches, max_norm=1e-6)
    assert clipped.grad_norm == pytest.approx(measured.grad_norm)  # the norm BEFORE clipping is logged
    assert clipped.clipped == [True] * 5
    roomy = train_regressor(small_model(), SGD(0.0), batches, max_norm=1e9)
    assert roomy.clipped == [False] * 5


def test_clipping_bounds_each_update():
    model = small_model()
    before = {k: v.copy() for k, v in model.params.items()}
    lr, max_norm = 0.5, 1e-3
    train_regressor(model, SGD(lr), adding_batches(1, 8, 5, seed=0), max_norm=max_norm)
    step = global_norm({k: model.params[k] - before[k] for k in before})
    assert step == pytest.approx(lr * max_norm, rel=1e-3)  # SGD moved by exactly lr · (clipped norm)


def test_divergence_is_detected_and_stops_training():
    model = small_model(cell="rnn")
    model.params["Wh"] *= np.float32(3.0)
    h = train_regressor(model, SGD(50.0), adding_batches(200, 16, 20, seed=0))
    assert h.diverged and h.diverged_at is not None
    assert h.steps == h.diverged_at + 1 < 200  # stopped at the first non-finite step
    assert h.updates == h.diverged_at
    assert not (math.isfinite(h.loss[-1]) and math.isfinite(h.grad_norm[-1]))
    assert h.final_loss() == math.inf
    d = h.to_dict()
    json.dumps(d, allow_nan=False)  # strict JSON: non-finite numbers became None
    assert d["diverged_at"] == h.diverged_at


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="max_norm"):
        train_regressor(small_model(), SGD(0.1), adding_batches(1, 4, 4, seed=0), max_norm=0.0)
    with pytest.raises(ValueError, match="eval_every"):
        train_regressor(small_model(), SGD(0.1), adding_batches(1, 4, 4, seed=0), eval_every=-1)
    with pytest.raises(ValueError, match="no steps"):
        TrainingHistory().final_loss()

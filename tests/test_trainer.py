"""The one training loop, minicap.train.Trainer, on the sequence regressor and the adding problem (the training
lessons 01-04 do): per-step history, validation, clipping measured before it clips, reproducibility, divergence,
stop rules and exact resumption. The captioner's runs through the same loop are tested in test_train.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from minicap.dataset import ArrayDataset
from minicap.models.regressor import ADDING_BASELINE_MSE, AddingProblem, SequenceRegressor, adding_problem
from minicap.optim import SGD, global_norm
from minicap.train import TrainConfig, Trainer, TrainingDiverged, validation_loss


def small_model(cell: str = "lstm", seed: int = 0) -> SequenceRegressor:
    return SequenceRegressor(input_size=2, hidden_size=8, cell=cell, seed=seed)


def config(**kw) -> TrainConfig:
    """A constant learning rate, no clipping and no early stopping unless a test asks for them."""
    return TrainConfig(**{"schedule": "constant", "clip": None, "patience": None, "epochs": 1, **kw})


def trainer(model, data, cfg, **kw) -> Trainer:
    return Trainer(model, data, cfg, progress=False, log=None, plot=False, **kw)


def test_history_records_every_step_and_training_reduces_the_loss():
    model = small_model()
    val = adding_problem(200, 6, np.random.default_rng(1))
    before = model.mse(*val)
    assert validation_loss(model, ArrayDataset(*val)) == pytest.approx(before, rel=1e-5)
    data = AddingProblem(T=6, batches_per_epoch=20)  # validation every 20 updates
    result = trainer(model, data, config(epochs=3, batch_size=16, lr=1e-2), val_data=ArrayDataset(*val)).fit()
    assert result.stopped == "completed" and result.steps == 60 and result.epochs == 3
    steps = result.history["steps"]
    assert len(result.losses) == len(result.grad_norms) == len(steps["lr"]) == 60
    assert steps["step"] == list(range(1, 61)) and steps["epoch"] == [1] * 20 + [2] * 20 + [3] * 20
    assert all(math.isfinite(v) for v in result.losses + result.grad_norms)
    assert steps["lr"] == [1e-2] * 60  # constant schedule
    assert result.history["clip"] is None  # no clipping: the norm is measured only
    epochs = result.history["epochs"]
    assert [e["step"] for e in epochs] == [20, 40, 60]
    assert result.history["initial"]["val_loss"] == pytest.approx(before, rel=1e-5)  # before any update
    assert epochs[-1]["val_loss"] == pytest.approx(model.mse(*val), rel=1e-5)
    assert epochs[-1]["val_loss"] < 0.5 * before  # a trained regressor beats its initialisation
    assert result.seconds > 0 and all(e["seconds"] > 0 and e["examples_per_second"] > 0 for e in epochs)
    assert result.history["criterion"] == "val_loss" and result.best_model is not None


def test_same_seeds_give_identical_histories():
    def run(seed: int) -> Trainer:
        cfg = config(epochs=2, batch_size=8, lr=0.1, clip=0.5, seed=seed)
        return trainer(small_model(seed=3), AddingProblem(T=5, batches_per_epoch=5), cfg, optimizer=SGD(0.1)).fit()

    a, b, other = run(9), run(9), run(10)
    assert a.losses == b.losses and len(a.losses) == 10
    assert a.grad_norms == b.grad_norms
    for name in a.model.params:
        np.testing.assert_array_equal(a.model.params[name], b.model.params[name])
    assert other.losses != a.losses  # the config's seed picks the batches


def test_clipping_logs_the_norm_before_clipping():
    """grad_norm is measured BEFORE clipping (so `grad_norm > clip` says whether a step was clipped), and a
    clipped step's gradient has the clip's norm."""
    seen: list[tuple[float, float]] = []  # (norm model.loss returned, norm the optimiser received)

    class Recording(SGD):
        def step(self, params, grads):
            seen[-1] = (seen[-1][0], global_norm(grads))
            super().step(params, grads)

    def loss_fn(model, batch):
        loss, grads = model.loss(*batch)
        seen.append((global_norm(grads), math.nan))
        return loss, grads

    for clip in (None, 1e-6, 1e9):
        seen.clear()
        cfg = config(batch_size=8, lr=1e-3, clip=clip)
        data = AddingProblem(T=5, batches_per_epoch=5)
        result = trainer(small_model(), data, cfg, optimizer=Recording(1e-3), loss_fn=loss_fn).fit()
        assert result.history["clip"] == clip
        assert result.grad_norms == pytest.approx([before for before, _ in seen], rel=1e-6)  # before clipping
        clipped = [clip is not None and norm > clip for norm in result.grad_norms]
        if clip is None or clip == 1e9:
            assert clipped == [False] * 5
            assert [after for _, after in seen] == pytest.approx(result.grad_norms, rel=1e-6)  # untouched
        else:
            assert clipped == [True] * 5
            assert [after for _, after in seen] == pytest.approx([clip] * 5, rel=1e-3)


def test_clipping_bounds_each_update():
    model = small_model()
    before = {k: v.copy() for k, v in model.params.items()}
    lr, max_norm = 0.5, 1e-3
    cfg = config(batch_size=8, lr=lr, clip=max_norm)
    trainer(model, AddingProblem(T=5, batches_per_epoch=1), cfg, optimizer=SGD(lr)).fit()
    step = global_norm({k: model.params[k] - before[k] for k in before})
    assert step == pytest.approx(lr * max_norm, rel=1e-3)  # SGD moved by exactly lr · (clipped norm)


def _exploding() -> SequenceRegressor:
    model = small_model(cell="rnn")
    model.params["Wh"] *= np.float32(3.0)
    return model


def test_divergence_is_detected_and_stops_training():
    data = AddingProblem(T=20, batches_per_epoch=200)
    cfg = config(batch_size=16, lr=50.0)
    result = trainer(_exploding(), data, cfg, optimizer=SGD(50.0), on_divergence="stop").fit()
    diverged_at = result.history["diverged_at"]  # 0-based index of the first non-finite step
    assert result.stopped == "diverged" and diverged_at is not None
    assert result.steps == diverged_at < 200  # stopped at the first non-finite step, which was not applied
    assert len(result.losses) == len(result.grad_norms) == diverged_at  # only the good steps are recorded
    assert all(math.isfinite(v) for v in result.losses + result.grad_norms)
    assert all(np.all(np.isfinite(p)) for p in result.model.params.values())  # the last good parameters
    json.dumps(result.history, allow_nan=False)  # strict JSON
    assert result.epochs == 0 and result.best_model is None  # the epoch never finished

    with pytest.raises(TrainingDiverged, match="lower learning rate") as raised:
        trainer(_exploding(), data, cfg, optimizer=SGD(50.0)).fit()
    assert raised.value.step == diverged_at + 1  # the same run (same seed, same data): the same step, 1-based
    assert raised.value.last_good_loss == result.losses[-1]


def test_stop_when_ends_the_run_with_its_reason():
    """Lesson 01's rule: stop once a task is solved (here: after two evaluations), asked after every epoch."""
    asked: list[int] = []

    def enough(history):
        asked.append(len(history["epochs"]))
        return "solved" if len(history["epochs"]) >= 2 else None

    cfg = config(epochs=10, batch_size=8, lr=1e-2)
    result = trainer(small_model(), AddingProblem(T=5, batches_per_epoch=3), cfg, stop_when=enough).fit()
    assert result.stopped == "solved" and result.epochs == 2 and result.steps == 6 and asked == [1, 2]


def test_lstm_learns_a_short_adding_problem():
    """A few hundred Adam steps on T = 10 take the LSTM far below the 1/6 baseline (the lesson does T ≥ 50)."""
    model = SequenceRegressor(hidden_size=16, cell="lstm", seed=0)
    cfg = config(epochs=3, batch_size=32, lr=1e-2, clip=1.0, optimizer="Adam")
    result = trainer(model, AddingProblem(T=10, batches_per_epoch=100), cfg).fit()
    assert result.steps == 300
    x_test, y_test = adding_problem(1000, 10, np.random.default_rng(99))
    assert model.mse(x_test, y_test) < 0.3 * ADDING_BASELINE_MSE


def test_a_paused_regressor_run_resumes_exactly(tmp_path):
    """Checkpoints hold the regressor and where the run was: pausing after epoch 1 and resuming gives the same
    parameters and history, bit for bit, as a run that never stopped (fresh data drawn from the same seeds)."""
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, patience=None, seed=5)
    data = AddingProblem(T=6, batches_per_epoch=4)
    val = ArrayDataset(*adding_problem(50, 6, np.random.default_rng(2)))
    whole = trainer(small_model(), data, cfg, val_data=val, out_dir=tmp_path / "whole").fit()

    paused = trainer(small_model(), data, cfg, val_data=val, out_dir=tmp_path / "paused").fit(until_epoch=1)
    assert paused.stopped == "paused" and paused.steps == 4
    resumed_trainer = Trainer.from_checkpoint(
        tmp_path / "paused" / "last.npz", data, val_data=val, progress=False, log=None, plot=False
    )
    assert isinstance(resumed_trainer.model, SequenceRegressor)
    resumed = resumed_trainer.fit()
    assert resumed.stopped == "completed" and resumed.steps == 12
    assert resumed.losses == whole.losses
    for name in whole.model.params:
        np.testing.assert_array_equal(resumed.model.params[name], whole.model.params[name])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="clip"):
        TrainConfig(clip=0.0)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="on_divergence"):
        trainer(small_model(), AddingProblem(T=4, batches_per_epoch=1), config(), on_divergence="ignore")
    with pytest.raises(ValueError, match="no training data"):
        trainer(small_model(), ArrayDataset(np.zeros((0, 4, 2)), np.zeros(0)), config())

"""The adding problem (function and Dataset), SequenceRegressor (gradients, the step contract, state-gradient
norms, diagnostics) and mse_loss. Training it with the one loop, minicap.train.Trainer: test_trainer.py.

Gradient checks use the thresholds of minicap.gradcheck: float64 analytic gradients against an extended-precision
numerical reference, max elementwise relative error ≤ SEQUENCE_MAX_REL and norm-relative error ≤ NORM_REL.
"""

from __future__ import annotations

import numpy as np
import pytest

from minicap import nn
from minicap.dataset import Dataset
from minicap.gradcheck import NORM_REL, REFERENCE_DTYPE, SEQUENCE_MAX_REL, compare, numerical_gradient
from minicap.models import SequenceModel, State
from minicap.models.regressor import (
    ADDING_BASELINE_MSE,
    CELLS,
    INITS,
    AddingProblem,
    SequenceRegressor,
    adding_problem,
    fit_decay_factor,
)

# model.fast: True runs minicap.nn.fast, False the readable loops of minicap.nn; every property holds for both.
FAST = pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])

# ------------------------------------------------------------------------------------------------- mse_loss


def test_mse_loss_value_gradient_and_dtype():
    pred = np.array([[1.0, 2.0], [3.0, 5.0]], dtype=np.float32)
    target = np.array([[1.0, 0.0], [4.0, 5.0]])
    loss, dpred = nn.mse_loss(pred, target)
    assert loss == pytest.approx((0 + 4 + 1 + 0) / 4)
    np.testing.assert_allclose(dpred, [[0.0, 1.0], [-0.5, 0.0]])  # 2/n (pred − target)
    assert dpred.dtype == np.float32 and np.asarray(loss).dtype == np.float32  # no silent upcast
    np.testing.assert_array_equal(pred, [[1.0, 2.0], [3.0, 5.0]])  # the input is not modified


def test_mse_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        nn.mse_loss(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        nn.mse_loss(np.zeros(0), np.zeros(0))


# ------------------------------------------------------------------------------------------ adding problem


def test_adding_problem_structure(rng):
    x, y = adding_problem(500, 20, rng)
    assert x.shape == (500, 20, 2) and y.shape == (500,)
    assert x.dtype == np.float32 and y.dtype == np.float32
    values, marker = x[:, :, 0], x[:, :, 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(marker)) == {0.0, 1.0}
    np.testing.assert_array_equal(marker[:, :10].sum(axis=1), 1)  # exactly one marker in each half
    np.testing.assert_array_equal(marker[:, 10:].sum(axis=1), 1)
    np.testing.assert_allclose(y, (values * marker).sum(axis=1), rtol=1e-6)


def test_adding_problem_statistics_and_baseline():
    x, y = adding_problem(40_000, 10, np.random.default_rng(0), dtype=np.float64)
    assert y.mean() == pytest.approx(1.0, abs=0.01)
    baseline = np.mean((y - 1.0) ** 2)  # always predicting the mean: Var(u1 + u2) = 1/6
    assert baseline == pytest.approx(ADDING_BASELINE_MSE, abs=0.005)
    assert ADDING_BASELINE_MSE == pytest.approx(0.1667, abs=1e-4)
    # Marker positions are spread over each half (T = 10: 5 positions each, all used).
    first = x[:, :5, 1].argmax(axis=1)
    second = x[:, 5:, 1].argmax(axis=1)
    assert np.all(np.bincount(first, minlength=5) > 7000) and np.all(np.bincount(second, minlength=5) > 7000)


def test_adding_problem_is_deterministic_and_checks_arguments():
    a = adding_problem(5, 8, np.random.default_rng(3))
    b = adding_problem(5, 8, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="T must be"):
        adding_problem(5, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n must be"):
        adding_problem(0, 8, np.random.default_rng(0))


def test_adding_problem_dataset_draws_fresh_reproducible_batches():
    """AddingProblem: one "epoch" = `batches_per_epoch` keys (seeds) drawn from the Trainer's generator; each key
    names a fresh batch, the same key always the same batch."""
    data = AddingProblem(T=7, batches_per_epoch=3)
    assert isinstance(data, Dataset)
    keys = data.epoch(np.random.default_rng(4), batch_size=5)
    assert len(keys) == 3 == data.batches_per_epoch(5) and len(data) == 15  # examples per epoch
    assert keys == data.epoch(np.random.default_rng(4), batch_size=5)  # the same generator state, the same batches
    batches = [data.batch(key) for key in keys]
    for (x, y), key in zip(batches, keys, strict=True):
        assert x.shape == (5, 7, 2) and y.shape == (5,)
        x2, y2 = data.batch(key)
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_allclose(y, (x[:, :, 0] * x[:, :, 1]).sum(axis=1), rtol=1e-6)
    assert not np.array_equal(batches[0][0], batches[1][0])  # fresh data every step
    assert data.epoch(np.random.default_rng(5), 5) != keys
    assert data.fingerprint() is None  # drawn fresh: nothing to sum up
    with pytest.raises(ValueError, match="T >= 2"):
        AddingProblem(T=1, batches_per_epoch=3)
    with pytest.raises(ValueError, match="batches_per_epoch >= 1"):
        AddingProblem(T=5, batches_per_epoch=0)


# --------------------------------------------------------------------------------------- SequenceRegressor


@FAST
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("init", INITS)
def test_regressor_gradients(cell, init, fast):
    x, y = adding_problem(3, 6, np.random.default_rng(1), dtype=np.float64)
    model = SequenceRegressor(hidden_size=4, cell=cell, init=init, dtype=np.float64, seed=2)
    model.fast = fast
    model.params["b"] += np.random.default_rng(3).standard_normal(model.params["b"].shape) * 0.3  # not just zeros
    model.params["b_out"] += 0.2
    _, grads = model.loss(x, y)
    gru_only = {"b_hn"} if cell == "gru" else set()
    assert set(grads) == set(model.params) == {"Wx", "Wh", "b", "W_out", "b_out"} | gru_only
    reference = model.astype(REFERENCE_DTYPE)
    x_ref, y_ref = x.astype(REFERENCE_DTYPE), y.astype(REFERENCE_DTYPE)
    for name in sorted(model.params):
        numeric = numerical_gradient(lambda: reference.loss(x_ref, y_ref)[0], reference.params[name])
        result = compare(f"SequenceRegressor({cell})", name, grads[name], numeric, SEQUENCE_MAX_REL)
        assert result.max_rel <= SEQUENCE_MAX_REL and result.norm_rel <= NORM_REL, result.line()


@FAST
def test_regressor_dtype_shapes_and_errors(fast):
    model = SequenceRegressor(hidden_size=8, cell="lstm")
    model.fast = fast
    x, y = adding_problem(4, 5, np.random.default_rng(0), dtype=np.float64)
    loss, grads = model.loss(x, y)  # float64 data into a float32 model: cast once, computed in float32
    assert np.asarray(loss).dtype == np.float32
    assert all(g.dtype == np.float32 and g.shape == model.params[k].shape for k, g in grads.items())
    assert model.predict(x).shape == (4,)
    assert model.mse(x, y, batch_size=3) == pytest.approx(float(loss), rel=1e-5)
    with pytest.raises(ValueError, match=r"x must have shape \(N, T, 2\)"):
        model.loss(x[:, :, :1], y)
    with pytest.raises(ValueError, match="y must have shape"):
        model.loss(x, y[:3])
    with pytest.raises(ValueError, match="cell"):
        SequenceRegressor(cell="transformer")
    with pytest.raises(ValueError, match="init"):
        SequenceRegressor(init="he")
    with pytest.raises(ValueError, match="RNN only"):
        model.spectral_radius()
    with pytest.raises(ValueError, match="LSTM and GRU only"):
        SequenceRegressor(cell="rnn").mean_keep_gate(x)
    with pytest.raises(ValueError, match="RNN only"):
        SequenceRegressor(cell="gru").rms_tanh_derivative(x)


def test_config_round_trip_and_seeded_init():
    model = SequenceRegressor(hidden_size=6, cell="rnn", init="orthogonal", seed=5)
    again = SequenceRegressor.from_config(model.config, model.params)
    for name in model.params:
        np.testing.assert_array_equal(again.params[name], model.params[name])
    other_seed = SequenceRegressor(hidden_size=6, cell="rnn", init="orthogonal", seed=6)
    assert not np.array_equal(other_seed.params["Wh"], model.params["Wh"])
    with pytest.raises(ValueError, match="missing"):
        SequenceRegressor.from_config(model.config, {"Wx": model.params["Wx"]})
    with pytest.raises(ValueError, match="no constants"):
        SequenceRegressor.from_config(model.config, model.params, {"mean": np.zeros(2)})
    assert isinstance(model, SequenceModel) and model.constants == {}


@FAST
@pytest.mark.parametrize("cell", CELLS)
def test_steps_reproduce_predict_and_loss(cell, fast):
    """The model contract: initial_state(N) then step(x_t, state) once per input step ends with the prediction
    `predict` and `loss` compute over the whole sequence."""
    x, y = adding_problem(4, 9, np.random.default_rng(7), dtype=np.float64)
    model = SequenceRegressor(hidden_size=6, cell=cell, init="xavier", dtype=np.float64, seed=3)
    model.fast = fast
    state = model.initial_state(4)
    assert isinstance(state, State) and state.h.shape == (4, 6) and np.all(state.h == 0.0)
    assert (state.c is None) == (cell != "lstm")
    for t in range(x.shape[1]):
        pred, state = model.step(x[:, t], state)
        assert pred.shape == (4,)
    np.testing.assert_allclose(pred, model.predict(x), rtol=0, atol=1e-14)
    loss, grads = model.loss(x, y)
    assert loss == pytest.approx(np.mean((pred - y) ** 2), rel=1e-12)
    loss_only, no_grads = model.loss(x, y, backward=False)
    assert loss_only == loss and no_grads == {} and set(grads) == set(model.params)


@pytest.mark.parametrize("cell", CELLS)
def test_state_gradient_norms_match_bptt(cell):
    """Row k is ‖∂L_n/∂h_{T−k}‖: row 0 is the readout's gradient, row T the gradient reaching h0 in BPTT."""
    x, y = adding_problem(5, 12, np.random.default_rng(4), dtype=np.float64)
    model = SequenceRegressor(hidden_size=7, cell=cell, init="xavier", dtype=np.float64, seed=1)
    norms = model.state_gradient_norms(x, y)
    assert norms.h.shape == (13, 5)
    assert (norms.c is None) == (cell != "lstm")

    residual = model.predict(x) - y
    np.testing.assert_allclose(norms.h[0], np.abs(2 * residual) * np.linalg.norm(model.params["W_out"]), rtol=1e-12)

    # Independent route: the batch-mean loss's gradient w.r.t. h0 through the library's BPTT, times N per row.
    p, N = model.params, len(x)
    h0 = np.zeros((N, 7))
    _, grads = model.loss(x, y)
    extra = (p["b_hn"],) if cell == "gru" else ()
    _, cache = getattr(nn, f"{cell}_forward")(x, h0, p["Wx"], p["Wh"], p["b"], *extra)
    dh = np.zeros((N, 12, 7))
    dh[:, -1] = (2 * residual / N)[:, None] * p["W_out"][:, 0]
    dh0 = getattr(nn, f"{cell}_backward")(dh, cache).dh0
    np.testing.assert_allclose(norms.h[12], N * np.linalg.norm(dh0, axis=1), rtol=1e-10)


def test_rnn_gradient_shrinks_at_most_by_the_largest_singular_value():
    """‖∂L/∂h_{t−1}‖ = ‖(∂L/∂h_t ⊙ tanh′) Whᵀ‖ ≤ σ_max(Wh) ‖∂L/∂h_t‖, since 0 < tanh′ ≤ 1."""
    x, y = adding_problem(8, 30, np.random.default_rng(5))
    model = SequenceRegressor(hidden_size=16, cell="rnn", init="xavier", seed=0)
    h = model.state_gradient_norms(x, y).h
    assert np.all(h[1:] <= h[:-1] * model.largest_singular_value() * (1 + 1e-9))


def test_spectrum_and_gates_at_initialisation():
    ortho = SequenceRegressor(hidden_size=32, cell="rnn", init="orthogonal")
    assert ortho.spectral_radius() == pytest.approx(1.0, abs=1e-6)
    assert ortho.largest_singular_value() == pytest.approx(1.0, abs=1e-6)
    uniform = SequenceRegressor(hidden_size=128, cell="rnn", init="uniform")
    assert 0.45 < uniform.spectral_radius() < 0.7  # ≈ 1/√3 for large H (circular law)
    assert uniform.largest_singular_value() > uniform.spectral_radius()
    x, _ = adding_problem(4, 10, np.random.default_rng(0))
    assert 0.0 < uniform.mean_tanh_derivative(x) <= 1.0

    assert uniform.rms_tanh_derivative(x) >= uniform.mean_tanh_derivative(x)  # RMS ≥ mean, always

    # With no input and h0 = c0 = 0 the state stays 0, so every keep gate is exactly σ(forget bias): the LSTM's
    # forget gate f, and the GRU's 1 − z (its update gate's bias starts at −forget_bias).
    zeros = np.zeros((3, 10, 2), dtype=np.float32)
    for cell in ("lstm", "gru"):
        for bias in (1.0, 3.0):
            model = SequenceRegressor(hidden_size=8, cell=cell, forget_bias=bias)
            assert model.mean_keep_gate(zeros) == pytest.approx(1 / (1 + np.exp(-bias)), rel=1e-6)
            assert model.mean_keep_gate(zeros, per_unit=True).shape == (8,)


@pytest.mark.parametrize("cell", CELLS)
def test_trajectory_matches_the_step_functions(cell):
    """trajectory() is batch-major and equals running the one-step functions by hand."""
    x, _ = adding_problem(3, 7, np.random.default_rng(6), dtype=np.float64)
    model = SequenceRegressor(hidden_size=5, cell=cell, init="xavier", dtype=np.float64)
    traj = model.trajectory(x)
    p, H = model.params, 5
    h = c = np.zeros((3, H))
    for t in range(7):
        if cell == "lstm":
            h, c, step = nn.lstm_step_forward(x[:, t], h, c, p["Wx"], p["Wh"], p["b"])
            np.testing.assert_allclose(traj.c[:, t], c, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(traj.keep[:, t], step.f, rtol=1e-12)
            np.testing.assert_allclose(traj.write[:, t], step.i, rtol=1e-12)
        elif cell == "gru":
            h, step = nn.gru_step_forward(x[:, t], h, p["Wx"], p["Wh"], p["b"], p["b_hn"])
            np.testing.assert_allclose(traj.keep[:, t], 1.0 - step.z, rtol=1e-12)
            np.testing.assert_allclose(traj.write[:, t], step.z, rtol=1e-12)
        else:
            h, _ = nn.rnn_step_forward(x[:, t], h, p["Wx"], p["Wh"], p["b"])
        np.testing.assert_allclose(traj.h[:, t], h, rtol=1e-12, atol=1e-15)
    assert traj.h.shape == (3, 7, 5)
    assert (traj.c is None) == (cell != "lstm") and (traj.keep is None and traj.write is None) == (cell == "rnn")


@pytest.mark.parametrize("cell", CELLS)
def test_recurrent_gradient_by_distance_adds_up_to_the_gradient(cell):
    """∂L/∂Wh is a sum over the steps: the per-step terms, by distance from the end, add up to loss()'s dWh; the
    last step's term is h_{T−1}ᵀ da_T, and with a vanishing gradient the far terms are tiny."""
    x, y = adding_problem(6, 15, np.random.default_rng(8), dtype=np.float64)
    model = SequenceRegressor(hidden_size=5, cell=cell, init="uniform", dtype=np.float64, seed=4)
    terms = model.recurrent_gradient_by_distance(x, y)
    assert terms.shape == (15, *model.params["Wh"].shape) and terms.dtype == np.float64
    np.testing.assert_allclose(terms.sum(axis=0), model.loss(x, y)[1]["Wh"], rtol=1e-10, atol=1e-15)
    norms = np.linalg.norm(terms, axis=(1, 2))
    assert norms[-1] < norms[:3].max()  # the step 15 back contributes less than the last ones
    float32 = SequenceRegressor(hidden_size=5, cell=cell, init="uniform", seed=4)  # float32 in, float64 out
    np.testing.assert_allclose(float32.recurrent_gradient_by_distance(x, y), terms, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_input_sensitivity_is_the_derivative_of_the_prediction(cell):
    x, _ = adding_problem(3, 8, np.random.default_rng(9), dtype=np.float64)
    model = SequenceRegressor(hidden_size=5, cell=cell, init="xavier", dtype=np.float64, seed=5)
    sens = model.input_sensitivity(x)
    assert sens.shape == x.shape
    x_ref = x.astype(REFERENCE_DTYPE)
    reference = model.astype(REFERENCE_DTYPE)
    numeric = numerical_gradient(lambda: np.sum(reference.predict(x_ref)), x_ref)  # predictions are independent
    np.testing.assert_allclose(sens, numeric, rtol=1e-6, atol=1e-10)


def test_fit_decay_factor_recovers_a_geometric_decay():
    k = np.arange(101)
    assert fit_decay_factor(3.0 * 0.6**k) == pytest.approx(0.6, rel=1e-12)
    assert fit_decay_factor(0.5 * 1.02**k, k_min=0) == pytest.approx(1.02, rel=1e-12)
    # The first steps are skipped; a tail that underflowed to 0 (or below the floor) is cut off, not fitted.
    curve = 0.5**k
    curve[:5] = 7.0
    curve[60:] = 0.0
    assert fit_decay_factor(curve, k_min=5) == pytest.approx(0.5, rel=1e-12)
    assert fit_decay_factor(0.5**k, floor=1e-10) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError, match="fewer than 2"):
        fit_decay_factor(np.zeros(20))

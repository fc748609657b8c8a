"""Optimisers, schedules and clipping against hand-written formulae; the in-place, dtype and state contracts."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from minicap import optim
from minicap.optim import (
    OPTIMIZERS,
    SGD,
    Adam,
    Constant,
    CosineWithWarmup,
    Momentum,
    Optimizer,
    clip_grad_norm,
    global_norm,
)

SHAPES = {"W": (4, 3), "b": (3,), "W_embed": (5, 2)}

# Every optimiser configuration, by a readable id.
OPTIMISERS = {
    "sgd": lambda: SGD(lr=0.1),
    "momentum": lambda: Momentum(lr=0.05, momentum=0.9),
    "nesterov": lambda: Momentum(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(lr=1e-2),
    "adamw": lambda: Adam(lr=1e-2, weight_decay=0.1),
}


def make_params(rng: np.random.Generator, dtype=np.float64) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def make_grad_sequence(rng: np.random.Generator, n: int, dtype=np.float64) -> list[dict[str, np.ndarray]]:
    return [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(n)]


def copy(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in d.items()}


# ------------------------------------------------------------------------------------------------------------
# Adam
# ------------------------------------------------------------------------------------------------------------


def test_adam_first_step_moves_each_parameter_by_lr_times_sign(rng):
    # After one step m_hat = g and v_hat = g^2, so the move is lr g / (|g| + eps) = lr sign(g) (1 - O(eps/|g|)).
    n = 200
    p = rng.standard_normal(n)
    g = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-1, 3, n)  # |g| in [0.1, 1000] >> eps = 1e-8
    p0 = p.copy()
    Adam(lr=1e-3).step({"p": p}, {"p": g})
    np.testing.assert_allclose(p0 - p, 1e-3 * np.sign(g), rtol=1e-6, atol=0)


def reference_adam(params, grad_seq, lrs, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """The textbook loop (Kingma & Ba Alg. 1; Loshchilov & Hutter Alg. 2 for the decay), written plainly."""
    p = copy(params)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (grads, lr) in enumerate(zip(grad_seq, lrs, strict=True), start=1):
        for k in p:
            g = grads[k]
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g**2
            m_hat = m[k] / (1 - beta1**t)
            v_hat = v[k] / (1 - beta2**t)
            p[k] = p[k] - lr * weight_decay * p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam_matches_hand_written_loop_with_bias_correction(rng, weight_decay):
    params = make_params(rng)
    grad_seq = make_grad_sequence(rng, 6)
    lrs = [1e-2, 2e-2, 3e-2, 2e-2, 1e-2, 5e-3]  # the learning rate changes between steps, as under a schedule
    want_p, want_m, want_v = reference_adam(params, grad_seq, lrs, beta1=0.8, beta2=0.99, weight_decay=weight_decay)

    opt = Adam(lr=lrs[0], beta1=0.8, beta2=0.99, weight_decay=weight_decay)
    got = copy(params)
    for grads, lr in zip(grad_seq, lrs, strict=True):
        opt.lr = lr
        opt.step(got, grads)
    assert opt.t == 6
    for k in params:
        np.testing.assert_allclose(got[k], want_p[k], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(opt.m[k], want_m[k], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(opt.v[k], want_v[k], rtol=1e-12, atol=1e-15)

    # The bias correction is not a rounding detail: without it the first steps are ~10x too small.
    uncorrected = copy(params)
    for k in params:
        g = grad_seq[0][k]
        uncorrected[k] -= lrs[0] * (1 - 0.8) * g / (np.sqrt((1 - 0.99) * g**2) + 1e-8)
    first = copy(params)
    Adam(lr=lrs[0], beta1=0.8, beta2=0.99).step(first, grad_seq[0])
    assert np.max(np.abs((params["W"] - uncorrected["W"]) - (params["W"] - first["W"]))) > 1e-3


def test_adamw_decay_alone_is_a_fixed_shrink_factor(rng):
    # Zero gradients: m = v = 0, so the adaptive step is exactly 0 and only the decay acts: p <- (1 - lr wd) p
    p = rng.standard_normal(20)
    p0 = p.copy()
    opt = Adam(lr=0.01, weight_decay=0.5)
    for _ in range(7):
        opt.step({"p": p}, {"p": np.zeros_like(p)})
    np.testing.assert_allclose(p, p0 * (1 - 0.01 * 0.5) ** 7, rtol=1e-13)


def test_adamw_decay_is_independent_of_gradient_scale(rng):
    p0 = rng.standard_normal(50)
    grad_seq = [rng.choice([-1.0, 1.0], 50) * rng.uniform(1, 10, 50) for _ in range(5)]

    def run(scale: float, coupled_l2: bool) -> np.ndarray:
        p = p0.copy()
        opt = Adam(lr=0.01, weight_decay=0.0 if coupled_l2 else 0.1)
        for g in grad_seq:
            # coupled_l2: the L2 alternative, decay added to the gradient (then divided by sqrt(v_hat))
            opt.step({"p": p}, {"p": scale * g + (0.1 * p if coupled_l2 else 0.0)})
        return p

    for scale in (1e-2, 1e2):
        # Decoupled: the same trajectory whatever the gradient scale (up to eps / |g| ~ 1e-6 of a step).
        assert np.max(np.abs(run(scale, coupled_l2=False) - run(1.0, coupled_l2=False))) < 1e-7
        # Coupled L2 (what AdamW fixes): the decay's effect depends strongly on the gradient scale.
        assert np.max(np.abs(run(scale, coupled_l2=True) - run(1.0, coupled_l2=True))) > 1e-4


# ------------------------------------------------------------------------------------------------------------
# SGD and momentum
# ------------------------------------------------------------------------------------------------------------


def test_sgd_matches_formula(rng):
    params = make_params(rng)
    grad_seq = make_grad_sequence(rng, 4)
    lrs = [0.1, 0.05, 0.2, 0.01]
    want = copy(params)
    got = copy(params)
    opt = SGD(lr=1.0)
    for grads, lr in zip(grad_seq, lrs, strict=True):
        for k in want:
            want[k] = want[k] - lr * grads[k]
        opt.lr = lr
        opt.step(got, grads)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_formula(rng, nesterov):
    params = make_params(rng)
    grad_seq = make_grad_sequence(rng, 5)
    lrs = [0.1, 0.05, 0.2, 0.01, 0.1]
    mu = 0.8
    want = copy(params)
    u = {k: np.zeros_like(p) for k, p in params.items()}
    got = copy(params)
    opt = Momentum(lr=1.0, momentum=mu, nesterov=nesterov)
    for grads, lr in zip(grad_seq, lrs, strict=True):
        for k in want:
            u[k] = mu * u[k] + grads[k]
            step = grads[k] + mu * u[k] if nesterov else u[k]
            want[k] = want[k] - lr * step
        opt.lr = lr
        opt.step(got, grads)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(opt.velocity[k], u[k], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_equals_classical_form_at_constant_lr(rng, nesterov):
    # The docstring's claim: with constant lr, v = -lr u gives v <- mu v - lr g; p <- p + v (heavy ball) and
    # p <- p - mu v_old + (1 + mu) v (Nesterov, CS231n form).
    params = make_params(rng)
    grad_seq = make_grad_sequence(rng, 6)
    lr, mu = 0.05, 0.9
    want = copy(params)
    v = {k: np.zeros_like(p) for k, p in params.items()}
    got = copy(params)
    opt = Momentum(lr=lr, momentum=mu, nesterov=nesterov)
    for grads in grad_seq:
        for k in want:
            v_old = v[k]
            v[k] = mu * v[k] - lr * grads[k]
            want[k] = want[k] - mu * v_old + (1 + mu) * v[k] if nesterov else want[k] + v[k]
        opt.step(got, grads)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------------------
# All optimisers: convergence and the shared contracts
# ------------------------------------------------------------------------------------------------------------

_THETA = math.pi / 6
_ROT = np.array([[math.cos(_THETA), -math.sin(_THETA)], [math.sin(_THETA), math.cos(_THETA)]])
BOWL = _ROT @ np.diag([1.0, 25.0]) @ _ROT.T  # condition number 25, axes not aligned with the coordinates
BOWL_MIN = np.array([1.0, -2.0])


@pytest.mark.parametrize(
    ("make_opt", "steps"),
    [
        (lambda: SGD(lr=0.07), 300),  # stable for lr < 2 / 25
        (lambda: Momentum(lr=0.02, momentum=0.8), 300),
        (lambda: Momentum(lr=0.02, momentum=0.8, nesterov=True), 300),
        (lambda: Adam(lr=0.2), 800),
    ],
    ids=["sgd", "momentum", "nesterov", "adam"],
)
def test_optimisers_minimise_an_ill_conditioned_quadratic(make_opt, steps):
    # f(x) = 1/2 (x - x*)^T A (x - x*), grad = A (x - x*)
    x = np.array([-3.0, 2.5])
    opt = make_opt()
    for _ in range(steps):
        opt.step({"x": x}, {"x": BOWL @ (x - BOWL_MIN)})
    assert np.linalg.norm(x - BOWL_MIN) < 1e-6


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_step_updates_params_and_state_in_place(rng, name):
    params = make_params(rng, np.float32)
    arrays = dict(params)  # the very objects the caller holds
    pointers = {k: p.__array_interface__["data"][0] for k, p in params.items()}
    before = copy(params)
    opt = OPTIMISERS[name]()
    opt.step(params, make_grad_sequence(rng, 1, np.float32)[0])
    state = {name: dict(store) for name, store in opt._buffers().items()}
    opt.step(params, make_grad_sequence(rng, 1, np.float32)[0])
    for k in params:
        assert params[k] is arrays[k]
        assert params[k].__array_interface__["data"][0] == pointers[k]
        assert not np.array_equal(params[k], before[k])  # and it did change
    for buf_name, store in opt._buffers().items():  # state arrays are updated in place too
        for k in store:
            assert store[k] is state[buf_name][k]


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_float32_stays_float32(rng, name):
    params = make_params(rng, np.float32)
    params["x64"] = rng.standard_normal(3)  # a float64 parameter next to float32 ones keeps its own dtype
    grads = {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
    opt = OPTIMISERS[name]()
    opt.lr = np.float64(opt.lr)  # e.g. from np.cos in a schedule: must not upcast anything
    assert type(opt.lr) is float
    reference = {k: p.astype(np.float64) for k, p in params.items()}
    ref_opt = OPTIMISERS[name]()
    for _ in range(3):
        opt.step(params, grads)
        ref_opt.step(reference, {k: g.astype(np.float64) for k, g in grads.items()})
    for k, p in params.items():
        assert p.dtype == grads[k].dtype
        np.testing.assert_allclose(p, reference[k], rtol=1e-5, atol=1e-6)  # float32 maths, same result
    for store in opt._buffers().values():
        for k, s in store.items():
            assert s.dtype == params[k].dtype
    for key, value in opt.state_dict().items():
        if "/" in key:
            assert value.dtype == params[key.partition("/")[2]].dtype


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_state_dict_round_trip_continues_bitwise(rng, name):
    params = make_params(rng, np.float32)
    grad_seq = make_grad_sequence(rng, 8, np.float32)
    schedule = CosineWithWarmup(base_lr=0.05, total_steps=8, warmup_steps=2)

    straight = copy(params)
    opt = OPTIMISERS[name]()
    for grads in grad_seq:
        opt.lr = schedule(opt.t)
        opt.step(straight, grads)

    first = copy(params)
    opt1 = OPTIMISERS[name]()
    for grads in grad_seq[:4]:
        opt1.lr = schedule(opt1.t)
        opt1.step(first, grads)
    buffer = io.BytesIO()  # through an .npz file, as a checkpoint would store it
    np.savez(buffer, **opt1.state_dict(), **{f"param/{k}": v for k, v in first.items()})
    saved = opt1.state_dict()
    opt1.step(first, grad_seq[4])  # later steps must not change what was saved
    for k, v in opt1.state_dict().items():
        if "/" in k:
            assert not np.array_equal(saved[k], v)

    buffer.seek(0)
    with np.load(buffer) as npz:
        resumed = {k.removeprefix("param/"): npz[k] for k in npz.files if k.startswith("param/")}
        opt2 = OPTIMISERS[name]()
        opt2.lr = 123.0  # the saved learning rate wins
        opt2.load_state_dict({k: npz[k] for k in npz.files if not k.startswith("param/")}, params=resumed)
    assert opt2.t == 4 and opt2.lr == schedule(3)
    for grads in grad_seq[4:]:
        opt2.lr = schedule(opt2.t)
        opt2.step(resumed, grads)

    for k in params:
        np.testing.assert_array_equal(resumed[k], straight[k])
    final, resumed_state = opt.state_dict(), opt2.state_dict()
    assert final.keys() == resumed_state.keys()
    for k in final:
        np.testing.assert_array_equal(resumed_state[k], final[k])


def test_state_dict_layout():
    opt = Adam(lr=1e-3, weight_decay=0.01)
    scalars = {"lr": 1e-3, "t": 0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}
    assert opt.state_dict() == scalars
    params = {"W": np.ones((2, 3), np.float32), "lstm/Wx": np.ones(4, np.float32)}
    opt.step(params, {k: np.ones_like(p) for k, p in params.items()})
    d = opt.state_dict()
    assert set(d) == {*scalars, "m/W", "v/W", "m/lstm/Wx", "v/lstm/Wx"}
    assert d["t"] == 1 and d["m/W"].shape == (2, 3)
    assert set(Momentum(0.1).state_dict()) == {"lr", "t", "momentum", "nesterov"}
    assert set(SGD(0.1).state_dict()) == {"lr", "t"}


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_mismatched_params_and_grads_raise_before_changing_anything(rng, name):
    params = make_params(rng)
    grads = make_grad_sequence(rng, 1)[0]
    before = copy(params)
    opt = OPTIMISERS[name]()
    extra = {**grads, "ghost": np.zeros(2)}
    with pytest.raises(ValueError, match="grads has keys that are not parameters: 'ghost'"):
        opt.step(params, extra)
    missing = {k: g for k, g in grads.items() if k != "b"}
    with pytest.raises(ValueError, match="no gradient for parameters: 'b'"):
        opt.step(params, missing)
    with pytest.raises(ValueError, match="gradient 'W' has shape"):
        opt.step(params, {**grads, "W": np.zeros((3, 4))})
    with pytest.raises(TypeError, match="gradient 'W' has dtype float32"):
        opt.step(params, {**grads, "W": grads["W"].astype(np.float32)})
    with pytest.raises(TypeError, match="must be NumPy arrays"):
        opt.step(params, {**grads, "W": grads["W"].tolist()})
    frozen = copy(params)
    frozen["b"].flags.writeable = False
    with pytest.raises(ValueError, match="'b' is read-only"):
        opt.step(frozen, grads)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert opt.t == 0
    assert all(not store for store in opt._buffers().values())  # no state was created either

    opt.step(params, grads)
    if opt._buffers():  # stateful optimisers refuse parameters their state was not built for
        with pytest.raises(ValueError, match="built for other parameters"):
            opt.step({**params, "new": np.zeros(2)}, {**grads, "new": np.zeros(2)})


def test_load_state_dict_errors_leave_the_optimiser_unchanged(rng):
    params = make_params(rng)
    opt = Adam(lr=0.01)
    opt.step(params, make_grad_sequence(rng, 1)[0])
    good = opt.state_dict()
    target = Adam(lr=0.01)
    target.step(copy(params), make_grad_sequence(rng, 1)[0])
    target_before = target.state_dict()

    cases = [
        ({k: v for k, v in good.items() if k != "t"}, "missing 't'"),
        ({k: v for k, v in good.items() if k != "m/W"}, "cover different parameters"),
        ({**good, "velocity/W": good["m/W"]}, "unexpected keys.*'velocity/W'"),
        ({**good, "m/W": good["m/W"][:2]}, r"m/W is float64\[4, 3\] but v/W is float64\[2, 3\]|v/W"),
        ({**good, "beta2": 0.99}, "beta2: saved 0.99, this optimiser 0.999"),
        ({**good, "t": -1}, "'t' must be an integer >= 0"),
        ({**good, "lr": np.ones(2)}, "'lr' must be a number"),
        (Momentum(0.1).state_dict(), "missing 'beta1', 'beta2', 'eps', 'weight_decay'"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"m/W is float64\[4, 3\] but the parameter is float64\[3, 4\]"):
        target.load_state_dict(good, params={**params, "W": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="built for other parameters"):
        target.load_state_dict(good, params={k: p for k, p in params.items() if k != "b"})

    after = target.state_dict()
    assert after.keys() == target_before.keys()
    for k in after:
        np.testing.assert_array_equal(after[k], target_before[k])

    # A state whose shapes do not fit the model is caught at the next step if params were not given.
    target.load_state_dict(good)
    params32 = {k: p.astype(np.float32) for k, p in params.items()}
    with pytest.raises(ValueError, match=r"state m/W is float64\[4, 3\] but the parameter is float32\[4, 3\]"):
        target.step(params32, make_grad_sequence(rng, 1, np.float32)[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(lr=-0.1),
        lambda: SGD(lr=math.nan),
        lambda: Momentum(0.1, momentum=1.0),
        lambda: Adam(beta1=1.0),
        lambda: Adam(beta2=-0.1),
        lambda: Adam(eps=0.0),
        lambda: Adam(weight_decay=-1e-4),
    ],
)
def test_bad_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_optimizer_base_and_repr():
    assert repr(Adam(lr=0.5)) == "Adam(lr=0.5, beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0.0)"
    assert repr(Momentum(0.1, nesterov=True)) == "Momentum(lr=0.1, momentum=0.9, nesterov=True)"
    with pytest.raises(NotImplementedError):
        Optimizer(0.1).step({}, {})


# ------------------------------------------------------------------------------------------------------------
# clip_grad_norm
# ------------------------------------------------------------------------------------------------------------


def reference_norm(grads) -> float:
    """The definition, written out: sqrt of the sum of every squared entry, in float64."""
    return float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values())))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm_matches_definition_and_changes_nothing(rng, dtype):
    arrays = {"a": rng.standard_normal((3, 4)).astype(dtype), "b": rng.standard_normal(5).astype(dtype)}
    arrays["t"] = rng.standard_normal((4, 3)).astype(dtype).T  # non-contiguous
    copies = {k: v.copy() for k, v in arrays.items()}
    expected = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in arrays.values()))
    norm = global_norm(arrays)
    assert isinstance(norm, float)
    assert norm == pytest.approx(expected, rel=1e-12 if dtype == np.float64 else 1e-6)
    assert norm == pytest.approx(reference_norm(arrays), rel=1e-6)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], copies[k])
    assert global_norm({}) == 0.0
    with pytest.raises(TypeError, match="'i'"):
        global_norm({"i": np.ones(3, dtype=np.int64)})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_rescales_all_grads_by_one_factor(rng, dtype):
    grads = {k: (10 * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
    grads["Wt"] = (10 * rng.standard_normal((6, 4))).astype(dtype).T  # non-contiguous: clipped in place too
    before = copy(grads)
    objects = dict(grads)
    norm_before = reference_norm(grads)
    assert norm_before > 20

    returned = clip_grad_norm(grads, max_norm=5.0)

    assert isinstance(returned, float)
    assert returned == pytest.approx(norm_before, rel=1e-6)
    assert reference_norm(grads) <= 5.0 * (1 + 1e-6)
    factor = 5.0 / (norm_before + 1e-6)
    for k in grads:
        assert grads[k] is objects[k] and grads[k].dtype == dtype
        np.testing.assert_allclose(grads[k], before[k] * factor, rtol=1e-6)  # one factor: same direction
    assert reference_norm(grads) == pytest.approx(5.0, rel=1e-6)


def test_clip_grad_norm_does_nothing_under_the_limit(rng):
    grads = make_grad_sequence(rng, 1)[0]
    before = copy(grads)
    norm = clip_grad_norm(grads, max_norm=1e3)
    assert norm == pytest.approx(reference_norm(before), rel=1e-12)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_clip_grad_norm_reports_non_finite_norm_and_leaves_grads(rng, bad):
    grads = make_grad_sequence(rng, 1)[0]
    grads["b"][1] = bad
    before = copy(grads)
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert math.isnan(norm) if math.isnan(bad) else norm == math.inf
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


def test_clip_grad_norm_edge_cases():
    assert clip_grad_norm({}, max_norm=1.0) == 0.0
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="max_norm"):
            clip_grad_norm({"W": np.ones(2)}, max_norm=bad)
    with pytest.raises(TypeError, match="'W'"):
        clip_grad_norm({"W": np.ones(2, dtype=np.int64)}, max_norm=1.0)


# ------------------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------------------


def test_constant_schedule():
    s = Constant(3e-4)
    assert [s(0), s(1), s(10**6)] == [3e-4] * 3
    assert all(isinstance(s(i), float) for i in (0, 5))


def test_the_schedules_and_optimisers_that_remain():
    """Two schedules (what the one training loop uses) and three optimisers by name (what checkpoints record)."""
    assert OPTIMIZERS == {"SGD": SGD, "Momentum": Momentum, "Adam": Adam}
    assert {"Constant", "CosineWithWarmup", "global_norm", "clip_grad_norm"} <= set(optim.__all__)


def test_cosine_with_warmup_key_steps():
    base, lo = 1e-3, 1e-5
    s = CosineWithWarmup(base_lr=base, total_steps=110, warmup_steps=10, min_lr=lo)
    assert s(0) == pytest.approx(base / 10)  # warm-up start: small, not zero
    assert s(4) == pytest.approx(base * 5 / 10)
    assert s(9) == pytest.approx(base)  # end of warm-up
    assert s(10) == pytest.approx(base)  # start of the cosine
    assert s(60) == pytest.approx((base + lo) / 2)  # halfway through the cosine
    assert s(110) == pytest.approx(lo) and s(10_000) == pytest.approx(lo)  # end, and constant after it
    values = [s(i) for i in range(120)]
    assert all(a < b for a, b in zip(values[:9], values[1:10], strict=True))  # rising during warm-up
    assert all(a >= b for a, b in zip(values[10:-1], values[11:], strict=True))  # never rising after it
    assert all(isinstance(v, float) for v in values)
    no_warmup = CosineWithWarmup(base_lr=base, total_steps=100)
    assert no_warmup(0) == base and no_warmup(50) == pytest.approx(base / 2) and no_warmup(100) == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: Constant(-1.0),
        lambda: Constant(math.inf),
        lambda: CosineWithWarmup(-0.1, total_steps=10),
        lambda: CosineWithWarmup(0.1, total_steps=10, warmup_steps=10),
        lambda: CosineWithWarmup(0.1, total_steps=10, min_lr=0.2),
    ],
)
def test_bad_schedule_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


def test_schedule_steps_must_be_non_negative_integers():
    s = CosineWithWarmup(0.1, total_steps=10)
    with pytest.raises(ValueError, match=">= 0"):
        s(-1)
    with pytest.raises(TypeError):
        s(1.5)
    assert s(np.int64(5)) == s(5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_in_cache_sized_pieces_gives_the_same_numbers_bit_for_bit(weight_decay):
    """Adam.chunk splits large contiguous arrays into pieces; every element sees the same operations, so the
    parameters after several steps are identical to the whole-array update (a non-contiguous one included)."""
    rng = np.random.default_rng(0)
    start = {"a": rng.standard_normal((10, 13)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    start["c"] = np.asfortranarray(rng.standard_normal((6, 4)).astype(np.float32))  # not C-contiguous: whole
    runs = {}
    for chunk in (0, 7):
        params = {k: v.copy(order="K") for k, v in start.items()}
        opt = Adam(lr=1e-2, weight_decay=weight_decay)
        opt.chunk = chunk
        grad_rng = np.random.default_rng(1)
        for _ in range(3):
            opt.step(params, {k: grad_rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()})
        runs[chunk] = params
    for k in start:
        np.testing.assert_array_equal(runs[7][k], runs[0][k])
        assert not np.array_equal(runs[7][k], start[k])

"""The GRU (`minicap.nn.gru`): gradient checks, the sequence as a loop over the step, lengths, dtype, the memory
path (1 − z), and PyTorch's nn.GRU as an independent implementation (when torch is installed)."""

from __future__ import annotations

import numpy as np
import pytest

from minicap import gradcheck, nn


def _gru_inputs(rng, N=3, T=7, D=4, H=5, dtype=np.float64):
    return (
        rng.standard_normal((N, T, D)).astype(dtype),
        rng.standard_normal((N, H)).astype(dtype),
        (rng.standard_normal((D, 3 * H)) * 0.5).astype(dtype),
        (rng.standard_normal((H, 3 * H)) * 0.5).astype(dtype),
        (rng.standard_normal(3 * H) * 0.5).astype(dtype),
        (rng.standard_normal(H) * 0.5).astype(dtype),
    )


def test_gru_gradients_pass_the_gradient_check():
    """Every input of the step and of the sequence (with and without lengths) against centred differences, at
    the thresholds `minicap gradcheck` uses — which runs these same checks."""
    results = gradcheck.check_gru_step() + gradcheck.check_sequence("gru")
    results += gradcheck.check_sequence("gru", lengths=(6, 4, 4, 1, 0))
    assert {r.input for r in results} == {"x", "prev_h", "h0", "Wx", "Wh", "b", "b_hn"}
    for r in results:
        assert r.passed, r.line()


def test_the_gradient_check_catches_a_broken_gru_backward(monkeypatch):
    """Drop the kept part dh ⊙ (1 − z) from dprev_h: the check must fail on prev_h (and only a real check would)."""
    correct = nn.gru.gru_step_backward

    def broken(dnext_h, cache):
        dx, dprev_h, *rest = correct(dnext_h, cache)
        return (dx, dprev_h - dnext_h * (1.0 - cache.z), *rest)

    monkeypatch.setattr(nn, "gru_step_backward", broken)
    failed = [r for r in gradcheck.check_gru_step() if not r.passed]
    assert [r.input for r in failed] == ["prev_h"] and failed[0].max_rel > 1e-2


def test_gru_forward_and_backward_equal_loops_of_steps(rng):
    x, h0, Wx, Wh, b, b_hn = _gru_inputs(rng)
    h, cache = nn.gru_forward(x, h0, Wx, Wh, b, b_hn)
    dh = rng.standard_normal(h.shape)
    g = nn.gru_backward(dh, cache)
    state, dnext_h = h0, np.zeros_like(h0)
    steps = []
    for t in range(x.shape[1]):
        state, step = nn.gru_step_forward(x[:, t], state, Wx, Wh, b, b_hn)
        np.testing.assert_array_equal(h[:, t], state)
        steps.append(step)
    dWh = np.zeros_like(Wh)
    for t in reversed(range(x.shape[1])):
        dx_t, dnext_h, _, dWh_t, _, _ = nn.gru_step_backward(dnext_h + dh[:, t], steps[t])
        np.testing.assert_allclose(g.dx[:, t], dx_t, rtol=0, atol=1e-12)
        dWh += dWh_t
    np.testing.assert_allclose(g.dh0, dnext_h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dWh, dWh, rtol=0, atol=1e-12)


def test_the_memory_path_carries_one_minus_z(rng):
    """With Wh = 0 the gates do not depend on h_{t−1}, so one step back multiplies the gradient by exactly
    (1 − z) elementwise: the GRU's counterpart of the LSTM's ∂c_t/∂c_{t−1} = f. With z ≈ 0 the state is kept."""
    x, h0, Wx, Wh, b, b_hn = _gru_inputs(rng, N=2, H=4)
    Wh = np.zeros_like(Wh)
    h, cache = nn.gru_step_forward(x[:, 0], h0, Wx, Wh, b, b_hn)
    dh = rng.standard_normal(h.shape)
    dprev_h = nn.gru_step_backward(dh, cache)[1]
    np.testing.assert_allclose(dprev_h, dh * (1.0 - cache.z), rtol=1e-14)
    b_closed = b.copy()
    b_closed[4:8] = -40.0  # z = σ(−40) ≈ 4e-18: nothing written, everything kept
    h_kept, _ = nn.gru_step_forward(x[:, 0], h0, np.zeros_like(Wx), Wh, b_closed, b_hn)
    np.testing.assert_allclose(h_kept, h0, rtol=1e-15)


def test_a_gru_batch_equals_its_examples_and_lengths_carry_the_state(rng):
    x, h0, Wx, Wh, b, b_hn = _gru_inputs(rng, N=4, T=6)
    lengths = np.array([2, 6, 0, 4])
    h, cache = nn.gru_forward(x, h0, Wx, Wh, b, b_hn, lengths=lengths)
    for n, length in enumerate(lengths):
        if length:
            alone, _ = nn.gru_forward(x[n : n + 1, :length], h0[n : n + 1], Wx, Wh, b, b_hn)
            np.testing.assert_allclose(h[n, :length], alone[0], rtol=0, atol=1e-12)
        last = h[n, length - 1] if length else h0[n]
        np.testing.assert_array_equal(h[n, length:], np.broadcast_to(last, h[n, length:].shape))
        np.testing.assert_array_equal(cache.h_last[n], last)
    # Gradients flowing into padded positions reach the state they copied, unchanged.
    dh = np.zeros_like(h)
    dh[2, 3] = 1.0  # sequence 2 has no steps: its state is h0 throughout
    np.testing.assert_array_equal(nn.gru_backward(dh, cache).dh0[2], dh[2, 3])
    with pytest.raises(ValueError, match="lengths must be"):
        nn.gru_forward(x, h0, Wx, Wh, b, b_hn, lengths=np.array([7, 4, 2, 0]))
    with pytest.raises(ValueError, match="at least one step"):
        nn.gru_forward(x[:, :0], h0, Wx, Wh, b, b_hn)


def test_gru_state_gradients_agree_with_bptt(rng):
    x, h0, Wx, Wh, b, b_hn = _gru_inputs(rng)
    h, cache = nn.gru_forward(x, h0, Wx, Wh, b, b_hn)
    dh = np.zeros_like(h)
    dh[:, -1] = rng.standard_normal(h0.shape)
    states = nn.gru_state_gradients(dh, cache)
    assert states.shape == (x.shape[1] + 1, *h0.shape)
    np.testing.assert_allclose(states[0], nn.gru_backward(dh, cache).dh0, atol=1e-12)
    np.testing.assert_array_equal(states[-1], dh[:, -1])


def test_gru_float32_stays_float32(rng):
    inputs = _gru_inputs(rng, dtype=np.float32)
    h, cache = nn.gru_forward(*inputs, lengths=np.array([7, 5, 0]))
    assert h.dtype == np.float32 and cache.h_last.dtype == np.float32
    assert all(a.dtype == np.float32 for step in cache.steps for a in step if isinstance(a, np.ndarray))
    grads = nn.gru_backward(np.ones_like(h), cache)
    assert all(g.dtype == np.float32 for g in grads)


def test_gru_torch_order_conversion(rng):
    H, D = 3, 2
    w_ih, w_hh = rng.standard_normal((3 * H, D)), rng.standard_normal((3 * H, H))
    b_ih, b_hh = rng.standard_normal(3 * H), rng.standard_normal(3 * H)
    Wx, Wh, b, b_hn = nn.gru_weights_from_torch_order(w_ih, w_hh, b_ih, b_hh)
    assert Wx.shape == (D, 3 * H) and Wh.shape == (H, 3 * H) and b.shape == (3 * H,) and b_hn.shape == (H,)
    np.testing.assert_array_equal(Wx[:, :H], w_ih[:H].T)  # r: as it is
    np.testing.assert_array_equal(Wx[:, H : 2 * H], -w_ih[H : 2 * H].T)  # z: negated (torch's z is our 1 − z)
    np.testing.assert_array_equal(Wh[:, 2 * H :], w_hh[2 * H :].T)  # n
    np.testing.assert_allclose(b, np.r_[b_ih[:H] + b_hh[:H], -(b_ih[H : 2 * H] + b_hh[H : 2 * H]), b_ih[2 * H :]])
    np.testing.assert_array_equal(b_hn, b_hh[2 * H :])


def test_gru_matches_pytorch():
    """PyTorch's nn.GRU (float64) gives the same outputs and gradients. Its z keeps the old state where ours
    writes the new one, and its reset gate multiplies W_hn h + b_hn, as ours does."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    N, T, D, H = 3, 6, 4, 5
    gru = torch.nn.GRU(D, H, batch_first=True).double()
    x, h0, dh = rng.standard_normal((N, T, D)), rng.standard_normal((N, H)), rng.standard_normal((N, T, H))
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    out, _ = gru(xt, h0t)
    out.backward(torch.tensor(dh))

    p = {k: v.detach().numpy() for k, v in gru.named_parameters()}
    Wx, Wh, b, b_hn = nn.gru_weights_from_torch_order(
        p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    )
    h, cache = nn.gru_forward(x, h0, Wx, Wh, b, b_hn)
    g = nn.gru_backward(dh, cache)
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dh0, h0t.grad.numpy()[0], rtol=0, atol=1e-12)
    grads = {k: v.grad.numpy() for k, v in gru.named_parameters()}
    # The weight gradients convert like the weights (the z block negated); torch's r, z biases share one gradient.
    dWx, dWh, db, db_hn = nn.gru_weights_from_torch_order(
        grads["weight_ih_l0"], grads["weight_hh_l0"], grads["bias_ih_l0"], np.zeros(3 * H)
    )
    np.testing.assert_allclose(g.dWx, dWx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dWh, dWh, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.db, db, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.db_hn, grads["bias_hh_l0"][2 * H :], rtol=0, atol=1e-12)

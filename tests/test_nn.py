"""Properties of the layers beyond their gradients: consistency, stability, masking, dtypes, truncated BPTT.

The plain sequence functions (`nn.lstm_forward`, `nn.rnn_backward`, ...) are the readable reference: loops over
the step functions. Tests that hold for any implementation run on both paths (`PATHS`: the reference `minicap.nn`
and the optimised `minicap.nn.fast`); their equality, output by output, is proven in test_fast_path.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from minicap import gradcheck, nn

# The two implementations of the sequence functions: the same signatures, the same numbers.
PATHS = {"reference": nn, "fast": nn.fast}


def _lstm_inputs(rng, N=3, T=7, D=4, H=5, dtype=np.float64):
    return (
        rng.standard_normal((N, T, D)).astype(dtype),
        rng.standard_normal((N, H)).astype(dtype),
        (rng.standard_normal((D, 4 * H)) * 0.5).astype(dtype),
        (rng.standard_normal((H, 4 * H)) * 0.5).astype(dtype),
        (rng.standard_normal(4 * H) * 0.5).astype(dtype),
    )


def _rnn_inputs(rng, N=3, T=7, D=4, H=5, dtype=np.float64):
    x, h0, Wx, Wh, b = _lstm_inputs(rng, N, T, D, H, dtype)
    return x, h0, Wx[:, :H].copy(), Wh[:, :H].copy(), b[:H].copy()


# ------------------------------------------------------------------------------------------ stable pieces


def test_sigmoid_is_exact_and_never_overflows():
    x = np.array([-1e4, -800.0, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        s64 = nn.sigmoid(x)
        s32 = nn.sigmoid(x.astype(np.float32))
    xl = x.astype(np.longdouble)  # an independent reference: the two-branch formula in extended precision
    with np.errstate(over="ignore", under="ignore"):
        exact = np.where(x < 0, np.exp(xl) / (1 + np.exp(xl)), 1 / (1 + np.exp(-xl))).astype(np.float64)
    np.testing.assert_allclose(s64, exact, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(s32, exact, rtol=1e-6, atol=1e-30)
    assert s32.dtype == np.float32 and np.all((s64 >= 0) & (s64 <= 1))
    out = np.empty(3, np.float32)
    assert nn.sigmoid(np.zeros(3, np.float32), out=out) is out and np.all(out == 0.5)


def test_log_softmax_is_stable():
    x = np.array([[1e4, -1e4, 0.0], [1.0, 2.0, 3.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ls = nn.log_softmax(x)
    assert np.all(np.isfinite(ls))
    np.testing.assert_allclose(np.exp(ls).sum(axis=1), 1.0)
    np.testing.assert_allclose(ls[1], x[1] - np.log(np.exp(x[1]).sum()))


def test_masked_loss_is_finite_for_huge_logits_and_fully_masked_rows(rng):
    N, T, V = 2, 3, 5
    logits = rng.choice([-1e4, 1e4], size=(N, T, V))
    targets = rng.integers(0, V, size=(N, T))
    mask = np.array([[True, True, False], [False, False, False]])  # second row: every target masked
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, dlogits = nn.temporal_softmax_loss(logits, targets, mask)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    assert np.all(dlogits[~mask] == 0.0)  # exactly zero, not merely small

    none_counted, dnone = nn.temporal_softmax_loss(logits, targets, np.zeros((N, T), bool))
    assert none_counted == 0.0 and np.all(dnone == 0.0)


def test_masked_loss_value_matches_definition(rng):
    N, T, V = 3, 4, 6
    logits = rng.standard_normal((N, T, V))
    targets = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) > 0.4
    loss, _ = nn.temporal_softmax_loss(logits, targets, mask)
    log_p = nn.log_softmax(logits)
    expected = -sum(log_p[n, t, targets[n, t]] for n in range(N) for t in range(T) if mask[n, t]) / N
    assert loss == pytest.approx(expected, rel=1e-12)


def test_word_embedding_rejects_out_of_range_ids():
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        nn.word_embedding_forward(np.array([[0, 4]]), np.zeros((4, 2)))


# ------------------------------------------------------------------------------ sequences against steps


def test_lstm_forward_equals_a_loop_of_steps(rng):
    """The reference sequence function IS a loop over `lstm_step_forward`: bit for bit, step cache by step cache."""
    x, h0, Wx, Wh, b = _lstm_inputs(rng)
    c0 = rng.standard_normal(h0.shape)
    h_seq, cache = nn.lstm_forward(x, h0, Wx, Wh, b, c0=c0)
    assert len(cache.steps) == x.shape[1] and cache.running.all()
    h, c = h0, c0
    for t in range(x.shape[1]):
        h, c, step = nn.lstm_step_forward(x[:, t], h, c, Wx, Wh, b)
        np.testing.assert_allclose(h_seq[:, t], h, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(h_seq[:, t], h)  # literally the loop: not merely close
        for field in step._fields:
            np.testing.assert_array_equal(getattr(cache.steps[t], field), getattr(step, field), err_msg=field)
    np.testing.assert_allclose(cache.c_last, c, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(cache.h_last, h)
    np.testing.assert_array_equal(cache.c_last, c)


def test_lstm_backward_equals_a_loop_of_step_backwards(rng):
    x, h0, Wx, Wh, b = _lstm_inputs(rng)
    N, T, _ = x.shape
    dh = rng.standard_normal((N, T, h0.shape[1]))
    _, cache = nn.lstm_forward(x, h0, Wx, Wh, b)
    g = nn.lstm_backward(dh, cache)

    steps, h, c = [], h0, np.zeros_like(h0)
    for t in range(T):
        h, c, step_cache = nn.lstm_step_forward(x[:, t], h, c, Wx, Wh, b)
        steps.append(step_cache)
    dnext_h, dnext_c = np.zeros_like(h0), np.zeros_like(h0)
    dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)
    dx = np.zeros_like(x)
    for t in reversed(range(T)):
        dx[:, t], dnext_h, dnext_c, dWx_t, dWh_t, db_t = nn.lstm_step_backward(dnext_h + dh[:, t], dnext_c, steps[t])
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    for got, want in [(g.dx, dx), (g.dh0, dnext_h), (g.dc0, dnext_c), (g.dWx, dWx), (g.dWh, dWh), (g.db, db)]:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got, want)  # the reference backward is literally this loop


def test_rnn_forward_and_backward_equal_loops_of_steps(rng):
    x, h0, Wx, Wh, b = _rnn_inputs(rng)
    N, T, _ = x.shape
    h_seq, cache = nn.rnn_forward(x, h0, Wx, Wh, b)
    dh = rng.standard_normal(h_seq.shape)
    g = nn.rnn_backward(dh, cache)
    assert len(cache.steps) == T and cache.running.all()

    steps, h = [], h0
    for t in range(T):
        h, step_cache = nn.rnn_step_forward(x[:, t], h, Wx, Wh, b)
        np.testing.assert_allclose(h_seq[:, t], h, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(h_seq[:, t], h)  # literally the loop
        for field in step_cache._fields:
            np.testing.assert_array_equal(getattr(cache.steps[t], field), getattr(step_cache, field), err_msg=field)
        steps.append(step_cache)
    np.testing.assert_array_equal(cache.h_last, h)
    dnext_h = np.zeros_like(h0)
    dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)
    for t in reversed(range(T)):
        dx_t, dnext_h, dWx_t, dWh_t, db_t = nn.rnn_step_backward(dnext_h + dh[:, t], steps[t])
        np.testing.assert_allclose(g.dx[:, t], dx_t, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(g.dx[:, t], dx_t)
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    for got, want in [(g.dh0, dnext_h), (g.dWx, dWx), (g.dWh, dWh), (g.db, db)]:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_a_batch_equals_its_examples_one_at_a_time(rng, cell, path):
    seq = PATHS[path]
    inputs = _lstm_inputs(rng) if cell == "lstm" else _rnn_inputs(rng)
    forward, backward = (seq.lstm_forward, seq.lstm_backward) if cell == "lstm" else (seq.rnn_forward, seq.rnn_backward)
    x, h0, Wx, Wh, b = inputs
    h, cache = forward(x, h0, Wx, Wh, b)
    dh = rng.standard_normal(h.shape)
    g = backward(dh, cache)
    dW_sum = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
    for n in range(x.shape[0]):
        h_n, cache_n = forward(x[n : n + 1], h0[n : n + 1], Wx, Wh, b)
        np.testing.assert_allclose(h_n[0], h[n], rtol=0, atol=1e-12)
        g_n = backward(dh[n : n + 1], cache_n)
        np.testing.assert_allclose(g_n.dx[0], g.dx[n], rtol=0, atol=1e-12)
        np.testing.assert_allclose(g_n.dh0[0], g.dh0[n], rtol=0, atol=1e-12)
        dW_sum = [a + b_ for a, b_ in zip(dW_sum, (g_n.dWx, g_n.dWh, g_n.db), strict=True)]
    for got, want in zip((g.dWx, g.dWh, g.db), dW_sum, strict=True):  # weight gradients add over examples
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_lstm_torch_order_conversion_is_a_permutation(rng):
    H, D = 3, 2
    w_ih, w_hh = rng.standard_normal((4 * H, D)), rng.standard_normal((4 * H, H))
    b_ih, b_hh = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    Wx, Wh, b = nn.lstm_weights_from_torch_order(w_ih, w_hh, b_ih, b_hh)
    # torch: i f g o ; minicap: i f o g
    np.testing.assert_array_equal(Wx[:, 2 * H : 3 * H], w_ih[3 * H :].T)  # o
    np.testing.assert_array_equal(Wx[:, 3 * H :], w_ih[2 * H : 3 * H].T)  # g
    np.testing.assert_array_equal(Wh[:, :H], w_hh[:H].T)
    np.testing.assert_allclose(b[3 * H :], b_ih[2 * H : 3 * H] + b_hh[2 * H : 3 * H])


@pytest.mark.parametrize("path", PATHS)
def test_lstm_matches_pytorch(path):
    """An independent implementation (PyTorch's nn.LSTM, float64) gives the same outputs and gradients, on the
    readable path and on the fast one."""
    torch = pytest.importorskip("torch")
    seq = PATHS[path]
    rng = np.random.default_rng(5)
    N, T, D, H = 3, 6, 4, 5
    lstm = torch.nn.LSTM(D, H, batch_first=True).double()
    x = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H))
    c0 = rng.standard_normal((N, H))
    dh = rng.standard_normal((N, T, H))
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    c0t = torch.tensor(c0[None], requires_grad=True)
    out, _ = lstm(xt, (h0t, c0t))
    out.backward(torch.tensor(dh))

    p = {k: v.detach().numpy() for k, v in lstm.named_parameters()}
    Wx, Wh, b = nn.lstm_weights_from_torch_order(p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    h, cache = seq.lstm_forward(x, h0, Wx, Wh, b, c0=c0)
    g = seq.lstm_backward(dh, cache)
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dh0, h0t.grad.numpy()[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dc0, c0t.grad.numpy()[0], rtol=0, atol=1e-12)
    grads = {k: v.grad.numpy() for k, v in lstm.named_parameters()}
    dWx, dWh, db = nn.lstm_weights_from_torch_order(
        grads["weight_ih_l0"], grads["weight_hh_l0"], grads["bias_ih_l0"], np.zeros(4 * H)
    )
    np.testing.assert_allclose(g.dWx, dWx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dWh, dWh, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.db, db, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_rnn_matches_pytorch(path):
    """PyTorch's nn.RNN (tanh, float64) gives the same outputs and gradients as both paths."""
    torch = pytest.importorskip("torch")
    seq = PATHS[path]
    rng = np.random.default_rng(6)
    N, T, D, H = 3, 6, 4, 5
    rnn = torch.nn.RNN(D, H, nonlinearity="tanh", batch_first=True).double()
    x, h0, dh = rng.standard_normal((N, T, D)), rng.standard_normal((N, H)), rng.standard_normal((N, T, H))
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    out, _ = rnn(xt, h0t)
    out.backward(torch.tensor(dh))

    p = {k: v.detach().numpy() for k, v in rnn.named_parameters()}
    Wx, Wh, b = p["weight_ih_l0"].T.copy(), p["weight_hh_l0"].T.copy(), p["bias_ih_l0"] + p["bias_hh_l0"]
    h, cache = seq.rnn_forward(x, h0, Wx, Wh, b)
    g = seq.rnn_backward(dh, cache)
    grads = {k: v.grad.numpy() for k, v in rnn.named_parameters()}
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dh0, h0t.grad.numpy()[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dWx, grads["weight_ih_l0"].T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.dWh, grads["weight_hh_l0"].T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.db, grads["bias_ih_l0"], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------- dtype and speed rules


def _float_arrays(obj):
    """Every floating-point array inside a cache: NamedTuple fields, lists of step caches, arrays themselves."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f":
            yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _float_arrays(item)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_float32_stays_float32(rng, cell, path):
    seq = PATHS[path]
    inputs = _lstm_inputs(rng, dtype=np.float32) if cell == "lstm" else _rnn_inputs(rng, dtype=np.float32)
    forward, backward = (seq.lstm_forward, seq.lstm_backward) if cell == "lstm" else (seq.rnn_forward, seq.rnn_backward)
    h, cache = forward(*inputs, lengths=np.array([7, 5, 0]))
    assert h.dtype == np.float32
    arrays = list(_float_arrays(cache))
    assert len(arrays) >= 4  # the step caches of the reference are looked into, not skipped
    assert all(a.dtype == np.float32 for a in arrays)
    assert cache.h_last.dtype == np.float32
    grads = backward(np.ones_like(h), cache)
    assert all(g.dtype == np.float32 for g in grads)
    logits = rng.standard_normal((2, 3, 7)).astype(np.float32)
    loss, dlogits = nn.temporal_softmax_loss(logits, np.zeros((2, 3), int), np.ones((2, 3), bool))
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32


# ------------------------------------------------------------------------------------------ truncated BPTT


def test_truncated_bptt_forward_equals_full_forward(rng):
    x, h0, Wx, Wh, b = _lstm_inputs(rng, T=12)
    c0 = rng.standard_normal(h0.shape)
    h_full, cache = nn.lstm_forward(x, h0, Wx, Wh, b, c0=c0)
    for chunk in (1, 4, 5, 12, 50):
        h_chunked, caches = nn.lstm_forward_truncated(x, h0, c0, Wx, Wh, b, chunk_size=chunk)
        assert len(caches) == -(-12 // chunk)
        np.testing.assert_array_equal(h_chunked, h_full)  # the state is carried exactly: bit-identical
        np.testing.assert_array_equal(caches[-1].c_last, cache.c_last)


def test_truncated_bptt_gradients(rng):
    """One chunk = full BPTT; several chunks = the sum of each chunk's gradient with its start state held fixed."""
    x, h0, Wx, Wh, b = _lstm_inputs(rng, T=9)
    c0 = np.zeros_like(h0)
    dh = rng.standard_normal((x.shape[0], 9, h0.shape[1]))

    full = nn.lstm_backward(dh, nn.lstm_forward(x, h0, Wx, Wh, b)[1])
    one_chunk = nn.lstm_backward_truncated(dh, nn.lstm_forward_truncated(x, h0, c0, Wx, Wh, b, chunk_size=9)[1])
    for got, want in zip(one_chunk, full, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

    _, caches = nn.lstm_forward_truncated(x, h0, c0, Wx, Wh, b, chunk_size=4)
    truncated = nn.lstm_backward_truncated(dh, caches)
    # The same quantity numerically: each chunk restarts from the carried state as a CONSTANT.
    starts = [(h0, c0)] + [(c.h_last.copy(), c.c_last.copy()) for c in caches[:-1]]

    def chunked_objective() -> float:
        total = 0.0
        for k, (h_start, c_start) in enumerate(starts):
            sl = slice(4 * k, 4 * k + 4)
            h_k, _ = nn.lstm_forward(x[:, sl], h_start, Wx, Wh, b, c0=c_start)
            total += np.sum(h_k * dh[:, sl])
        return total

    for name, param, grad in [("Wx", Wx, truncated.dWx), ("Wh", Wh, truncated.dWh), ("b", b, truncated.db)]:
        numeric = gradcheck.numerical_gradient(chunked_objective, param)
        assert gradcheck.rel_error(grad, numeric) < 1e-6, name
    assert gradcheck.rel_error(truncated.dWh, full.dWh) > 1e-3  # truncation really drops long paths
    np.testing.assert_allclose(truncated.dx[:, :4], nn.lstm_backward(dh[:, :4], caches[0]).dx, atol=1e-12)


def test_truncated_bptt_rejects_bad_chunk(rng):
    x, h0, Wx, Wh, b = _lstm_inputs(rng)
    with pytest.raises(ValueError, match="chunk_size"):
        nn.lstm_forward_truncated(x, h0, None, Wx, Wh, b, chunk_size=0)


@pytest.mark.parametrize("path", PATHS)
def test_no_warnings_in_normal_use(rng, path):
    seq = PATHS[path]
    x, h0, Wx, Wh, b = _lstm_inputs(rng, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, cache = seq.lstm_forward(x * 100, h0, Wx * 100, Wh, b)  # saturated gates
        seq.lstm_backward(np.ones_like(h), cache)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_state_gradients_agree_with_bptt_and_numerics(rng, cell):
    """∂L/∂h_t for every t (lesson 01's measurement): its t = 0 entry is BPTT's dh0, and an intermediate one
    matches a numerical gradient taken by restarting the sequence from h_t."""
    inputs = _lstm_inputs(rng) if cell == "lstm" else _rnn_inputs(rng)
    x, h0, Wx, Wh, b = inputs
    forward = nn.lstm_forward if cell == "lstm" else nn.rnn_forward
    h, cache = forward(*inputs)
    dh = np.zeros_like(h)
    dh[:, -1] = rng.standard_normal(h0.shape)  # loss reads only the last output
    if cell == "lstm":
        dh_states, dc_states = nn.lstm_state_gradients(dh, cache)
        grads = nn.lstm_backward(dh, cache)
        np.testing.assert_allclose(dc_states[0], grads.dc0, atol=1e-12)
    else:
        dh_states = nn.rnn_state_gradients(dh, cache)
        grads = nn.rnn_backward(dh, cache)
    np.testing.assert_allclose(dh_states[0], grads.dh0, atol=1e-12)
    np.testing.assert_allclose(dh_states[-1], dh[:, -1], atol=0)

    t = 3  # restart from h_t (and c_t), the state step t starts from, as an input and differentiate numerically
    h_t = cache.steps[t].prev_h.copy()
    extra = {"c0": cache.steps[t].prev_c.copy()} if cell == "lstm" else {}
    numeric = gradcheck.numerical_gradient(
        lambda: np.sum(forward(x[:, t:], h_t, Wx, Wh, b, **extra)[0] * dh[:, t:]), h_t
    )
    assert gradcheck.rel_error(dh_states[t], numeric) < 1e-6


def test_softmax_loss_can_write_its_gradient_over_the_logits(rng):
    logits = rng.standard_normal((6, 9))
    targets = rng.integers(0, 9, size=6)
    weights = rng.random(6)
    loss, grad = nn.softmax_loss(logits, targets, weights)
    buffer = logits.copy()
    loss_in_place, grad_in_place = nn.softmax_loss(buffer, targets, weights, out=buffer)
    assert grad_in_place is buffer and loss_in_place == loss
    np.testing.assert_array_equal(grad_in_place, grad)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_lengths_skip_finished_sequences_exactly(rng, cell, path):
    """With lengths, each sequence's outputs up to its length equal running it alone on just those steps, and
    afterwards its state is carried unchanged. The reference takes lengths in any order; the fast path needs them
    sorted longest first (it works on the first active[t] rows only)."""
    seq = PATHS[path]
    inputs = _lstm_inputs(rng, N=4, T=6) if cell == "lstm" else _rnn_inputs(rng, N=4, T=6)
    forward = seq.lstm_forward if cell == "lstm" else seq.rnn_forward
    x, h0, Wx, Wh, b = inputs
    lengths = np.array([6, 4, 2, 0]) if path == "fast" else np.array([2, 6, 0, 4])
    h, cache = forward(x, h0, Wx, Wh, b, lengths=lengths)
    for n, length in enumerate(lengths):
        if length:  # (a sequence of no steps has no outputs to compare)
            alone, _ = forward(x[n : n + 1, :length], h0[n : n + 1], Wx, Wh, b)
            np.testing.assert_allclose(h[n, :length], alone[0], rtol=0, atol=1e-12)
        last = h[n, length - 1] if length else h0[n]  # carried exactly
        np.testing.assert_array_equal(h[n, length:], np.broadcast_to(last, h[n, length:].shape))
        np.testing.assert_array_equal(cache.h_last[n], last)
    if path == "fast":
        np.testing.assert_array_equal(cache.active, [3, 3, 2, 2, 1, 1])
        np.testing.assert_array_equal(nn.fast.active_counts(lengths, 4, 6), [3, 3, 2, 2, 1, 1])
        with pytest.raises(ValueError, match="longest first"):
            forward(x, h0, Wx, Wh, b, lengths=np.array([2, 6, 4, 0]))
    else:
        np.testing.assert_array_equal(cache.running, np.arange(6)[None, :] < lengths[:, None])
        np.testing.assert_array_equal(cache.running, nn.running_mask(lengths, 4, 6))
        assert len(cache.steps) == 6
    with pytest.raises(ValueError, match="lengths must be"):
        forward(x, h0, Wx, Wh, b, lengths=np.array([7, 4, 2, 0]))
    with pytest.raises(ValueError, match="lengths must be"):
        forward(x, h0, Wx, Wh, b, lengths=np.array([6, 4, 2]))


def test_running_mask():
    """Without lengths every sequence runs every step; with them, exactly t < lengths[n]."""
    np.testing.assert_array_equal(nn.running_mask(None, 2, 3), np.ones((2, 3), bool))
    np.testing.assert_array_equal(nn.running_mask(np.array([1, 3]), 2, 3), [[True, False, False], [True, True, True]])
    with pytest.raises(ValueError, match="lengths must be"):
        nn.running_mask(np.array([-1, 2]), 2, 3)

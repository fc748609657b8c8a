"""Gradient checks of soft attention (`minicap.nn.attention`): the additive attention, the gate β, the initial
state from the photo, the attention-LSTM step and its sequence loop (readable and fast), the doubly stochastic
regulariser, and the fast decoder equal to the readable one."""

from __future__ import annotations

import numpy as np

from minicap import nn
from minicap.gradcheck.numerical import (
    FORWARD_EQUAL,
    GRADIENT_EQUAL,
    REFERENCE_DTYPE,
    SEQUENCE_MAX_REL,
    STEP_MAX_REL,
    CheckResult,
    EqualityResult,
    check_array_function,
    check_outputs,
    compare,
    equal,
    numerical_gradient,
)
from minicap.nn import attention as att


def _attention_inputs(rng: np.random.Generator, N: int = 3, L: int = 4, F: int = 5, A: int = 3, H: int = 4) -> dict:
    return {
        "annotations": rng.standard_normal((N, L, F)),
        "proj": rng.standard_normal((N, L, A)),
        "prev_h": rng.standard_normal((N, H)),
        "W_att": rng.standard_normal((H, A)) * 0.5,
        "w_att": rng.standard_normal(A),
    }


def check_attention(seed: int = 0) -> list[CheckResult]:
    """Additive attention: both outputs (the context z and the map α) receive a gradient."""
    rng = np.random.default_rng(seed)
    inputs = _attention_inputs(rng)
    z, alpha, cache = att.attention_forward(**inputs)
    dz, dalpha = rng.standard_normal(z.shape), rng.standard_normal(alpha.shape)
    da, dproj, dprev_h, dW_att, dw_att = att.attention_backward(dz, dalpha, cache)
    analytic = {"annotations": da, "proj": dproj, "prev_h": dprev_h, "W_att": dW_att, "w_att": dw_att}
    fwd = lambda **kw: att.attention_forward(**kw)[:2]  # noqa: E731
    return check_outputs("attention", fwd, inputs, analytic, (dz, dalpha), STEP_MAX_REL)


def check_gate(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    inputs = {
        "z": rng.standard_normal((3, 5)),
        "prev_h": rng.standard_normal((3, 4)),
        "w_beta": rng.standard_normal(4),
        "b_beta": rng.standard_normal(1),
    }
    out, cache = att.gate_forward(**inputs)
    dout = rng.standard_normal(out.shape)
    dz, dprev_h, dw_beta, db_beta = att.gate_backward(dout, cache)
    analytic = {"z": dz, "prev_h": dprev_h, "w_beta": dw_beta, "b_beta": db_beta}
    fwd = lambda **kw: att.gate_forward(**kw)[0]  # noqa: E731
    return check_array_function("attention gate β", fwd, inputs, analytic, dout, STEP_MAX_REL)


def check_init_state(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    inputs = {
        "annotations": rng.standard_normal((3, 4, 5)),
        "W_h0": rng.standard_normal((5, 6)) * 0.5,
        "b_h0": rng.standard_normal(6) * 0.5,
        "W_c0": rng.standard_normal((5, 6)) * 0.5,
        "b_c0": rng.standard_normal(6) * 0.5,
    }
    h0, c0, cache = att.init_state_forward(**inputs)
    dh0, dc0 = rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)
    da, dW_h0, db_h0, dW_c0, db_c0 = att.init_state_backward(dh0, dc0, cache)
    analytic = {"annotations": da, "W_h0": dW_h0, "b_h0": db_h0, "W_c0": dW_c0, "b_c0": db_c0}
    fwd = lambda **kw: att.init_state_forward(**kw)[:2]  # noqa: E731
    return check_outputs("attention init_state (h0, c0)", fwd, inputs, analytic, (dh0, dc0), STEP_MAX_REL)


def attention_lstm_inputs(rng: np.random.Generator, N: int = 3, T: int | None = None) -> dict:
    L, F, A, W, H = 4, 5, 3, 2, 4
    inputs = {
        "x": rng.standard_normal((N, W) if T is None else (N, T, W)),
        ("prev_h" if T is None else "h0"): rng.standard_normal((N, H)),
        ("prev_c" if T is None else "c0"): rng.standard_normal((N, H)),
        "annotations": rng.standard_normal((N, L, F)),
        "proj": rng.standard_normal((N, L, A)),
        "W_att": rng.standard_normal((H, A)) * 0.5,
        "w_att": rng.standard_normal(A),
        "w_beta": rng.standard_normal(H) * 0.5,
        "b_beta": rng.standard_normal(1) * 0.5,
        "Wx": rng.standard_normal((W + F, 4 * H)) * 0.5,
        "Wh": rng.standard_normal((H, 4 * H)) * 0.5,
        "b": rng.standard_normal(4 * H) * 0.5,
    }
    return inputs


def check_attention_lstm_step(seed: int = 0) -> list[CheckResult]:
    """One attention-LSTM step; h, c and α all receive a gradient."""
    rng = np.random.default_rng(seed)
    inputs = attention_lstm_inputs(rng)
    h, c, alpha, cache = att.attention_lstm_step_forward(**inputs)
    douts = (rng.standard_normal(h.shape), rng.standard_normal(c.shape), rng.standard_normal(alpha.shape))
    g = att.attention_lstm_step_backward(*douts, cache)
    names = ("x", "prev_h", "prev_c", "annotations", "proj", "W_att", "w_att", "w_beta", "b_beta", "Wx", "Wh", "b")
    analytic = {name: getattr(g, f"d{name}") for name in names}
    fwd = lambda **kw: att.attention_lstm_step_forward(**kw)[:3]  # noqa: E731
    return check_outputs("attention_lstm_step", fwd, inputs, analytic, douts, STEP_MAX_REL)


def check_attention_lstm_sequence(
    seed: int = 0, lengths: tuple[int, ...] | None = None, fast: bool = False
) -> list[CheckResult]:
    """The decoder's sequence loop (or `minicap.nn.fast`'s); with `lengths` (longest first), captions that end
    early (padding steps, α = 0 there)."""
    rng = np.random.default_rng(seed)
    inputs = attention_lstm_inputs(rng, N=len(lengths or (5, 5)), T=5)
    lens = None if lengths is None else np.array(lengths)
    module = nn.fast if fast else att
    h, alphas, cache = module.attention_lstm_forward(**inputs, lengths=lens)
    douts = (rng.standard_normal(h.shape), rng.standard_normal(alphas.shape))
    g = module.attention_lstm_backward(*douts, cache)
    names = ("x", "h0", "c0", "proj", "W_att", "w_att", "w_beta", "b_beta", "Wx", "Wh", "b")
    analytic = {name: getattr(g, f"d{name}") for name in names}
    analytic["annotations"] = g.dannotations
    fwd = lambda **kw: module.attention_lstm_forward(**kw, lengths=lens)[:2]  # noqa: E731
    name = f"{'fast.' if fast else ''}attention_lstm_forward/backward" + ("" if lengths is None else " (lengths)")
    return check_outputs(name, fwd, inputs, analytic, douts, SEQUENCE_MAX_REL)


def check_doubly_stochastic(seed: int = 0) -> list[CheckResult]:
    """λ Σ_i (1 − Σ_t α_ti)² / N with padded steps masked (and one caption with no real step)."""
    rng = np.random.default_rng(seed)
    alphas = rng.random((3, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    _, dalphas = att.doubly_stochastic_loss(alphas, mask, 0.7)
    ref = alphas.astype(REFERENCE_DTYPE)
    numeric = numerical_gradient(lambda: att.doubly_stochastic_loss(ref, mask, 0.7)[0], ref)
    return [compare("doubly_stochastic_loss", "alphas", dalphas, numeric, STEP_MAX_REL)]


def check_fast_attention_equals_reference(seed: int = 0) -> list[EqualityResult]:
    """`minicap.nn.fast.attention_lstm_*` against the readable loop: outputs and every gradient, with and without
    lengths (and with and without a gradient arriving at the maps α)."""
    rng = np.random.default_rng(seed)
    results = []
    for lengths in (None, np.array([6, 6, 4, 4, 1, 0])):
        inputs = attention_lstm_inputs(rng, N=6, T=6)
        name = "attention_lstm_forward/backward" + ("" if lengths is None else " (lengths)")
        h_ref, a_ref, cache_ref = att.attention_lstm_forward(**inputs, lengths=lengths)
        h_fast, a_fast, cache_fast = nn.fast.attention_lstm_forward(**inputs, lengths=lengths)
        results += [equal(name, "h", h_fast, h_ref, FORWARD_EQUAL), equal(name, "alphas", a_fast, a_ref, FORWARD_EQUAL)]
        dh = rng.standard_normal(h_ref.shape)
        dalphas = None if lengths is None else rng.standard_normal(a_ref.shape)
        g_ref = att.attention_lstm_backward(dh, dalphas, cache_ref)
        g_fast = nn.fast.attention_lstm_backward(dh, dalphas, cache_fast)
        for field in g_ref._fields:
            results.append(equal(name, field, getattr(g_fast, field), getattr(g_ref, field), GRADIENT_EQUAL))
    return results


def attention_checks() -> list[CheckResult | EqualityResult]:
    """Every function of `minicap.nn.attention`, the fast decoder, and fast == reference (the whole attention
    model, on both paths, is in `check_models` and `check_fast_equals_reference`)."""
    return [
        *check_attention(),
        *check_gate(),
        *check_init_state(),
        *check_attention_lstm_step(),
        *check_attention_lstm_sequence(),
        *check_attention_lstm_sequence(lengths=(5, 3, 3, 1, 0)),
        *check_attention_lstm_sequence(fast=True),
        *check_attention_lstm_sequence(lengths=(5, 3, 3, 1, 0), fast=True),
        *check_doubly_stochastic(),
        *check_fast_attention_equals_reference(),
    ]

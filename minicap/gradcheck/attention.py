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
    """One attention-LSTM step; h, c, α and the gated context ẑ (read by a deep output layer) all receive a
    gradient."""
    rng = np.random.default_rng(seed)
    inputs = attention_lstm_inputs(rng)
    h, c, alpha, cache = att.attention_lstm_step_forward(**inputs)
    context = att.step_context(cache)
    douts = tuple(rng.standard_normal(out.shape) for out in (h, c, alpha, context))
    g = att.attention_lstm_step_backward(*douts[:3], cache, dcontext=douts[3])
    names = ("x", "prev_h", "prev_c", "annotations", "proj", "W_att", "w_att", "w_beta", "b_beta", "Wx", "Wh", "b")
    analytic = {name: getattr(g, f"d{name}") for name in names}

    def fwd(**kw: np.ndarray) -> tuple[np.ndarray, ...]:
        h, c, alpha, cache = att.attention_lstm_step_forward(**kw)
        return h, c, alpha, att.step_context(cache)

    return check_outputs("attention_lstm_step", fwd, inputs, analytic, douts, STEP_MAX_REL)


def check_attention_lstm_sequence(
    seed: int = 0, lengths: tuple[int, ...] | None = None, fast: bool = False, contexts: bool = False
) -> list[CheckResult]:
    """The decoder's sequence loop (or `minicap.nn.fast`'s); with `lengths` (longest first), captions that end
    early (padding steps, α = 0 there); with `contexts`, the gated contexts ẑ_t (`attention_contexts`, what a deep
    output layer reads) receive a gradient too."""
    rng = np.random.default_rng(seed)
    inputs = attention_lstm_inputs(rng, N=len(lengths or (5, 5)), T=5)
    lens = None if lengths is None else np.array(lengths)
    module = nn.fast if fast else att

    def fwd(**kw: np.ndarray) -> tuple[np.ndarray, ...]:
        h, alphas, cache = module.attention_lstm_forward(**kw, lengths=lens)
        return (h, alphas, module.attention_contexts(cache)) if contexts else (h, alphas)

    outs = fwd(**inputs)
    douts = tuple(rng.standard_normal(out.shape) for out in outs)
    _, _, cache = module.attention_lstm_forward(**inputs, lengths=lens)
    g = module.attention_lstm_backward(*douts[:2], cache, dcontexts=douts[2] if contexts else None)
    names = ("x", "h0", "c0", "proj", "W_att", "w_att", "w_beta", "b_beta", "Wx", "Wh", "b")
    analytic = {name: getattr(g, f"d{name}") for name in names}
    analytic["annotations"] = g.dannotations
    name = f"{'fast.' if fast else ''}attention_lstm_forward/backward" + ("" if lengths is None else " (lengths)")
    return check_outputs(name + (" + ẑ" if contexts else ""), fwd, inputs, analytic, douts, SEQUENCE_MAX_REL)


def check_deep_output(seed: int = 0) -> list[CheckResult]:
    """The deep output layer o = tanh(x + h L_h + ẑ L_z + b_out) over a whole caption."""
    rng = np.random.default_rng(seed)
    N, T, W, H, F = 3, 4, 2, 5, 6
    inputs = {
        "x": rng.standard_normal((N, T, W)),
        "h": rng.standard_normal((N, T, H)),
        "contexts": rng.standard_normal((N, T, F)),
        "L_h": rng.standard_normal((H, W)) * 0.5,
        "L_z": rng.standard_normal((F, W)) * 0.5,
        "b_out": rng.standard_normal(W) * 0.5,
    }
    out, cache = att.deep_output_forward(**inputs)
    dout = rng.standard_normal(out.shape)
    grads = att.deep_output_backward(dout, cache)
    analytic = dict(zip(("x", "h", "contexts", "L_h", "L_z", "b_out"), grads, strict=True))
    fwd = lambda **kw: att.deep_output_forward(**kw)[0]  # noqa: E731
    return check_array_function("deep_output", fwd, inputs, analytic, dout, STEP_MAX_REL)


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
    lengths (and with and without gradients arriving at the maps α and the contexts ẑ)."""
    rng = np.random.default_rng(seed)
    results = []
    for lengths in (None, np.array([6, 6, 4, 4, 1, 0])):
        inputs = attention_lstm_inputs(rng, N=6, T=6)
        name = "attention_lstm_forward/backward" + ("" if lengths is None else " (lengths)")
        h_ref, a_ref, cache_ref = att.attention_lstm_forward(**inputs, lengths=lengths)
        h_fast, a_fast, cache_fast = nn.fast.attention_lstm_forward(**inputs, lengths=lengths)
        results += [equal(name, "h", h_fast, h_ref, FORWARD_EQUAL), equal(name, "alphas", a_fast, a_ref, FORWARD_EQUAL)]
        z_ref, z_fast = att.attention_contexts(cache_ref), nn.fast.attention_contexts(cache_fast)
        results.append(equal(name, "contexts", z_fast, z_ref, FORWARD_EQUAL))
        dh = rng.standard_normal(h_ref.shape)
        dalphas = None if lengths is None else rng.standard_normal(a_ref.shape)
        dcontexts = None if lengths is None else rng.standard_normal(z_ref.shape)
        g_ref = att.attention_lstm_backward(dh, dalphas, cache_ref, dcontexts)
        g_fast = nn.fast.attention_lstm_backward(dh, dalphas, cache_fast, dcontexts)
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
        *check_attention_lstm_sequence(lengths=(5, 3, 3, 1, 0), contexts=True),
        *check_attention_lstm_sequence(lengths=(5, 3, 3, 1, 0), fast=True, contexts=True),
        *check_deep_output(),
        *check_doubly_stochastic(),
        *check_fast_attention_equals_reference(),
    ]

"""Gradient checks of the layers (`minicap.nn.layers`), the recurrent cells' steps (RNN, LSTM, GRU) and their
sequence loops, the readable ones and the fast ones (`minicap.nn.fast`)."""

from __future__ import annotations

import numpy as np

from minicap import nn
from minicap.gradcheck.numerical import (
    REFERENCE_DTYPE,
    SEQUENCE_MAX_REL,
    STEP_MAX_REL,
    CheckResult,
    as_reference,
    check_array_function,
    compare,
    numerical_gradient,
)


def check_affine(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((4, 5)), "W": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}
    out, cache = nn.affine_forward(**inputs)
    dout = rng.standard_normal(out.shape)
    dx, dW, db = nn.affine_backward(dout, cache)
    fwd = lambda **kw: nn.affine_forward(**kw)[0]  # noqa: E731
    return check_array_function("affine", fwd, inputs, {"x": dx, "W": dW, "b": db}, dout, STEP_MAX_REL)


def check_word_embedding(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    words = np.array([[0, 3, 1, 3], [2, 2, 4, 0]])  # repeated words: their gradients must add up
    inputs = {"W": rng.standard_normal((5, 3))}
    out, cache = nn.word_embedding_forward(words, **inputs)
    dout = rng.standard_normal(out.shape)
    dW = nn.word_embedding_backward(dout, cache)
    fwd = lambda W: nn.word_embedding_forward(words, W)[0]  # noqa: E731
    return check_array_function("word_embedding", fwd, inputs, {"W": dW}, dout, STEP_MAX_REL)


def check_temporal_affine(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    inputs = {
        "x": rng.standard_normal((2, 3, 4)),
        "W": rng.standard_normal((4, 5)),
        "b": rng.standard_normal(5),
    }
    out, cache = nn.temporal_affine_forward(**inputs)
    dout = rng.standard_normal(out.shape)
    dx, dW, db = nn.temporal_affine_backward(dout, cache)
    fwd = lambda **kw: nn.temporal_affine_forward(**kw)[0]  # noqa: E731
    return check_array_function("temporal_affine", fwd, inputs, {"x": dx, "W": dW, "b": db}, dout, STEP_MAX_REL)


def check_temporal_softmax_loss(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    N, T, V = 3, 4, 6
    logits = rng.standard_normal((N, T, V))
    targets = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    mask[2] = False  # a row with every target masked
    _, dlogits = nn.temporal_softmax_loss(logits, targets, mask)
    logits_ref = logits.astype(REFERENCE_DTYPE)
    numeric = numerical_gradient(lambda: nn.temporal_softmax_loss(logits_ref, targets, mask)[0], logits_ref)
    return [compare("temporal_softmax_loss", "logits", dlogits, numeric, STEP_MAX_REL)]


def check_dropout(seed: int = 0) -> list[CheckResult]:
    """Inverted dropout with a FIXED mask (drawn once, then passed in): forward and backward are then the same
    linear map x -> x ⊙ m, which centred differences can check like any other layer."""
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((3, 4, 5))}
    mask = nn.dropout_mask((3, 4, 5), 0.4, rng, np.dtype(np.float64))
    out, cache = nn.dropout_forward(inputs["x"], 0.4, mask=mask)
    dout = rng.standard_normal(out.shape)
    dx = nn.dropout_backward(dout, cache)
    mask_ref = mask.astype(REFERENCE_DTYPE)
    fwd = lambda x: nn.dropout_forward(x, 0.4, mask=mask_ref)[0]  # noqa: E731
    return check_array_function("dropout", fwd, inputs, {"x": dx}, dout, STEP_MAX_REL)


def check_mse_loss(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    pred = rng.standard_normal((4, 3))
    target = rng.standard_normal((4, 3))
    _, dpred = nn.mse_loss(pred, target)
    pred_ref = pred.astype(REFERENCE_DTYPE)
    numeric = numerical_gradient(lambda: nn.mse_loss(pred_ref, target)[0], pred_ref)
    return [compare("mse_loss", "pred", dpred, numeric, STEP_MAX_REL)]


def check_rnn_step(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    N, D, H = 3, 4, 5
    inputs = {
        "x": rng.standard_normal((N, D)),
        "prev_h": rng.standard_normal((N, H)),
        "Wx": rng.standard_normal((D, H)) * 0.5,
        "Wh": rng.standard_normal((H, H)) * 0.5,
        "b": rng.standard_normal(H) * 0.5,
    }
    out, cache = nn.rnn_step_forward(**inputs)
    dout = rng.standard_normal(out.shape)
    dx, dprev_h, dWx, dWh, db = nn.rnn_step_backward(dout, cache)
    analytic = {"x": dx, "prev_h": dprev_h, "Wx": dWx, "Wh": dWh, "b": db}
    fwd = lambda **kw: nn.rnn_step_forward(**kw)[0]  # noqa: E731
    return check_array_function("rnn_step", fwd, inputs, analytic, dout, STEP_MAX_REL)


def check_lstm_step(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    N, D, H = 3, 4, 5
    inputs = {
        "x": rng.standard_normal((N, D)),
        "prev_h": rng.standard_normal((N, H)),
        "prev_c": rng.standard_normal((N, H)),
        "Wx": rng.standard_normal((D, 4 * H)) * 0.5,
        "Wh": rng.standard_normal((H, 4 * H)) * 0.5,
        "b": rng.standard_normal(4 * H) * 0.5,
    }
    next_h, next_c, cache = nn.lstm_step_forward(**inputs)
    dnext_h = rng.standard_normal(next_h.shape)
    dnext_c = rng.standard_normal(next_c.shape)
    dx, dprev_h, dprev_c, dWx, dWh, db = nn.lstm_step_backward(dnext_h, dnext_c, cache)
    analytic = {"x": dx, "prev_h": dprev_h, "prev_c": dprev_c, "Wx": dWx, "Wh": dWh, "b": db}

    ref = as_reference(inputs)
    dnext_h_ref, dnext_c_ref = dnext_h.astype(REFERENCE_DTYPE), dnext_c.astype(REFERENCE_DTYPE)

    def scalar() -> np.floating:  # both outputs reach the loss
        h, c, _ = nn.lstm_step_forward(**ref)
        return np.sum(h * dnext_h_ref) + np.sum(c * dnext_c_ref)

    return [
        compare("lstm_step", name, grad, numerical_gradient(scalar, ref[name]), STEP_MAX_REL)
        for name, grad in analytic.items()
    ]


def check_gru_step(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    N, D, H = 3, 4, 5
    inputs = {
        "x": rng.standard_normal((N, D)),
        "prev_h": rng.standard_normal((N, H)),
        "Wx": rng.standard_normal((D, 3 * H)) * 0.5,
        "Wh": rng.standard_normal((H, 3 * H)) * 0.5,
        "b": rng.standard_normal(3 * H) * 0.5,
        "b_hn": rng.standard_normal(H) * 0.5,
    }
    out, cache = nn.gru_step_forward(**inputs)
    dout = rng.standard_normal(out.shape)
    dx, dprev_h, dWx, dWh, db, db_hn = nn.gru_step_backward(dout, cache)
    analytic = {"x": dx, "prev_h": dprev_h, "Wx": dWx, "Wh": dWh, "b": db, "b_hn": db_hn}
    fwd = lambda **kw: nn.gru_step_forward(**kw)[0]  # noqa: E731
    return check_array_function("gru_step", fwd, inputs, analytic, dout, STEP_MAX_REL)


def sequence_inputs(cell: str, rng: np.random.Generator, N: int, T: int = 6, D: int = 3, H: int = 4) -> dict:
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell] * H
    inputs = {
        "x": rng.standard_normal((N, T, D)),
        "h0": rng.standard_normal((N, H)),
        "Wx": rng.standard_normal((D, G)) * 0.5,
        "Wh": rng.standard_normal((H, G)) * 0.5,
        "b": rng.standard_normal(G) * 0.5,
    }
    if cell == "lstm":
        inputs["c0"] = rng.standard_normal((N, H))
    if cell == "gru":
        inputs["b_hn"] = rng.standard_normal(H) * 0.5
    return inputs


def check_sequence(
    cell: str, fast: bool = False, seed: int = 0, lengths: tuple[int, ...] | None = None
) -> list[CheckResult]:
    """rnn_, lstm_ or gru_forward/backward, the readable loop (`minicap.nn`) or the fast path (`minicap.nn.fast`;
    none for the GRU). With `lengths` (longest first) some sequences stop early and carry their state."""
    rng = np.random.default_rng(seed)
    inputs = sequence_inputs(cell, rng, N=len(lengths or (6, 6)))
    seq = nn.fast if fast else nn
    forward, backward = getattr(seq, f"{cell}_forward"), getattr(seq, f"{cell}_backward")
    lens = None if lengths is None else np.array(lengths)
    out, cache = forward(**inputs, lengths=lens)
    dout = rng.standard_normal(out.shape)  # also after a sequence's end: the carried state reaches the loss
    g = backward(dout, cache)
    analytic = {"x": g.dx, "h0": g.dh0, "Wx": g.dWx, "Wh": g.dWh, "b": g.db}
    if cell == "lstm":
        analytic["c0"] = g.dc0
    if cell == "gru":
        analytic["b_hn"] = g.db_hn
    fwd = lambda **kw: forward(**kw, lengths=lens)[0]  # noqa: E731
    name = f"{'fast.' if fast else ''}{cell}_forward/backward" + ("" if lengths is None else " (lengths)")
    return check_array_function(name, fwd, inputs, analytic, dout, SEQUENCE_MAX_REL)


def check_words_loss(fast: bool = False, seed: int = 0) -> list[CheckResult]:
    """The vocabulary projection + masked loss (`nn.words_loss`, or `nn.fast.words_loss`)."""
    rng = np.random.default_rng(seed)
    N, T, H, V = 3, 4, 5, 6
    inputs = {
        "h": rng.standard_normal((N, T, H)),
        "W_vocab": rng.standard_normal((H, V)),
        "b_vocab": rng.standard_normal(V),
    }
    targets = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    mask[2] = False  # a row with every target masked
    words_loss = nn.fast.words_loss if fast else nn.words_loss
    _, grads = words_loss(inputs["h"], targets, mask, inputs["W_vocab"], inputs["b_vocab"], 1.0 / N)
    assert grads is not None
    ref = as_reference(inputs)
    results = []
    for name, grad in zip(("h", "W_vocab", "b_vocab"), grads, strict=True):
        loss = lambda: words_loss(ref["h"], targets, mask, ref["W_vocab"], ref["b_vocab"], 1.0 / N, False)[0]  # noqa: E731
        results.append(
            compare(
                f"{'fast.' if fast else ''}words_loss", name, grad, numerical_gradient(loss, ref[name]), STEP_MAX_REL
            )
        )
    return results

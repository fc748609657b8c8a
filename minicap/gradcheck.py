"""Numerical gradient checking: the proof that every hand-written backward pass is right.

For a scalar function f and one input entry x_i, the centred difference

    ∂f/∂x_i ≈ (f(x + h·e_i) − f(x − h·e_i)) / 2h

has two errors: O(h²·f‴) from the Taylor series, and about ε·|f|/h from rounding f (ε the machine epsilon).
A real mistake in a backward pass shows up as an error of order 1, far above both.

Which precision where:
- The analytic gradients under test are computed in **float64**: in float32 (ε ≈ 1e-7) rounding alone would
  swamp the comparison.
- The numerical reference is computed in the widest float NumPy offers, `np.longdouble` — 80-bit extended
  precision on x86-64 Linux (ε ≈ 1e-19) — with h = 1e-6. In float64 with h = 1e-5, rounding leaves an absolute
  error near 1e-11 on a loss of order 5, which is a relative error above 1e-5 on the few gradient entries that
  happen to be tiny (|∂L/∂w| ≈ 5e-7): the check would then be measuring the reference, not the backward pass.
  Extended precision removes that floor. Where `longdouble` is just float64 (Windows, macOS on ARM), the
  reference falls back to float64 with h = 1e-5.

For an array-valued function we check the scalar Σ f(x) ⊙ dout for a random upstream gradient `dout`: its
gradient is exactly what the backward pass computes when given `dout`.

Two error measures, each with its own threshold:

    max elementwise relative error   max_i |a_i − n_i| / max(1e-8, |a_i| + |n_i|)     strict on every entry
    norm-relative error              ‖a − n‖ / max(1e-8, ‖a‖ + ‖n‖)                    robust summary

`minicap gradcheck` runs every layer, the readable sequence loops AND the fast sequence paths (`minicap.nn.fast`),
and every whole model on deterministic inputs, and prints one line per (function, input). It also proves the fast
path equal to the readable one, output by output (`EqualityResult`: forward ≤ 1e-12, gradients ≤ 1e-10 in
float64, with and without lengths, with a carried state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from minicap import nn
from minicap.models import AttentionCaptionModel, CaptionModel, LSTMLanguageModel, SequenceModel, SequenceRegressor
from minicap.nn import attention as att
from minicap.tokens import END, START

__all__ = [
    "REFERENCE_DTYPE",
    "numerical_gradient",
    "numerical_gradient_array",
    "rel_error",
    "norm_rel_error",
    "CheckResult",
    "EqualityResult",
    "compare",
    "check_dropout",
    "check_caption_dropout",
    "all_checks",
    "run_all_checks",
    "STEP_MAX_REL",
    "SEQUENCE_MAX_REL",
    "NORM_REL",
]

# Thresholds for float64 analytic gradients. Sequence functions chain T steps of rounding, so their elementwise
# bound is looser; the norm-relative bound is the same for everything.
STEP_MAX_REL = 1e-7
SEQUENCE_MAX_REL = 1e-5
NORM_REL = 1e-8
# fast == reference: the same maths in another order, so only rounding may differ (float64, max absolute difference).
FORWARD_EQUAL = 1e-12
GRADIENT_EQUAL = 1e-10

_HAS_EXTENDED = np.finfo(np.longdouble).eps < np.finfo(np.float64).eps
REFERENCE_DTYPE = np.dtype(np.longdouble if _HAS_EXTENDED else np.float64)


def _default_step(dtype: np.dtype) -> float:
    """h balancing truncation (∝ h²) against rounding (∝ ε/h) for the dtype f is evaluated in."""
    return 1e-6 if np.finfo(dtype).eps < np.finfo(np.float64).eps else 1e-5


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float | None = None) -> np.ndarray:
    """Centred-difference gradient of a scalar function f() with respect to the array x, as float64.

    f takes no arguments: it must read x, which is perturbed IN PLACE one entry at a time and restored.
    f should return a NumPy scalar of x's dtype (not a Python float) so no precision is lost. h defaults to a
    step suited to x's dtype (1e-5 for float64, 1e-6 for extended precision).
    """
    h = _default_step(x.dtype) if h is None else h
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        f_plus = f()
        x[i] = old - h
        f_minus = f()
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def numerical_gradient_array(
    f: Callable[[], np.ndarray], x: np.ndarray, dout: np.ndarray, h: float | None = None
) -> np.ndarray:
    """Gradient of Σ f() ⊙ dout with respect to x, for an array-valued f (see `numerical_gradient`)."""
    return numerical_gradient(lambda: np.sum(f() * dout), x, h)


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max_i |a_i − n_i| / max(1e-8, |a_i| + |n_i|)"""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(1e-8, np.abs(a) + np.abs(n)), initial=0.0))


def norm_rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """‖a − n‖ / max(1e-8, ‖a‖ + ‖n‖)"""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    return float(np.linalg.norm(a - n) / max(1e-8, np.linalg.norm(a) + np.linalg.norm(n)))


class CheckResult(NamedTuple):
    function: str
    input: str
    max_rel: float
    norm_rel: float
    max_rel_threshold: float
    norm_rel_threshold: float

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.max_rel_threshold and self.norm_rel <= self.norm_rel_threshold

    def line(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return (
            f"{status} {self.function:<37} {self.input:<7} max rel {self.max_rel:8.1e} (≤ {self.max_rel_threshold:.0e})"
            f"   norm rel {self.norm_rel:8.1e} (≤ {self.norm_rel_threshold:.0e})"
        )


class EqualityResult(NamedTuple):
    """The fast path against the readable one: the largest absolute difference of one output."""

    function: str
    output: str
    max_abs_diff: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.threshold

    def line(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return (
            f"{status} {self.function:<37} {self.output:<7} fast == reference: max |diff| {self.max_abs_diff:8.1e} "
            f"(≤ {self.threshold:.0e})"
        )


def equal(function: str, output: str, fast: np.ndarray, reference: np.ndarray, threshold: float) -> EqualityResult:
    if np.shape(fast) != np.shape(reference):
        raise ValueError(f"{function}/{output}: fast {np.shape(fast)} vs reference {np.shape(reference)}")
    diff = np.max(np.abs(np.asarray(fast, np.float64) - np.asarray(reference, np.float64)), initial=0.0)
    return EqualityResult(function, output, float(diff), threshold)


def compare(function: str, name: str, analytic: np.ndarray, numeric: np.ndarray, max_rel: float) -> CheckResult:
    """One `CheckResult` for one (function, input), with the given elementwise threshold."""
    if analytic.shape != numeric.shape:
        raise ValueError(f"{function}/{name}: analytic gradient {analytic.shape} vs numeric {numeric.shape}")
    return CheckResult(
        function, name, rel_error(analytic, numeric), norm_rel_error(analytic, numeric), max_rel, NORM_REL
    )


def _as_reference(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of float arrays in REFERENCE_DTYPE (integer arrays, e.g. word ids, are left alone)."""
    return {k: v.astype(REFERENCE_DTYPE) if v.dtype.kind == "f" else v for k, v in arrays.items()}


# --------------------------------------------------------------------------------------------- the checks
# Each check builds deterministic float64 inputs from a fixed seed, runs forward and backward once, and compares
# every analytic gradient with its numerical estimate.


def _check_array_function(
    function: str,
    forward: Callable[..., np.ndarray],
    inputs: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    dout: np.ndarray,
    max_rel: float,
) -> list[CheckResult]:
    """Compare `analytic[name]` with the numerical gradient of Σ forward(**inputs) ⊙ dout for every name
    (evaluated on REFERENCE_DTYPE copies of the float64 inputs)."""
    ref = _as_reference(inputs)
    dout_ref = dout.astype(REFERENCE_DTYPE)
    results = []
    for name, grad in analytic.items():
        numeric = numerical_gradient_array(lambda: forward(**ref), ref[name], dout_ref)
        results.append(compare(function, name, grad, numeric, max_rel))
    return results


def check_affine(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((4, 5)), "W": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}
    out, cache = nn.affine_forward(**inputs)
    dout = rng.standard_normal(out.shape)
    dx, dW, db = nn.affine_backward(dout, cache)
    fwd = lambda **kw: nn.affine_forward(**kw)[0]  # noqa: E731
    return _check_array_function("affine", fwd, inputs, {"x": dx, "W": dW, "b": db}, dout, STEP_MAX_REL)


def check_word_embedding(seed: int = 0) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    words = np.array([[0, 3, 1, 3], [2, 2, 4, 0]])  # repeated words: their gradients must add up
    inputs = {"W": rng.standard_normal((5, 3))}
    out, cache = nn.word_embedding_forward(words, **inputs)
    dout = rng.standard_normal(out.shape)
    dW = nn.word_embedding_backward(dout, cache)
    fwd = lambda W: nn.word_embedding_forward(words, W)[0]  # noqa: E731
    return _check_array_function("word_embedding", fwd, inputs, {"W": dW}, dout, STEP_MAX_REL)


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
    return _check_array_function("temporal_affine", fwd, inputs, {"x": dx, "W": dW, "b": db}, dout, STEP_MAX_REL)


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
    return _check_array_function("dropout", fwd, inputs, {"x": dx}, dout, STEP_MAX_REL)


DROPOUT_SEED = 7  # the generator seed that fixes the caption model's dropout masks in the checks below


def _dropout_models(which: str) -> tuple[str, SequenceModel, tuple[np.ndarray, np.ndarray]]:
    """A small float64 captioner with dropout 0.3 and its batch: CaptionModel(cell `which`), or the attention one."""
    features, captions = small_caption_batch()
    if which == "attention":
        annotations = np.random.default_rng(1).standard_normal((3, 4, 7))  # N = 3, L = 4, F = 7
        model = AttentionCaptionModel(
            11, 7, wordvec_size=4, hidden_size=5, attention_size=3, reg=1.5, dtype=np.float64, dropout=0.3
        )
        return "AttentionCaptionModel(λ=1.5) dropout", model, (annotations, captions)
    model = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, cell=which, dtype=np.float64, dropout=0.3)
    return f"CaptionModel({which}) dropout", model, (features, captions)


DROPOUT_MODELS = ("lstm", "rnn", "attention")  # the captioners with dropout: both mean-pooled cells, attention


def check_caption_dropout(fast: bool = False) -> list[CheckResult]:
    """The captioners' TRAINING loss with dropout (rate 0.3 on the word vectors and the decoder's outputs), the
    masks fixed by giving every evaluation a fresh generator with the same seed (`dropout_mask` draws in float32,
    so the float64 model and its extended-precision copy get the very same masks)."""
    results = []
    for which in DROPOUT_MODELS:
        label, model, (inputs, captions) = _dropout_models(which)
        model.fast = fast
        _, grads = model.loss(inputs, captions, rng=np.random.default_rng(DROPOUT_SEED))
        reference = model.astype(REFERENCE_DTYPE)
        inputs_ref = inputs.astype(REFERENCE_DTYPE)

        def loss(
            reference: SequenceModel = reference, inputs: np.ndarray = inputs_ref, captions: np.ndarray = captions
        ) -> np.floating:
            return reference.loss(inputs, captions, backward=False, rng=np.random.default_rng(DROPOUT_SEED))[0]

        for name in sorted(model.params):
            numeric = numerical_gradient(loss, reference.params[name])
            results.append(compare(f"{label}{' [fast]' if fast else ''}", name, grads[name], numeric, SEQUENCE_MAX_REL))
    return results


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
    return _check_array_function("rnn_step", fwd, inputs, analytic, dout, STEP_MAX_REL)


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

    ref = _as_reference(inputs)
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
    return _check_array_function("gru_step", fwd, inputs, analytic, dout, STEP_MAX_REL)


def _sequence_inputs(cell: str, rng: np.random.Generator, N: int, T: int = 6, D: int = 3, H: int = 4) -> dict:
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
    inputs = _sequence_inputs(cell, rng, N=len(lengths or (6, 6)))
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
    return _check_array_function(name, fwd, inputs, analytic, dout, SEQUENCE_MAX_REL)


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
    ref = _as_reference(inputs)
    results = []
    for name, grad in zip(("h", "W_vocab", "b_vocab"), grads, strict=True):
        loss = lambda: words_loss(ref["h"], targets, mask, ref["W_vocab"], ref["b_vocab"], 1.0 / N, False)[0]  # noqa: E731
        results.append(
            compare(
                f"{'fast.' if fast else ''}words_loss", name, grad, numerical_gradient(loss, ref[name]), STEP_MAX_REL
            )
        )
    return results


# ---------------------------------------------------------------------------------------- soft attention
# Functions with several outputs are checked through the scalar Σ_k Σ out_k ⊙ dout_k: its gradient is what the
# backward pass computes when every output receives its upstream gradient.


def _check_outputs(
    function: str,
    forward: Callable[..., tuple[np.ndarray, ...]],
    inputs: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    douts: tuple[np.ndarray, ...],
    max_rel: float,
) -> list[CheckResult]:
    ref = _as_reference(inputs)
    douts_ref = tuple(d.astype(REFERENCE_DTYPE) for d in douts)

    def scalar() -> np.floating:
        outs = forward(**ref)
        return sum((np.sum(o * d) for o, d in zip(outs, douts_ref, strict=True)), REFERENCE_DTYPE.type(0))

    return [
        compare(function, name, grad, numerical_gradient(scalar, ref[name]), max_rel) for name, grad in analytic.items()
    ]


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
    return _check_outputs("attention", fwd, inputs, analytic, (dz, dalpha), STEP_MAX_REL)


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
    return _check_array_function("attention gate β", fwd, inputs, analytic, dout, STEP_MAX_REL)


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
    return _check_outputs("attention init_state (h0, c0)", fwd, inputs, analytic, (dh0, dc0), STEP_MAX_REL)


def _attention_lstm_inputs(rng: np.random.Generator, N: int = 3, T: int | None = None) -> dict:
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
    inputs = _attention_lstm_inputs(rng)
    h, c, alpha, cache = att.attention_lstm_step_forward(**inputs)
    douts = (rng.standard_normal(h.shape), rng.standard_normal(c.shape), rng.standard_normal(alpha.shape))
    g = att.attention_lstm_step_backward(*douts, cache)
    names = ("x", "prev_h", "prev_c", "annotations", "proj", "W_att", "w_att", "w_beta", "b_beta", "Wx", "Wh", "b")
    analytic = {name: getattr(g, f"d{name}") for name in names}
    fwd = lambda **kw: att.attention_lstm_step_forward(**kw)[:3]  # noqa: E731
    return _check_outputs("attention_lstm_step", fwd, inputs, analytic, douts, STEP_MAX_REL)


def check_attention_lstm_sequence(
    seed: int = 0, lengths: tuple[int, ...] | None = None, fast: bool = False
) -> list[CheckResult]:
    """The decoder's sequence loop (or `minicap.nn.fast`'s); with `lengths` (longest first), captions that end
    early (padding steps, α = 0 there)."""
    rng = np.random.default_rng(seed)
    inputs = _attention_lstm_inputs(rng, N=len(lengths or (5, 5)), T=5)
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
    return _check_outputs(name, fwd, inputs, analytic, douts, SEQUENCE_MAX_REL)


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
        inputs = _attention_lstm_inputs(rng, N=6, T=6)
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


def small_caption_batch(
    seed: int = 0, V: int = 11, F: int = 7, N: int = 3, T: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (features (N, F), captions (N, T+1)) with <START>, <END> and <NULL> padding in place."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N, F))
    captions = np.zeros((N, T + 1), dtype=np.int64)
    for n, length in enumerate(rng.integers(1, T, size=N)):  # caption lengths 1..T−1 words
        captions[n, 0] = START
        captions[n, 1 : length + 1] = rng.integers(4, V, size=length)
        captions[n, length + 1] = END  # then <NULL> = 0 padding
    return features, captions


def _model_batches(seed: int = 0) -> list[tuple[str, SequenceModel, tuple[np.ndarray, ...]]]:
    """Every model of the contract, small, in float64, with one deterministic batch each."""
    features, captions = small_caption_batch(seed)
    rng = np.random.default_rng(seed + 1)
    words = captions[:, :-1]
    targets = captions[:, 1:]
    x = rng.standard_normal((3, 6, 2))
    y = rng.standard_normal(3)
    out: list[tuple[str, SequenceModel, tuple[np.ndarray, ...]]] = []
    for cell in ("lstm", "rnn"):
        model = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, cell=cell, dtype=np.float64)
        out.append((f"CaptionModel({cell})", model, (features, captions)))
    lm = LSTMLanguageModel(11, wordvec_size=4, hidden_size=5, dtype=np.float64)
    state = rng.standard_normal((2, 3, 5))
    out.append(("LSTMLanguageModel", lm, (words, targets, targets != 0, state[0], state[1])))
    annotations = rng.standard_normal((3, 4, 7))  # N = 3 photos, L = 4 locations, F = 7
    for reg in (0.0, 1.5):  # without and with the doubly stochastic regulariser
        attention = AttentionCaptionModel(
            11, 7, wordvec_size=4, hidden_size=5, attention_size=3, reg=reg, dtype=np.float64
        )
        out.append((f"AttentionCaptionModel(λ={reg:g})", attention, (annotations, captions)))
    for cell in ("lstm", "gru", "rnn"):
        regressor = SequenceRegressor(2, 5, cell=cell, init="xavier", dtype=np.float64)
        out.append((f"SequenceRegressor({cell})", regressor, (x, y)))
    return out


def _has_fast_path(model: SequenceModel) -> bool:
    """Every model runs `minicap.nn.fast` when `model.fast` is set, except the GRU regressor: there is no fast GRU."""
    return not (isinstance(model, SequenceRegressor) and model.cell == "gru")


def check_models(fast: bool = False, seed: int = 0) -> list[CheckResult]:
    """The whole loss of every model against centred differences, on the readable or the fast path (models
    without a fast path are checked once, on the readable one)."""
    results = []
    for label, model, batch in _model_batches(seed):
        if fast and not _has_fast_path(model):
            continue
        model.fast = fast
        _, grads = model.loss(*batch)
        reference = model.astype(REFERENCE_DTYPE)
        batch_ref = tuple(a.astype(REFERENCE_DTYPE) if a.dtype.kind == "f" else a for a in batch)

        def loss(reference: SequenceModel = reference, batch: tuple = batch_ref) -> np.floating:
            return reference.loss(*batch, backward=False)[0]

        for name in sorted(model.params):
            numeric = numerical_gradient(loss, reference.params[name])
            function = f"{label}{' [fast]' if fast else ''}"
            results.append(compare(function, name, grads[name], numeric, SEQUENCE_MAX_REL))
    return results


def check_fast_equals_reference(seed: int = 0) -> list[EqualityResult]:
    """`minicap.nn.fast` against the readable loops: every output and gradient, with and without lengths, from a
    carried state (random h0, c0) and with gradients arriving at the final state (the LSTM's dh_last, dc_last);
    then the vocabulary loss and every whole model."""
    rng = np.random.default_rng(seed)
    results: list[EqualityResult] = []
    for cell in ("rnn", "lstm"):
        for lengths in (None, np.array([6, 6, 4, 4, 1, 0])):
            inputs = _sequence_inputs(cell, rng, N=6)
            name = f"{cell}_forward/backward" + ("" if lengths is None else " (lengths)")
            forward = {"rnn": (nn.rnn_forward, nn.fast.rnn_forward), "lstm": (nn.lstm_forward, nn.fast.lstm_forward)}
            backward = {
                "rnn": (nn.rnn_backward, nn.fast.rnn_backward),
                "lstm": (nn.lstm_backward, nn.fast.lstm_backward),
            }
            (h_ref, cache_ref), (h_fast, cache_fast) = (f(**inputs, lengths=lengths) for f in forward[cell])
            results.append(equal(name, "h", h_fast, h_ref, FORWARD_EQUAL))
            results.append(equal(name, "h_last", cache_fast.h_last, cache_ref.h_last, FORWARD_EQUAL))
            dh = rng.standard_normal(h_ref.shape)
            extra = (
                ()
                if cell == "rnn"
                else (rng.standard_normal(h_ref[:, 0].shape), rng.standard_normal(h_ref[:, 0].shape))
            )
            if cell == "lstm":
                results.append(equal(name, "c_last", cache_fast.c_last, cache_ref.c_last, FORWARD_EQUAL))
            g_ref = backward[cell][0](dh, cache_ref, *extra)
            g_fast = backward[cell][1](dh, cache_fast, *extra)
            for field in g_ref._fields:
                results.append(equal(name, field, getattr(g_fast, field), getattr(g_ref, field), GRADIENT_EQUAL))
    h = rng.standard_normal((4, 5, 6))
    targets = rng.integers(0, 9, size=(4, 5))
    mask = rng.random((4, 5)) > 0.3
    W, b = rng.standard_normal((6, 9)), rng.standard_normal(9)
    loss_ref, g_ref = nn.words_loss(h, targets, mask, W, b, 0.25)
    loss_fast, g_fast = nn.fast.words_loss(h, targets, mask, W, b, 0.25)
    assert g_ref is not None and g_fast is not None
    results.append(equal("words_loss", "loss", loss_fast, loss_ref, FORWARD_EQUAL))
    for field, a, r in zip(("h", "W_vocab", "b_vocab"), g_fast, g_ref, strict=True):
        results.append(equal("words_loss", field, a, r, GRADIENT_EQUAL))
    for label, model, batch in _model_batches(seed):
        if not _has_fast_path(model):
            continue
        model.fast = False
        loss_ref, grads_ref = model.loss(*batch)
        model.fast = True
        loss_fast, grads_fast = model.loss(*batch)
        results.append(equal(label, "loss", loss_fast, loss_ref, FORWARD_EQUAL))
        for name in sorted(grads_ref):
            results.append(equal(label, name, grads_fast[name], grads_ref[name], GRADIENT_EQUAL))
    for which in DROPOUT_MODELS:  # with dropout: the same generator state gives both paths the same masks
        label, model, (inputs, captions) = _dropout_models(which)
        model.fast = False
        loss_ref, grads_ref = model.loss(inputs, captions, rng=np.random.default_rng(DROPOUT_SEED))
        model.fast = True
        loss_fast, grads_fast = model.loss(inputs, captions, rng=np.random.default_rng(DROPOUT_SEED))
        results.append(equal(label, "loss", loss_fast, loss_ref, FORWARD_EQUAL))
        for name in sorted(grads_ref):
            results.append(equal(label, name, grads_fast[name], grads_ref[name], GRADIENT_EQUAL))
    return results


def all_checks() -> list[CheckResult | EqualityResult]:
    """Every layer, both sequence paths, every model (both cells), and fast == reference; float64, deterministic."""
    results: list[CheckResult | EqualityResult] = []
    for check in (
        check_affine,
        check_word_embedding,
        check_temporal_affine,
        check_temporal_softmax_loss,
        check_dropout,
        check_mse_loss,
        check_rnn_step,
        check_lstm_step,
        check_gru_step,
    ):
        results += check()
    for fast in (False, True):
        results += check_words_loss(fast)
        for cell in ("rnn", "lstm"):
            results += check_sequence(cell, fast)
            results += check_sequence(cell, fast, lengths=(6, 4, 4, 1, 0))  # variable lengths, longest first
        results += check_models(fast)
        results += check_caption_dropout(fast)
    results += attention_checks()
    results += check_sequence("gru")  # the GRU has the readable loop only
    results += check_sequence("gru", lengths=(6, 4, 4, 1, 0))
    results += check_fast_equals_reference()
    return results


def run_all_checks(verbose: bool = True) -> bool:
    """Run `all_checks`, print one line per (function, input) and a summary; True when everything passes."""
    results = all_checks()
    if verbose:
        for r in results:
            print(r.line())
        failed = [r for r in results if not r.passed]
        print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (" — FAILED" if failed else ""))
    return all(r.passed for r in results)

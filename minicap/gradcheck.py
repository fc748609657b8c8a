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

`minicap gradcheck` runs every layer and the whole caption model on deterministic inputs and prints one line per
(function, input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from minicap import nn
from minicap.model import CaptionModel

__all__ = [
    "REFERENCE_DTYPE",
    "numerical_gradient",
    "numerical_gradient_array",
    "rel_error",
    "norm_rel_error",
    "CheckResult",
    "compare",
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
            f"{status} {self.function:<31} {self.input:<7} max rel {self.max_rel:8.1e} (≤ {self.max_rel_threshold:.0e})"
            f"   norm rel {self.norm_rel:8.1e} (≤ {self.norm_rel_threshold:.0e})"
        )


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


def check_rnn_sequence(seed: int = 0, lengths: tuple[int, ...] | None = None) -> list[CheckResult]:
    """With `lengths` (longest first), some sequences stop early and carry their state: checks that path too."""
    rng = np.random.default_rng(seed)
    N, T, D, H = len(lengths or (6, 6)), 6, 3, 4
    inputs = {
        "x": rng.standard_normal((N, T, D)),
        "h0": rng.standard_normal((N, H)),
        "Wx": rng.standard_normal((D, H)) * 0.5,
        "Wh": rng.standard_normal((H, H)) * 0.5,
        "b": rng.standard_normal(H) * 0.5,
    }
    lens = None if lengths is None else np.array(lengths)
    out, cache = nn.rnn_forward(**inputs, lengths=lens)
    dout = rng.standard_normal(out.shape)  # also after a sequence's end: the carried state reaches the loss
    g = nn.rnn_backward(dout, cache)
    analytic = {"x": g.dx, "h0": g.dh0, "Wx": g.dWx, "Wh": g.dWh, "b": g.db}
    fwd = lambda **kw: nn.rnn_forward(**kw, lengths=lens)[0]  # noqa: E731
    name = "rnn_forward/backward" + ("" if lengths is None else " (lengths)")
    return _check_array_function(name, fwd, inputs, analytic, dout, SEQUENCE_MAX_REL)


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


def check_lstm_sequence(seed: int = 0, lengths: tuple[int, ...] | None = None) -> list[CheckResult]:
    """With `lengths` (longest first), some sequences stop early and carry their state: checks that path too."""
    rng = np.random.default_rng(seed)
    N, T, D, H = len(lengths or (6, 6)), 6, 3, 4
    inputs = {
        "x": rng.standard_normal((N, T, D)),
        "h0": rng.standard_normal((N, H)),
        "Wx": rng.standard_normal((D, 4 * H)) * 0.5,
        "Wh": rng.standard_normal((H, 4 * H)) * 0.5,
        "b": rng.standard_normal(4 * H) * 0.5,
        "c0": rng.standard_normal((N, H)),
    }
    lens = None if lengths is None else np.array(lengths)
    out, cache = nn.lstm_forward(**inputs, lengths=lens)
    dout = rng.standard_normal(out.shape)  # also after a sequence's end: the carried state reaches the loss
    g = nn.lstm_backward(dout, cache)
    analytic = {"x": g.dx, "h0": g.dh0, "c0": g.dc0, "Wx": g.dWx, "Wh": g.dWh, "b": g.db}
    fwd = lambda **kw: nn.lstm_forward(**kw, lengths=lens)[0]  # noqa: E731
    name = "lstm_forward/backward" + ("" if lengths is None else " (lengths)")
    return _check_array_function(name, fwd, inputs, analytic, dout, SEQUENCE_MAX_REL)


def small_caption_batch(
    seed: int = 0, V: int = 11, F: int = 7, N: int = 3, T: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (features (N, F), captions (N, T+1)) with <START>, <END> and <NULL> padding in place."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N, F))
    captions = np.zeros((N, T + 1), dtype=np.int64)
    for n, length in enumerate(rng.integers(1, T, size=N)):  # caption lengths 1..T−1 words
        captions[n, 0] = 1  # <START>
        captions[n, 1 : length + 1] = rng.integers(4, V, size=length)
        captions[n, length + 1] = 2  # <END>, then <NULL> = 0
    return features, captions


def check_caption_model(cell: str, seed: int = 0) -> list[CheckResult]:
    features, captions = small_caption_batch(seed)
    model = CaptionModel(vocab_size=11, feature_size=7, wordvec_size=4, hidden_size=5, cell=cell, dtype=np.float64)
    _, grads = model.loss(features, captions)
    reference = CaptionModel.from_config({**model.config, "dtype": REFERENCE_DTYPE.name}, model.params)
    features_ref = features.astype(REFERENCE_DTYPE)
    results = []
    for name in sorted(model.params):
        numeric = numerical_gradient(lambda: reference.loss(features_ref, captions)[0], reference.params[name])
        results.append(compare(f"CaptionModel({cell})", name, grads[name], numeric, SEQUENCE_MAX_REL))
    return results


def all_checks() -> list[CheckResult]:
    """Every layer and the caption model (both cells), in float64 on deterministic inputs."""
    results: list[CheckResult] = []
    for check in (
        check_affine,
        check_word_embedding,
        check_temporal_affine,
        check_temporal_softmax_loss,
        check_mse_loss,
        check_rnn_step,
        check_rnn_sequence,
        check_lstm_step,
        check_lstm_sequence,
    ):
        results += check()
    results += check_rnn_sequence(lengths=(6, 4, 4, 1, 0))  # variable lengths, longest first
    results += check_lstm_sequence(lengths=(6, 4, 4, 1, 0))
    results += check_caption_model("lstm")
    results += check_caption_model("rnn")
    return results


def run_all_checks(verbose: bool = True) -> bool:
    """Run `all_checks`, print one line per (function, input) and a summary; True when everything passes."""
    results = all_checks()
    if verbose:
        for r in results:
            print(r.line())
        failed = [r for r in results if not r.passed]
        print(f"{len(results) - len(failed)}/{len(results)} gradient checks passed" + (" — FAILED" if failed else ""))
    return all(r.passed for r in results)

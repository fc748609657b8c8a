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

The package, in reading order: `numerical` (centred differences, the error measures and their thresholds),
`layers` (layers, cells, sequence loops), `attention` (soft attention), `models` (every whole model, and the fast
path equal to the readable one). `all_checks` runs them all.
"""

from __future__ import annotations

from minicap.gradcheck.attention import (
    attention_checks,
    check_attention,
    check_attention_lstm_sequence,
    check_attention_lstm_step,
    check_deep_output,
    check_doubly_stochastic,
    check_fast_attention_equals_reference,
    check_gate,
    check_init_state,
)
from minicap.gradcheck.layers import (
    check_affine,
    check_dropout,
    check_gru_step,
    check_lstm_step,
    check_mse_loss,
    check_rnn_step,
    check_sequence,
    check_temporal_affine,
    check_temporal_softmax_loss,
    check_word_embedding,
    check_words_loss,
)
from minicap.gradcheck.models import (
    check_caption_dropout,
    check_fast_equals_reference,
    check_models,
    small_caption_batch,
)
from minicap.gradcheck.numerical import (
    FORWARD_EQUAL,
    GRADIENT_EQUAL,
    NORM_REL,
    REFERENCE_DTYPE,
    SEQUENCE_MAX_REL,
    STEP_MAX_REL,
    CheckResult,
    EqualityResult,
    compare,
    equal,
    norm_rel_error,
    numerical_gradient,
    numerical_gradient_array,
    rel_error,
)

__all__ = [
    "REFERENCE_DTYPE", "STEP_MAX_REL", "SEQUENCE_MAX_REL", "NORM_REL", "FORWARD_EQUAL", "GRADIENT_EQUAL",
    "numerical_gradient", "numerical_gradient_array", "rel_error", "norm_rel_error",
    "CheckResult", "EqualityResult", "compare", "equal",
    "check_affine", "check_word_embedding", "check_temporal_affine", "check_temporal_softmax_loss", "check_dropout",
    "check_mse_loss", "check_rnn_step", "check_lstm_step", "check_gru_step", "check_sequence", "check_words_loss",
    "check_attention", "check_gate", "check_init_state", "check_attention_lstm_step",
    "check_attention_lstm_sequence", "check_deep_output", "check_doubly_stochastic",
    "check_fast_attention_equals_reference",
    "attention_checks", "small_caption_batch", "check_models", "check_caption_dropout",
    "check_fast_equals_reference", "all_checks", "run_all_checks",
]  # fmt: skip


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

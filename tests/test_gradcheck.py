"""Every backward pass against numerical gradients (float64 analytic, extended-precision reference), on the readable
path (`minicap.nn`) and on the fast one (`minicap.nn.fast`), and every model of the contract.

Thresholds (asserted, from minicap.gradcheck): norm-relative error ≤ 1e-8 for every gradient; max elementwise
relative error ≤ 1e-7 for step-level functions and ≤ 1e-5 for sequence functions and whole models. The fast path's
equality with the readable one (forward ≤ 1e-12, gradients ≤ 1e-10) is tested in test_fast_path.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import minicap.nn.lstm
from minicap import gradcheck, nn
from minicap.cli import main as cli_main
from minicap.gradcheck import FORWARD_EQUAL, GRADIENT_EQUAL, NORM_REL, SEQUENCE_MAX_REL, STEP_MAX_REL

STEP_CHECKS = [
    gradcheck.check_affine,
    gradcheck.check_word_embedding,
    gradcheck.check_temporal_affine,
    gradcheck.check_temporal_softmax_loss,
    gradcheck.check_mse_loss,
    gradcheck.check_rnn_step,
    gradcheck.check_lstm_step,
    gradcheck.check_gru_step,
]

# Every model of the contract, as gradcheck labels it, with its parameter names.
CAPTION_PARAMS = {"W_proj", "b_proj", "W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab"}
MODEL_PARAMS = {
    "CaptionModel(lstm)": CAPTION_PARAMS,
    "CaptionModel(rnn)": CAPTION_PARAMS,
    "LSTMLanguageModel": {"W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab"},
    "SequenceRegressor(lstm)": {"Wx", "Wh", "b", "W_out", "b_out"},
    "SequenceRegressor(gru)": {"Wx", "Wh", "b", "b_hn", "W_out", "b_out"},
    "SequenceRegressor(rnn)": {"Wx", "Wh", "b", "W_out", "b_out"},
}
ATTENTION_PARAMS = {"W_h0", "b_h0", "W_c0", "b_c0", "U_att", "b_att", "W_att", "w_att", "w_beta", "b_beta"}
ATTENTION_PARAMS |= {"W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab"}
MODEL_PARAMS["AttentionCaptionModel(λ=0)"] = MODEL_PARAMS["AttentionCaptionModel(λ=1.5)"] = ATTENTION_PARAMS
MODEL_PARAMS["AttentionCaptionModel(λ=1.5, deep output)"] = ATTENTION_PARAMS | {"L_h", "L_z", "b_out"}


# One report line: status, function (may contain spaces), input or output name, then the numbers.
LINE = re.compile(r"^(?P<status>ok  |FAIL) (?P<function>.+?)\s+(?P<name>\S+)\s+(?:max rel|fast == reference)")


def _assert_all_pass(results: list[gradcheck.CheckResult], max_rel: float) -> None:
    assert results, "a check must compare at least one gradient"
    for r in results:
        assert isinstance(r, gradcheck.CheckResult)
        assert r.max_rel_threshold == max_rel and r.norm_rel_threshold == NORM_REL
        assert r.max_rel <= max_rel, r.line()
        assert r.norm_rel <= NORM_REL, r.line()
        assert r.passed


@pytest.mark.parametrize("check", STEP_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_step_level_gradients(check, seed):
    _assert_all_pass(check(seed), STEP_MAX_REL)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lengths", [None, (6, 4, 4, 1, 0)], ids=["full", "lengths"])
def test_sequence_gradients(cell, fast, seed, lengths):
    results = gradcheck.check_sequence(cell, fast=fast, seed=seed, lengths=lengths)
    name = f"{'fast.' if fast else ''}{cell}_forward/backward" + ("" if lengths is None else " (lengths)")
    assert {r.function for r in results} == {name}
    inputs = {"x", "h0", "Wx", "Wh", "b"} | ({"c0"} if cell == "lstm" else set())
    assert [r.input for r in results] and {r.input for r in results} == inputs  # every input, c0 for the LSTM
    _assert_all_pass(results, SEQUENCE_MAX_REL)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("seed", [0, 1])
def test_words_loss_gradients(fast, seed):
    results = gradcheck.check_words_loss(fast=fast, seed=seed)
    assert {r.function for r in results} == {"fast.words_loss" if fast else "words_loss"}
    assert [r.input for r in results] == ["h", "W_vocab", "b_vocab"]
    _assert_all_pass(results, STEP_MAX_REL)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_model_gradients(fast, seed):
    """The whole loss of every model (both caption cells, the language model from a carried state, the three
    regressors) against centred differences, every parameter. The GRU has no fast path: it is checked once."""
    results = gradcheck.check_models(fast=fast, seed=seed)
    suffix = " [fast]" if fast else ""
    by_model: dict[str, set[str]] = {}
    for r in results:
        by_model.setdefault(r.function, set()).add(r.input)
    expected = {label: params for label, params in MODEL_PARAMS.items() if not (fast and "gru" in label)}
    assert by_model == {label + suffix: params for label, params in expected.items()}
    _assert_all_pass(results, SEQUENCE_MAX_REL)


def test_error_measures():
    a = np.array([1.0, 0.0, -2.0])
    assert gradcheck.rel_error(a, a) == 0.0
    assert gradcheck.rel_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 2.1)
    # Entries where both are ~0 are judged against the 1e-8 floor, not blown up by division.
    assert gradcheck.rel_error(np.array([1e-12]), np.array([-1e-12])) == pytest.approx(2e-12 / 1e-8)
    assert gradcheck.norm_rel_error(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0


def test_numerical_gradient_of_known_function():
    x = np.array([0.3, -1.2, 2.0])
    grad = gradcheck.numerical_gradient(lambda: np.sum(np.sin(x) * x), x)
    np.testing.assert_allclose(grad, np.cos(x) * x + np.sin(x), rtol=1e-9)
    np.testing.assert_array_equal(x, [0.3, -1.2, 2.0])  # restored after perturbation


def test_equality_result_passes_only_within_its_threshold():
    ok = gradcheck.equal("f", "h", np.array([1.0, 2.0]), np.array([1.0, 2.0 + 5e-13]), FORWARD_EQUAL)
    assert ok.passed and ok.max_abs_diff == pytest.approx(5e-13, rel=1e-3) and ok.line().startswith("ok")
    bad = gradcheck.equal("f", "dWh", np.array([1.0]), np.array([1.0 + 1e-9]), GRADIENT_EQUAL)
    assert not bad.passed and bad.line().startswith("FAIL") and "fast == reference" in bad.line()
    with pytest.raises(ValueError, match="fast"):
        gradcheck.equal("f", "h", np.zeros(2), np.zeros(3), FORWARD_EQUAL)


def test_a_wrong_backward_is_caught(monkeypatch):
    """The checks can fail: a classic LSTM bug (forgetting tanh′ on the candidate gate) is reported."""
    original = nn.lstm_step_backward

    def buggy(dnext_h, dnext_c, cache):
        dx, dprev_h, dprev_c, dWx, dWh, db = original(dnext_h, dnext_c, cache)
        H = cache.prev_h.shape[1]
        db = db.copy()
        db[3 * H :] /= 1.0 - cache.g[0] ** 2 + 1e-3  # wrong candidate-gate gradient
        return dx, dprev_h, dprev_c, dWx, dWh, db

    monkeypatch.setattr(nn, "lstm_step_backward", buggy)
    results = {r.input: r for r in gradcheck.check_lstm_step()}
    assert not results["b"].passed
    assert results["x"].passed  # the other gradients are untouched

    # The readable lstm_backward IS a loop over the step backward: the same bug breaks the sequence check and
    # the fast == reference comparison, while the fast path (its own loop) stays right.
    monkeypatch.setattr(minicap.nn.lstm, "lstm_step_backward", buggy)
    sequence = {r.input: r for r in gradcheck.check_sequence("lstm")}
    assert not sequence["b"].passed
    assert all(r.passed for r in gradcheck.check_sequence("lstm", fast=True))
    failed = {(r.function, r.output) for r in gradcheck.check_fast_equals_reference() if not r.passed}
    assert ("lstm_forward/backward", "db") in failed and ("CaptionModel(lstm)", "b") in failed
    assert not any(function.startswith("rnn") for function, _ in failed)


def test_a_wrong_fast_backward_is_caught(monkeypatch):
    """The fast path has its own backward loop; a bug there is caught by its own gradient check."""
    original = nn.fast.rnn_backward

    def buggy(dh, cache):
        g = original(dh, cache)
        return g._replace(dWh=g.dWh * 1.001)

    monkeypatch.setattr(nn.fast, "rnn_backward", buggy)
    results = {r.input: r for r in gradcheck.check_sequence("rnn", fast=True)}
    assert not results["Wh"].passed and results["Wx"].passed
    assert all(r.passed for r in gradcheck.check_sequence("rnn", fast=False))
    models = {(r.function, r.input): r for r in gradcheck.check_models(fast=True)}
    assert not models["CaptionModel(rnn) [fast]", "Wh"].passed
    assert models["CaptionModel(lstm) [fast]", "Wh"].passed


def test_cli_gradcheck_reports_and_exits(capsys, monkeypatch):
    assert cli_main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "FAIL" not in out
    # 27 step-level (dropout included) + 2 × (3 words_loss + 22 sequence + 32 model + 16 caption model with
    # dropout) + 6 GRU regressor + 12 GRU sequence gradient checks (the GRU has no fast path), then 91 fast ==
    # reference lines (18 of them the caption model with dropout). Soft attention adds 51 + 24 (its fast decoder)
    # function checks, 2 × 32 model checks (λ = 0 and 1.5, 16 parameters, both paths) and 2 × 17 (models) + 2 × 14
    # (the decoder, with and without lengths) fast == reference lines. The attention captioner with dropout adds
    # 2 × 16 model checks (both paths) and 17 fast == reference lines. The deep output layer adds 6 function checks,
    # 2 × 12 decoder checks with a gradient on the contexts ẑ, 2 × 2 × 19 model checks (without and with dropout,
    # both paths), and 2 (the contexts) + 2 × 20 fast == reference lines.
    assert lines[-1] == "680/680 checks passed"
    assert sum("fast == reference" in line for line in lines) == 91 + 34 + 28 + 17 + 42
    parsed = [LINE.match(line) for line in lines[:-1]]
    assert all(parsed), "every line but the summary is one check"
    functions = {m["function"] for m in parsed}
    for name in (
        "affine",
        "dropout",
        "CaptionModel(lstm) dropout",
        "CaptionModel(rnn) dropout [fast]",
        "lstm_step",
        "rnn_step",
        "gru_step",
        "gru_forward/backward",
        "gru_forward/backward (lengths)",
        "words_loss",
        "fast.words_loss",
        "rnn_forward/backward",
        "rnn_forward/backward (lengths)",
        "lstm_forward/backward",
        "lstm_forward/backward (lengths)",
        "fast.rnn_forward/backward",
        "fast.rnn_forward/backward (lengths)",
        "fast.lstm_forward/backward",
        "fast.lstm_forward/backward (lengths)",
        "attention",
        "attention_lstm_step",
        "attention_lstm_forward/backward (lengths)",
        "fast.attention_lstm_forward/backward (lengths)",
        "doubly_stochastic_loss",
    ):
        assert name in functions, name
    for label in MODEL_PARAMS:  # every model, on both paths (the GRU on its only one)
        assert label in functions and (f"{label} [fast]" in functions) == ("gru" not in label), label
    assert any(line.startswith("ok   CaptionModel(lstm) [fast]") for line in lines)
    assert any(
        " ".join(line.split()).startswith("ok lstm_forward/backward (lengths) dc0") and "fast == reference" in line
        for line in lines
    )

    broken = gradcheck.check_affine

    def failing(seed=0):
        return [r._replace(max_rel=1.0) for r in broken(seed)]

    monkeypatch.setattr(gradcheck, "check_affine", failing)
    assert cli_main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "FAIL affine" in out and out.strip().splitlines()[-1] == "677/680 checks passed — FAILED"


def test_cli_gradcheck_fails_when_fast_differs_from_reference(capsys, monkeypatch):
    original = nn.fast.lstm_backward

    def off(dh, cache, dh_last=None, dc_last=None):
        g = original(dh, cache, dh_last, dc_last)
        return g._replace(dWh=g.dWh * 1.001)

    monkeypatch.setattr(nn.fast, "lstm_backward", off)
    assert cli_main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert any(
        line.startswith("FAIL lstm_forward/backward") and "fast == reference" in line for line in out.splitlines()
    )

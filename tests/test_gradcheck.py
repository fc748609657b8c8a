"""Every backward pass against numerical gradients (float64 analytic, extended-precision reference).

Thresholds (asserted, from minicap.gradcheck): norm-relative error ≤ 1e-8 for every gradient; max elementwise
relative error ≤ 1e-7 for step-level functions and ≤ 1e-5 for sequence functions and the whole model.
"""

from __future__ import annotations

import numpy as np
import pytest

from minicap import gradcheck, nn
from minicap.cli import main as cli_main
from minicap.gradcheck import NORM_REL, SEQUENCE_MAX_REL, STEP_MAX_REL

STEP_CHECKS = [
    gradcheck.check_affine,
    gradcheck.check_word_embedding,
    gradcheck.check_temporal_affine,
    gradcheck.check_temporal_softmax_loss,
    gradcheck.check_mse_loss,
    gradcheck.check_rnn_step,
    gradcheck.check_lstm_step,
]
SEQUENCE_CHECKS = [gradcheck.check_rnn_sequence, gradcheck.check_lstm_sequence]


def _assert_all_pass(results: list[gradcheck.CheckResult], max_rel: float) -> None:
    assert results, "a check must compare at least one gradient"
    for r in results:
        assert r.max_rel_threshold == max_rel and r.norm_rel_threshold == NORM_REL
        assert r.max_rel <= max_rel, r.line()
        assert r.norm_rel <= NORM_REL, r.line()


@pytest.mark.parametrize("check", STEP_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_step_level_gradients(check, seed):
    _assert_all_pass(check(seed), STEP_MAX_REL)


@pytest.mark.parametrize("check", SEQUENCE_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lengths", [None, (6, 4, 4, 1, 0)], ids=["full", "lengths"])
def test_sequence_gradients(check, seed, lengths):
    _assert_all_pass(check(seed, lengths=lengths), SEQUENCE_MAX_REL)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_caption_model_gradients(cell, seed):
    results = gradcheck.check_caption_model(cell, seed)
    assert {r.input for r in results} == {
        "W_proj",
        "b_proj",
        "W_embed",
        "Wx",
        "Wh",
        "b",
        "W_vocab",
        "b_vocab",
    }
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


def test_cli_gradcheck_reports_and_exits(capsys, monkeypatch):
    assert cli_main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "CaptionModel(lstm)" in out and "lstm_forward/backward" in out and "FAIL" not in out
    assert out.strip().splitlines()[-1].startswith("58/58")

    broken = gradcheck.check_affine

    def failing(seed=0):
        return [r._replace(max_rel=1.0) for r in broken(seed)]

    monkeypatch.setattr(gradcheck, "check_affine", failing)
    assert cli_main(["gradcheck"]) == 1
    assert "FAIL affine" in capsys.readouterr().out

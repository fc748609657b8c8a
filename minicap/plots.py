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

__all__ = ["plot_training_curves", "plot_captioned_photos", "save_figure"]


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

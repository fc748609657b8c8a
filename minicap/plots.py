"""Figures: training curves (and, added by other modules' authors, captioned photos and more).

Every function draws on its own `matplotlib.figure.Figure` (no pyplot: no global state, no window, no GUI
backend — the PNG is rendered by Agg) and writes the file atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minicap.safe_io import atomic_write_bytes

__all__ = ["plot_training_curves", "save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render `fig` to PNG (Agg) in memory, then write it to `path` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # (no bbox_inches="tight": it draws the figure twice)
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

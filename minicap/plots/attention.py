"""Attention maps (Show, Attend and Tell): each word of a caption beside the photo with its map upsampled and
overlaid, and how the regulariser spreads Σ_t α_ti over the cells (lesson 07)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minicap.plots.save import save_figure


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

"""Captioned photos: the held-out photos of a run with every system's caption beside them."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minicap.plots.save import save_figure


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
        ax_photo.imshow(photo_array(image))
        if titles is not None:
            ax_photo.set_title(titles[k], fontsize=8)
        step = line_height / text_heights[r]  # one line, as a fraction of the text area's height
        for j, (line, colour) in enumerate(texts[k]):
            ax_text.text(0.0, 1.0 - j * step, line, fontsize=8, color=colour, va="top", transform=ax_text.transAxes)
    return save_figure(fig, path)


def photo_array(image: str | os.PathLike | np.ndarray, longest: int = 480) -> np.ndarray:
    """An image file (or array) -> (h, w, 3) uint8, shrunk so its longer side is at most `longest` pixels."""
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image, ImageOps

    with Image.open(image) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        img.thumbnail((longest, longest))
        return np.asarray(img)

"""Every figure's last step: render to PNG in memory and write the file atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from minicap.safe_io import atomic_write_bytes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, tight: bool = False) -> Path:
    """Render `fig` to PNG in memory, then write it to `path` atomically (a killed run leaves no half a PNG).

    tight=True trims the white margin (bbox_inches="tight"; it costs a second draw of the figure).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)

"""The figures of lessons 01 (vanishing gradients), 02 (one LSTM cell) and 03 (exploding gradients): a lesson
computes the numbers, these functions only draw them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minicap.plots.save import save_figure
from minicap.plots.training import moving_average

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
            ax_l.semilogy(moving_average(loss, window), color=colour, lw=1.2, label=name)
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

"""Lesson 02 — one LSTM step by hand, then a live gradient check of it.

The LSTM cell is four small gates and one addition. With D = 2 inputs, H = 2 hidden units and one example
(N = 1) every number fits on a screen, so this lesson computes ONE step with `minicap.nn.lstm_step_forward`
on hand-chosen weights and prints everything that goes in and comes out.

    a = x Wx + h_prev Wh + b        (1, 4H) = (1, 8): ONE matrix product for all four gates
    i = σ(a[0:H])     input gate    0 … 1   how much of the candidate g to WRITE into the cell
    f = σ(a[H:2H])    forget gate   0 … 1   how much of the old cell c_prev to KEEP
    o = σ(a[2H:3H])   output gate   0 … 1   how much of the (squashed) cell to SHOW as h
    g = tanh(a[3H:])  candidate    −1 … 1   the new values that could be written
    c = f ⊙ c_prev + i ⊙ g                  the cell: old memory, gated, PLUS new content, gated
    h = o ⊙ tanh(c)                         the hidden state the layer above (and the next step) sees

GATE ORDER. minicap stores the four gates side by side in the columns of Wx (D, 4H), Wh (H, 4H) and b (4H,)
in the order **i, f, o, g** — the three sigmoid gates adjacent so one call activates them. PyTorch's nn.LSTM
uses i, f, g, o (and transposed weights); `minicap.nn.lstm_weights_from_torch_order` converts. Reading a block
in the wrong place is a silent bug: nothing crashes, the network just learns worse. The lesson prints the
weight matrix with its blocks labelled so the order is something you have seen, not something you remember.

The weights are chosen so that the two hidden units do opposite things:
  unit 0 REMEMBERS: forget gate ≈ 0.92 keeps most of its old cell (2.0) and the input gate ≈ 0.90 adds a
         positive candidate, so its cell grows to ≈ 2.6;
  unit 1 FORGETS: forget gate ≈ 0.05 wipes its old cell (−1.0) and the input gate ≈ 0.22 writes only a little,
         so its cell is ≈ −0.27, almost a fresh start.

Why the cell matters for learning (lessons 01 and 03): backwards, ∂L/∂c_prev = ∂L/∂c ⊙ f. The gradient flows
to the previous cell multiplied by the forget gate — a number the network learns — not by a fixed weight
matrix as in a vanilla RNN. Unit 0 passes ~92 % of its cell gradient back in time, unit 1 about 5 %.

THE GRADIENT CHECK. Above this step sits some loss; here it is L = Σ dh ⊙ h + Σ dc ⊙ c with fixed upstream
gradients dh, dc (what the layers above would send). `lstm_step_backward` returns ∂L/∂ of every input: x,
h_prev, c_prev, Wx, Wh, b. `minicap.gradcheck.numerical_gradient` nudges each entry by ±h and measures
(L(+h) − L(−h)) / 2h in extended precision. They must agree to the thresholds `minicap.gradcheck` states for
one step: max elementwise relative error ≤ 1e-7 and norm-relative error ≤ 1e-8. A wrong sign or a missing
term in the backward pass gives errors near 1, so these thresholds leave no room for a bug to hide.

Run:  python lessons/02_lstm_cell_by_hand.py [--out DIR] [--quick]
Writes DIR/lstm_step.png (weights with their gate blocks, gate values, c and h) and DIR/summary.json.
(--quick changes nothing here: the lesson takes well under a second. It is accepted for uniformity.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from minicap import gradcheck, nn
from minicap.plots import save_figure
from minicap.safe_io import atomic_write_json

GATES = ("i", "f", "o", "g")
GATE_MEANING = {
    "i": "input gate   σ: how much of the candidate to write",
    "f": "forget gate  σ: how much of the old cell to keep",
    "o": "output gate  σ: how much of the cell to show",
    "g": "candidate tanh: the values that could be written",
}


def hand_chosen_step() -> dict[str, np.ndarray]:
    """The inputs of the step: x (1, 2), prev_h (1, 2), prev_c (1, 2), Wx (2, 8), Wh (2, 8), b (8,), float64.

    Columns of Wx, Wh, b:  i0 i1 | f0 f1 | o0 o1 | g0 g1   (gate order i, f, o, g; unit index after the letter)
    """
    x = np.array([[1.0, -1.0]])
    prev_h = np.array([[0.5, -0.5]])
    prev_c = np.array([[2.0, -1.0]])
    #              i0    i1    f0    f1    o0    o1    g0    g1
    Wx = np.array([[1.0, -1.0, 0.5, 0.0, 1.0, 0.0, 1.0, -1.0],
                   [-1.0, 0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0]])  # fmt: skip
    Wh = np.array([[0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0],
                   [0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]])  # fmt: skip
    # Forget-gate biases +2 / −2: unit 0 is biased to remember, unit 1 to forget.
    b = np.array([0.0, 0.0, 2.0, -2.0, 0.0, 0.5, 0.0, 0.0])
    return {"x": x, "prev_h": prev_h, "prev_c": prev_c, "Wx": Wx, "Wh": Wh, "b": b}


def upstream_gradients() -> tuple[np.ndarray, np.ndarray]:
    """dh = ∂L/∂h and dc = ∂L/∂c arriving from above, each (1, 2): L = Σ dh ⊙ h + Σ dc ⊙ c."""
    return np.array([[1.0, -0.5]]), np.array([[0.5, 0.25]])


def column_labels(H: int) -> list[str]:
    return [f"{gate}{unit}" for gate in GATES for unit in range(H)]


def fmt(v: np.ndarray, digits: int = 4) -> str:
    return "[" + ", ".join(f"{float(x):+.{digits}f}" for x in np.ravel(v)) + "]"


def print_weights(inputs: dict[str, np.ndarray]) -> None:
    """Wx, Wh and b as one table whose column blocks are labelled with their gate."""
    H = inputs["prev_h"].shape[1]
    labels = column_labels(H)
    print("        " + "  ".join(f"{'── ' + gate + ' ──':^{8 * H - 1}}" for gate in GATES))
    print("        " + "  ".join(" ".join(f"{lab:>7}" for lab in labels[k * H : (k + 1) * H]) for k in range(4)))
    rows = [(f"Wx[{d}]", row) for d, row in enumerate(inputs["Wx"])]
    rows += [(f"Wh[{j}]", row) for j, row in enumerate(inputs["Wh"])] + [("b", inputs["b"])]
    for name, row in rows:
        print(f"  {name:<5} " + "  ".join(" ".join(f"{v:+7.2f}" for v in row[k * H : (k + 1) * H]) for k in range(4)))


def plot_step(inputs: dict[str, np.ndarray], gates: dict[str, np.ndarray], c: np.ndarray, h: np.ndarray, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H = inputs["prev_h"].shape[1]
    W = np.vstack([inputs["Wx"], inputs["Wh"], inputs["b"][None, :]])  # (D + H + 1, 4H)
    rows = [f"Wx[{d}]" for d in range(inputs["Wx"].shape[0])] + [f"Wh[{k}]" for k in range(H)] + ["b"]
    fig, (ax_w, ax_g) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.3, 1]})
    lim = float(np.abs(W).max())
    ax_w.imshow(W, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for (r, col), v in np.ndenumerate(W):
        ax_w.text(col, r, f"{v:+.1f}", ha="center", va="center", fontsize=8, color="w" if abs(v) > 0.7 * lim else "k")
    ax_w.set_xticks(range(4 * H), column_labels(H))
    ax_w.set_yticks(range(len(rows)), rows)
    for k in range(1, 4):
        ax_w.axvline(k * H - 0.5, color="k", lw=2)
    ax_w.set_title("weights: column blocks in gate order i | f | o | g")

    names = [f"{gate}{u}" for gate in GATES for u in range(H)] + [f"c_prev{u}" for u in range(H)]
    names += [f"c{u}" for u in range(H)] + [f"h{u}" for u in range(H)]
    values = np.concatenate([*(gates[gate][0] for gate in GATES), inputs["prev_c"][0], c[0], h[0]])
    colours = ["tab:blue"] * (4 * H) + ["tab:gray"] * H + ["tab:green"] * H + ["tab:orange"] * H
    ax_g.bar(range(len(values)), values, color=colours)
    ax_g.axhline(0, color="k", lw=0.8)
    ax_g.set_xticks(range(len(values)), names, rotation=45)
    ax_g.set_title("gate values, old cell, new cell c and output h")
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=True)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "02_lstm_cell_by_hand")
    parser.add_argument("--quick", action="store_true", help="accepted for uniformity; this lesson is already fast")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    inputs = hand_chosen_step()
    N, D = inputs["x"].shape
    H = inputs["prev_h"].shape[1]
    print(f"One LSTM step with N={N} example, D={D} inputs, H={H} hidden units (float64).\n")
    print("Inputs:")
    print(f"  x      = {fmt(inputs['x'])}")
    print(f"  h_prev = {fmt(inputs['prev_h'])}")
    print(f"  c_prev = {fmt(inputs['prev_c'])}\n")
    print(f"Weights, columns in gate order i, f, o, g (Wx is (D, 4H) = {inputs['Wx'].shape}):")
    print_weights(inputs)

    next_h, next_c, cache = nn.lstm_step_forward(**inputs)
    gates = {"i": cache.i, "f": cache.f, "o": cache.o, "g": cache.g}

    # The pre-activation a is the ONE matrix product the library computes; we show it term by term so that
    # every printed gate value can be traced back to the weights above.
    xWx = inputs["x"] @ inputs["Wx"]
    hWh = inputs["prev_h"] @ inputs["Wh"]
    a = xWx + hWh + inputs["b"]
    print("\nPre-activations a = x Wx + h_prev Wh + b, one column per gate unit:")
    labels = column_labels(H)
    print("         " + " ".join(f"{lab:>7}" for lab in labels))
    for name, row in (("x Wx", xWx), ("h Wh", hWh), ("b", inputs["b"][None, :]), ("a", a)):
        print(f"  {name:<6} " + " ".join(f"{v:+7.3f}" for v in row[0]))

    print("\nGates (the library's values, from the cache of lstm_step_forward):")
    for k, gate in enumerate(GATES):
        squash = "tanh" if gate == "g" else "σ"
        block = a[0, k * H : (k + 1) * H]
        vals = ", ".join(f"{squash}({ak:+.3f}) = {gk:+.4f}" for ak, gk in zip(block, gates[gate][0], strict=True))
        print(f"  {gate} = {vals}    — {GATE_MEANING[gate]}")
    # The library's gates must be exactly the activations of the printed pre-activations.
    assert np.allclose(np.concatenate([nn.sigmoid(a[:, : 3 * H]), np.tanh(a[:, 3 * H :])], axis=1),
                       np.concatenate([gates[gate] for gate in GATES], axis=1), rtol=1e-12, atol=1e-12)  # fmt: skip

    print("\nThe new cell c = f ⊙ c_prev + i ⊙ g, unit by unit:")
    for u in range(H):
        kept = cache.f[0, u] * inputs["prev_c"][0, u]
        written = cache.i[0, u] * cache.g[0, u]
        print(
            f"  c{u} = {cache.f[0, u]:.4f} × {inputs['prev_c'][0, u]:+.4f} + {cache.i[0, u]:.4f} × {cache.g[0, u]:+.4f}"
            f" = {next_c[0, u]:+.4f}   (kept {kept:+.4f}, written {written:+.4f})"
        )
    print("And the output h = o ⊙ tanh(c):")
    for u in range(H):
        print(f"  h{u} = {cache.o[0, u]:.4f} × tanh({next_c[0, u]:+.4f}) = {cache.o[0, u]:.4f} × "
              f"{cache.tanh_c[0, u]:+.4f} = {next_h[0, u]:+.4f}")  # fmt: skip
    print(
        f"Unit 0 remembered (kept {cache.f[0, 0]:.0%} of its old cell and added to it); "
        f"unit 1 forgot (kept {cache.f[0, 1]:.0%})."
    )

    # ------------------------------------------------------------------------------------------ backward
    dnext_h, dnext_c = upstream_gradients()
    dx, dprev_h, dprev_c, dWx, dWh, db = nn.lstm_step_backward(dnext_h, dnext_c, cache)
    analytic = {"x": dx, "prev_h": dprev_h, "prev_c": dprev_c, "Wx": dWx, "Wh": dWh, "b": db}
    print(f"\nBackward with upstream dh = {fmt(dnext_h)}, dc = {fmt(dnext_c)}  (L = Σ dh ⊙ h + Σ dc ⊙ c).")
    # The library computed this inside lstm_step_backward; we redo the one line to show the numbers, and check
    # that the explanation matches what the library returned.
    dc_total = dnext_c + dnext_h * cache.o * (1.0 - cache.tanh_c**2)
    assert np.allclose(dc_total * cache.f, dprev_c, rtol=1e-12, atol=1e-15)
    print(f"  total ∂L/∂c = dc + dh ⊙ o ⊙ (1 − tanh²c) = {fmt(dc_total)}")
    print(f"  ∂L/∂c_prev = ∂L/∂c ⊙ f = {fmt(dc_total)} ⊙ {fmt(cache.f)} = {fmt(dprev_c)}  ← the cell path back in time")

    # ---------------------------------------------------------------------------------- gradient check
    # The numerical reference is evaluated on extended-precision copies (see minicap.gradcheck for why).
    ref = {k: v.astype(gradcheck.REFERENCE_DTYPE) for k, v in inputs.items()}
    dh_ref, dc_ref = dnext_h.astype(gradcheck.REFERENCE_DTYPE), dnext_c.astype(gradcheck.REFERENCE_DTYPE)

    def loss() -> np.floating:
        h, c, _ = nn.lstm_step_forward(**ref)
        return np.sum(h * dh_ref) + np.sum(c * dc_ref)

    print(
        "\nGradient check: analytic (lstm_step_backward, float64) vs centred differences in "
        f"{gradcheck.REFERENCE_DTYPE}"
        f"\n  thresholds: max elementwise rel ≤ {gradcheck.STEP_MAX_REL:.0e}, norm rel ≤ {gradcheck.NORM_REL:.0e}"
    )
    results = []
    for name, grad in analytic.items():
        numeric = gradcheck.numerical_gradient(loss, ref[name])
        result = gradcheck.compare("lstm_step", name, grad, numeric, gradcheck.STEP_MAX_REL)
        results.append(result)
        print(result.line())
        if name in ("x", "prev_c"):  # small enough to show the numbers themselves
            print(f"       analytic {fmt(grad, 12)}\n       numeric  {fmt(numeric, 12)}")
    all_passed = all(r.passed for r in results)
    print(f"{sum(r.passed for r in results)}/{len(results)} inputs pass" + ("" if all_passed else " — FAILED"))

    args.out.mkdir(parents=True, exist_ok=True)
    plot_step(inputs, gates, next_c, next_h, args.out / "lstm_step.png")
    summary = {
        "lesson": "02_lstm_cell_by_hand",
        "quick": args.quick,
        "shapes": {"N": N, "D": D, "H": H},
        "gate_order": list(GATES),
        "column_labels": labels,
        "pre_activation": a[0].tolist(),
        "gates": {gate: gates[gate][0].tolist() for gate in GATES},
        "c": next_c[0].tolist(),
        "h": next_h[0].tolist(),
        "dprev_c": dprev_c[0].tolist(),
        "gradcheck": {
            "reference_dtype": str(gradcheck.REFERENCE_DTYPE),
            "max_rel_threshold": gradcheck.STEP_MAX_REL,
            "norm_rel_threshold": gradcheck.NORM_REL,
            "results": [r._asdict() | {"passed": r.passed} for r in results],
            "all_passed": all_passed,
        },
        "figures": ["lstm_step.png"],
        "seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write_json(args.out / "summary.json", summary)
    print(f"\nWrote {args.out / 'lstm_step.png'} and {args.out / 'summary.json'} ({summary['seconds']:.2f} s)")
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())

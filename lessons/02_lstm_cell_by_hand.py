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

THE PICTURE. lstm_cell.png draws the cell as a graph, with this step's numbers for unit 0 on it: x_t and h_{t−1}
feed the four gates through one matrix product; across the top runs the cell path, c_{t−1} → × f → + i ⊙ g → c_t,
one multiplication and one addition per step, which is why a gradient can travel back along it for many steps;
h_t = o ⊙ tanh(c_t) leaves at the right.

Run:  python lessons/02_lstm_cell_by_hand.py [--out DIR] [--quick]
Writes DIR/lstm_cell.png (the cell drawn as a graph, with unit 0's numbers), DIR/lstm_step.png (weights with their
gate blocks, gate values, c and h) and DIR/summary.json. (--quick changes nothing here: the lesson takes about a
second. It is accepted for uniformity.) It is also a notebook: every `# %%` line starts a cell (VS Code; Jupyter
with jupytext). The exercises are at the end.
"""

# %% Setup: the library, the hand-chosen step

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from minicap import gradcheck, nn, plots
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


HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd() / "lessons"
parser = argparse.ArgumentParser(description="Lesson 02: one LSTM step by hand, then a live gradient check of it.")
parser.add_argument("--out", type=Path, default=HERE / "out" / "02_lstm_cell_by_hand")
parser.add_argument("--quick", action="store_true", help="accepted for uniformity; this lesson is already fast")
args = parser.parse_known_args()[0]  # known args only: a notebook kernel passes its own
start = time.perf_counter()
args.out.mkdir(parents=True, exist_ok=True)

# %% The inputs and the weights, blocks labelled by gate

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

# %% Forward: one call of the library, then every number it computed
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

# %% The cell: old memory, gated, plus new content, gated — and the cell drawn as a graph
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

unit0 = {"c_prev": inputs["prev_c"][0, 0], "c": next_c[0, 0], "tanh_c": cache.tanh_c[0, 0], "h": next_h[0, 0]}
plots.plot_lstm_cell_diagram(args.out / "lstm_cell.png", unit0 | {k: float(gates[k][0, 0]) for k in GATES})

# %% Backward: the cell path back in time
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

# %% The gradient check: every input of the step against centred differences
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

# %% The step in one figure, and the summary
weights = np.vstack([inputs["Wx"], inputs["Wh"], inputs["b"][None, :]])  # (D + H + 1, 4H)
rows = [f"Wx[{d}]" for d in range(D)] + [f"Wh[{k}]" for k in range(H)] + ["b"]
bars = {f"{gate}{u}": float(gates[gate][0, u]) for gate in GATES for u in range(H)}
bars |= {f"c_prev{u}": float(inputs["prev_c"][0, u]) for u in range(H)}
bars |= {f"c{u}": float(next_c[0, u]) for u in range(H)} | {f"h{u}": float(next_h[0, u]) for u in range(H)}
plots.plot_lstm_step(weights, rows, column_labels(H), bars, args.out / "lstm_step.png")
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
    "figures": ["lstm_cell.png", "lstm_step.png"],
    "seconds": round(time.perf_counter() - start, 3),
}
atomic_write_json(args.out / "summary.json", summary)
print(
    f"\nUnit 0 kept {cache.f[0, 0]:.0%} of its old cell and wrote {cache.i[0, 0]:.0%} of its candidate; unit 1 kept"
    f" {cache.f[0, 1]:.0%}. Backwards, {cache.f[0, 0]:.0%} and {cache.f[0, 1]:.0%} of their cell gradients reach the"
    f" previous cell; the gradient check passed for {sum(r.passed for r in results)} of {len(results)} inputs."
)
print(f"Wrote {', '.join(summary['figures'])} and summary.json to {args.out} ({summary['seconds']:.2f} s)")
if not all_passed:
    raise SystemExit(1)


# %% [markdown]
# ## Exercises
#
# (Each answer was measured by changing one number in `hand_chosen_step` and rerunning; open the line to check.)
#
# 1. Give unit 1 the forget-gate bias +2 instead of −2 (`b[3] = 2.0`). What are f1 and c1 now, and how much of
#    the cell gradient reaches c_prev for unit 1?
#    <details><summary>Answer</summary>a_f1 = 2 + x·Wx[:, f1] = 2 − 1 = 1, so f1 = σ(1) = 0.731 (was 0.047); c1 =
#    0.731 × (−1.0) + i1·g1 = −0.949 (was −0.265); ∂L/∂c_prev1 = 0.0999 (was 0.0008): 125 times more gradient
#    flows back along the cell, because it is multiplied by f1.</details>
#
# 2. Read the weights in PyTorch's gate order by mistake: take columns 2H:3H as the candidate g and 3H:4H as the
#    output gate o (`order = np.r_[0:4, 6:8, 4:6]`, then index Wx, Wh and b with it). What do c and h become?
#    <details><summary>Answer</summary>c = [+2.537, −0.047] and h = [+0.768, −0.005] instead of [+2.616, −0.265]
#    and [+0.723, −0.130]. Nothing crashes and every number is plausible: the only defence is a test against an
#    independent implementation (tests/test_nn.py compares with PyTorch's nn.LSTM).</details>
#
# 3. Close unit 0's output gate (`b[4] = −10`) and send gradient only through h (dc = 0). What is h0, and what
#    reaches c_prev0?
#    <details><summary>Answer</summary>o0 = 1.2e-4, so h0 = 1.2e-4: the cell (still +2.616) is hidden from the
#    layer above. ∂L/∂c_prev0 = 2.4e-6 instead of 0.0143: a closed output gate also cuts the route from h back
#    into the cell, and only gradient arriving along the cell itself (dc) would still reach the past.</details>

"""Lesson 04 — SGD, momentum and Adam on the same problem, and what Adam's bias correction does.

THE PROBLEM. The adding problem (`minicap.models.regressor`): each of T steps carries a value in [0, 1] and a
marker; the target is the sum of the two marked values. Predicting the mean, 1.0, scores MSE = 1/6 ≈ 0.167;
anything clearly below that means the network has learned to find the markers and carry the first value
through time. An LSTM (H = 32) reads the sequence; T = 30 in the full run (T = 10 with --quick, which a few
hundred steps can solve).

A FAIR COMPARISON. Each optimiser gets the same model initialisation, the same batches in the same order, the
same number of updates and no clipping. Each gets its own learning rate, because the three mean different
things by "lr": SGD moves by lr·g, momentum by lr·u with u ≈ g/(1 − μ) = 10 g once it has built up (μ = 0.9),
Adam by about lr per parameter whatever the gradient's size. So each is TUNED the same way: a grid of five
learning rates spaced ~3× apart around its usual range, each run for the full budget, and the rate with the
lowest validation MSE (held-out sequences) is chosen; the reported number is the MSE on a separate test set,
and (full run) the chosen rates are re-run on two more seeds. If the chosen rate sits at the edge of its grid
the lesson says so, because then the grid should have been wider.

Every run goes through the library's one training loop, `minicap.train.Trainer`: the optimiser is an object
passed in (`SGD`, `Momentum` or `Adam` from `minicap.optim`), the rate constant, `clip=None` (the norm is only
measured), the data `minicap.models.regressor.AddingProblem` (fresh batches, the same for every optimiser because
they come from the Trainer's seed), and one Trainer "epoch" is the `eval_every` updates between two validation
measurements. A run whose loss stops being finite is stopped there (`on_divergence="stop"`). The models train on
their fast path (`minicap.nn.fast`, the default).

THE OPTIMISERS (minicap.optim):
    SGD        θ ← θ − lr·g
    Momentum   u ← μu + g,  θ ← θ − lr·u                             (μ = 0.9)
    Adam       m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²        (β1 = 0.9, β2 = 0.999)
               m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ),  θ ← θ − lr · m̂ / (√v̂ + ε)

WHY ADAM HELPS HERE. The LSTM's parameters see gradients of very different sizes: at initialisation the
readout bias's gradient is ~2 while the recurrent weights of the input, forget and output gates see ~5e-4 (the
lesson prints the table: a spread of ~5000×). SGD has one learning rate for all: large enough for the small
gradients is too large for the big ones (it diverges), small enough for the big ones leaves the rest crawling.
Adam divides each parameter's step by its own gradient scale √v̂, so every parameter moves at about the same
speed.

BIAS CORRECTION. m and v start at 0, so for the first steps they are too small: after one step m = (1 − β1) g
= 0.1 g and v = (1 − β2) g² = 0.001 g². Uncorrected, the first update would be lr·m/√v = lr·0.1/√0.001·sign(g)
= 3.16·lr·sign(g): (1 − β1)/√(1 − β2) = 3.16 times the step Adam intends — too LARGE, because v is
underestimated even more than m is (β2 is closer to 1). Dividing by (1 − βᵗ) makes m̂ = g and v̂ = g² at t = 1:
a step of exactly lr per parameter. The ratio uncorrected/corrected = (1 − β1ᵗ)/√(1 − β2ᵗ) then GROWS to ≈ 6.5
around t ≈ 10 (m's average fills up in ~10 steps, v's takes ~1000) and only returns to 1 after thousands of
steps. The lesson runs minicap's Adam for 20 steps, records its state m, v after every step, measures the step
it actually took and computes, from the same m and v, the step it would have taken without the correction.
That is a short explicit loop (`bias_correction_trace`), not the Trainer: here the loop IS the lesson, since it
reads the optimiser's state between two updates.

What the full run measured on the machine this was written on (your run prints its own numbers):
  sweep on seed 0, validation MSE after 1000 updates: SGD ends at 0.155–0.158 for every rate from 0.01 to 0.3
  (the mean predictor, nothing learned) and diverges at 1.0; momentum learns a little at 0.1 (0.033), well only
  at 0.3 (0.0018), and diverges at 1.0; Adam learns at every rate from 0.003 to 0.1, best at 0.01 (0.0004).
  Test MSE with the chosen rates, seeds 0, 1, 2: SGD (0.1) 0.155, 0.169, 0.155; momentum (0.3) 0.0019, 0.25,
  0.0033 — its best rate sits next to the diverging one, and one seed in three failed; Adam (0.01) 0.0004,
  0.0016, 0.0005.
  Bias correction: the first corrected step moved the median parameter by exactly 1.000·lr; the uncorrected
  step computed from the same m, v would have been 3.16·lr (the norm ratio is 3.15, a little under 3.162
  because ε matters more for the uncorrected step of parameters with tiny gradients); the ratio then follows
  (1 − β1ᵗ)/√(1 − β2ᵗ) to three digits, peaking at 6.57 at t = 12.

Run:  python lessons/04_adam_vs_sgd.py [--out DIR] [--quick]
Writes DIR/learning_rates.png, DIR/curves.png, DIR/bias_correction.png and DIR/summary.json.
--quick: T = 10, 400 steps, three rates 10× apart per optimiser (the same range), one seed (seconds);
full: T = 30, 1000 steps, five rates ~3× apart per optimiser, three seeds (a minute or two).
"""

from __future__ import annotations

import os

# Tiny matrices (32 × 128): OpenBLAS's threads cost more to wake than they save — measured on the 2-core machine
# this was written on, ~5 ms vs ~20 ms per training step. Set before NumPy loads; an explicit setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from minicap.dataset import ArrayDataset
from minicap.models.regressor import ADDING_BASELINE_MSE, AddingProblem, SequenceRegressor, adding_problem
from minicap.optim import SGD, Adam, Momentum, Optimizer, global_norm
from minicap.plots import save_figure
from minicap.safe_io import atomic_write_json
from minicap.train import TrainConfig, Trainer

OPTIMISERS: dict[str, Callable[[float], Optimizer]] = {
    "SGD": lambda lr: SGD(lr),
    "Momentum": lambda lr: Momentum(lr, momentum=0.9),
    "Adam": lambda lr: Adam(lr),  # β1 = 0.9, β2 = 0.999, ε = 1e-8
}

# Five rates ~3× apart for each, around where each optimiser usually works (see the docstring for why they differ).
GRIDS: dict[str, tuple[float, ...]] = {
    "SGD": (0.01, 0.03, 0.1, 0.3, 1.0),
    "Momentum": (0.01, 0.03, 0.1, 0.3, 1.0),
    "Adam": (0.001, 0.003, 0.01, 0.03, 0.1),
}
QUICK_GRIDS = {name: grid[::2] for name, grid in GRIDS.items()}  # --quick: the same range, 10× apart


@dataclasses.dataclass(frozen=True)
class Config:
    T: int = 30
    hidden: int = 32
    batch: int = 32
    steps: int = 1000
    eval_every: int = 50
    extra_seeds: tuple[int, ...] = (1, 2)  # the chosen rates re-run on these (seed 0 is the tuning seed)
    n_val: int = 1000  # chooses the learning rate
    n_test: int = 1000  # reports the result
    bias_steps: int = 20


QUICK = dataclasses.replace(Config(), T=10, steps=400, eval_every=25, extra_seeds=(), n_val=500, n_test=500)


@dataclasses.dataclass
class Run:
    """One training run, from the Trainer's history: the loss of every update, the validation MSE before the
    first update and after every `eval_every` updates, and where it diverged (None: it did not)."""

    loss: list[float]
    val_step: list[int]
    val_mse: list[float]
    diverged_at: int | None
    seconds: float

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def final_loss(self, last: int = 50) -> float:
        """Mean training loss over the last `last` updates (inf after a divergence)."""
        return math.inf if self.diverged else float(np.mean(self.loss[-last:]))

    def to_dict(self) -> dict:
        return {
            "loss": [v if math.isfinite(v) else None for v in self.loss],
            "val_step": self.val_step,
            "val_mse": [v if math.isfinite(v) else None for v in self.val_mse],
            "diverged_at": self.diverged_at,
            "seconds": self.seconds,
        }


def first_batches(cfg: Config, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `n` batches a run with data seed 1000 + `seed` trains on (drawn as the Trainer draws them)."""
    data = AddingProblem(cfg.T, batches_per_epoch=n)
    return [data.batch(key) for key in data.epoch(np.random.default_rng(1000 + seed), cfg.batch)]


def run(name: str, lr: float, cfg: Config, seed: int, validation: ArrayDataset | None) -> tuple[Run, SequenceRegressor]:
    """Train a fresh LSTM (initialisation `seed`) with one optimiser at one rate, through the library's one
    training loop (minicap.train.Trainer): `cfg.steps` updates on fresh adding-problem batches drawn from `seed`
    (identical for every optimiser), constant rate, no clipping (clip=None only measures the gradient norm), the
    validation MSE after every `eval_every` updates (one Trainer "epoch"), and a stop if the loss stops being finite.
    """
    optimizer = OPTIMISERS[name](lr)
    config = TrainConfig(
        epochs=cfg.steps // cfg.eval_every,
        batch_size=cfg.batch,
        lr=lr,  # the Trainer's schedule sets the optimiser's rate from this at every update
        schedule="constant",
        clip=None,
        patience=None,
        seed=1000 + seed,
    )
    model = SequenceRegressor(input_size=2, hidden_size=cfg.hidden, cell="lstm", seed=seed)
    trainer = Trainer(
        model,
        AddingProblem(cfg.T, batches_per_epoch=cfg.eval_every),
        config,
        val_data=validation,
        optimizer=optimizer,
        on_divergence="stop",
        progress=False,
        log=None,
        plot=False,
    )
    start = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported, not warned about
        result = trainer.fit()
    history = result.history
    epochs = [e for e in history["epochs"] if e["val_loss"] is not None]
    history_run = Run(
        loss=history["steps"]["loss"],
        val_step=([0] + [e["step"] for e in epochs]) if validation is not None else [],
        val_mse=([history["initial"]["val_loss"]] + [e["val_loss"] for e in epochs]) if validation is not None else [],
        diverged_at=history.get("diverged_at") if result.stopped == "diverged" else None,
        seconds=time.perf_counter() - start,
    )
    return history_run, model


# ---------------------------------------------------------------------------------------- gradient scales


def gradient_scales(cfg: Config) -> dict[str, float]:
    """RMS of the gradient of each parameter array (and of each gate's block of Wh) on the first batch, at the
    initialisation every run starts from: how different the scales are that one SGD learning rate must serve."""
    model = SequenceRegressor(input_size=2, hidden_size=cfg.hidden, cell="lstm", seed=0)
    x, y = first_batches(cfg, 1, seed=0)[0]
    _, grads = model.loss(x, y)
    H = cfg.hidden

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))

    scales = {name: rms(g) for name, g in grads.items()}
    for k, gate in enumerate("ifog"):  # gate order i, f, o, g
        scales[f"Wh[{gate} block]"] = rms(grads["Wh"][:, k * H : (k + 1) * H])
    return scales


# ------------------------------------------------------------------------------------------- bias correction


def bias_correction_trace(lr: float, cfg: Config) -> dict:
    """Run minicap's Adam for `cfg.bias_steps` steps and, after each, compare the step it took with the one it
    would have taken without bias correction, computed from the same recorded m and v (Adam's public state).

    This is a short explicit loop on purpose: the loop IS the lesson here. After every update it reads the
    optimiser's state (m, v, t) and the parameters before and after, which the Trainer does not show. It trains
    on the first batches of seed 0's runs, without clipping, as the runs above do."""
    model = SequenceRegressor(input_size=2, hidden_size=cfg.hidden, cell="lstm", seed=0)
    opt = Adam(lr)
    P = model.num_params()
    rows = []
    scalar_rows = []  # one readable parameter, b_out[0], through the first steps
    for x, y in first_batches(cfg, cfg.bias_steps, seed=0):
        _, grads = model.loss(x, y)
        before = {k: v.copy() for k, v in model.params.items()}
        g_out = float(grads["b_out"][0])
        opt.step(model.params, grads)
        t = opt.t
        taken = {k: (model.params[k] - before[k]).astype(np.float64) for k in before}  # the corrected step, measured
        # Without correction Adam would step by lr · m / (√v + ε), with the m and v it just stored.
        uncorrected = {k: lr * opt.m[k].astype(np.float64) / (np.sqrt(opt.v[k].astype(np.float64)) + opt.eps)
                       for k in before}  # fmt: skip
        flat_taken = np.concatenate([np.abs(v).ravel() for v in taken.values()])
        flat_unc = np.concatenate([np.abs(v).ravel() for v in uncorrected.values()])
        norm_taken, norm_unc = global_norm(taken), global_norm(uncorrected)
        rows.append(
            {
                "t": t,
                "step_norm": norm_taken,
                "uncorrected_step_norm": norm_unc,
                "ratio": norm_unc / norm_taken,
                "theory_ratio": (1 - opt.beta1**t) / math.sqrt(1 - opt.beta2**t),
                "rms_step_over_lr": norm_taken / (lr * math.sqrt(P)),
                "rms_uncorrected_over_lr": norm_unc / (lr * math.sqrt(P)),
                "median_abs_step_over_lr": float(np.median(flat_taken)) / lr,
                "median_abs_uncorrected_over_lr": float(np.median(flat_unc)) / lr,
            }
        )
        if t <= 3:
            m, v = float(opt.m["b_out"][0]), float(opt.v["b_out"][0])
            scalar_rows.append(
                {
                    "t": t,
                    "g": g_out,
                    "m": m,
                    "v": v,
                    "m_hat": m / (1 - opt.beta1**t),
                    "v_hat": v / (1 - opt.beta2**t),
                    "step": -float(taken["b_out"][0]),
                    "uncorrected_step": float(uncorrected["b_out"][0]),
                }
            )
    return {"lr": lr, "n_params": P, "beta1": opt.beta1, "beta2": opt.beta2, "steps": rows, "b_out": scalar_rows}


# --------------------------------------------------------------------------------------------------- figures


def plot_learning_rates(sweep: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, results in sweep.items():
        lrs = [r["lr"] for r in results]
        vals = [r["val_mse"] if r["val_mse"] is not None else np.nan for r in results]
        line = ax.loglog(lrs, vals, "o-", label=name)[0]
        for r in results:
            if r["diverged_at"] is not None:
                ax.plot(r["lr"], ADDING_BASELINE_MSE * 10, "x", color=line.get_color(), ms=10, mew=2)
    ax.axhline(ADDING_BASELINE_MSE, color="gray", ls=":", label="predict the mean (1/6)")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation MSE after the budget")
    ax.set_title("Learning-rate sweep, same budget (× = diverged)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=110, tight=True)
    plt.close(fig)


def plot_curves(best: dict[str, Run], chosen: dict[str, float], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, h in best.items():
        window = 20
        smooth = np.convolve(h.loss, np.ones(window) / window, mode="valid")
        ax_l.semilogy(np.arange(window - 1, len(h.loss)), smooth, label=f"{name}, lr {chosen[name]:g}")
        ax_v.semilogy(h.val_step, h.val_mse, "o-", ms=3, label=f"{name}, lr {chosen[name]:g}")
    for ax in (ax_l, ax_v):
        ax.axhline(ADDING_BASELINE_MSE, color="gray", ls=":", label="predict the mean (1/6)")
        ax.set_xlabel("update")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_l.set_title("training loss (moving average of 20 batches), seed 0")
    ax_v.set_title("validation MSE, seed 0")
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=True)
    plt.close(fig)


def plot_bias_correction(trace: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = trace["steps"]
    t = [r["t"] for r in rows]
    b1, b2 = trace["beta1"], trace["beta2"]
    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(13, 4.2))
    ax_s.plot(t, [r["rms_step_over_lr"] for r in rows], "o-", label="with bias correction (the step Adam took)")
    ax_s.plot(t, [r["rms_uncorrected_over_lr"] for r in rows], "s-", label="without (from the same m, v)")
    ax_s.set_xlabel("step t")
    ax_s.set_ylabel("RMS step per parameter / lr")
    ax_s.set_title(f"Adam's first {len(rows)} steps (lr {trace['lr']:g})")
    ax_s.grid(True, alpha=0.3)
    ax_s.legend()
    ts = np.unique(np.logspace(0, 4, 400).astype(int))
    ax_r.semilogx(ts, (1 - b1**ts) / np.sqrt(1 - b2**ts), label="(1 − β1ᵗ) / √(1 − β2ᵗ)")
    ax_r.semilogx(t, [r["ratio"] for r in rows], "o", label="measured ‖uncorrected‖ / ‖corrected‖")
    ax_r.axhline(1.0, color="gray", ls=":")
    ax_r.set_xlabel("step t")
    ax_r.set_title(f"how much larger the uncorrected step is (β1 = {b1:g}, β2 = {b2:g})")
    ax_r.grid(True, which="both", alpha=0.3)
    ax_r.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=True)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "04_adam_vs_sgd")
    parser.add_argument("--quick", action="store_true", help="T = 10, 400 steps, one seed (for tests)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    grids = QUICK_GRIDS if args.quick else GRIDS
    start = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")

    validation = ArrayDataset(*adding_problem(cfg.n_val, cfg.T, np.random.default_rng(99)))
    test = adding_problem(cfg.n_test, cfg.T, np.random.default_rng(98))
    print(
        f"Adding problem, T = {cfg.T}; LSTM, H = {cfg.hidden}; batch {cfg.batch}, {cfg.steps} updates per run, "
        f"no clipping.\nPredicting the mean scores MSE {ADDING_BASELINE_MSE:.3f}.\n"
    )

    scales = gradient_scales(cfg)
    print("Gradient RMS per parameter array at initialisation (first batch) — the scales one SGD rate must serve:")
    arrays = [(n, v) for n, v in scales.items() if not n.startswith("Wh[")]
    blocks = [(n, v) for n, v in scales.items() if n.startswith("Wh[")]
    for row in (arrays, blocks):
        print("   " + "   ".join(f"{name} {value:.1e}" for name, value in row))
    print(f"   largest / smallest: {max(scales.values()) / min(scales.values()):.0f}×\n")

    # ---------------------------------------------------------------------------------- the sweep (seed 0)
    print("Learning-rate sweep on seed 0 (validation MSE after the budget; '—' = diverged at that step):")
    sweep: dict[str, list[dict]] = {}
    best_history: dict[str, Run] = {}
    best_model: dict[str, SequenceRegressor] = {}
    chosen: dict[str, float] = {}
    for name, grid in grids.items():
        sweep[name] = []
        cells = []
        for lr in grid:
            h, model = run(name, lr, cfg, seed=0, validation=validation)
            val = h.val_mse[-1] if not h.diverged else math.inf
            sweep[name].append(
                {
                    "lr": lr,
                    "val_mse": val if math.isfinite(val) else None,
                    "final_train_loss": h.final_loss() if not h.diverged else None,
                    "diverged_at": h.diverged_at,
                    "seconds": round(h.seconds, 2),
                }
            )
            cells.append(f"{lr:g}: " + (f"{val:.4f}" if math.isfinite(val) else f"— step {h.diverged_at}"))
            if math.isfinite(val) and (name not in chosen or val < best_history[name].val_mse[-1]):
                chosen[name], best_history[name], best_model[name] = lr, h, model
        edge = (
            " (at the EDGE of the grid: a rate beyond it was not tried)" if chosen[name] in (grid[0], grid[-1]) else ""
        )
        print(f"   {name:<9} " + "   ".join(cells) + f"\n   {'':<9} chosen lr {chosen[name]:g}{edge}")

    # ------------------------------------------------------------------------- results with the chosen rates
    print("\nWith the chosen rates — test MSE (separate held-out sequences):")
    results: dict[str, dict] = {}
    for name in GRIDS:
        test_mse = [best_model[name].mse(*test)]
        for seed in cfg.extra_seeds:
            h, model = run(name, chosen[name], cfg, seed=seed, validation=None)
            test_mse.append(model.mse(*test) if not h.diverged else math.inf)
        results[name] = {
            "lr": chosen[name],
            "seeds": [0, *cfg.extra_seeds],
            "test_mse": [v if math.isfinite(v) else None for v in test_mse],
            "best_test_mse": float(min(test_mse)),
            "median_test_mse": float(np.median(test_mse)),
        }
        print(
            f"   {name:<9} lr {chosen[name]:<6g} seeds {results[name]['seeds']}: "
            + ", ".join(f"{v:.4f}" for v in test_mse)
        )

    # ---------------------------------------------------------------------------------------- bias correction
    trace = bias_correction_trace(chosen["Adam"], cfg)
    b1, b2 = trace["beta1"], trace["beta2"]
    print(f"\nAdam's bias correction, lr {trace['lr']:g}, β1 = {b1:g}, β2 = {b2:g}, {trace['n_params']} parameters.")
    print("One parameter, b_out[0] (the readout bias), through the first steps:")
    print("    t         g          m          v        m̂ = m/(1−β1ᵗ)   v̂ = v/(1−β2ᵗ)    −Δθ taken    uncorrected")
    for r in trace["b_out"]:
        print(
            f"   {r['t']:2d}  {r['g']:+9.4f}  {r['m']:+9.4f}  {r['v']:9.2e}   {r['m_hat']:+12.4f}   {r['v_hat']:12.2e}"
            f"    {r['step']:+10.2e}   {r['uncorrected_step']:+10.2e}"
        )
    print(
        "Every parameter, step by step (RMS of the step / lr; ratio of the norms; theory (1−β1ᵗ)/√(1−β2ᵗ)):\n"
        "    t   corrected   uncorrected   ratio   theory"
    )
    for r in trace["steps"]:
        print(
            f"   {r['t']:2d}   {r['rms_step_over_lr']:9.3f}   {r['rms_uncorrected_over_lr']:11.3f}   "
            f"{r['ratio']:5.3f}   {r['theory_ratio']:6.3f}"
        )
    first = trace["steps"][0]
    print(
        f"First step: the median parameter moved {first['median_abs_step_over_lr']:.4f}·lr with the correction; "
        f"without it, it would have moved {first['median_abs_uncorrected_over_lr']:.3f}·lr — "
        f"{first['ratio']:.3f}× larger ((1 − β1)/√(1 − β2) = {(1 - b1) / math.sqrt(1 - b2):.4f})."
    )

    args.out.mkdir(parents=True, exist_ok=True)
    plot_learning_rates(sweep, args.out / "learning_rates.png")
    plot_curves(best_history, chosen, args.out / "curves.png")
    plot_bias_correction(trace, args.out / "bias_correction.png")

    headline = {
        "adam_test_mse": results["Adam"]["test_mse"][0],
        "momentum_test_mse": results["Momentum"]["test_mse"][0],
        "sgd_test_mse": results["SGD"]["test_mse"][0],
        "adam_below_sgd_every_seed": all(
            a is not None and (s is None or a < s)
            for a, s in zip(results["Adam"]["test_mse"], results["SGD"]["test_mse"], strict=True)
        ),
        "first_step_uncorrected_over_corrected": first["ratio"],
        "first_step_theory": (1 - b1) / math.sqrt(1 - b2),
        "first_step_median_over_lr": first["median_abs_step_over_lr"],
        "first_step_uncorrected_median_over_lr": first["median_abs_uncorrected_over_lr"],
        "max_ratio_in_first_steps": max(r["ratio"] for r in trace["steps"]),
    }
    summary = {
        "lesson": "04_adam_vs_sgd",
        "quick": args.quick,
        "config": dataclasses.asdict(cfg),
        "grids": {k: list(v) for k, v in grids.items()},
        "sweep": sweep,
        "chosen_lr": chosen,
        "results": results,
        "gradient_rms_at_init": scales,
        "curves_seed0": {name: h.to_dict() for name, h in best_history.items()},
        "bias_correction": trace,
        "headline": headline,
        "figures": ["learning_rates.png", "curves.png", "bias_correction.png"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(args.out / "summary.json", summary)
    print("\nHeadline:")
    for key, value in headline.items():
        print(f"   {key}: {value:.4g}" if isinstance(value, float) else f"   {key}: {value}")
    print(f"\nWrote figures and {args.out / 'summary.json'} in {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

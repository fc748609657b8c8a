"""Lesson 03 — exploding gradients, and why we clip the global gradient norm.

Lesson 01 watched gradients VANISH as they travel back in time. This lesson makes them EXPLODE and then tames them.

THE MECHANISM. In a vanilla tanh RNN, h_t = tanh(x_t Wx + h_{t−1} Wh + b), the gradient reaching a state k
steps back from the loss is multiplied k times by the step Jacobian:

    ∂L/∂h_{t−1} = (∂L/∂h_t ⊙ (1 − h_t²)) Whᵀ

If the recurrent matrix Wh stretches vectors — spectral radius ρ(Wh) > 1 — the product can grow geometrically
with k. Here Wh is a random orthogonal matrix scaled by ρ (every eigenvalue then has modulus exactly ρ), on the
adding problem with T = 50 steps (`minicap.models.regressor`: the target depends on two inputs far apart). The
tanh′ = 1 − h² factors fight back: with ρ > 1 the hidden units are pushed into saturation, where tanh′ is small,
so the measured growth per step is well below ρ — but it is still growth, compounded over 50 steps.

WHAT A HUGE GRADIENT DOES TO SGD. Plain SGD moves the parameters by lr · g. A gradient 1000× too large is a
step 1000× too long: one step can throw the weights to a place where the loss is larger still, the next
gradient is larger still, and within tens of steps the loss overflows to inf and then NaN.

CLIPPING (Pascanu, Mikolov & Bengio 2013). `minicap.optim.clip_grad_norm(grads, max_norm)` computes the norm of
ALL gradients together, n = √(Σ_k ‖g_k‖²), and when n > max_norm rescales every gradient by max_norm / n. The
direction of the update is kept; only its length is capped at lr · max_norm. Here max_norm = 5, a few times
the typical gradient norm of a healthy (ρ = 1) network on this task, so clipping acts only on the spikes.

WHY ADAM HIDES MOST OF THE DAMAGE. Adam's update is lr · m̂ / (√v̂ + ε): each parameter's step is its gradient
DIVIDED by a running estimate of its own scale. Multiply every gradient by 1000 and both m̂ and √v̂ grow 1000×;
the step stays about lr · sign(g) (exactly that on the first step). SGD's step is lr · g, 1000× longer. The
lesson measures both on the same exploding gradient. Adam is not immune, though: one spike inflates v for
~1/(1 − β2) = 1000 steps, shrinking later steps; and what Adam computes from an exploded gradient is a direction
the spike chose, not the loss. Measure, don't assume: the training runs below include Adam with and without
clipping.

HOW THE RUNS ARE TRAINED. Every run goes through the library's one training loop, `minicap.train.Trainer`, on
`minicap.models.regressor.AddingProblem` (fresh sequences for every update; runs with the same seed see the same
batches). The optimiser is an object passed in (`SGD` or `Adam` from `minicap.optim`), the learning rate is
constant, and `TrainConfig(clip=None)` makes the loop only MEASURE the global gradient norm, which it logs before
any clipping at every step (`result.history["steps"]`). With `on_divergence="stop"` a loss or gradient norm that
is no longer finite ends the run before its update is applied: `result.stopped == "diverged"` and
`result.history["diverged_at"]` is that step. (The models train on their fast path, `minicap.nn.fast`; part 1
measures the gradients through time with the readable loops of `minicap.nn`.)

What the full run measured on the machine this was written on (seeds 0–2; your run prints its own numbers):
  at initialisation, the median ‖∂L/∂h_{T−k}‖ grows ~5000× from k = 0 to k = 50 at ρ = 2 (×1.15 per step on
  average, fastest over the first steps of the sequence, where the state is still small and unsaturated) and
  shrinks ~2500× at ρ = 0.9;
  SGD without clipping diverges (loss or gradient → inf) at steps 42, 42 and 41 for ρ = 2 — its very first
  step is ~250 long in parameter space; with clipping, same learning rate and same batches, every loss stays
  finite and the loss falls from 1.5–3.7 (the first batch) to 0.33–0.40 (the mean of the last 50). (The RNN does
  not SOLVE the task: predicting the mean scores 1/6 ≈ 0.167. Learning it at T = 50 is the LSTM's job; see
  lesson 04.)
  The ρ = 1 control trains without clipping at the same learning rate, so ρ > 1 — not the learning rate — is
  what breaks SGD here. Adam never diverged, with or without clipping; over 800 steps the clipped Adam runs
  ended a little lower in every seed (validation MSE 0.16–0.17 vs 0.17–0.27).

Run:  python lessons/03_exploding_gradients_and_clipping.py [--out DIR] [--quick]
Writes DIR/gradient_through_time.png, DIR/training.png and DIR/summary.json.
--quick: one seed and 150 training steps instead of three seeds and 800 steps (seconds instead of a minute).
"""

from __future__ import annotations

import os

# The matrices in this lesson are tiny (32 × 64). Waking OpenBLAS's threads costs more than they save: measured
# on the 2-core machine this was written on, ~5 ms vs ~20 ms per training step. It must be set before NumPy is
# imported; an explicit setting in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

from minicap.dataset import ArrayDataset
from minicap.models.regressor import ADDING_BASELINE_MSE, AddingProblem, SequenceRegressor, adding_problem
from minicap.optim import SGD, Adam, Optimizer, global_norm
from minicap.plots import save_figure
from minicap.safe_io import atomic_write_json
from minicap.train import TrainConfig, Trainer, validation_loss


@dataclasses.dataclass(frozen=True)
class Config:
    T: int = 50  # sequence length: the gradient of the first marker travels back up to 50 steps
    hidden: int = 64  # H
    batch: int = 32  # N
    radii: tuple[float, ...] = (0.9, 1.0, 1.5, 2.0)  # spectral radii measured in part 1
    radius: float = 2.0  # the exploding network trained in part 3
    lr_sgd: float = 0.03  # the ρ = 1 control trains at this rate without clipping (part 3 shows it)
    lr_adam: float = 1e-3  # Adam's usual default
    max_norm: float = 5.0  # clipping threshold: a few times a healthy network's gradient norm
    steps: int = 800
    seeds: tuple[int, ...] = (0, 1, 2)
    n_probe: int = 256  # sequences whose state gradients are measured in part 1
    n_val: int = 1000  # held-out sequences for the validation MSE


QUICK = dataclasses.replace(Config(), steps=150, seeds=(0,), n_val=500)


def rnn_with_radius(radius: float, cfg: Config, seed: int) -> SequenceRegressor:
    """A tanh RNN whose recurrent matrix Wh is a random orthogonal matrix times `radius`.

    An orthogonal matrix has every eigenvalue on the unit circle, so after scaling ρ(Wh) = radius exactly.
    """
    model = SequenceRegressor(input_size=2, hidden_size=cfg.hidden, cell="rnn", init="orthogonal", seed=seed)
    model.params["Wh"] *= np.float32(radius)
    return model


# ------------------------------------------------------------------------------- part 1: gradient through time


def gradient_through_time(cfg: Config) -> dict[str, dict]:
    """Median over sequences of ‖∂L/∂h_{T−k}‖ for k = 0 … T, at initialisation, for each radius."""
    x, y = adding_problem(cfg.n_probe, cfg.T, np.random.default_rng(12345))
    out = {}
    for radius in cfg.radii:
        model = rnn_with_radius(radius, cfg, seed=0)
        norms = model.state_gradient_norms(x, y).h  # (T+1, N), float64, row k = distance from the end
        median = np.median(norms, axis=1)
        ratio = float(median[-1] / median[0])
        # Least-squares slope of log ‖∂L/∂h_{T−k}‖ against k: the average growth (> 0) or decay (< 0) per step.
        slope = float(np.polyfit(np.arange(cfg.T + 1), np.log(median), 1)[0])
        out[f"{radius:g}"] = {
            "radius": radius,
            "measured_spectral_radius": model.spectral_radius(),
            "mean_tanh_derivative": model.mean_tanh_derivative(x),
            "median_norm_by_k": median.tolist(),
            "ratio_k_T_over_k_0": ratio,
            "log_slope_per_step": slope,
            "growth_per_step": float(np.exp(slope)),
        }
    return out


# ------------------------------------------------------------------ part 2: one step of SGD and of Adam, measured


def first_step_lengths(cfg: Config) -> dict[str, float]:
    """‖Δθ‖ of the first SGD step and the first Adam step on the exploding network's gradient, and again with
    that gradient multiplied by 1000. Each step is taken on a fresh copy of the parameters."""
    model = rnn_with_radius(cfg.radius, cfg, seed=0)
    x, y = first_batch(cfg, seed=0)
    _, grads = model.loss(x, y)
    n_params = model.num_params()

    def step_length(opt_factory, scale: float) -> float:
        params = copy.deepcopy(model.params)
        before = copy.deepcopy(params)
        opt: Optimizer = opt_factory()
        opt.step(params, {k: g * np.float32(scale) for k, g in grads.items()})
        return global_norm({k: params[k] - before[k] for k in params})

    grad_norm = global_norm(grads)
    return {
        "grad_norm": grad_norm,
        "n_params": n_params,
        "sgd_step": step_length(lambda: SGD(cfg.lr_sgd), 1.0),
        "sgd_step_x1000": step_length(lambda: SGD(cfg.lr_sgd), 1000.0),
        "adam_step": step_length(lambda: Adam(cfg.lr_adam), 1.0),
        "adam_step_x1000": step_length(lambda: Adam(cfg.lr_adam), 1000.0),
        "adam_bound_lr_sqrt_P": cfg.lr_adam * float(np.sqrt(n_params)),  # every entry moving by exactly lr
    }


# ------------------------------------------------------------------------------------------ part 3: training


RUNS = (  # name, optimiser, spectral radius, clip?
    ("SGD, ρ=2, no clipping", "sgd", "radius", False),
    ("SGD, ρ=2, clipped", "sgd", "radius", True),
    ("SGD, ρ=1, no clipping (control)", "sgd", 1.0, False),
    ("Adam, ρ=2, no clipping", "adam", "radius", False),
    ("Adam, ρ=2, clipped", "adam", "radius", True),
)


def batches(cfg: Config, steps: int) -> AddingProblem:
    """The training data: `steps` updates on fresh adding-problem sequences, as ONE Trainer epoch."""
    return AddingProblem(cfg.T, batches_per_epoch=steps)


def first_batch(cfg: Config, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first batch a run with data seed 1000 + `seed` trains on (the Trainer draws its epoch the same way)."""
    data = batches(cfg, 1)
    return data.batch(data.epoch(np.random.default_rng(1000 + seed), cfg.batch)[0])


@dataclasses.dataclass
class Run:
    """What one training run did, step by step (lists indexed by update, 0-based), from the Trainer's history.

    loss[s], grad_norm[s]   the batch loss and the global gradient norm BEFORE clipping, at update s
    clipped[s]              True when clipping rescaled update s's gradients (grad_norm > max_norm)
    diverged_at             the first step whose loss or gradient norm was not finite: training stopped there and
                            its update was not applied (None when every step was finite)
    val_mse                 validation MSE at the end (of the last good parameters, after a divergence)
    """

    loss: list[float]
    grad_norm: list[float]
    clipped: list[bool]
    diverged_at: int | None
    val_mse: float
    seconds: float

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def final_loss(self, last: int = 50) -> float:
        """Mean training loss over the last `last` steps (inf after a divergence): less noisy than one batch."""
        return math.inf if self.diverged else float(np.mean(self.loss[-last:]))

    def to_dict(self) -> dict:
        finite = [v if math.isfinite(v) else None for v in self.loss]
        return {
            "loss": finite,
            "grad_norm": self.grad_norm,
            "clipped": self.clipped,
            "diverged_at": self.diverged_at,
            "val_mse": self.val_mse if math.isfinite(self.val_mse) else None,
            "seconds": self.seconds,
        }


def train(model: SequenceRegressor, optimizer: Optimizer, cfg: Config, seed: int, clip: bool, validation) -> Run:
    """`cfg.steps` updates through the library's one training loop, minicap.train.Trainer.

    Every run with the same `seed` trains on the same batches (the Trainer draws them from its own seed). The
    learning rate stays constant; clip=False (TrainConfig.clip=None) only MEASURES the gradient norm; a loss or
    norm that stops being finite ends the run (on_divergence="stop") before its update is applied.
    """
    config = TrainConfig(
        epochs=1,
        batch_size=cfg.batch,
        lr=optimizer.lr,  # the Trainer's schedule sets the optimiser's rate from this at every update
        schedule="constant",
        clip=cfg.max_norm if clip else None,
        patience=None,
        seed=1000 + seed,
    )
    trainer = Trainer(
        model,
        batches(cfg, cfg.steps),
        config,
        optimizer=optimizer,
        on_divergence="stop",
        progress=False,
        log=None,
        plot=False,
    )
    start = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported, not warned about
        result = trainer.fit()
        val_mse = validation_loss(model, validation)
    steps = result.history["steps"]
    return Run(
        loss=steps["loss"],
        grad_norm=steps["grad_norm"],
        clipped=[clip and n > cfg.max_norm for n in steps["grad_norm"]],
        diverged_at=result.history.get("diverged_at") if result.stopped == "diverged" else None,
        val_mse=val_mse,
        seconds=time.perf_counter() - start,
    )


def train_all(cfg: Config) -> dict[str, list[Run]]:
    validation = ArrayDataset(*adding_problem(cfg.n_val, cfg.T, np.random.default_rng(777)))
    results: dict[str, list[Run]] = {}
    for name, opt_name, radius, clip in RUNS:
        radius = cfg.radius if radius == "radius" else radius
        results[name] = []
        for seed in cfg.seeds:
            model = rnn_with_radius(radius, cfg, seed=seed)
            opt = SGD(cfg.lr_sgd) if opt_name == "sgd" else Adam(cfg.lr_adam)
            results[name].append(train(model, opt, cfg, seed, clip, validation))
    return results


# --------------------------------------------------------------------------------------------------- figures


def plot_gradient_through_time(gtt: dict[str, dict], cfg: Config, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for entry in gtt.values():
        ax.semilogy(entry["median_norm_by_k"], label=f"ρ(Wh) = {entry['radius']:g}")
    ax.set_xlabel("k: steps back from the loss")
    ax.set_ylabel("median ‖∂L/∂h(T−k)‖")
    ax.set_title(f"Gradient through time in a tanh RNN at initialisation (T = {cfg.T}, H = {cfg.hidden})")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path, dpi=110, tight=True)
    plt.close(fig)


def plot_training(results: dict[str, list[Run]], cfg: Config, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_n, ax_l) = plt.subplots(1, 2, figsize=(13, 4.5))
    top = 1e3  # the loss axis stops here: a diverging run leaves through the top edge, marked with its step
    for name, histories in results.items():
        h = histories[0]  # seed 0
        line = ax_n.semilogy(h.grad_norm, label=name, lw=1)[0]
        ax_l.semilogy(np.minimum(h.loss, top * 10), color=line.get_color(), label=name, lw=1)
        if h.diverged:
            ax_l.annotate(
                f"→ inf at step {h.diverged_at}",
                (h.diverged_at, top * 0.6),
                color=line.get_color(),
                fontsize=9,
                xytext=(5, 0),
                textcoords="offset points",
            )
    ax_n.axhline(cfg.max_norm, color="k", ls="--", lw=1, label=f"max_norm = {cfg.max_norm:g}")
    ax_n.set_title("global gradient norm before clipping (seed 0)")
    ax_n.set_xlabel("step")
    ax_l.axhline(ADDING_BASELINE_MSE, color="gray", ls=":", lw=1, label="predict the mean (1/6)")
    ax_l.set_ylim(top=top)
    ax_l.set_title("training loss, seed 0 (axis cut at 10³)")
    ax_l.set_xlabel("step")
    for ax in (ax_n, ax_l):
        ax.grid(True, which="both", alpha=0.3)
    ax_l.legend(fontsize=8)
    ax_n.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110, tight=True)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "out" / "03_exploding_gradients_and_clipping"
    )
    parser.add_argument("--quick", action="store_true", help="one seed, 150 steps (for tests and a first look)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    start = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")

    print(f"Adding problem, T = {cfg.T}; tanh RNN, H = {cfg.hidden}; Wh = random orthogonal × ρ.\n")
    print("Part 1 — how much gradient reaches k steps back, at initialisation (median over sequences):")
    gtt = gradient_through_time(cfg)
    ks = [k for k in (0, 10, 20, 30, 40, cfg.T) if k <= cfg.T]
    print("   ρ(Wh)  mean tanh′  " + "  ".join(f"{'k=' + str(k):>8}" for k in ks) + "   k=T/k=0  per step")
    for e in gtt.values():
        norms = "  ".join(f"{e['median_norm_by_k'][k]:8.2e}" for k in ks)
        print(
            f"   {e['measured_spectral_radius']:5.2f}  {e['mean_tanh_derivative']:10.3f}  {norms}"
            f"  {e['ratio_k_T_over_k_0']:8.2e}  ×{e['growth_per_step']:.3f}"
        )
    print(
        "   (per step = exp of the least-squares slope of log-norm against k; ρ alone would predict ×ρ per step —\n"
        "    saturated units, tanh′ < 1, take much of that back, but above ρ ≈ 1 the product still grows.)"
    )

    print(f"\nPart 2 — one step on the ρ = {cfg.radius:g} network's first-batch gradient:")
    steps = first_step_lengths(cfg)
    print(f"   global gradient norm ‖g‖ = {steps['grad_norm']:.1f}   ({steps['n_params']} parameters)")
    print(
        f"   SGD  (lr {cfg.lr_sgd:g}):  ‖Δθ‖ = lr·‖g‖ = {steps['sgd_step']:.3g}   "
        f"with g × 1000: {steps['sgd_step_x1000']:.3g}   (× {steps['sgd_step_x1000'] / steps['sgd_step']:.0f})"
    )
    print(
        f"   Adam (lr {cfg.lr_adam:g}): ‖Δθ‖ = {steps['adam_step']:.3g}   with g × 1000: "
        f"{steps['adam_step_x1000']:.3g}   (× {steps['adam_step_x1000'] / steps['adam_step']:.4f});"
        f" lr·√P = {steps['adam_bound_lr_sqrt_P']:.3g}"
    )
    print("   Adam's first step is lr·g/(|g|+ε) ≈ lr·sign(g) per parameter, whatever the gradient's scale.")

    print(
        f"\nPart 3 — training {cfg.steps} steps of batch {cfg.batch}, seeds {list(cfg.seeds)}; SGD lr {cfg.lr_sgd:g}, "
        f"Adam lr {cfg.lr_adam:g}, clipping at max_norm {cfg.max_norm:g}:"
    )
    results = train_all(cfg)
    print(
        f"   {'run':<34} {'seed':>4} {'diverged at':>11} {'final loss':>10} {'val MSE':>8} {'clipped':>8}"
        f" {'max ‖g‖':>9}"
    )
    runs_summary = {}
    for name, histories in results.items():
        for seed, h in zip(cfg.seeds, histories, strict=True):
            print(
                f"   {name:<34} {seed:>4} {'—' if h.diverged_at is None else f'step {h.diverged_at}':>11} "
                f"{h.final_loss():10.3g} {h.val_mse:8.3g} {np.mean(h.clipped):8.0%} {np.max(h.grad_norm):9.2g}"
            )
        finals = [h.final_loss() for h in histories]
        vals = [h.val_mse for h in histories]
        max_norm = [float(np.max(h.grad_norm)) for h in histories]
        runs_summary[name] = {
            "diverged_at": [h.diverged_at for h in histories],
            "final_loss": [f if np.isfinite(f) else None for f in finals],
            "initial_loss": [h.loss[0] if h.loss else None for h in histories],
            "val_mse": [v if np.isfinite(v) else None for v in vals],
            "all_losses_finite": [not h.diverged and bool(np.all(np.isfinite(h.loss))) for h in histories],
            "fraction_clipped": [float(np.mean(h.clipped)) for h in histories],
            "max_grad_norm": [m if np.isfinite(m) else None for m in max_norm],
            "seconds": [round(h.seconds, 2) for h in histories],
            "history_seed0": histories[0].to_dict(),
        }
    print(f"   (predicting the mean scores {ADDING_BASELINE_MSE:.3f}; 'final loss' = mean of the last 50 steps)")

    args.out.mkdir(parents=True, exist_ok=True)
    plot_gradient_through_time(gtt, cfg, args.out / "gradient_through_time.png")
    plot_training(results, cfg, args.out / "training.png")

    sgd_noclip, sgd_clip = runs_summary[RUNS[0][0]], runs_summary[RUNS[1][0]]
    headline = {
        "growth_ratio_at_radius": gtt[f"{cfg.radius:g}"]["ratio_k_T_over_k_0"],
        "sgd_unclipped_diverged_every_seed": all(d is not None for d in sgd_noclip["diverged_at"]),
        "sgd_clipped_all_finite_every_seed": all(sgd_clip["all_losses_finite"]),
        "sgd_clipped_final_below_initial_every_seed": all(
            f is not None and f < i for f, i in zip(sgd_clip["final_loss"], sgd_clip["initial_loss"], strict=True)
        ),
        "control_radius1_unclipped_finite_every_seed": all(runs_summary[RUNS[2][0]]["all_losses_finite"]),
        "adam_step_ratio_for_1000x_gradient": steps["adam_step_x1000"] / steps["adam_step"],
        "sgd_step_ratio_for_1000x_gradient": steps["sgd_step_x1000"] / steps["sgd_step"],
    }
    summary = {
        "lesson": "03_exploding_gradients_and_clipping",
        "quick": args.quick,
        "config": dataclasses.asdict(cfg),
        "gradient_through_time": gtt,
        "first_step": steps,
        "runs": runs_summary,
        "headline": headline,
        "figures": ["gradient_through_time.png", "training.png"],
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

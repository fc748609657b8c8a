"""How fast is one optimiser step on a captioner-sized model (~10M float32 parameters)?

Compares `minicap.optim.Adam.step` (every operation writes into existing memory) with the textbook form
that allocates a temporary array per operation, plus SGD, momentum, `global_norm` / `clip_grad_norm` (BLAS dot
vs. sum of squares) and, when PyTorch is importable, `torch.optim.Adam` on the same sizes as a peer reference.

    .venv/bin/python benchmarks/bench_optim.py [--repeats 15]

Prints medians over repeats with min-max. The variants are timed in turn (a, b, c, a, b, c, ...), so their
ratios come from the same run under the same load; absolute numbers on a shared machine are noisy.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from minicap.optim import SGD, Adam, Momentum, clip_grad_norm, global_norm

# A captioner with V=7000 words, H=512, E=512 word embeddings, F=1280 image features: 9.9M parameters.
SHAPES = {
    "W_embed": (7000, 512),
    "W_vocab": (512, 7000),
    "b_vocab": (7000,),
    "W_proj": (1280, 512),
    "b_proj": (512,),
    "Wx": (512, 2048),
    "Wh": (512, 2048),
    "b": (2048,),
}


def naive_adam_step(params, grads, state, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8) -> None:
    """The textbook Adam update: clear, but every operation allocates a new array."""
    state["t"] += 1
    t = state["t"]
    for key, p in params.items():
        g = grads[key]
        m = state["m"][key] = beta1 * state["m"][key] + (1 - beta1) * g
        v = state["v"][key] = beta2 * state["v"][key] + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p -= lr * m_hat / (np.sqrt(v_hat) + eps)


def time_round_robin(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, dict]:
    """Median/min/max milliseconds of each function, timed in turn (a, b, c, a, b, c, ...) so that the load of a
    shared machine falls on all of them alike and their ratios stay meaningful."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {
        name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "max_ms": 1e3 * max(t)}
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s, dtype=np.float32) * 0.01 for k, s in SHAPES.items()}
    grads = {k: rng.standard_normal(s, dtype=np.float32) * 0.01 for k, s in SHAPES.items()}
    n_params = sum(p.size for p in params.values())

    # Same answers first: both Adams, from the same start, five steps.
    p_a = {k: p.copy() for k, p in params.items()}
    p_b = {k: p.copy() for k, p in params.items()}
    opt = Adam(lr=1e-3)
    state = {
        "t": 0,
        "m": {k: np.zeros_like(p) for k, p in params.items()},
        "v": {k: np.zeros_like(p) for k, p in params.items()},
    }
    for _ in range(5):
        opt.step(p_a, grads)
        naive_adam_step(p_b, grads, state)
    max_diff = max(float(np.max(np.abs(p_a[k] - p_b[k]))) for k in params)
    assert max_diff < 1e-6, f"in-place and naive Adam disagree by {max_diff}"

    adamw = Adam(lr=1e-3, weight_decay=0.01)
    sgd = SGD(lr=1e-3)
    mom = Momentum(lr=1e-3, nesterov=True)
    fns: dict[str, Callable[[], object]] = {
        "adam_inplace": lambda: opt.step(p_a, grads),
        "adam_naive": lambda: naive_adam_step(p_b, grads, state),
        "adamw_inplace": lambda: adamw.step(p_a, grads),
        "sgd": lambda: sgd.step(p_a, grads),
        "momentum_nesterov": lambda: mom.step(p_a, grads),
        # max_norm above the norm: this times the norm computation (the rescale is one more in-place pass).
        "global_norm": lambda: global_norm(grads),  # the norm alone (what the Trainer logs when clip is None)
        "clip_grad_norm": lambda: clip_grad_norm(grads, max_norm=1e9),
        "norm_sum_of_squares": lambda: math.sqrt(sum(float(np.sum(g * g)) for g in grads.values())),
    }

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tp = [torch.from_numpy(p.copy()).requires_grad_() for p in params.values()]
        for t_param, g in zip(tp, grads.values(), strict=True):
            t_param.grad = torch.from_numpy(g.copy())
        fns["torch_adam_foreach"] = torch.optim.Adam(tp, lr=1e-3, foreach=True).step
        fns["torch_adam_for_loop"] = torch.optim.Adam(tp, lr=1e-3, foreach=False).step
        torch_threads = torch.get_num_threads()

    results = time_round_robin(fns, args.repeats)

    print(f"{n_params / 1e6:.2f}M float32 parameters in {len(params)} arrays, {args.repeats} repeats")
    print(f"{'':24s}{'median ms':>10s}{'min':>9s}{'max':>9s}")
    for name, r in results.items():
        print(f"{name:24s}{r['median_ms']:10.1f}{r['min_ms']:9.1f}{r['max_ms']:9.1f}")
    ratio = results["adam_naive"]["median_ms"] / results["adam_inplace"]["median_ms"]
    print(f"Adam naive / in-place: {ratio:.2f}x (medians, same run)")
    summary = {
        "bench": "optim",
        "n_params": n_params,
        "repeats": args.repeats,
        "numpy": np.__version__,
        "adam_naive_over_inplace": round(ratio, 3),
        **{f"{k}_median_ms": round(v["median_ms"], 2) for k, v in results.items()},
    }
    if torch is not None:
        summary["torch"] = torch.__version__
        summary["torch_threads"] = torch_threads
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

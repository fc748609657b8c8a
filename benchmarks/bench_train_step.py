"""One full captioning training step — forward, backward, clip, Adam — in minicap and (if installed) PyTorch.

    python benchmarks/bench_train_step.py [--repeats 7] [--steps 3] [--vocab 1000 10000] [--threads 2]

Shape of the step (the issue's reference setting): N=128 captions, T=16 words, word vectors W=256, hidden H=512,
image features F=1280, vocabulary V ∈ {1000, 10000}, float32, LSTM. Two kinds of batch, both frameworks get the
same arrays:
- "coco": caption lengths drawn from the real distribution of COCO val2017 (minicap.data.tokenize, capped at
  15 words + <END>, mean 11.3 of 16 positions), padded with <NULL> to T = 16 — what a training step really sees;
- "full": every caption 16 tokens long, no padding — the worst case for minicap, which does no work at padded
  positions (the recurrence stops at each caption's end, the vocabulary projection skips them) while PyTorch's
  standard recipe (nn.LSTM on the padded batch, masked cross-entropy) computes them and then masks them.
FLOPs count only the work a step needs (positions that are read or scored), the same for both frameworks.

Printed, from ONE run so the ratios are fair on a noisy machine:
- sequences/s: median over `--repeats` repeats (each the mean of `--steps` steps), with min–max;
- GFLOP/s of the step (matrix-product FLOPs: forward 2·m·k·n per product, backward twice that) and that figure
  as a fraction of a float32 2048×512×2048 GEMM timed in the same run — how close the whole step gets to the
  machine's best case;
- the same step in PyTorch (nn.Embedding + nn.LSTM + nn.Linear, masked cross-entropy summed / N,
  clip_grad_norm_, Adam) with the same thread count, and the ratio minicap / PyTorch.
The last line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9, help="timed repeats (median reported), ≥ 5 recommended")
    p.add_argument("--steps", type=int, default=3, help="training steps per repeat")
    p.add_argument("--vocab", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--threads", type=int, default=2, help="BLAS / PyTorch threads")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    return p.parse_args()


ARGS = parse_args()
# Thread counts must be fixed before NumPy (OpenBLAS) and torch are imported.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

from minicap.model import CaptionModel  # noqa: E402
from minicap.optim import Adam, clip_grad_norm  # noqa: E402

N, T, W, H, F = 128, 16, 256, 512, 1280
CLIP = 5.0


# How many COCO val2017 captions have 0, 1, …, 16 positions (words + <END>, at most 15 words kept): the
# histogram of the 25,014 captions of captions_val2017_full.json tokenized by minicap.data.tokenize.
COCO_LENGTH_COUNTS = [0, 0, 0, 0, 0, 0, 0, 0, 209, 4035, 5553, 5348, 3806, 2502, 1449, 839, 1273]


def step_gflop(V: int, lengths: np.ndarray) -> float:
    """Matrix-product FLOPs one training step needs (forward ×3 for forward + backward): every caption's
    positions up to its <END> go through the recurrence and the vocabulary projection, padding does not."""
    positions = int(lengths.sum())
    forward = (
        2 * N * F * H  # image projection
        + 2 * positions * W * 4 * H  # input projection of every step
        + 2 * positions * H * 4 * H  # recurrent products
        + 2 * positions * H * V  # vocabulary projection
    )
    return 3 * forward / 1e9


def make_batch(V: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, F), captions (N, T+1), lengths (N,)): <START> w1 … <END> then <NULL> padding."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N, F)).astype(np.float32)
    if kind == "full":
        lengths = np.full(N, T)
    else:
        p = np.array(COCO_LENGTH_COUNTS, dtype=np.float64)
        lengths = rng.choice(len(p), size=N, p=p / p.sum())
        lengths[0] = T  # the batch is padded to T = 16: its longest caption fills it (16+ positions: 5% of COCO)
    captions = np.zeros((N, T + 1), dtype=np.int64)
    captions[:, 0] = 1  # <START>
    for n, length in enumerate(lengths):
        captions[n, 1:length] = rng.integers(4, V, size=length - 1)
        captions[n, length] = 2  # <END>
    return features, captions, lengths


def time_repeats(fn, repeats: int, steps: int) -> list[float]:
    """Seconds per step: `repeats` timings, each the mean over `steps` calls, after two warm-up calls."""
    return time_interleaved({"fn": fn}, repeats, steps)["fn"]


def time_interleaved(fns: dict, repeats: int, steps: int) -> dict[str, list[float]]:
    """Like `time_repeats` for several functions, taking turns within every repeat: a slow episode of a noisy
    machine then hits all of them, and their ratio stays fair."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return times


GEMM_FLOP = 2 * 2048 * 512 * 2048


def gemm_fn():
    """The machine's best case: one float32 2048×512×2048 matrix product (GEMM_FLOP floating-point operations)."""
    a = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((512, 2048)).astype(np.float32)
    out = np.empty((2048, 2048), np.float32)
    return lambda: np.matmul(a, b, out=out)


def minicap_step_fn(V: int, kind: str):
    model = CaptionModel(V, F, W, H, cell="lstm", dtype=np.float32, seed=0)
    optimizer = Adam(lr=1e-3)
    features, captions, _ = make_batch(V, kind)

    def step() -> None:
        loss, grads = model.loss(features, captions)
        clip_grad_norm(grads, CLIP)
        optimizer.step(model.params, grads)

    return step


def torch_step_fn(V: int, kind: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class TorchCaptioner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(F, H)
            self.embed = torch.nn.Embedding(V, W)
            self.lstm = torch.nn.LSTM(W, H, batch_first=True)
            self.vocab = torch.nn.Linear(H, V)

        def forward(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
            h0 = self.proj(features).unsqueeze(0)
            out, _ = self.lstm(self.embed(captions[:, :-1]), (h0, torch.zeros_like(h0)))
            scores = self.vocab(out)
            targets = captions[:, 1:]
            mask = (targets != 0).float()
            nll = torch.nn.functional.cross_entropy(scores.reshape(-1, V), targets.reshape(-1), reduction="none")
            return (nll * mask.reshape(-1)).sum() / captions.shape[0]

    model = TorchCaptioner()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    features_np, captions_np, _ = make_batch(V, kind)
    features, captions = torch.from_numpy(features_np), torch.from_numpy(captions_np)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(features, captions)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()

    return step, torch.__version__


def summarise(times: list[float]) -> dict[str, float]:
    sps = [N / t for t in times]
    return {"seq_per_s": float(np.median(sps)), "seq_per_s_min": float(min(sps)), "seq_per_s_max": float(max(sps))}


def main() -> None:
    torch_available = False
    if not ARGS.no_torch:
        try:
            import torch  # noqa: F401

            torch_available = True
        except ImportError:
            print("torch not importable: PyTorch comparison skipped (pip install torch==2.13.0 to include it)")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, threads={ARGS.threads}, NumPy {np.__version__}")
    print(f"step: N={N} T={T} W={W} H={H} F={F} float32 LSTM, clip {CLIP}, Adam; {ARGS.repeats} repeats × {ARGS.steps}")
    result: dict[str, object] = {"N": N, "T": T, "W": W, "H": H, "F": F, "threads": ARGS.threads}

    for V in ARGS.vocab:
        for kind in ("coco", "full"):
            lengths = make_batch(V, kind)[2]
            gflop = step_gflop(V, lengths)
            fns = {"minicap": minicap_step_fn(V, kind), "gemm": gemm_fn()}
            if torch_available:
                fns["torch"], result["torch_version"] = torch_step_fn(V, kind, ARGS.threads)
            times = time_interleaved(fns, ARGS.repeats, ARGS.steps)
            mini = summarise(times["minicap"])
            gflops = gflop * mini["seq_per_s"] / N
            gemm = GEMM_FLOP / np.median(times["gemm"]) / 1e9  # timed in turn with the steps
            entry: dict[str, object] = {
                "minicap": mini,
                "gemm_gflops": gemm,
                "mean_caption_positions": float(lengths.mean()),
                "step_gflop": gflop,
                "minicap_gflops": gflops,
                "fraction_of_gemm": gflops / gemm,
            }
            line = (
                f"V={V:>5} {kind:>4}: minicap {mini['seq_per_s']:6.1f} seq/s "
                f"({mini['seq_per_s_min']:.1f}–{mini['seq_per_s_max']:.1f})  {gflops:5.1f} GFLOP/s = "
                f"{gflops / gemm:4.0%} of GEMM ({gemm:.0f})"
            )
            if torch_available:
                peer = summarise(times["torch"])
                entry["torch"] = peer
                entry["ratio_minicap_over_torch"] = mini["seq_per_s"] / peer["seq_per_s"]
                line += (
                    f" | PyTorch {peer['seq_per_s']:6.1f} seq/s "
                    f"({peer['seq_per_s_min']:.1f}–{peer['seq_per_s_max']:.1f})"
                    f"  minicap/PyTorch = {entry['ratio_minicap_over_torch']:.2f}×"
                )
            print(line)
            result[f"V={V} {kind}"] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()

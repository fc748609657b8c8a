"""One full captioning training step — forward, backward, clip, Adam — in minicap and (if installed) PyTorch.

    python benchmarks/bench_train_step.py [--repeats 7] [--steps 3] [--vocab 1000 10000] [--threads 2]

Shape of the step (the issue's reference setting): N=128 captions, T=16 words, word vectors W=256, hidden H=512,
image features F=1280, vocabulary V ∈ {1000, 10000}, float32, LSTM. Every caption is full length (no padding):
the worst case for minicap, which otherwise skips nothing but does no work at masked positions either.

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
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported), ≥ 5 recommended")
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


def step_gflop(V: int) -> float:
    """Matrix-product FLOPs of one training step (forward ×3 for forward + backward)."""
    forward = (
        2 * N * F * H  # image projection
        + 2 * N * T * W * 4 * H  # input projection of every step
        + 2 * N * T * H * 4 * H  # recurrent products
        + 2 * N * T * H * V  # vocabulary projection
    )
    return 3 * forward / 1e9


def make_batch(V: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N, F)).astype(np.float32)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1  # <START>
    captions[:, -1] = 2  # <END>
    return features, captions


def time_repeats(fn, repeats: int, steps: int) -> list[float]:
    """Seconds per step: `repeats` timings, each the mean over `steps` calls, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps)
    return times


def gemm_gflops(repeats: int) -> float:
    a = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((512, 2048)).astype(np.float32)
    out = np.empty((2048, 2048), np.float32)
    times = time_repeats(lambda: np.matmul(a, b, out=out), repeats, 10)
    return 2 * 2048 * 512 * 2048 / np.median(times) / 1e9


def minicap_step_fn(V: int):
    model = CaptionModel(V, F, W, H, cell="lstm", dtype=np.float32, seed=0)
    optimizer = Adam(lr=1e-3)
    features, captions = make_batch(V)

    def step() -> None:
        loss, grads = model.loss(features, captions)
        clip_grad_norm(grads, CLIP)
        optimizer.step(model.params, grads)

    return step


def torch_step_fn(V: int, threads: int):
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
    features_np, captions_np = make_batch(V)
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
    gemm = gemm_gflops(ARGS.repeats)
    print(f"reference GEMM 2048×512×2048 float32: {gemm:.1f} GFLOP/s")
    result: dict[str, object] = {"N": N, "T": T, "W": W, "H": H, "F": F, "threads": ARGS.threads, "gemm_gflops": gemm}

    for V in ARGS.vocab:
        mini = summarise(time_repeats(minicap_step_fn(V), ARGS.repeats, ARGS.steps))
        gflops = step_gflop(V) * mini["seq_per_s"] / N
        entry: dict[str, object] = {
            "minicap": mini,
            "step_gflop": step_gflop(V),
            "minicap_gflops": gflops,
            "fraction_of_gemm": gflops / gemm,
        }
        line = (
            f"V={V:>5}: minicap {mini['seq_per_s']:7.1f} seq/s ({mini['seq_per_s_min']:.1f}–{mini['seq_per_s_max']:.1f})"
            f"  {gflops:6.1f} GFLOP/s = {gflops / gemm:5.1%} of GEMM"
        )
        if torch_available:
            torch_fn, torch_version = torch_step_fn(V, ARGS.threads)
            peer = summarise(time_repeats(torch_fn, ARGS.repeats, ARGS.steps))
            entry["torch"] = peer
            entry["ratio_minicap_over_torch"] = mini["seq_per_s"] / peer["seq_per_s"]
            result["torch_version"] = torch_version
            line += (
                f" | PyTorch {peer['seq_per_s']:7.1f} seq/s ({peer['seq_per_s_min']:.1f}–{peer['seq_per_s_max']:.1f})"
                f"  minicap/PyTorch = {entry['ratio_minicap_over_torch']:.2f}×"
            )
        print(line)
        result[f"V={V}"] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()

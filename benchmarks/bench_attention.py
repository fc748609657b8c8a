"""One training step of the attention captioner (Show, Attend and Tell) — forward, backward, clip, Adam — in minicap
and in PyTorch (the same decoder: an nn.LSTMCell loop with the same attention, gate, initial state, regulariser).

    python benchmarks/bench_attention.py [--repeats 7] [--steps 2] [--vocab 1000 10000] [--threads 1]

Shape (the issue's setting): N=64 captions, T=16 steps, L=49 annotation vectors (EfficientNet-Lite0's 7 × 7 map) of
F=1280, attention size A=256, hidden H=512, word vectors W=256, vocabulary V ∈ {1000, 10000}, float32, λ = 1.
Caption lengths are drawn uniformly from 8..16 tokens (<END> included) and padded to T = 16; both frameworks run all
T steps for every caption (an ended caption keeps its state) and mask the padding in the loss and the regulariser.

Printed, from ONE run so that the ratio is fair on a noisy machine: for each V, sequences/s of minicap's readable
path (model.fast = False), of its fast path (model.fast = True, minicap.nn.fast.attention_lstm_*), and of
PyTorch with the same thread count, each the median over `--repeats` interleaved repeats (each the mean of `--steps`
steps), and the ratios fast / PyTorch and readable / PyTorch. Before timing, the two frameworks are checked to give
the same loss and gradients from the same parameters (float32 rounding). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    p.add_argument("--steps", type=int, default=2, help="training steps per repeat")
    p.add_argument("--vocab", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--threads", type=int, default=1, help="BLAS / PyTorch threads (default 1: a shared machine)")
    return p.parse_args()


ARGS = parse_args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

from minicap.models import AttentionCaptionModel  # noqa: E402
from minicap.optim import Adam, clip_grad_norm  # noqa: E402
from minicap.tokens import END, START, target_mask  # noqa: E402

N, T, L, F, A, H, W = 64, 16, 49, 1280, 256, 512, 256
REG, CLIP, LR = 1.0, 5.0, 1e-3


def make_batch(V: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    annotations = np.clip(rng.standard_normal((N, L, F)), 0, 6).astype(np.float32)  # ReLU6-like maps
    captions = np.zeros((N, T + 1), dtype=np.int64)
    for n, length in enumerate(rng.integers(8, T + 1, size=N)):  # tokens incl. <END>
        captions[n, 0] = START
        captions[n, 1:length] = rng.integers(4, V, size=length - 1)
        captions[n, length] = END
    return annotations, captions


# ------------------------------------------------------------------------------------------------ PyTorch


def make_torch(model: AttentionCaptionModel, threads: int):
    import torch
    from torch import nn as tnn

    torch.set_num_threads(threads)

    class TorchAttention(tnn.Module):
        """The same decoder as minicap.nn.attention, written with autograd (nn.LSTMCell, gate order i, f, g, o)."""

        def __init__(self) -> None:
            super().__init__()
            p = {k: torch.tensor(v) for k, v in model.params.items()}
            self.P = tnn.ParameterDict(
                {k: tnn.Parameter(v.clone()) for k, v in p.items() if k not in ("Wx", "Wh", "b")}
            )
            self.cell = tnn.LSTMCell(W + F, H)
            order = np.r_[0:H, H : 2 * H, 3 * H : 4 * H, 2 * H : 3 * H]  # i, f, g, o from minicap's i, f, o, g
            with torch.no_grad():
                self.cell.weight_ih.copy_(torch.tensor(model.params["Wx"][:, order].T))
                self.cell.weight_hh.copy_(torch.tensor(model.params["Wh"][:, order].T))
                self.cell.bias_ih.copy_(torch.tensor(model.params["b"][order]))
                self.cell.bias_hh.zero_()

        def forward(self, a, captions):
            P = self.P
            words_in, targets = captions[:, :-1], captions[:, 1:]
            mask = torch.tensor(target_mask(targets.numpy()))
            lengths = torch.where(mask.any(1), T - torch.argmax(mask.flip(1).int(), 1), torch.zeros(len(mask)).long())
            proj = a @ P["U_att"] + P["b_att"]
            mean = a.mean(1)
            h, c = torch.tanh(mean @ P["W_h0"] + P["b_h0"]), torch.tanh(mean @ P["W_c0"] + P["b_c0"])
            x = P["W_embed"][words_in]
            hs, alphas = [], []
            for t in range(T):
                s = torch.tanh(proj + (h @ P["W_att"])[:, None, :])
                alpha = torch.softmax(s @ P["w_att"], dim=1)
                z = torch.bmm(alpha[:, None, :], a)[:, 0]
                beta = torch.sigmoid(h @ P["w_beta"] + P["b_beta"])[:, None]
                h_new, c_new = self.cell(torch.cat([x[:, t], beta * z], 1), (h, c))
                keep = (t < lengths)[:, None]
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
                hs.append(h)
                alphas.append(alpha * keep)
            hs, alphas = torch.stack(hs, 1), torch.stack(alphas, 1)
            logits = hs[mask] @ P["W_vocab"] + P["b_vocab"]  # only the real positions, as minicap's fast loss
            loss = tnn.functional.cross_entropy(logits, targets[mask], reduction="sum") / len(captions)
            gap = 1.0 - (alphas * mask[:, :, None]).sum(1)
            return loss + REG * (gap * gap).sum() / len(captions)

    net = TorchAttention()
    return net, torch.optim.Adam(net.parameters(), lr=LR)


def torch_step(net, opt, a, captions):
    import torch

    opt.zero_grad(set_to_none=True)
    loss = net(a, captions)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
    opt.step()
    return loss


def check_same_maths(model: AttentionCaptionModel, a: np.ndarray, captions: np.ndarray) -> float:
    """minicap's loss and dWh against PyTorch's from the same parameters: the largest relative difference."""
    import torch

    net, _ = make_torch(model, ARGS.threads)
    loss_t = net(torch.tensor(a), torch.tensor(captions))
    loss_t.backward()
    model.fast = False
    loss, grads = model.loss(a, captions)
    order = np.r_[0:H, H : 2 * H, 3 * H : 4 * H, 2 * H : 3 * H]
    dWh_t = net.cell.weight_hh.grad.numpy().T
    dWh = grads["Wh"][:, order]
    checks = [
        abs(float(loss) - loss_t.item()) / abs(loss_t.item()),
        float(np.abs(dWh - dWh_t).max() / np.abs(dWh_t).max()),
        float(np.abs(grads["U_att"] - net.P["U_att"].grad.numpy()).max() / np.abs(grads["U_att"]).max()),
    ]
    return max(checks)


# ------------------------------------------------------------------------------------------------ timing


def minicap_step(model, opt, a, captions):
    loss, grads = model.loss(a, captions)
    clip_grad_norm(grads, CLIP)
    opt.step(model.params, grads)
    return loss


def main() -> None:
    import torch

    load = os.getloadavg()
    result = {
        "benchmark": "attention training step",
        "shape": {"N": N, "T": T, "L": L, "F": F, "A": A, "H": H, "W": W},
        "threads": ARGS.threads,
        "repeats": ARGS.repeats,
        "steps": ARGS.steps,
        "machine": platform.machine(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "loadavg_start": round(load[0], 2),
        "vocab": {},
    }
    print(
        f"attention training step (loss, grads, clip, Adam), N={N} T={T} L={L} F={F} A={A} H={H} W={W}, float32, "
        f"{ARGS.threads} thread(s); {ARGS.repeats} interleaved repeats × {ARGS.steps} steps; load {load[0]:.2f}"
    )
    for V in ARGS.vocab:
        a, captions = make_batch(V)
        model = AttentionCaptionModel(V, F, W, H, A, reg=REG, seed=0)
        diff = check_same_maths(model.astype(np.float32), a, captions)
        readable = model.copy()
        readable.fast = False
        fast = model.copy()
        fast.fast = True
        net, topt = make_torch(model, ARGS.threads)
        ta, tcap = torch.tensor(a), torch.tensor(captions)
        runners = {
            "readable": functools.partial(minicap_step, readable, Adam(lr=LR), a, captions),
            "fast": functools.partial(minicap_step, fast, Adam(lr=LR), a, captions),
            "torch": functools.partial(torch_step, net, topt, ta, tcap),
        }
        for run in runners.values():  # warm-up
            run()
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(ARGS.repeats):
            for name, run in runners.items():
                t0 = time.perf_counter()
                for _ in range(ARGS.steps):
                    run()
                times[name].append((time.perf_counter() - t0) / ARGS.steps)
        sps = {k: N / float(np.median(v)) for k, v in times.items()}
        row = {
            **{f"{k}_seq_per_s": round(v, 1) for k, v in sps.items()},
            **{f"{k}_ms_min_max": [round(1e3 * min(v), 1), round(1e3 * max(v), 1)] for k, v in times.items()},
            "fast_over_torch": round(sps["fast"] / sps["torch"], 3),
            "readable_over_torch": round(sps["readable"] / sps["torch"], 3),
            "max_rel_diff_vs_torch": diff,
        }
        result["vocab"][str(V)] = row
        print(
            f"V={V}: readable {sps['readable']:.1f} seq/s, fast {sps['fast']:.1f} seq/s, PyTorch {sps['torch']:.1f} "
            f"seq/s; fast / PyTorch {row['fast_over_torch']:.2f}×, readable / PyTorch "
            f"{row['readable_over_torch']:.2f}× (same maths as PyTorch: max rel diff {diff:.1e})"
        )
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""One full captioning training step — forward, backward, clip, Adam — in minicap and (if installed) PyTorch;
with --reference, minicap's readable path against its fast path.

    python benchmarks/bench_train_step.py [--repeats 7] [--steps 3] [--vocab 1000 10000] [--threads 2]
    python benchmarks/bench_train_step.py --reference [--repeats 5] [--steps 1]

Shape of the step (the issue's reference setting): N=128 captions, T=16 words, word vectors W=256, hidden H=512,
image features F=1280, vocabulary V ∈ {1000, 10000}, float32, LSTM. Two kinds of batch, both frameworks get the
same arrays:
- "coco": caption lengths drawn from the real distribution of COCO val2017 (minicap.text.tokenize, capped at
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
- the same step in PyTorch (benchmarks/torch_captioner.py, started from minicap's initial parameters; the first
  loss of each is checked against minicap's), clip_grad_norm_, Adam, with the same thread count, two recipes:
  "packed" — pack_padded_sequence + nn.LSTM, vocabulary projection and cross-entropy only on the packed positions
  (what a PyTorch user who cares about speed writes: THE PEER TO BEAT) — and "padded" — nn.LSTM over the padded
  batch, every position scored, the loss masked afterwards; the ratio minicap / PyTorch for each;
- the ceiling beside each ratio: the step's matrix-product FLOPs at this run's GEMM rate (the fastest minicap could
  be if every product ran at the GEMM rate and nothing else took time), relative to that PyTorch recipe.
The last line is one JSON object with all figures.

With --reference (instead of the above): minicap against itself on the same batches, float32, medians of
interleaved repeats, ms per call and ratios from the same run:
- the training step's loss + grads (`CaptionModel.loss`, no optimiser) with model.fast = False (the readable
  loops of minicap.nn) and model.fast = True (minicap.nn.fast, the LSTM packed end to end), and ratio readable /
  fast; in the same repeats the fast step not packed (model.packed = False: nn.fast's (N, T, ·) functions) and two
  such unpacked steps with one more trick switched off: the vocabulary loss of the readable path (`nn.words_loss`, every
  position scored: trick 6 off) and, on COCO-length batches, the recurrence without `lengths` (every caption
  runs all T steps, the weight products take every row: trick 5 off);
- the pieces alone at the same size: nn.lstm_forward + nn.lstm_backward against nn.fast's (and the same for
  the RNN), with lengths and (for "full") without; for the LSTM also nn.fast with trick 1 off (x_t Wx inside
  the loop) and with trick 2 off (dx, dWx, dWh, db inside the backward loop), copies of nn.fast's loops in this
  file that differ only there; nn.words_loss against nn.fast.words_loss, forward + backward.
The tricks are those listed in minicap/nn/fast.py; 3 (time-major buffers) and 4 (in-place activations) are not
measured alone.
Before timing, the readable and fast step are checked to give the same loss and gradients (float32 rounding).
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
    p.add_argument(
        "--reference",
        action="store_true",
        help="instead: minicap's readable path (model.fast = False) against its fast path, and the pieces alone",
    )
    return p.parse_args()


ARGS = parse_args()
# Thread counts must be fixed before NumPy (OpenBLAS) and torch are imported.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import types  # noqa: E402

import numpy as np  # noqa: E402

from minicap import nn  # noqa: E402
from minicap.models import CaptionModel  # noqa: E402
from minicap.optim import Adam, clip_grad_norm  # noqa: E402
from minicap.tokens import END, START, target_mask  # noqa: E402

N, T, W, H, F = 128, 16, 256, 512, 1280
CLIP = 5.0


# How many COCO val2017 captions have 0, 1, …, 16 positions (words + <END>, at most 15 words kept): the
# histogram of the 25,014 captions of captions_val2017_full.json tokenized by minicap.text.tokenize.
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
    captions[:, 0] = START
    for n, length in enumerate(lengths):
        captions[n, 1:length] = rng.integers(4, V, size=length - 1)  # ordinary words (ids after the 4 specials)
        captions[n, length] = END
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


def torch_step_fn(V: int, kind: str, threads: int, recipe: str):
    """One PyTorch training step (forward, backward, clip_grad_norm_, Adam) of `recipe` ("packed" or "padded",
    benchmarks/torch_captioner.py) from minicap's initial parameters; and the relative difference of its first
    loss from minicap's on the same batch (the two compute the same thing)."""
    import torch
    from torch_captioner import TorchCaptioner

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    like = CaptionModel(V, F, W, H, cell="lstm", dtype=np.float32, seed=0)
    model = TorchCaptioner(V, F, W, H, recipe).copy_from(like)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    features_np, captions_np, lengths_np = make_batch(V, kind)
    features, captions = torch.from_numpy(features_np), torch.from_numpy(captions_np)
    lengths = torch.from_numpy(lengths_np.astype(np.int64))
    with torch.no_grad():
        loss_torch = float(model(features, captions, lengths))
    loss_minicap = float(like.loss(features_np, captions_np, backward=False)[0])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(features, captions, lengths)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()

    return step, abs(loss_torch - loss_minicap) / abs(loss_minicap)


def summarise(times: list[float]) -> dict[str, float]:
    sps = [N / t for t in times]
    return {"seq_per_s": float(np.median(sps)), "seq_per_s_min": float(min(sps)), "seq_per_s_max": float(max(sps))}


# ------------------------------------------------------------------------------ --reference: readable vs fast


class _StepWith(CaptionModel):
    """A CaptionModel that runs the sequence functions of `module` (for one trick of nn.fast switched off)."""

    def __init__(self, like: CaptionModel, module: types.SimpleNamespace | None) -> None:
        self.__dict__.update(like.__dict__)  # the same configuration and the SAME parameter arrays
        self._module = nn.fast if module is None else module
        self.packed = False  # the (N, T, ·) fast functions, with one trick switched off
        self._workspace = None

    @property
    def sequence(self) -> types.SimpleNamespace:
        return self._module


def _ignoring_lengths(fn):
    """`fn` (a fast sequence forward) called without `lengths`: every sequence runs all T steps."""

    def forward(*args, lengths=None, **kwargs):
        return fn(*args, **kwargs)

    return forward


# nn.fast with trick 5 (packed lengths) off, and with trick 6 (vocabulary loss only on counted positions) off.
FAST_WITHOUT_LENGTHS = types.SimpleNamespace(
    lstm_forward=_ignoring_lengths(nn.fast.lstm_forward),
    lstm_backward=nn.fast.lstm_backward,
    rnn_forward=_ignoring_lengths(nn.fast.rnn_forward),
    rnn_backward=nn.fast.rnn_backward,
    words_loss=nn.fast.words_loss,
)
FAST_WITH_READABLE_LOSS = types.SimpleNamespace(
    lstm_forward=nn.fast.lstm_forward,
    lstm_backward=nn.fast.lstm_backward,
    rnn_forward=nn.fast.rnn_forward,
    rnn_backward=nn.fast.rnn_backward,
    words_loss=nn.words_loss,
)


def lstm_forward_input_per_step(x, h0, Wx, Wh, b, c0=None, lengths=None):
    """nn.fast.lstm_forward with trick 1 off: x_t Wx is computed inside the loop, one small product per step
    (everything else as in nn.fast: time-major buffers, in-place activations, packed lengths)."""
    N, T, D = x.shape
    H = h0.shape[1]
    active = nn.fast.active_counts(lengths, N, T)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    gates = np.empty((T, N, 4 * H), dtype=x.dtype)
    h, c = np.empty((T + 1, N, H), dtype=x.dtype), np.empty((T + 1, N, H), dtype=x.dtype)
    tanh_c = np.zeros((T, N, H), dtype=x.dtype)
    recurrent, i_g = np.empty((N, 4 * H), dtype=x.dtype), np.empty((N, H), dtype=x.dtype)
    h[0] = h0
    c[0] = 0.0 if c0 is None else c0
    for t in range(T):
        n = active[t]
        a = gates[t, :n]
        np.matmul(xt[t, :n], Wx, out=a)  # the input product of this step only (trick 1 off)
        a += b
        np.matmul(h[t, :n], Wh, out=recurrent[:n])
        a += recurrent[:n]
        nn.sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])
        np.tanh(a[:, 3 * H :], out=a[:, 3 * H :])
        np.multiply(a[:, H : 2 * H], c[t, :n], out=c[t + 1, :n])
        c[t + 1, :n] += np.multiply(a[:, :H], a[:, 3 * H :], out=i_g[:n])
        np.tanh(c[t + 1, :n], out=tanh_c[t, :n])
        np.multiply(a[:, 2 * H : 3 * H], tanh_c[t, :n], out=h[t + 1, :n])
        h[t + 1, n:], c[t + 1, n:] = h[t, n:], c[t, n:]
    return h[1:].transpose(1, 0, 2).copy(), nn.fast.FastLSTMCache(xt, gates, c, tanh_c, h, Wx, Wh, active)


def lstm_backward_weights_per_step(dh, cache, dh_last=None, dc_last=None):
    """nn.fast.lstm_backward with trick 2 off: dx_t, dWx, dWh, db are computed inside the loop, small products
    per step, instead of one GEMM each after it (`nn.fast.gradients_after_bptt`)."""
    T, N, D = cache.x.shape
    H = cache.h.shape[2]
    dh_tm = dh.transpose(1, 0, 2)
    da_buf = np.empty((N, 4 * H), dtype=dh.dtype)
    dx = np.zeros((N, T, D), dtype=dh.dtype)
    dWx, dWh = np.zeros_like(cache.Wx), np.zeros_like(cache.Wh)
    db = np.zeros(4 * H, dtype=dh.dtype)
    dnext_h = np.zeros((N, H), dtype=dh.dtype)
    dnext_c = np.zeros((N, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        n = cache.active[t]
        gates = cache.gates[t, :n]
        i, f, o, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        tanh_c = cache.tanh_c[t, :n]
        da = da_buf[:n]
        dnext_h += dh_tm[t]
        dh_t, dc = dnext_h[:n], dnext_c[:n]
        dc += dh_t * o * (1.0 - tanh_c * tanh_c)
        np.multiply(dc, g, out=da[:, :H])
        np.multiply(dc, cache.c[t, :n], out=da[:, H : 2 * H])
        np.multiply(dh_t, tanh_c, out=da[:, 2 * H : 3 * H])
        np.multiply(dc, i, out=da[:, 3 * H :])
        s = gates[:, : 3 * H]
        da[:, : 3 * H] *= s * (1.0 - s)
        da[:, 3 * H :] *= 1.0 - g * g
        dc *= f
        dx[:n, t] = da @ cache.Wx.T  # the weight products of this step (trick 2 off)
        dWx += cache.x[t, :n].T @ da
        dWh += cache.h[t, :n].T @ da
        db += da.sum(axis=0)
        np.matmul(da, cache.Wh.T, out=dh_t)
    return nn.LSTMGrads(dx, dnext_h, dnext_c, dWx, dWh, db)


# nn.fast's LSTM with trick 1 (one GEMM for all inputs) off, and with trick 2 (one GEMM each after the loop) off.
FAST_INPUT_PER_STEP = types.SimpleNamespace(
    lstm_forward=lstm_forward_input_per_step, lstm_backward=nn.fast.lstm_backward
)
FAST_WEIGHTS_PER_STEP = types.SimpleNamespace(
    lstm_forward=nn.fast.lstm_forward, lstm_backward=lstm_backward_weights_per_step
)


def loss_step_fns(V: int, kind: str) -> tuple[dict, float]:
    """{name: one loss + grads call} on the same batch and parameters, and the largest relative difference between
    the readable and the fast path's loss and gradients (float32)."""
    fast = CaptionModel(V, F, W, H, cell="lstm", dtype=np.float32, seed=0)
    readable = CaptionModel(V, F, W, H, cell="lstm", dtype=np.float32, seed=0)
    readable.fast = False
    features, captions, _ = make_batch(V, kind)
    loss_r, grads_r = readable.loss(features, captions)
    loss_f, grads_f = fast.loss(features, captions)
    diff = max(
        abs(float(loss_r) - float(loss_f)) / abs(float(loss_r)),
        *(float(np.abs(grads_r[k] - grads_f[k]).max() / (np.abs(grads_r[k]).max() + 1e-30)) for k in grads_r),
    )
    models = {
        "readable": readable,
        "fast": fast,
        "fast, not packed": _StepWith(fast, None),  # nn.fast's (N, T, ·) functions: what packing buys
        "fast, readable words_loss": _StepWith(fast, FAST_WITH_READABLE_LOSS),
    }
    if kind == "coco":  # with every caption 16 long, lengths change nothing
        models["fast, no lengths"] = _StepWith(fast, FAST_WITHOUT_LENGTHS)
    return {name: (lambda m=m: m.loss(features, captions)) for name, m in models.items()}, diff


def sequence_fns(cell: str, kind: str) -> dict:
    """{"readable": forward + backward with nn, "fast": with nn.fast} of one cell at the step's size (D = W), the
    batch's lengths sorted longest first (as CaptionModel.loss sorts them); for "full" also the fast path
    without lengths (all N·T rows run either way: what the check of `lengths` costs); for the LSTM also the fast
    path with trick 1 off (x_t Wx inside the loop) and with trick 2 off (dx, dWx, dWh, db inside the loop)."""
    rng = np.random.default_rng(1)
    G = 4 * H if cell == "lstm" else H
    lengths = np.sort(make_batch(1000, kind)[2])[::-1].copy()
    x = rng.standard_normal((N, T, W)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((N, H))).astype(np.float32)
    Wx = (rng.standard_normal((W, G)) / np.sqrt(W)).astype(np.float32)
    Wh = (rng.standard_normal((H, G)) / np.sqrt(H)).astype(np.float32)
    b = np.zeros(G, np.float32)
    dh = rng.standard_normal((N, T, H)).astype(np.float32)
    dh *= np.arange(T)[None, :, None] < lengths[:, None, None]  # no gradient from padded positions (as the loss)

    def run(module, lengths):
        forward = getattr(module, f"{cell}_forward")
        backward = getattr(module, f"{cell}_backward")
        return lambda: backward(dh, forward(x, h0, Wx, Wh, b, lengths=lengths)[1])

    fns = {"readable": run(nn, lengths), "fast": run(nn.fast, lengths)}
    if kind == "full":
        fns["fast, lengths=None"] = run(nn.fast, None)
    if cell == "lstm":
        fns["fast, x·Wx per step"] = run(FAST_INPUT_PER_STEP, lengths)
        fns["fast, dW per step"] = run(FAST_WEIGHTS_PER_STEP, lengths)
    return fns


def words_loss_fns(V: int, kind: str) -> dict:
    """{"readable": nn.words_loss, "fast": nn.fast.words_loss}, forward + backward, on the step's shapes."""
    rng = np.random.default_rng(2)
    _, captions, _ = make_batch(V, kind)
    targets = captions[:, 1:]
    mask = target_mask(targets)
    h = (0.5 * rng.standard_normal((N, T, H))).astype(np.float32)
    W_vocab = (rng.standard_normal((H, V)) / np.sqrt(H)).astype(np.float32)
    b_vocab = np.zeros(V, np.float32)
    return {
        name: (lambda fn=fn: fn(h, targets, mask, W_vocab, b_vocab, 1.0 / N))
        for name, fn in (("readable", nn.words_loss), ("fast", nn.fast.words_loss))
    }


def ms(times: list[float]) -> dict[str, float]:
    return {"ms": 1e3 * float(np.median(times)), "ms_min": 1e3 * min(times), "ms_max": 1e3 * max(times)}


def report_group(label: str, fns: dict, baseline: str = "fast") -> dict[str, object]:
    """Time `fns` interleaved; print each one's median ms (min–max) and its ratio to `baseline`."""
    times = time_interleaved(fns, ARGS.repeats, ARGS.steps)
    entry: dict[str, object] = {}
    base = np.median(times[baseline])
    for name, t in times.items():
        entry[name] = ms(t)
        ratio = float(np.median(t) / base)
        if name != baseline:
            entry[f"{name} / {baseline}"] = ratio
        r = ms(t)
        suffix = "" if name == baseline else f"   {name} / {baseline} = {ratio:.2f}×"
        print(f"  {label:<22} {name:<26} {r['ms']:8.1f} ms  ({r['ms_min']:.1f}–{r['ms_max']:.1f}){suffix}", flush=True)
    return entry


def main_reference() -> None:
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, threads={ARGS.threads}, NumPy {np.__version__}")
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other processes may be running)")
    print(
        f"readable (model.fast = False, minicap.nn) vs fast (minicap.nn.fast): N={N} T={T} W={W} H={H} F={F} "
        f"float32 LSTM; {ARGS.repeats} interleaved repeats × {ARGS.steps} calls, median ms per call (min–max)"
    )
    result: dict[str, object] = {"N": N, "T": T, "W": W, "H": H, "F": F, "threads": ARGS.threads, "mode": "reference"}
    result["loadavg_start"] = round(load[0], 2)
    print("training step, loss + grads (CaptionModel.loss):")
    for V in ARGS.vocab:
        for kind in ("coco", "full"):
            fns, diff = loss_step_fns(V, kind)
            label = f"V={V} {kind}"
            print(f"  {label:<22} readable vs fast: largest relative difference of loss/grads {diff:.1e}")
            entry = report_group(label, fns)
            entry["max_relative_difference"] = diff
            result[f"step V={V} {kind}"] = entry
    print("sequence functions alone, forward + backward (D = W):")
    for cell in ("lstm", "rnn"):
        for kind in ("coco", "full"):
            result[f"{cell} {kind}"] = report_group(f"{cell} {kind}", sequence_fns(cell, kind))
    print("vocabulary loss alone, forward + backward (nn.words_loss vs nn.fast.words_loss):")
    for V in ARGS.vocab:
        for kind in ("coco", "full"):
            result[f"words_loss V={V} {kind}"] = report_group(f"words_loss V={V} {kind}", words_loss_fns(V, kind))
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    result["loadavg_end"] = round(load[0], 2)
    print(json.dumps(result))


def main() -> None:
    if ARGS.reference:
        main_reference()
        return
    torch_available = False
    if not ARGS.no_torch:
        try:
            import torch

            torch_available = True
        except ImportError:
            print("torch not importable: PyTorch comparison skipped (pip install torch==2.13.0 to include it)")

    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, threads={ARGS.threads}, NumPy {np.__version__}")
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"step: N={N} T={T} W={W} H={H} F={F} float32 LSTM, clip {CLIP}, Adam; {ARGS.repeats} repeats × {ARGS.steps}")
    if torch_available:
        print(
            f"PyTorch {torch.__version__}: 'packed' = pack_padded_sequence + nn.LSTM, loss on packed positions only "
            "(the peer to beat); 'padded' = nn.LSTM on the padded batch, loss masked afterwards. ceiling = the step's "
            "matrix-product FLOPs at this run's GEMM rate, relative to packed PyTorch (the best minicap / packed "
            "could be)"
        )
    result: dict[str, object] = {"N": N, "T": T, "W": W, "H": H, "F": F, "threads": ARGS.threads}
    result["loadavg_start"] = round(load[0], 2)
    if torch_available:
        result["torch_version"] = torch.__version__

    for V in ARGS.vocab:
        for kind in ("coco", "full"):
            lengths = make_batch(V, kind)[2]
            gflop = step_gflop(V, lengths)
            fns = {"minicap": minicap_step_fn(V, kind), "gemm": gemm_fn()}
            loss_diff = {}
            if torch_available:
                for recipe in ("packed", "padded"):
                    fns[f"torch {recipe}"], loss_diff[recipe] = torch_step_fn(V, kind, ARGS.threads, recipe)
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
                "ideal_seq_per_s": N * gemm / gflop,
            }
            print(
                f"V={V:>5} {kind:>4}: minicap {mini['seq_per_s']:6.1f} seq/s "
                f"({mini['seq_per_s_min']:.1f}–{mini['seq_per_s_max']:.1f})  {gflops:5.1f} GFLOP/s = "
                f"{gflops / gemm:4.0%} of GEMM ({gemm:.0f} GFLOP/s; ideal {N * gemm / gflop:.0f} seq/s)"
            )
            for recipe in ("packed", "padded") if torch_available else ():
                peer = summarise(times[f"torch {recipe}"])
                ratio = mini["seq_per_s"] / peer["seq_per_s"]
                ceiling = entry["ideal_seq_per_s"] / peer["seq_per_s"]
                entry[f"torch_{recipe}"] = peer
                entry[f"ratio_vs_{recipe}"] = ratio
                entry[f"ceiling_vs_{recipe}"] = ceiling
                entry[f"loss_rel_diff_{recipe}"] = loss_diff[recipe]
                print(
                    f"{'':13}PyTorch {recipe:<6} {peer['seq_per_s']:6.1f} seq/s "
                    f"({peer['seq_per_s_min']:.1f}–{peer['seq_per_s_max']:.1f})  minicap/PyTorch {recipe} = "
                    f"{ratio:.2f}×  (ceiling {ceiling:.2f}×; first loss differs from minicap's by "
                    f"{loss_diff[recipe]:.0e})",
                    flush=True,
                )
            result[f"V={V} {kind}"] = entry
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    result["loadavg_end"] = round(load[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

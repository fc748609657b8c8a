"""The caption model's packed path: the LSTM step of `CaptionModel.loss` (when model.fast), packed end to end.

The functions of `fast.py` keep the (N, T, ·) interface of the readable path. The caption model's fast step goes one
layout further, as PyTorch's PackedSequence does: every array of the step holds only the K positions that run,
time-major (step t's n_t running captions are rows offsets[t] … offsets[t+1]−1). Nothing is ever transposed,
gathered or scattered between the pieces, no work is spent on padding (not even in the input GEMM or dx), and
the vocabulary loss reads its rows straight from the LSTM's output.

Read `fast.py` first: this module is its tricks 7–11, continuing the numbered list there (1–6 are the unpacked
fast path's). Measured as whole training steps (loss + clip + Adam), each idea switched off alone, interleaved, on
the idle 2-core machine (load < 2 under the shared lock; N=128, T=16, W=256, H=512, F=1280, float32, 2 BLAS
threads; V=1000 / 10000, COCO-length / full batches; raw outputs and commands in the README's "Speed"):

7. Packed end to end: every array of the step holds only the K positions that run, time-major — the input GEMM,
   the gates, h, the vocabulary loss, dx and the weight gradients — so nothing is transposed, gathered, scattered
   or zero-filled between the pieces, and no product touches padding. Measured with 8: 1.25× (V=1000 coco) and
   1.13× (full) over the unpacked fast path; 1.12× and 1.07× at V=10000.
8. A `Workspace` of arrays reused from step to step: 0 minor page faults per step instead of 3,000–4,500.
   Measured: 1.06–1.13× (every setting).
9. The vocabulary loss's arithmetic (+ b, log-softmax, loss, its gradient) in blocks of ~1 MB of scores, so all
   passes but the first run in cache; the three products stay ONE GEMM each over all K rows (blocks of 26 rows
   for the products too measured 0.65× at V=10000: small products are slow). Measured: 1.04–1.05× at
   V=10000, 1.01–1.02× at V=1000.
10. σ(x) = ½ tanh(½x) + ½ for the gates (`sigmoid_by_tanh`): NumPy's float32 tanh is vectorised here, about 2×
    faster than the clamped 1 / (1 + e^(−x)) on a gate block. Measured: 1.01–1.02× (every setting).
11. db_vocab = 1ᵀ dscores as one matrix-vector product (BLAS threads) instead of a column sum. Measured: 1.02×
    at V=10000, 1.00× at V=1000.
(And outside this file, Adam in cache-sized pieces, `minicap.optim.Adam.chunk`: 1.02× at V=1000, 1.03–1.07× at
V=10000.)
Tried and left off: the gate and softmax arithmetic split by rows over a thread pool (`RowPool`, sized by the
BLAS thread count) measured 0.98–1.00× with 2 threads — OpenBLAS's worker busy-waits on the second core after
every product (with OPENBLAS_THREAD_TIMEOUT=4, which makes it sleep almost at once, the pool measured 1.03×;
a library should not retune the process's BLAS) — so `shared_pool()` is one thread unless `set_threads` asks.

Every public name here is also `minicap.nn.fast.<name>`. But `CaptionModel` calls the functions of THIS module,
and they read the module-level switches here (`_gate_sigmoid`, `_DB_BY_GEMV`, `_shared`): a benchmark or test that
swaps a function or a switch must assign it on `minicap.nn.fast_packed` (on `minicap.nn.fast` it changes nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from minicap.nn.packing import Packing

__all__ = [
    "Workspace",
    "RowPool",
    "blas_threads",
    "shared_pool",
    "set_threads",
    "sigmoid_by_tanh",
    "PackedLSTMCache",
    "lstm_forward_packed",
    "lstm_backward_packed",
    "words_loss_packed",
]


class Workspace:
    """Arrays kept from one call to the next, so a training step in steady state allocates (almost) nothing.

    `get(name, shape, dtype)` returns an uninitialised array viewed from a flat buffer that is reused while it is
    large enough (packed sizes change from batch to batch, so each buffer grows to the largest seen, with 10%
    room). Only arrays that never leave the step live here: whatever a call returns to its caller (gradients) is
    freshly allocated. NumPy allocates arrays this large with mmap and frees them with munmap, so without reuse
    every step page-faults its temporaries in again (and the kernel zeroes each page).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = np.empty(max(size + size // 10, 1), dtype=dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


class _Fresh(Workspace):
    """A workspace that allocates a new array on every request (the `workspace=None` default)."""

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)


class RowPool:
    """Elementwise work split by rows over a few threads: NumPy's ufuncs release the GIL, so while the main
    thread works on the first block of rows, the pool's threads work on the others, one block each.

    `run(fn, n)` calls fn(lo, hi) on `threads` disjoint row ranges covering 0 … n−1 and returns when all are
    done. Blocks smaller than `min_rows` are not split (the hand-over costs tens of microseconds). threads=1
    runs fn(0, n) on the calling thread: no pool, no threads.
    """

    def __init__(self, threads: int, min_rows: int = 16) -> None:
        self.threads = max(1, int(threads))
        self.min_rows = min_rows
        self._executor = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def run(self, fn: Callable[[int, int], object], n: int, min_rows: int | None = None) -> list:
        parts = min(self.threads, max(1, n // (min_rows or self.min_rows)))
        if parts == 1 or self._executor is None:
            return [fn(0, n)]
        bounds = [n * k // parts for k in range(parts + 1)]
        futures = [self._executor.submit(fn, bounds[k], bounds[k + 1]) for k in range(1, parts)]
        first = fn(bounds[0], bounds[1])
        return [first] + [f.result() for f in futures]


def blas_threads() -> int:
    """The BLAS thread count as the environment sets it (OPENBLAS_NUM_THREADS, then OMP_NUM_THREADS), else the
    number of CPUs: the cores a step's matrix products use, and so the size of the elementwise pool."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def sigmoid_by_tanh(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """σ(x) = ½ tanh(½ x) + ½: the same function as `sigmoid` (which clamps, then computes 1 / (1 + e^(−x))), in
    four passes instead of five and without overflow for any x (tanh saturates at ±1). NumPy's float32 tanh is
    vectorised on this machine (AVX-512): measured about 2× faster than `sigmoid` on a (128, 1536) gate block."""
    np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


_SERIAL = RowPool(1)
_DB_BY_GEMV = True  # words_loss_packed's db as 1ᵀ dscores (False: dscores.sum(axis=0))
_gate_sigmoid = sigmoid_by_tanh  # the packed LSTM's σ (benchmarks may swap in `sigmoid` to measure it)
_shared: list[RowPool] = []


def shared_pool() -> RowPool:
    """The elementwise pool the caption model's fast path uses: OFF (one thread, no pool) unless `set_threads`
    turned it on, e.g. `set_threads(blas_threads())`. Measured with 2 threads on the 2-core machine: 0.98–1.00×
    the single-threaded step at every benchmark setting (see README "Speed") — after each matrix product
    OpenBLAS's worker thread busy-waits on the second core, so the pool's thread finds no free core (1.03× when
    OPENBLAS_THREAD_TIMEOUT=4 in the environment makes it sleep at once)."""
    if not _shared:
        _shared.append(RowPool(1))
    return _shared[0]


def set_threads(threads: int, min_rows: int = 16) -> None:
    """Size the shared elementwise pool (1: no threads, everything on the calling thread)."""
    _shared[:] = [RowPool(threads, min_rows)]


class PackedLSTMCache(NamedTuple):
    """What `lstm_backward_packed` needs; every array packed (K rows, see `Packing`)."""

    x: np.ndarray  # (K, D) inputs
    gates: np.ndarray  # (K, 4H) activated gates [i, f, o, g]
    c: np.ndarray  # (K, H) cells c_t
    tanh_c: np.ndarray  # (K, H) tanh(c_t)
    h_prev: np.ndarray  # (K, H) the state each row read: h_{t−1} (h0 for step 0)
    c0: np.ndarray  # (N, H)
    Wx: np.ndarray
    Wh: np.ndarray
    packing: Packing


def lstm_forward_packed(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    packing: Packing,
    c0: np.ndarray | None = None,
    workspace: Workspace | None = None,
    pool: RowPool | None = None,
) -> tuple[np.ndarray, PackedLSTMCache]:
    """`lstm_forward` on packed inputs. x: (K, D) packed rows (see `Packing`), h0 (N, H), c0 (N, H) or None
    (zeros)  ->  h: (K, H), the hidden state of every packed position, and the cache.

    The equations of `lstm_step_forward`; step t multiplies only its n_t running rows, and so does the input GEMM
    (one product over the K packed rows). The gate arithmetic of a step runs over `pool` by rows.
    h and the cache live in `workspace` (valid until its next use).
    """
    ws, pool = workspace or _Fresh(), pool or _SERIAL
    K, D = x.shape
    N, H = h0.shape
    dtype = x.dtype
    sizes, offsets = packing.batch_sizes, packing.offsets
    gates = ws.get("gates", (K, 4 * H), dtype)
    np.matmul(x, Wx, out=gates)  # x_t Wx for every packed row at once,
    gates += b  # + b, in place
    h = ws.get("h", (K, H), dtype)
    h_prev = ws.get("h_prev", (K, H), dtype)
    c = ws.get("c", (K, H), dtype)
    tanh_c = ws.get("tanh_c", (K, H), dtype)
    recurrent = ws.get("recurrent", (N, 4 * H), dtype)
    scratch = ws.get("scratch", (N, H), dtype)
    c0 = np.zeros((N, H), dtype=dtype) if c0 is None else c0
    if sizes.size:
        h_prev[: sizes[0]] = h0[: sizes[0]]
    for t in range(sizes.size):
        n, r0, r1 = sizes[t], offsets[t], offsets[t + 1]
        if n == 0:
            break
        np.matmul(h_prev[r0:r1], Wh, out=recurrent[:n])
        c_prev = c0[:n] if t == 0 else c[offsets[t - 1] : offsets[t - 1] + n]

        def gate_maths(lo: int, hi: int, r0: int = r0, c_prev: np.ndarray = c_prev) -> None:
            a = gates[r0 + lo : r0 + hi]  # activated in place, so the buffer IS the cache
            a += recurrent[lo:hi]  # a = x_t Wx + b + h_{t−1} Wh
            _gate_sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])  # i, f, o
            np.tanh(a[:, 3 * H :], out=a[:, 3 * H :])  # g
            i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            c_t, tanh_c_t = c[r0 + lo : r0 + hi], tanh_c[r0 + lo : r0 + hi]
            np.multiply(f, c_prev[lo:hi], out=c_t)
            c_t += np.multiply(i, g, out=scratch[lo:hi])  # c_t = f ⊙ c_{t−1} + i ⊙ g
            np.tanh(c_t, out=tanh_c_t)
            np.multiply(o, tanh_c_t, out=h[r0 + lo : r0 + hi])  # h_t = o ⊙ tanh(c_t)

        pool.run(gate_maths, n)
        if t + 1 < sizes.size and sizes[t + 1]:
            h_prev[r1 : r1 + sizes[t + 1]] = h[r0 : r0 + sizes[t + 1]]  # what step t+1 reads
    return h, PackedLSTMCache(x, gates, c, tanh_c, h_prev, c0, Wx, Wh, packing)


def lstm_backward_packed(
    dh: np.ndarray, cache: PackedLSTMCache, workspace: Workspace | None = None, pool: RowPool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`lstm_backward` on packed rows. dh: (K, H) upstream gradient of every packed output (OVERWRITTEN: the
    gradient from the next step is added into it). Returns (dx (K, D), dh0 (N, H), dc0 (N, H), dWx, dWh, db).

    The loop carries (dh, dc) back through time and stores da_t (its gate arithmetic over `pool` by rows); dx,
    dWx, dWh, db are one GEMM (sum) each over the K packed rows after it — no padded row to skip or gather.
    """
    ws, pool = workspace or _Fresh(), pool or _SERIAL
    K, D = cache.x.shape
    N, H = cache.c0.shape
    dtype = dh.dtype
    sizes, offsets = cache.packing.batch_sizes, cache.packing.offsets
    da_all = ws.get("dgates", (K, 4 * H), dtype)
    dh_carry = np.zeros((N, H), dtype=dtype)  # ∂L/∂h_{t−1} through Wh, from step t (becomes dh0)
    dc = np.zeros((N, H), dtype=dtype)  # ∂L/∂c_t from step t+1 (becomes dc0); rows not yet reached stay 0
    tmp = ws.get("scratch_b", (N, 3 * H), dtype)
    for t in reversed(range(sizes.size)):
        n, r0, r1 = sizes[t], offsets[t], offsets[t + 1]
        if n == 0:
            continue
        n_next = sizes[t + 1] if t + 1 < sizes.size else 0
        c_prev = cache.c0[:n] if t == 0 else cache.c[offsets[t - 1] : offsets[t - 1] + n]

        def gate_gradients(lo: int, hi: int, r0: int = r0, n_next: int = n_next, c_prev: np.ndarray = c_prev) -> None:
            dh_t = dh[r0 + lo : r0 + hi]
            carried = min(hi, n_next)  # rows that ran step t+1 too
            if lo < carried:
                dh_t[: carried - lo] += dh_carry[lo:carried]  # total ∂L/∂h_t
            gates = cache.gates[r0 + lo : r0 + hi]
            i, f, o, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
            tanh_c = cache.tanh_c[r0 + lo : r0 + hi]
            da, dc_t, u, v = da_all[r0 + lo : r0 + hi], dc[lo:hi], tmp[lo:hi, :H], tmp[lo:hi]
            np.multiply(tanh_c, tanh_c, out=u)
            np.subtract(1.0, u, out=u)
            u *= o
            u *= dh_t
            dc_t += u  # ∂L/∂c_t = dc from t+1 + dh_t ⊙ o ⊙ (1 − tanh²c_t)
            np.multiply(dc_t, g, out=da[:, :H])  # di
            np.multiply(dc_t, c_prev[lo:hi], out=da[:, H : 2 * H])  # df
            np.multiply(dh_t, tanh_c, out=da[:, 2 * H : 3 * H])  # do
            np.multiply(dc_t, i, out=da[:, 3 * H :])  # dg
            s = gates[:, : 3 * H]
            np.subtract(1.0, s, out=v)
            v *= s
            da[:, : 3 * H] *= v  # σ′ = σ(1 − σ)
            np.multiply(g, g, out=u)
            np.subtract(1.0, u, out=u)
            da[:, 3 * H :] *= u  # tanh′ = 1 − tanh²
            dc_t *= f  # ∂L/∂c_{t−1}

        pool.run(gate_gradients, n)
        np.matmul(da_all[r0:r1], cache.Wh.T, out=dh_carry[:n])  # ∂L/∂h_{t−1}
    dx = da_all @ cache.Wx.T
    dWx = cache.x.T @ da_all
    dWh = cache.h_prev.T @ da_all
    return dx, dh_carry, dc, dWx, dWh, da_all.sum(axis=0)


def words_loss_packed(
    h: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    W_vocab: np.ndarray,
    b_vocab: np.ndarray,
    backward: bool = True,
    block_rows: int | None = None,
    workspace: Workspace | None = None,
    pool: RowPool | None = None,
) -> tuple[np.floating, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """`words_loss` on packed rows: h (K, H), targets (K,) int, weights (K,) (0 where a position does not count).
    Returns (loss, (dh (K, H) in `workspace`, dW_vocab (H, V), db_vocab (V,))), or (loss, None).

    The three products (scores = h W_vocab, dh = dscores W_vocabᵀ, dW_vocab = hᵀ dscores) are one GEMM each over
    all K rows. The arithmetic between them (+ b, log-softmax, loss, softmax − onehot) walks the scores in blocks
    of `block_rows` rows (default: about 1 MB, so all its passes but the first run in the core's cache), the
    blocks shared out over `pool`.
    """
    ws, pool = workspace or _Fresh(), pool or _SERIAL
    K, H = h.shape
    V = W_vocab.shape[1]
    dtype = h.dtype
    B = block_rows or max(8, (1 << 20) // (dtype.itemsize * V))
    scores = ws.get("scores", (K, V), dtype)  # the scores, then their gradient, in place
    np.matmul(h, W_vocab, out=scores)
    row_max = ws.get("row_max", (K, 1), dtype)
    row_sum = ws.get("row_sum", (K,), dtype)

    starts = range(0, K, B)
    block_loss = ws.get("block_loss", (len(starts),), dtype)

    def softmax_blocks(first: int, last: int) -> None:
        for k in range(first, last):
            r0, r1 = starts[k], min(starts[k] + B, K)
            s, w, rows, tgt = scores[r0:r1], weights[r0:r1], np.arange(r1 - r0), targets[r0:r1]
            s += b_vocab
            np.max(s, axis=1, keepdims=True, out=row_max[r0:r1])
            s -= row_max[r0:r1]  # every exponent ≤ 0
            target_logit = s[rows, tgt]
            np.exp(s, out=s)
            np.sum(s, axis=1, out=row_sum[r0:r1])  # each ≥ 1
            block_loss[k] = -np.dot(w, target_logit - np.log(row_sum[r0:r1]))
            if backward:
                s *= (w / row_sum[r0:r1])[:, None]  # weights · softmax
                s[rows, tgt] -= w  # − weights · onehot

    pool.run(softmax_blocks, len(starts), min_rows=1)
    loss = block_loss.sum()  # the same blocks whatever the pool: the same sum
    if not backward:
        return loss, None
    dh = ws.get("dh", (K, H), dtype)
    np.matmul(scores, W_vocab.T, out=dh)
    if _DB_BY_GEMV:  # db = 1ᵀ dscores: a matrix-vector product, on the BLAS threads
        ones = ws.get("ones", (K,), dtype)
        ones[:] = 1.0
        db = ones @ scores
    else:
        db = scores.sum(axis=0)
    return loss, (dh, h.T @ scores, db)

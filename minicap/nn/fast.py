"""The FAST sequence paths: the same maths as `minicap.nn.rnn` / `minicap.nn.lstm`, rearranged for speed.

Read `rnn.py` and `lstm.py` first: there each sequence function is a plain loop over the step functions. The
functions here take the same arguments and return the same numbers (the tests prove forward ≤ 1e-12 and every
gradient ≤ 1e-10 apart in float64, with and without lengths, with carried state); training uses them. A model
switches between the two with one attribute (`model.fast`), as nanoGPT switches its attention.

The tricks, and what each bought, measured with `benchmarks/bench_train_step.py --reference` (N=128, T=16, W=256,
H=512, F=1280, float32, LSTM, 2 threads, medians of 7 interleaved repeats on a shared 2-core machine; "coco" batches
have COCO's caption lengths, "full" ones no padding):

1. ONE GEMM for the input projection of all time steps. x_t Wx + b does not depend on the previous step, so it is
   computed before the loop for all T·N rows at once; only h_{t−1} Wh stays inside the loop.
   Measured: 1.00-1.05× on the LSTM forward + backward — little at this size, kept because it is also simpler.
2. ONE GEMM each for dWx, dWh and dx after the backward loop. The loop stores the pre-activation gradients da_t
   of every step; the weight gradients are then Σ_t x_tᵀ da_t = Xᵀ DA over all steps in one product
   (`gradients_after_bptt`). Measured: 1.12-1.15× on the LSTM forward + backward.
3. Time-major buffers (T, N, ·) allocated once: every step reads and writes one contiguous block, and the loop
   allocates (almost) nothing.
4. In-place activations: σ and tanh are applied to the gate buffer itself, which then IS the cache.
   (3 and 4 were not measured apart from the rest.)
5. Packed lengths: with `lengths` sorted longest first, step t works only on the first active[t] rows — the
   sequences still running (PyTorch's packed sequence). A COCO batch padded to its longest caption is ~30% padding.
   After the loop, the weight products gather only the rows that ran when fewer than 90% did.
   Measured: 1.14× (V=1000) and 1.08× (V=10000) on a whole training step with COCO lengths; free at full length.
6. The vocabulary loss scores only the positions that count (`words_loss`), writing its gradient over the scores.
   Measured: 1.05× (V=1000) and 1.46× (V=10000) on a whole training step with COCO lengths.

The caption model's LSTM step goes further (`pack` … `words_loss_packed`, used by `CaptionModel.loss` when
model.fast). Measured as whole training steps (loss + clip + Adam), each idea switched off alone, interleaved, on
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

Before those (tricks 1–6 only), a whole training step (`CaptionModel.loss`, fast vs readable) was 1.45× (V=1000)
and 1.67× (V=10000) faster on COCO-length batches, 1.13× and 1.16× on full-length ones; the LSTM forward +
backward alone 1.52× (coco) and 1.22× (full), the RNN's 1.59× and 1.40×.

The attention decoder's fast path (`attention_lstm_forward/backward`) lives in `fast_attention.py` and is
re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from minicap.nn.fast_attention import attention_contexts, attention_lstm_backward, attention_lstm_forward
from minicap.nn.layers import sigmoid, softmax_loss
from minicap.nn.lstm import LSTMGrads
from minicap.nn.rnn import RNNGrads

__all__ = [
    "active_counts",
    "gradients_after_bptt",
    "FastRNNCache",
    "rnn_forward",
    "rnn_backward",
    "FastLSTMCache",
    "lstm_forward",
    "lstm_backward",
    "words_loss",
    "Packing",
    "pack",
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
    "attention_lstm_forward",
    "attention_contexts",
    "attention_lstm_backward",
]


# ------------------------------------------------------------------------------------------- shared pieces


def active_counts(lengths: np.ndarray | None, N: int, T: int) -> np.ndarray:
    """(T,) how many of N sequences, sorted longest first, are still running at step t: #{n : lengths[n] > t}.

    Without lengths every sequence runs for all T steps. Used by `rnn_forward` and `lstm_forward`.
    """
    if lengths is None:
        return np.full(T, N, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (N,) or np.any(lengths < 0) or np.any(lengths > T):
        raise ValueError(f"lengths must be (N,) = ({N},) integers in [0, {T}], got {lengths!r}")
    if np.any(np.diff(lengths) > 0):
        raise ValueError("lengths must be sorted longest first (sort the batch by length before the recurrence)")
    return (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)


def gradients_after_bptt(
    da: np.ndarray, x: np.ndarray, h_prev: np.ndarray, Wx: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The gradients BPTT leaves for after its loop, each ONE matrix product over all steps at once:

        dx_t = da_t Wxᵀ,    dWx = Σ_t x_tᵀ da_t,    dWh = Σ_t h_{t−1}ᵀ da_t,    db = Σ_t Σ_n da_t

    da: (T, N, G) pre-activation gradients (G = H for the RNN, 4H for the LSTM), x: (T, N, D), h_prev: (T, N, H)
    the states each step read, all time-major; active: (T,) running rows per step (see `active_counts`).
    Returns dx (N, T, D), dWx (D, G), dWh (H, G), db (G,).

    Rows of finished sequences have da = 0; when there are many (a padded caption batch), only the rows that ran
    are gathered and multiplied: a third less arithmetic for COCO-like lengths, for the price of one copy.
    """
    T, N, D = x.shape
    G = da.shape[2]
    da2, x2, h2 = da.reshape(T * N, G), x.reshape(T * N, D), h_prev.reshape(T * N, -1)
    if active.sum() < 0.9 * T * N:
        ran = (np.arange(N)[None, :] < active[:, None]).reshape(T * N)  # (T·N,) rows that ran, time-major
        da_ran = da2[ran]
        dx2 = np.zeros((T * N, D), dtype=da.dtype)
        dx2[ran] = da_ran @ Wx.T
        dWx, dWh, db = x2[ran].T @ da_ran, h2[ran].T @ da_ran, da_ran.sum(axis=0)
    else:
        dx2 = da2 @ Wx.T
        dWx, dWh, db = x2.T @ da2, h2.T @ da2, da2.sum(axis=0)
    return np.ascontiguousarray(dx2.reshape(T, N, D).transpose(1, 0, 2)), dWx, dWh, db


# -------------------------------------------------------------------------------------------------- RNN


class FastRNNCache(NamedTuple):
    """What `rnn_backward` needs. Arrays are time-major so that every step's slice is contiguous."""

    x: np.ndarray  # (T, N, D) inputs, time-major
    h: np.ndarray  # (T+1, N, H) hidden states; h[0] = h0, h[t+1] is the output at step t
    Wx: np.ndarray  # (D, H)
    Wh: np.ndarray  # (H, H)
    active: np.ndarray  # (T,) int: sequences 0 … active[t]−1 are still running at step t (all N without lengths)

    @property
    def h_last(self) -> np.ndarray:
        """(N, H) the state after the last step: the h0 of the next chunk in truncated BPTT."""
        return self.h[-1]


def rnn_forward(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, FastRNNCache]:
    """Run the RNN over a whole sequence.

    x: (N, T, D), h0: (N, H), Wx: (D, H), Wh: (H, H), b: (H,)  ->  h: (N, T, H), the hidden state at every step
    lengths: optional (N,) int, sorted LONGEST FIRST: sequence n has lengths[n] steps, after which its state is
        carried unchanged (h_t = h_{t−1}) and no work is spent on it.

    Speed without hiding the maths: the input term x_t Wx + b of every step is computed before the loop as ONE
    matrix product over all N·T rows (one big GEMM is several times faster than T small ones); only h_{t−1} Wh,
    which depends on the previous step, stays inside the loop. Inputs are made time-major (T, N, D) so each
    step reads and writes contiguous memory.
    """
    N, T, D = x.shape
    H = h0.shape[1]
    active = active_counts(lengths, N, T)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))  # (T, N, D)
    h = np.empty((T + 1, N, H), dtype=x.dtype)
    h[0] = h0
    np.matmul(xt.reshape(T * N, D), Wx, out=h[1:].reshape(T * N, H))  # x_t Wx for every t at once,
    h[1:] += b  # + b, in place
    for t in range(T):
        n = active[t]  # rows 0 … n−1 are running
        h[t + 1, :n] += h[t, :n] @ Wh  # a_t = (x_t Wx + b) + h_{t−1} Wh
        np.tanh(h[t + 1, :n], out=h[t + 1, :n])  # h_t = tanh(a_t), in place
        h[t + 1, n:] = h[t, n:]  # finished sequences keep their state
    return h[1:].transpose(1, 0, 2).copy(), FastRNNCache(xt, h, Wx, Wh, active)


def rnn_backward(dh: np.ndarray, cache: FastRNNCache) -> RNNGrads:
    """Backpropagation through time over the whole sequence.

    dh: (N, T, H), the upstream gradient ∂L/∂h_t of every output (from the layer above, NOT through time).
    Returns RNNGrads(dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,)).

    The loop only carries the gradient back through time and stores da_t for every step; the weight gradients
    are then one GEMM each over all steps: dWx = Σ_t x_tᵀ da_t = X_allᵀ DA_all.
    """
    T, N, D = cache.x.shape
    H = cache.h.shape[2]
    dh_t = dh.transpose(1, 0, 2)  # (T, N, H) time-major view
    da = np.empty((T, N, H), dtype=dh.dtype)
    dnext_h = np.zeros((N, H), dtype=dh.dtype)  # ∂L/∂h_t: from the layer above and from step t+1
    for t in reversed(range(T)):
        n = cache.active[t]  # running rows; finished ones only carry their gradient back
        dnext_h += dh_t[t]
        h_t = cache.h[t + 1, :n]
        np.multiply(dnext_h[:n], 1.0 - h_t * h_t, out=da[t, :n])  # da_t = ∂L/∂h_t ⊙ tanh′
        da[t, n:] = 0.0
        np.matmul(da[t, :n], cache.Wh.T, out=dnext_h[:n])  # ∂L/∂h_{t−1}
    dx, dWx, dWh, db = gradients_after_bptt(da, cache.x, cache.h[:-1], cache.Wx, cache.active)
    return RNNGrads(dx, dnext_h, dWx, dWh, db)


# ------------------------------------------------------------------------------------------------- LSTM


class FastLSTMCache(NamedTuple):
    """What `lstm_backward` needs. Arrays are time-major, so each step's slice is one contiguous block."""

    x: np.ndarray  # (T, N, D) inputs
    gates: np.ndarray  # (T, N, 4H) activated gates [i, f, o, g] of every step
    c: np.ndarray  # (T+1, N, H) cells; c[0] = c0, c[t+1] after step t
    tanh_c: np.ndarray  # (T, N, H) tanh(c[t+1])
    h: np.ndarray  # (T+1, N, H) hidden states; h[0] = h0
    Wx: np.ndarray  # (D, 4H)
    Wh: np.ndarray  # (H, 4H)
    active: np.ndarray  # (T,) int: sequences 0 … active[t]−1 are still running at step t (all N without lengths)

    @property
    def h_last(self) -> np.ndarray:
        """(N, H) hidden state after the last step (carried to the next chunk in truncated BPTT)."""
        return self.h[-1]

    @property
    def c_last(self) -> np.ndarray:
        """(N, H) cell after the last step (carried to the next chunk in truncated BPTT)."""
        return self.c[-1]


def lstm_forward(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    c0: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, FastLSTMCache]:
    """Run the LSTM over a whole sequence (c0 defaults to zeros, as in a captioner).

    x: (N, T, D), h0: (N, H), Wx: (D, 4H), Wh: (H, 4H), b: (4H,), c0: (N, H) or None
    lengths: optional (N,) int, sorted LONGEST FIRST: sequence n has lengths[n] steps. After its last step a
        sequence's state is carried unchanged (h_t = h_{t−1}, c_t = c_{t−1}), so no work is spent on padding.
    Returns h: (N, T, H), the hidden state at every step, and the cache.

    Speed, with the maths unchanged (same equations as `lstm_step_forward`):
    - x_t Wx + b for ALL steps is ONE matrix product before the loop, written straight into the gate buffer;
      the loop only adds h_{t−1} Wh, the one term that depends on the previous step.
    - All per-step arrays live in buffers allocated once, (T, N, ·) time-major so each step is contiguous, and
      activations are applied in place, so the loop allocates almost nothing.
    - With `lengths`, step t works on the first n = active[t] rows only — the sequences still running (PyTorch
      calls this a packed sequence). Captions of a COCO batch padded to its longest are ~30% padding.
    """
    N, T, D = x.shape
    H = h0.shape[1]
    dtype = x.dtype
    active = active_counts(lengths, N, T)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))  # (T, N, D)

    gates = (xt.reshape(T * N, D) @ Wx).reshape(T, N, 4 * H)  # x_t Wx for every t at once,
    gates += b  # + b, in place
    h = np.empty((T + 1, N, H), dtype=dtype)
    c = np.empty((T + 1, N, H), dtype=dtype)
    tanh_c = np.zeros((T, N, H), dtype=dtype)
    recurrent = np.empty((N, 4 * H), dtype=dtype)  # h_{t−1} Wh, reused at every step
    input_times_candidate = np.empty((N, H), dtype=dtype)  # i ⊙ g, reused at every step
    h[0] = h0
    c[0] = 0.0 if c0 is None else c0

    for t in range(T):
        n = active[t]  # rows 0 … n−1 are running; the rest carry their final state
        a = gates[t, :n]  # (n, 4H), a view: activating it in place stores the gates in the cache
        np.matmul(h[t, :n], Wh, out=recurrent[:n])
        a += recurrent[:n]  # a = x_t Wx + b + h_{t−1} Wh
        sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])  # i, f, o
        np.tanh(a[:, 3 * H :], out=a[:, 3 * H :])  # g
        i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        np.multiply(f, c[t, :n], out=c[t + 1, :n])
        c[t + 1, :n] += np.multiply(i, g, out=input_times_candidate[:n])  # c_t = f ⊙ c_{t−1} + i ⊙ g
        np.tanh(c[t + 1, :n], out=tanh_c[t, :n])
        np.multiply(o, tanh_c[t, :n], out=h[t + 1, :n])  # h_t = o ⊙ tanh(c_t)
        h[t + 1, n:] = h[t, n:]  # finished sequences keep their state
        c[t + 1, n:] = c[t, n:]

    return h[1:].transpose(1, 0, 2).copy(), FastLSTMCache(xt, gates, c, tanh_c, h, Wx, Wh, active)


def lstm_backward(
    dh: np.ndarray,
    cache: FastLSTMCache,
    dh_last: np.ndarray | None = None,
    dc_last: np.ndarray | None = None,
) -> LSTMGrads:
    """Backpropagation through time over the whole sequence.

    dh: (N, T, H), the upstream gradient of every output h_t from the layer above (not through time).
    dh_last, dc_last: optional (N, H) gradients arriving at the final state from beyond the sequence (e.g. from
    the next chunk, when it is not truncated); zero by default.
    Returns LSTMGrads(dx (N, T, D), dh0 (N, H), dc0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)).

    The loop carries (dh, dc) back through time and stores da_t, the gradient of the pre-activations, for every
    step; dWx, dWh, db and dx are then one GEMM (or sum) each over all T·N rows, outside the loop.
    """
    T, N, D = cache.x.shape
    H = cache.h.shape[2]
    dtype = dh.dtype
    dh_tm = dh.transpose(1, 0, 2)  # (T, N, H) time-major view
    dgates = np.empty((T, N, 4 * H), dtype=dtype)
    dnext_h = np.zeros((N, H), dtype=dtype) if dh_last is None else dh_last.astype(dtype, copy=True)
    dnext_c = np.zeros((N, H), dtype=dtype) if dc_last is None else dc_last.astype(dtype, copy=True)

    for t in reversed(range(T)):
        n = cache.active[t]  # running rows; the others only carry their gradient back unchanged
        gates = cache.gates[t, :n]
        i, f, o, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        tanh_c = cache.tanh_c[t, :n]
        da = dgates[t, :n]  # (n, 4H) view, filled block by block
        dgates[t, n:] = 0.0  # finished rows: no gate, no gradient

        dnext_h += dh_tm[t]  # total ∂L/∂h_t: from the layer above and from step t+1
        dh_t = dnext_h[:n]
        dc = dnext_c[:n]  # (a view: updated in place to ∂L/∂c_t, then replaced by ∂L/∂c_{t−1} below)
        dc += dh_t * o * (1.0 - tanh_c * tanh_c)  # ∂L/∂c_t: from step t+1 and through h_t
        np.multiply(dc, g, out=da[:, :H])  # di
        np.multiply(dc, cache.c[t, :n], out=da[:, H : 2 * H])  # df
        np.multiply(dh_t, tanh_c, out=da[:, 2 * H : 3 * H])  # do
        np.multiply(dc, i, out=da[:, 3 * H :])  # dg
        s = gates[:, : 3 * H]
        da[:, : 3 * H] *= s * (1.0 - s)  # σ′ = σ(1 − σ), for i, f and o at once
        da[:, 3 * H :] *= 1.0 - g * g  # tanh′ = 1 − tanh²

        dc *= f  # ∂L/∂c_{t−1} along the cell path
        np.matmul(da, cache.Wh.T, out=dh_t)  # ∂L/∂h_{t−1} through the recurrent weights

    dx, dWx, dWh, db = gradients_after_bptt(dgates, cache.x, cache.h[:-1], cache.Wx, cache.active)
    return LSTMGrads(dx, dnext_h, dnext_c, dWx, dWh, db)


# ------------------------------------------------------------------------------------- the vocabulary loss


def words_loss(
    h: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    W_vocab: np.ndarray,
    b_vocab: np.ndarray,
    weight: float,
    backward: bool = True,
) -> tuple[np.floating, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """The vocabulary projection and the masked softmax loss, scoring ONLY the positions that count.

    The readable version is `temporal_affine_forward` (scores = h W_vocab + b_vocab at every position) followed by
    a masked `softmax_loss` and the two backwards. Masked positions contribute exactly 0 to the loss and its
    gradient, so scoring them is pure waste: with V = 10,000 the (N·T, V) scores are the largest arrays of a
    training step, and a COCO batch padded to T = 16 is about 30% padding. Here only the K counted rows are
    gathered, projected and scored, and the gradient is written over the scores (no second (K, V) array).

    h: (N, T, H) hidden states; targets: (N, T) int; mask: (N, T) bool, the positions that count;
    W_vocab: (H, V), b_vocab: (V,); weight: each counted position's weight (1/N: a loss per caption; 1/K: per token).
    Returns (loss, (dh (N, T, H), dW_vocab (H, V), db_vocab (V,))), or (loss, None) when backward is False.
    """
    N, T, H = h.shape
    counted = mask.reshape(N * T)
    h_counted = h.reshape(N * T, H)[counted]  # (K, H)
    scores = h_counted @ W_vocab  # (K, V)
    scores += b_vocab
    weights = np.full(scores.shape[0], weight, dtype=h.dtype)
    loss, dscores = softmax_loss(scores, targets.reshape(N * T)[counted], weights, out=scores)
    if not backward:
        return loss, None
    dh = np.zeros((N * T, H), dtype=h.dtype)
    dh[counted] = dscores @ W_vocab.T  # positions that do not count get exactly 0
    return loss, (dh.reshape(N, T, H), h_counted.T @ dscores, dscores.sum(axis=0))


# ============================================================================ the caption model's packed path
#
# The functions above keep the (N, T, ·) interface of the readable path. The caption model's fast step goes one
# layout further, as PyTorch's PackedSequence does: every array of the step holds only the K positions that run,
# time-major (step t's n_t running captions are rows offsets[t] … offsets[t+1]−1). Nothing is ever transposed,
# gathered or scattered between the pieces, no work is spent on padding (not even in the input GEMM or dx), and
# the vocabulary loss reads its rows straight from the LSTM's output.


class Packing(NamedTuple):
    """The packed layout of a batch sorted longest first (see `pack`).

    batch_sizes: (T,) n_t, sequences still running at step t (non-increasing)
    offsets: (T+1,) step t's rows are offsets[t] … offsets[t+1]−1; offsets[T] = K, all positions that run
    index: (K,) for every packed row, its flat position n·T + t in an (N, T) array (to gather words, targets)
    """

    batch_sizes: np.ndarray
    offsets: np.ndarray
    index: np.ndarray


def pack(lengths: np.ndarray, T: int) -> Packing:
    """The packed layout of N sequences of `lengths` (sorted longest first, each in [0, T])."""
    lengths = np.asarray(lengths)
    N = lengths.shape[0]
    batch_sizes = active_counts(lengths, N, T)
    offsets = np.concatenate([[0], np.cumsum(batch_sizes)])
    t_idx, n_idx = np.nonzero(lengths[None, :] > np.arange(T)[:, None])  # row-major over (T, N): time-major
    return Packing(batch_sizes, offsets, n_idx * T + t_idx)


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

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

Before tricks 7–11 (tricks 1–6 only), a whole training step (`CaptionModel.loss`, fast vs readable) was 1.45×
(V=1000) and 1.67× (V=10000) faster on COCO-length batches, 1.13× and 1.16× on full-length ones; the LSTM forward +
backward alone 1.52× (coco) and 1.22× (full), the RNN's 1.59× and 1.40×.

Tricks 7–11 are the caption model's LSTM step, packed end to end (`packing.pack`, then `lstm_forward_packed` …
`words_loss_packed`, used by `CaptionModel.loss` when model.fast): they live in `fast_packed.py`. The attention
decoder's fast path (`attention_lstm_forward/backward`) lives in `fast_attention.py`. Both are re-exported here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicap.nn.fast_attention import attention_contexts, attention_lstm_backward, attention_lstm_forward
from minicap.nn.fast_packed import (
    PackedLSTMCache,
    RowPool,
    Workspace,
    blas_threads,
    lstm_backward_packed,
    lstm_forward_packed,
    set_threads,
    shared_pool,
    sigmoid_by_tanh,
    words_loss_packed,
)
from minicap.nn.layers import sigmoid, softmax_loss
from minicap.nn.lstm import LSTMGrads
from minicap.nn.packing import Packing, active_counts, pack
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

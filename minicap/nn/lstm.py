"""Long short-term memory (Hochreiter & Schmidhuber 1997, with forget gates: Gers et al. 2000) and BPTT.

One step, with the four gates computed by ONE matrix product (Karpathy's fused-gate trick):

    a = x_t Wx + h_{t−1} Wh + b                       (N, 4H), split into four (N, H) blocks a_i, a_f, a_o, a_g
    i = σ(a_i)    input gate:   how much of the candidate to write
    f = σ(a_f)    forget gate:  how much of the old cell to keep
    o = σ(a_o)    output gate:  how much of the cell to show
    g = tanh(a_g) candidate values
    c_t = f ⊙ c_{t−1} + i ⊙ g                         the cell: an additive path through time
    h_t = o ⊙ tanh(c_t)

GATE ORDER in Wx (D, 4H), Wh (H, 4H) and b (4H,) is **i, f, o, g**: columns [0:H] input, [H:2H] forget,
[2H:3H] output, [3H:4H] candidate. The three sigmoid gates are adjacent, so one call activates all of them.
(PyTorch's nn.LSTM stores i, f, g, o, transposed, with two biases; `minicap.nn.lstm_weights_from_torch_order`
converts.)

Why it helps: ∂c_t/∂c_{t−1} = f (elementwise). The gradient flowing back along the cell is multiplied by the
forget gates — numbers the network can learn to hold near 1 — instead of by a fixed matrix as in the vanilla RNN.

Shapes: N batch, T time steps, D input size, H hidden size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicap.nn.layers import sigmoid
from minicap.nn.rnn import active_counts, gradients_after_bptt

__all__ = [
    "LSTMStepCache",
    "lstm_step_forward",
    "lstm_step_backward",
    "LSTMCache",
    "LSTMGrads",
    "lstm_forward",
    "lstm_backward",
    "lstm_state_gradients",
    "lstm_forward_truncated",
    "lstm_backward_truncated",
    "lstm_weights_from_torch_order",
]


# -------------------------------------------------------------------------------------------------- one step


class LSTMStepCache(NamedTuple):
    x: np.ndarray  # (N, D) input
    prev_h: np.ndarray  # (N, H)
    prev_c: np.ndarray  # (N, H)
    Wx: np.ndarray  # (D, 4H)
    Wh: np.ndarray  # (H, 4H)
    i: np.ndarray  # (N, H) input gate σ(a_i)
    f: np.ndarray  # (N, H) forget gate σ(a_f)
    o: np.ndarray  # (N, H) output gate σ(a_o)
    g: np.ndarray  # (N, H) candidate tanh(a_g)
    tanh_c: np.ndarray  # (N, H) tanh(next_c)


def lstm_step_forward(
    x: np.ndarray, prev_h: np.ndarray, prev_c: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, LSTMStepCache]:
    """One LSTM step (equations in the module docstring).

    x: (N, D), prev_h: (N, H), prev_c: (N, H), Wx: (D, 4H), Wh: (H, 4H), b: (4H,)
    Returns (next_h (N, H), next_c (N, H), cache).
    """
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b  # (N, 4H)
    i = sigmoid(a[:, 0 * H : 1 * H])
    f = sigmoid(a[:, 1 * H : 2 * H])
    o = sigmoid(a[:, 2 * H : 3 * H])
    g = np.tanh(a[:, 3 * H : 4 * H])
    next_c = f * prev_c + i * g
    tanh_c = np.tanh(next_c)
    next_h = o * tanh_c
    return next_h, next_c, LSTMStepCache(x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c)


def lstm_step_backward(
    dnext_h: np.ndarray, dnext_c: np.ndarray, cache: LSTMStepCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backward through one step, given dnext_h = ∂L/∂h_t and dnext_c = ∂L/∂c_t (both (N, H)).

        dc     = dnext_c + dnext_h ⊙ o ⊙ (1 − tanh²(c_t))   c_t reaches L directly and through h_t
        di = dc ⊙ g,   df = dc ⊙ c_{t−1},   do = dnext_h ⊙ tanh(c_t),   dg = dc ⊙ i
        da = [di ⊙ i(1−i), df ⊙ f(1−f), do ⊙ o(1−o), dg ⊙ (1−g²)]    σ′ = σ(1−σ), tanh′ = 1 − tanh²
        dprev_c = dc ⊙ f,   dx = da Wxᵀ,   dprev_h = da Whᵀ,   dWx = xᵀ da,   dWh = prev_hᵀ da,   db = Σ_n da

    Returns (dx (N, D), dprev_h (N, H), dprev_c (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)).
    """
    i, f, o, g, tanh_c = cache.i, cache.f, cache.o, cache.g, cache.tanh_c
    dc = dnext_c + dnext_h * o * (1.0 - tanh_c**2)
    da = np.concatenate(
        [
            dc * g * i * (1.0 - i),
            dc * cache.prev_c * f * (1.0 - f),
            dnext_h * tanh_c * o * (1.0 - o),
            dc * i * (1.0 - g**2),
        ],
        axis=1,
    )
    dx = da @ cache.Wx.T
    dprev_h = da @ cache.Wh.T
    dprev_c = dc * f
    return dx, dprev_h, dprev_c, cache.x.T @ da, cache.prev_h.T @ da, da.sum(axis=0)


# ----------------------------------------------------------------------------------------- whole sequence


class LSTMCache(NamedTuple):
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


class LSTMGrads(NamedTuple):
    dx: np.ndarray  # (N, T, D)
    dh0: np.ndarray  # (N, H)
    dc0: np.ndarray  # (N, H)
    dWx: np.ndarray  # (D, 4H)
    dWh: np.ndarray  # (H, 4H)
    db: np.ndarray  # (4H,)


def lstm_forward(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    c0: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, LSTMCache]:
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

    return h[1:].transpose(1, 0, 2).copy(), LSTMCache(xt, gates, c, tanh_c, h, Wx, Wh, active)


def lstm_backward(
    dh: np.ndarray,
    cache: LSTMCache,
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


def lstm_state_gradients(dh: np.ndarray, cache: LSTMCache) -> tuple[np.ndarray, np.ndarray]:
    """∂L/∂h_t and ∂L/∂c_t for every state t = 0 … T: how much gradient reaches each step back in time.

    dh: (N, T, H) upstream gradient of the outputs. Returns (dh_states, dc_states), each (T+1, N, H); index 0
    equals `lstm_backward(...).dh0` / `.dc0`. The same recurrence as `lstm_backward`, keeping the state gradients
    of every step instead of the weight gradients (lesson 01 plots their norms).
    """
    T, N, _ = cache.x.shape
    H = cache.h.shape[2]
    dh_tm = dh.transpose(1, 0, 2)
    dh_states = np.zeros((T + 1, N, H), dtype=dh.dtype)
    dc_states = np.zeros((T + 1, N, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        n = cache.active[t]
        gates = cache.gates[t, :n]
        i, f, o, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        tanh_c = cache.tanh_c[t, :n]
        dh_states[t + 1] += dh_tm[t]  # total gradient at h_t: from above and from the future
        dh_t = dh_states[t + 1, :n]
        dc = dc_states[t + 1, :n] + dh_t * o * (1.0 - tanh_c**2)
        dc_states[t + 1, :n] = dc
        da = np.concatenate(
            [dc * g * i * (1 - i), dc * cache.c[t, :n] * f * (1 - f), dh_t * tanh_c * o * (1 - o), dc * i * (1 - g**2)],
            axis=1,
        )
        dh_states[t, :n] = da @ cache.Wh.T
        dc_states[t, :n] = dc * f
        dh_states[t, n:] = dh_states[t + 1, n:]  # finished sequences carry their gradient back unchanged
        dc_states[t, n:] = dc_states[t + 1, n:]
    return dh_states, dc_states


# ------------------------------------------------------------------------------------------ truncated BPTT


def lstm_forward_truncated(
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    chunk_size: int,
) -> tuple[np.ndarray, list[LSTMCache]]:
    """Run a long sequence in chunks of `chunk_size` steps, carrying (h, c) from one chunk to the next.

    The forward values are those of one `lstm_forward` over the whole sequence: the state is carried exactly.
    Only the backward pass differs (`lstm_backward_truncated` stops the gradient at chunk boundaries), which is
    truncated backpropagation through time: memory and the length of the gradient path are bounded by the
    chunk, at the price of not learning dependencies longer than it.

    x: (N, T, D)  ->  h: (N, T, H) and one cache per chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    hs, caches = [], []
    h, c = h0, c0
    for start in range(0, x.shape[1], chunk_size):
        h_chunk, cache = lstm_forward(x[:, start : start + chunk_size], h, Wx, Wh, b, c0=c)
        hs.append(h_chunk)
        caches.append(cache)
        h, c = cache.h_last, cache.c_last  # carried forward as values: no gradient flows back through them
    return np.concatenate(hs, axis=1), caches


def lstm_backward_truncated(dh: np.ndarray, caches: list[LSTMCache]) -> LSTMGrads:
    """Truncated BPTT: backward through each chunk separately, the gradient into each chunk's initial state
    dropped (except the first chunk's, returned as dh0, dc0); parameter gradients summed over the chunks.

    dh: (N, T, H) upstream gradient for the whole sequence. Returns LSTMGrads like `lstm_backward`.
    """
    dxs = []
    dWx = dWh = db = None
    start = 0
    first: LSTMGrads | None = None
    for cache in caches:
        T_chunk = cache.x.shape[0]
        grads = lstm_backward(dh[:, start : start + T_chunk], cache)
        start += T_chunk
        dxs.append(grads.dx)
        first = first or grads
        if dWx is None:
            dWx, dWh, db = grads.dWx, grads.dWh, grads.db
        else:
            dWx, dWh, db = dWx + grads.dWx, dWh + grads.dWh, db + grads.db
    assert first is not None and dWx is not None and dWh is not None and db is not None
    return LSTMGrads(np.concatenate(dxs, axis=1), first.dh0, first.dc0, dWx, dWh, db)


# ---------------------------------------------------------------------------------------- interoperability


def lstm_weights_from_torch_order(
    weight_ih: np.ndarray, weight_hh: np.ndarray, bias_ih: np.ndarray, bias_hh: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert PyTorch nn.LSTM weights (gate order i, f, g, o; shapes (4H, D), (4H, H), (4H,), (4H,)) to
    minicap's (Wx (D, 4H), Wh (H, 4H), b (4H,)) in gate order i, f, o, g. Used by the comparison tests and
    benchmarks; no torch needed here, only the arrays.
    """
    H = weight_hh.shape[1]
    order = np.r_[0:H, H : 2 * H, 3 * H : 4 * H, 2 * H : 3 * H]  # i, f, o, g from i, f, g, o
    return weight_ih[order].T.copy(), weight_hh[order].T.copy(), (bias_ih + bias_hh)[order].copy()

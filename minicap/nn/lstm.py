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
(PyTorch's nn.LSTM stores i, f, g, o, transposed, with two biases; `lstm_weights_from_torch_order` converts.)

Why it helps: ∂c_t/∂c_{t−1} = f (elementwise). The gradient flowing back along the cell is multiplied by the
forget gates — numbers the network can learn to hold near 1 — instead of by a fixed matrix as in the vanilla RNN.

Shapes: N batch, T time steps, D input size, H hidden size.

This is the READABLE path: the sequence functions are plain loops over the step functions, and each backward
equation is written once, in `lstm_step_backward`. `minicap.nn.fast` computes exactly the same numbers faster
(one matrix product for all inputs, time-major buffers, packed lengths); the tests prove the two equal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicap.nn.layers import sigmoid
from minicap.nn.rnn import running_mask

__all__ = [
    "LSTMStepCache",
    "lstm_step_forward",
    "lstm_cell_gradient",
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


def lstm_cell_gradient(dnext_h: np.ndarray, dnext_c: np.ndarray, cache: LSTMStepCache) -> np.ndarray:
    """∂L/∂c_t in total (N, H): c_t reaches the loss directly (dnext_c, through c_{t+1}) and through
    h_t = o ⊙ tanh(c_t):   dc = dnext_c + dnext_h ⊙ o ⊙ (1 − tanh²(c_t)).   The first line of `lstm_step_backward`."""
    return dnext_c + dnext_h * cache.o * (1.0 - cache.tanh_c**2)


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
    dc = lstm_cell_gradient(dnext_h, dnext_c, cache)
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
    """What `lstm_backward` needs: every step's own cache, and which sequences each step updated."""

    steps: list[LSTMStepCache]  # T caches, one per step, in time order
    running: np.ndarray  # (N, T) bool: sequence n was still running at step t (all True without lengths)
    h_last: np.ndarray  # (N, H) hidden state after the last step (carried to the next chunk in truncated BPTT)
    c_last: np.ndarray  # (N, H) cell after the last step


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
    """Run the LSTM over a whole sequence: `lstm_step_forward` once per time step, the state carried along.

    x: (N, T, D), h0: (N, H), Wx: (D, 4H), Wh: (H, 4H), b: (4H,), c0: (N, H) or None (zeros, as in a captioner)
    lengths: optional (N,) int: sequence n has lengths[n] steps. After its last step a sequence keeps its state
        (h_t = h_{t−1}, c_t = c_{t−1}), so padding can never change it.
    Returns h: (N, T, H), the hidden state after every step, and the cache.
    """
    N, T, _ = x.shape
    if T < 1:
        raise ValueError(f"lstm_forward needs a sequence of at least one step, got x of shape {x.shape}")
    running = running_mask(lengths, N, T)
    h = h0
    c = np.zeros_like(h0) if c0 is None else c0
    hs, steps = [], []
    for t in range(T):
        next_h, next_c, step = lstm_step_forward(x[:, t], h, c, Wx, Wh, b)
        keep = running[:, t, None]  # (N, 1): a sequence that has ended keeps its state
        h, c = np.where(keep, next_h, h), np.where(keep, next_c, c)
        hs.append(h)
        steps.append(step)
    return np.stack(hs, axis=1), LSTMCache(steps, running, h, c)


def lstm_backward(
    dh: np.ndarray,
    cache: LSTMCache,
    dh_last: np.ndarray | None = None,
    dc_last: np.ndarray | None = None,
) -> LSTMGrads:
    """Backpropagation through time: `lstm_step_backward` once per step, from the last step to the first.

    dh: (N, T, H), the upstream gradient of every output h_t from the layer above (not through time).
    dh_last, dc_last: optional (N, H) gradients reaching the final state from beyond the sequence (e.g. from the
        next chunk, when it is not truncated); zero by default.
    Returns LSTMGrads(dx (N, T, D), dh0 (N, H), dc0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)).

    At step t the hidden state has two consumers, the layer above (dh[:, t]) and step t+1 (dnext_h): their
    gradients add. The weights are shared by every step, so their gradients are summed over the steps.
    """
    N, T, _ = dh.shape
    first = cache.steps[0]
    dnext_h = np.zeros_like(first.prev_h) if dh_last is None else dh_last.astype(dh.dtype)
    dnext_c = np.zeros_like(first.prev_c) if dc_last is None else dc_last.astype(dh.dtype)
    dx = np.zeros((N, T, first.x.shape[1]), dtype=dh.dtype)
    dWx, dWh = np.zeros_like(first.Wx), np.zeros_like(first.Wh)
    db = np.zeros(first.Wx.shape[1], dtype=dh.dtype)
    for t in reversed(range(T)):
        keep = cache.running[:, t, None]  # an ended sequence only copied its state at step t ...
        dh_t = dnext_h + dh[:, t]  # ∂L/∂h_t: from the layer above and from step t+1
        dx[:, t], dprev_h, dprev_c, dWx_t, dWh_t, db_t = lstm_step_backward(dh_t * keep, dnext_c * keep, cache.steps[t])
        dnext_h = np.where(keep, dprev_h, dh_t)  # ... so its gradient passes through step t unchanged
        dnext_c = np.where(keep, dprev_c, dnext_c)
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    return LSTMGrads(dx, dnext_h, dnext_c, dWx, dWh, db)


def lstm_state_gradients(dh: np.ndarray, cache: LSTMCache) -> tuple[np.ndarray, np.ndarray]:
    """∂L/∂h_t and ∂L/∂c_t for every state t = 0 … T: how much gradient reaches each step back in time.

    dh: (N, T, H) upstream gradient of the outputs. Returns (dh_states, dc_states), each (T+1, N, H); index 0
    equals `lstm_backward(...).dh0` / `.dc0`. The loop of `lstm_backward`, keeping the state gradient of every
    step instead of the weight gradients (lesson 01 plots their norms).
    """
    N, T, H = dh.shape
    dh_states = np.zeros((T + 1, N, H), dtype=dh.dtype)
    dc_states = np.zeros((T + 1, N, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        keep = cache.running[:, t, None]
        dh_states[t + 1] += dh[:, t]  # total gradient at h_t: from above and from the future
        dh_t, dc_t, step = dh_states[t + 1] * keep, dc_states[t + 1] * keep, cache.steps[t]
        _, dprev_h, dprev_c, _, _, _ = lstm_step_backward(dh_t, dc_t, step)
        # the total at c_t: from the future and through h_t (an ended sequence's cell only passes its gradient on)
        dc_states[t + 1] = np.where(keep, lstm_cell_gradient(dh_t, dc_t, step), dc_states[t + 1])
        dh_states[t] = np.where(keep, dprev_h, dh_states[t + 1])
        dc_states[t] = np.where(keep, dprev_c, dc_states[t + 1])
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
    """Truncated BPTT: backward through each chunk on its own, the gradient into each chunk's initial state
    dropped (except the first chunk's, returned as dh0, dc0); parameter gradients summed over the chunks.

    dh: (N, T, H) upstream gradient for the whole sequence. Returns LSTMGrads like `lstm_backward`.
    """
    start, per_chunk = 0, []
    for cache in caches:
        T_chunk = len(cache.steps)
        per_chunk.append(lstm_backward(dh[:, start : start + T_chunk], cache))
        start += T_chunk
    first = per_chunk[0]
    return LSTMGrads(
        np.concatenate([g.dx for g in per_chunk], axis=1),
        first.dh0,
        first.dc0,
        sum(g.dWx for g in per_chunk[1:]) + first.dWx,
        sum(g.dWh for g in per_chunk[1:]) + first.dWh,
        sum(g.db for g in per_chunk[1:]) + first.db,
    )


# ---------------------------------------------------------------------------------------- interoperability


def lstm_weights_from_torch_order(
    weight_ih: np.ndarray, weight_hh: np.ndarray, bias_ih: np.ndarray, bias_hh: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert PyTorch nn.LSTM weights (gate order i, f, g, o; shapes (4H, D), (4H, H), (4H,), (4H,)) to
    minicap's (Wx (D, 4H), Wh (H, 4H), b (4H,)) in gate order i, f, o, g. Used by the test that compares
    `lstm_forward` with torch's nn.LSTM; no torch needed here, only the arrays.
    """
    H = weight_hh.shape[1]
    order = np.r_[0:H, H : 2 * H, 3 * H : 4 * H, 2 * H : 3 * H]  # i, f, o, g from i, f, g, o
    return weight_ih[order].T.copy(), weight_hh[order].T.copy(), (bias_ih + bias_hh)[order].copy()

"""The vanilla (Elman) recurrent network with a tanh non-linearity, and backpropagation through time.

One step:

    a_t = x_t Wx + h_{t−1} Wh + b          (N, H)
    h_t = tanh(a_t)

Backward through one step, given dh_t = ∂L/∂h_t:

    da_t     = dh_t ⊙ (1 − h_t²)            tanh′(a) = 1 − tanh(a)²
    dx_t     = da_t Wxᵀ,   dh_{t−1} = da_t Whᵀ
    dWx     += x_tᵀ da_t,  dWh     += h_{t−1}ᵀ da_t,  db += Σ_n da_t

Through T steps the gradient reaching h_0 is multiplied T times by diag(1 − h_t²) Whᵀ. When those factors have
norm below 1 it shrinks geometrically (vanishing gradients); above 1 it grows (exploding gradients). Lesson 01
measures this.

Shapes: N batch, T time steps, D input size, H hidden size.

This is the READABLE path: the sequence functions are plain loops over the step functions, and each backward
equation is written once, in `rnn_step_backward`. `minicap.nn.fast` computes exactly the same numbers faster;
the tests prove the two equal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "RNNStepCache",
    "rnn_step_forward",
    "rnn_step_backward",
    "RNNCache",
    "RNNGrads",
    "running_mask",
    "rnn_forward",
    "rnn_backward",
    "rnn_state_gradients",
]


# -------------------------------------------------------------------------------------------------- one step


class RNNStepCache(NamedTuple):
    x: np.ndarray  # (N, D) input at this step
    prev_h: np.ndarray  # (N, H) hidden state before the step
    Wx: np.ndarray  # (D, H)
    Wh: np.ndarray  # (H, H)
    next_h: np.ndarray  # (N, H) tanh(a), kept because tanh′ = 1 − tanh²


def rnn_step_forward(
    x: np.ndarray, prev_h: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, RNNStepCache]:
    """One step: next_h = tanh(x Wx + prev_h Wh + b).

    x: (N, D), prev_h: (N, H), Wx: (D, H), Wh: (H, H), b: (H,)  ->  next_h: (N, H)
    """
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, RNNStepCache(x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(
    dnext_h: np.ndarray, cache: RNNStepCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backward through one step, given dnext_h = ∂L/∂next_h (N, H).

    Returns (dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H), db (H,)).
    """
    da = dnext_h * (1.0 - cache.next_h**2)
    dx = da @ cache.Wx.T
    dprev_h = da @ cache.Wh.T
    dWx = cache.x.T @ da
    dWh = cache.prev_h.T @ da
    return dx, dprev_h, dWx, dWh, da.sum(axis=0)


# ----------------------------------------------------------------------------------------- whole sequence


def running_mask(lengths: np.ndarray | None, N: int, T: int) -> np.ndarray:
    """(N, T) bool: sequence n is still running at step t, i.e. t < lengths[n] (all True without lengths)."""
    if lengths is None:
        return np.ones((N, T), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (N,) or np.any(lengths < 0) or np.any(lengths > T):
        raise ValueError(f"lengths must be (N,) = ({N},) integers in [0, {T}], got {lengths!r}")
    return np.arange(T)[None, :] < lengths[:, None]


class RNNCache(NamedTuple):
    """What `rnn_backward` needs: every step's own cache, and which sequences each step updated."""

    steps: list[RNNStepCache]  # T caches, one per step, in time order
    running: np.ndarray  # (N, T) bool: sequence n was still running at step t (all True without lengths)
    h_last: np.ndarray  # (N, H) the state after the last step: the h0 of the next chunk in truncated BPTT


class RNNGrads(NamedTuple):
    dx: np.ndarray  # (N, T, D)
    dh0: np.ndarray  # (N, H)
    dWx: np.ndarray  # (D, H)
    dWh: np.ndarray  # (H, H)
    db: np.ndarray  # (H,)


def rnn_forward(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, RNNCache]:
    """Run the RNN over a whole sequence: `rnn_step_forward` once per time step, the state carried along.

    x: (N, T, D), h0: (N, H), Wx: (D, H), Wh: (H, H), b: (H,)  ->  h: (N, T, H), the hidden state at every step
    lengths: optional (N,) int: sequence n has lengths[n] steps, after which its state is carried unchanged
        (h_t = h_{t−1}), so padding can never change it.
    """
    N, T, _ = x.shape
    if T < 1:
        raise ValueError(f"rnn_forward needs a sequence of at least one step, got x of shape {x.shape}")
    running = running_mask(lengths, N, T)
    h = h0
    hs, steps = [], []
    for t in range(T):
        next_h, step = rnn_step_forward(x[:, t], h, Wx, Wh, b)
        h = np.where(running[:, t, None], next_h, h)  # a sequence that has ended keeps its state
        hs.append(h)
        steps.append(step)
    return np.stack(hs, axis=1), RNNCache(steps, running, h)


def rnn_backward(dh: np.ndarray, cache: RNNCache) -> RNNGrads:
    """Backpropagation through time: `rnn_step_backward` once per step, from the last step to the first.

    dh: (N, T, H), the upstream gradient ∂L/∂h_t of every output (from the layer above, NOT through time).
    Returns RNNGrads(dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,)).

    The hidden state h_t feeds both the layer above and step t+1, so its gradient is the sum of the two; the
    weights are shared by every step, so their gradients are summed over the steps.
    """
    N, T, _ = dh.shape
    first = cache.steps[0]
    dnext_h = np.zeros_like(first.prev_h)  # ∂L/∂h_t arriving from step t+1
    dx = np.zeros((N, T, first.x.shape[1]), dtype=dh.dtype)
    dWx, dWh, db = np.zeros_like(first.Wx), np.zeros_like(first.Wh), np.zeros(first.Wh.shape[1], dtype=dh.dtype)
    for t in reversed(range(T)):
        keep = cache.running[:, t, None]  # an ended sequence only copied its state at step t ...
        dh_t = dnext_h + dh[:, t]
        dx[:, t], dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh_t * keep, cache.steps[t])
        dnext_h = np.where(keep, dprev_h, dh_t)  # ... so its gradient passes through step t unchanged
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    return RNNGrads(dx, dnext_h, dWx, dWh, db)


def rnn_state_gradients(dh: np.ndarray, cache: RNNCache) -> np.ndarray:
    """∂L/∂h_t for every hidden state h_0 … h_T: how much gradient reaches each step back in time.

    dh: (N, T, H) upstream gradient of the outputs (e.g. zero except at the last step when the loss reads only
    h_T). Returns (T+1, N, H), index t holding ∂L/∂h_t (index 0 is ∂L/∂h0, equal to `rnn_backward(...).dh0`).
    The loop of `rnn_backward`, keeping the state gradient of every step instead of the weight gradients;
    lesson 01 plots its norm against the distance k = T − t to see gradients vanish.
    """
    N, T, H = dh.shape
    states = np.zeros((T + 1, N, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        keep = cache.running[:, t, None]
        states[t + 1] += dh[:, t]  # total gradient at h_{t+1}: from above and from the future
        _, dprev_h, _, _, _ = rnn_step_backward(states[t + 1] * keep, cache.steps[t])
        states[t] = np.where(keep, dprev_h, states[t + 1])
    return states

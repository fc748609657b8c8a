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


class RNNCache(NamedTuple):
    """What `rnn_backward` needs. Arrays are time-major so that every step's slice is contiguous."""

    x: np.ndarray  # (T, N, D) inputs, time-major
    h: np.ndarray  # (T+1, N, H) hidden states; h[0] = h0, h[t+1] is the output at step t
    Wx: np.ndarray  # (D, H)
    Wh: np.ndarray  # (H, H)

    @property
    def h_last(self) -> np.ndarray:
        """(N, H) the state after the last step: the h0 of the next chunk in truncated BPTT."""
        return self.h[-1]


class RNNGrads(NamedTuple):
    dx: np.ndarray  # (N, T, D)
    dh0: np.ndarray  # (N, H)
    dWx: np.ndarray  # (D, H)
    dWh: np.ndarray  # (H, H)
    db: np.ndarray  # (H,)


def rnn_forward(
    x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, RNNCache]:
    """Run the RNN over a whole sequence.

    x: (N, T, D), h0: (N, H), Wx: (D, H), Wh: (H, H), b: (H,)  ->  h: (N, T, H), the hidden state at every step

    Speed without hiding the maths: the input term x_t Wx + b of every step is computed before the loop as ONE
    matrix product over all N·T rows (one big GEMM is several times faster than T small ones); only h_{t−1} Wh,
    which depends on the previous step, stays inside the loop. Inputs are made time-major (T, N, D) so each
    step reads and writes contiguous memory.
    """
    N, T, D = x.shape
    H = h0.shape[1]
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))  # (T, N, D)
    h = np.empty((T + 1, N, H), dtype=x.dtype)
    h[0] = h0
    np.matmul(xt.reshape(T * N, D), Wx, out=h[1:].reshape(T * N, H))  # x_t Wx for every t at once,
    h[1:] += b  # + b, in place
    for t in range(T):
        h[t + 1] += h[t] @ Wh  # a_t = (x_t Wx + b) + h_{t−1} Wh
        np.tanh(h[t + 1], out=h[t + 1])  # h_t = tanh(a_t), in place
    return h[1:].transpose(1, 0, 2).copy(), RNNCache(xt, h, Wx, Wh)


def rnn_backward(dh: np.ndarray, cache: RNNCache) -> RNNGrads:
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
    dprev_h = np.zeros((N, H), dtype=dh.dtype)  # gradient arriving from step t+1 through h_t
    for t in reversed(range(T)):
        h_t = cache.h[t + 1]
        np.multiply(dh_t[t] + dprev_h, 1.0 - h_t * h_t, out=da[t])  # da_t = (dh_t + dh_from_future) ⊙ tanh′
        dprev_h = da[t] @ cache.Wh.T
    da2 = da.reshape(T * N, H)
    dx = (da2 @ cache.Wx.T).reshape(T, N, D).transpose(1, 0, 2)
    dWx = cache.x.reshape(T * N, D).T @ da2
    dWh = cache.h[:-1].reshape(T * N, H).T @ da2  # h_{t−1} for t = 0..T−1
    return RNNGrads(np.ascontiguousarray(dx), dprev_h, dWx, dWh, da2.sum(axis=0))


def rnn_state_gradients(dh: np.ndarray, cache: RNNCache) -> np.ndarray:
    """∂L/∂h_t for every hidden state h_0 … h_T: how much gradient reaches each step back in time.

    dh: (N, T, H) upstream gradient of the outputs (e.g. zero except at the last step when the loss reads only
    h_T). Returns (T+1, N, H), index t holding ∂L/∂h_t (index 0 is ∂L/∂h0, equal to `rnn_backward(...).dh0`).

    The same backward recurrence as `rnn_backward`, keeping the state gradient of every step instead of the
    weight gradients; lesson 01 plots its norm against the distance k = T − t to see gradients vanish.
    """
    T, N, _ = cache.x.shape
    dh_tm = dh.transpose(1, 0, 2)
    states = np.zeros((T + 1, N, cache.h.shape[2]), dtype=dh.dtype)
    for t in reversed(range(T)):
        states[t + 1] += dh_tm[t]  # total gradient at h_{t+1}: from above and from the future
        da = states[t + 1] * (1.0 - cache.h[t + 1] ** 2)
        states[t] = da @ cache.Wh.T
    return states

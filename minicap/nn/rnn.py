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
    "active_counts",
    "gradients_after_bptt",
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
    active: np.ndarray  # (T,) int: sequences 0 … active[t]−1 are still running at step t (all N without lengths)

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


def rnn_forward(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, RNNCache]:
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
    return h[1:].transpose(1, 0, 2).copy(), RNNCache(xt, h, Wx, Wh, active)


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
        n = cache.active[t]
        states[t + 1] += dh_tm[t]  # total gradient at h_{t+1}: from above and from the future
        da = states[t + 1, :n] * (1.0 - cache.h[t + 1, :n] ** 2)
        states[t, :n] = da @ cache.Wh.T
        states[t, n:] = states[t + 1, n:]  # finished sequences carry their gradient back unchanged
    return states

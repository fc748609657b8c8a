"""The gated recurrent unit (Cho et al. 2014; in the form of Chung et al. 2014) and backpropagation through time.

One step, with the three blocks of each weight matrix side by side (gate order **r, z, n**, as in PyTorch):

    ax = x_t Wx + b                                 (N, 3H)  the input's share of every block, bias included
    ah = h_{t−1} Wh, then ah_n += b_hn              (N, 3H)  the previous state's share: ONE matrix product
    r = σ(ax_r + ah_r)            reset gate:   how much of the old state the candidate may read
    z = σ(ax_z + ah_z)            update gate:  how much of the candidate to WRITE (the LSTM's input gate i)
    n = tanh(ax_n + r ⊙ ah_n)     candidate state
    h_t = (1 − z) ⊙ h_{t−1} + z ⊙ n

The state is also the memory: there is no separate cell. Holding the gates fixed, one step back along the state
multiplies the gradient by (1 − z), elementwise — the part of the old state that was kept. Where the LSTM's cell
path carries the forget gate f_t, the GRU's carries (1 − z_t): one gate decides both what to keep and what to
write (keep + write = 1), so a unit that holds a value (z ≈ 0) also shuts out every new input.

The reset gate multiplies h_{t−1} Wh_n + b_hn, AFTER the product with Wh (as PyTorch's nn.GRU and cuDNN do; the
paper applies r to h_{t−1} before it, a slightly different function). That keeps h_{t−1} Wh ONE product for all
three blocks, and it is why the candidate's hidden-side bias b_hn (H,) is a parameter of its own: it sits inside
r ⊙ (…), where it cannot be merged with the input-side bias b.

PyTorch's convention is h_t = z ⊙ h_{t−1} + (1 − z) ⊙ n: its z is our 1 − z, so its z-block weights and biases are
ours negated (σ(−a) = 1 − σ(a)); `gru_weights_from_torch_order` converts.

Shapes: N batch, T time steps, D input size, H hidden size.

This is the READABLE path: the sequence functions are plain loops over the step functions, and each backward
equation is written once, in `gru_step_backward`. (There is no fast GRU in `minicap.nn.fast`: models run these
loops whatever their `fast` switch says.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicap.nn.layers import sigmoid
from minicap.nn.rnn import running_mask

__all__ = [
    "GRUStepCache",
    "gru_step_forward",
    "gru_step_backward",
    "GRUCache",
    "GRUGrads",
    "gru_forward",
    "gru_backward",
    "gru_state_gradients",
    "gru_weights_from_torch_order",
]


# -------------------------------------------------------------------------------------------------- one step


class GRUStepCache(NamedTuple):
    x: np.ndarray  # (N, D) input
    prev_h: np.ndarray  # (N, H)
    Wx: np.ndarray  # (D, 3H)
    Wh: np.ndarray  # (H, 3H)
    r: np.ndarray  # (N, H) reset gate σ(a_r)
    z: np.ndarray  # (N, H) update gate σ(a_z)
    n: np.ndarray  # (N, H) candidate tanh(ax_n + r ⊙ ah_n)
    ah_n: np.ndarray  # (N, H) h_{t−1} Wh_n + b_hn, what the reset gate multiplied


def gru_step_forward(
    x: np.ndarray, prev_h: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray, b_hn: np.ndarray
) -> tuple[np.ndarray, GRUStepCache]:
    """One GRU step (equations in the module docstring).

    x: (N, D), prev_h: (N, H), Wx: (D, 3H), Wh: (H, 3H), b: (3H,), b_hn: (H,)
    Returns (next_h (N, H), cache).
    """
    H = prev_h.shape[1]
    ax = x @ Wx + b  # (N, 3H)
    ah = prev_h @ Wh  # (N, 3H)
    r = sigmoid(ax[:, 0:H] + ah[:, 0:H])
    z = sigmoid(ax[:, H : 2 * H] + ah[:, H : 2 * H])
    ah_n = ah[:, 2 * H :] + b_hn
    n = np.tanh(ax[:, 2 * H :] + r * ah_n)
    next_h = (1.0 - z) * prev_h + z * n
    return next_h, GRUStepCache(x, prev_h, Wx, Wh, r, z, n, ah_n)


def gru_step_backward(
    dnext_h: np.ndarray, cache: GRUStepCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backward through one step, given dnext_h = ∂L/∂h_t (N, H).

        dz = dh ⊙ (n − h_{t−1}),   dn = dh ⊙ z                      h_t = h_{t−1} + z ⊙ (n − h_{t−1})
        da_n = dn ⊙ (1 − n²),   da_r = da_n ⊙ ah_n ⊙ r(1 − r),   da_z = dz ⊙ z(1 − z)
        dax = [da_r, da_z, da_n]         the input side: dx = dax Wxᵀ, dWx = xᵀ dax, db = Σ_n dax
        dah = [da_r, da_z, da_n ⊙ r]     the state side: dWh = h_{t−1}ᵀ dah, db_hn = Σ_n da_n ⊙ r
        dprev_h = dh ⊙ (1 − z) + dah Whᵀ         the kept part, and every gate's use of h_{t−1}

    Returns (dx (N, D), dprev_h (N, H), dWx (D, 3H), dWh (H, 3H), db (3H,), db_hn (H,)).
    """
    r, z, n, prev_h = cache.r, cache.z, cache.n, cache.prev_h
    dz = dnext_h * (n - prev_h)
    da_n = dnext_h * z * (1.0 - n**2)
    da_r = da_n * cache.ah_n * r * (1.0 - r)
    da_z = dz * z * (1.0 - z)
    dax = np.concatenate([da_r, da_z, da_n], axis=1)
    dah = np.concatenate([da_r, da_z, da_n * r], axis=1)
    dx = dax @ cache.Wx.T
    dprev_h = dnext_h * (1.0 - z) + dah @ cache.Wh.T
    return dx, dprev_h, cache.x.T @ dax, prev_h.T @ dah, dax.sum(axis=0), dah[:, 2 * prev_h.shape[1] :].sum(axis=0)


# ----------------------------------------------------------------------------------------- whole sequence


class GRUCache(NamedTuple):
    """What `gru_backward` needs: every step's own cache, and which sequences each step updated."""

    steps: list[GRUStepCache]  # T caches, one per step, in time order
    running: np.ndarray  # (N, T) bool: sequence n was still running at step t (all True without lengths)
    h_last: np.ndarray  # (N, H) the state after the last step


class GRUGrads(NamedTuple):
    dx: np.ndarray  # (N, T, D)
    dh0: np.ndarray  # (N, H)
    dWx: np.ndarray  # (D, 3H)
    dWh: np.ndarray  # (H, 3H)
    db: np.ndarray  # (3H,)
    db_hn: np.ndarray  # (H,)


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    b_hn: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, GRUCache]:
    """Run the GRU over a whole sequence: `gru_step_forward` once per time step, the state carried along.

    x: (N, T, D), h0: (N, H), Wx: (D, 3H), Wh: (H, 3H), b: (3H,), b_hn: (H,)  ->  h: (N, T, H) and the cache
    lengths: optional (N,) int: sequence n has lengths[n] steps, after which its state is carried unchanged
        (h_t = h_{t−1}), so padding can never change it.
    """
    N, T, _ = x.shape
    if T < 1:
        raise ValueError(f"gru_forward needs a sequence of at least one step, got x of shape {x.shape}")
    running = running_mask(lengths, N, T)
    h = h0
    hs, steps = [], []
    for t in range(T):
        next_h, step = gru_step_forward(x[:, t], h, Wx, Wh, b, b_hn)
        h = np.where(running[:, t, None], next_h, h)  # a sequence that has ended keeps its state
        hs.append(h)
        steps.append(step)
    return np.stack(hs, axis=1), GRUCache(steps, running, h)


def gru_backward(dh: np.ndarray, cache: GRUCache) -> GRUGrads:
    """Backpropagation through time: `gru_step_backward` once per step, from the last step to the first.

    dh: (N, T, H), the upstream gradient ∂L/∂h_t of every output (from the layer above, NOT through time).
    Returns GRUGrads(dx (N, T, D), dh0 (N, H), dWx (D, 3H), dWh (H, 3H), db (3H,), db_hn (H,)).

    h_t feeds both the layer above and step t+1, so its gradient is the sum of the two; the weights are shared
    by every step, so their gradients are summed over the steps.
    """
    N, T, _ = dh.shape
    first = cache.steps[0]
    dnext_h = np.zeros_like(first.prev_h)  # ∂L/∂h_t arriving from step t+1
    dx = np.zeros((N, T, first.x.shape[1]), dtype=dh.dtype)
    dWx, dWh = np.zeros_like(first.Wx), np.zeros_like(first.Wh)
    db, db_hn = np.zeros(first.Wx.shape[1], dtype=dh.dtype), np.zeros(first.prev_h.shape[1], dtype=dh.dtype)
    for t in reversed(range(T)):
        keep = cache.running[:, t, None]  # an ended sequence only copied its state at step t ...
        dh_t = dnext_h + dh[:, t]
        dx[:, t], dprev_h, dWx_t, dWh_t, db_t, db_hn_t = gru_step_backward(dh_t * keep, cache.steps[t])
        dnext_h = np.where(keep, dprev_h, dh_t)  # ... so its gradient passes through step t unchanged
        dWx, dWh, db, db_hn = dWx + dWx_t, dWh + dWh_t, db + db_t, db_hn + db_hn_t
    return GRUGrads(dx, dnext_h, dWx, dWh, db, db_hn)


def gru_state_gradients(dh: np.ndarray, cache: GRUCache) -> np.ndarray:
    """∂L/∂h_t for every hidden state h_0 … h_T: how much gradient reaches each step back in time.

    dh: (N, T, H) upstream gradient of the outputs. Returns (T+1, N, H), index t holding ∂L/∂h_t (index 0 equals
    `gru_backward(...).dh0`). The loop of `gru_backward`, keeping the state gradient of every step instead of the
    weight gradients (lesson 01 plots its norm).
    """
    N, T, H = dh.shape
    states = np.zeros((T + 1, N, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        keep = cache.running[:, t, None]
        states[t + 1] += dh[:, t]  # total gradient at h_{t+1}: from above and from the future
        _, dprev_h, _, _, _, _ = gru_step_backward(states[t + 1] * keep, cache.steps[t])
        states[t] = np.where(keep, dprev_h, states[t + 1])
    return states


# ---------------------------------------------------------------------------------------- interoperability


def gru_weights_from_torch_order(
    weight_ih: np.ndarray, weight_hh: np.ndarray, bias_ih: np.ndarray, bias_hh: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Convert PyTorch nn.GRU weights (gate order r, z, n; shapes (3H, D), (3H, H), (3H,), (3H,)) to minicap's
    (Wx (D, 3H), Wh (H, 3H), b (3H,), b_hn (H,)).

    The order is the same; the z block changes sign, because PyTorch keeps z ⊙ h_{t−1} where minicap keeps
    (1 − z) ⊙ h_{t−1}, and σ(−a) = 1 − σ(a). The r and z biases of both sides add up; the candidate's hidden-side
    bias stays apart (b_hn). No torch needed here, only the arrays.
    """
    H = weight_hh.shape[1]
    sign = np.ones(3 * H)
    sign[H : 2 * H] = -1.0
    b = (bias_ih + np.r_[bias_hh[: 2 * H], np.zeros(H)]) * sign
    return (weight_ih * sign[:, None]).T.copy(), (weight_hh * sign[:, None]).T.copy(), b, bias_hh[2 * H :].copy()

"""Soft attention over image locations (Xu et al. 2015, "Show, Attend and Tell"), forward and backward by hand.

The mean-pooled captioner squeezes a photo into ONE vector before the first word. Here the encoder's last feature
map is kept as L annotation vectors a_1 … a_L (EfficientNet-Lite0: a 7 × 7 grid, L = 49, F = 1280 each), and at
every step the decoder chooses where to look:

    proj_i = a_i U + b_att                         (N, L, A)  computed ONCE per image, before the loop
    e_ti   = w_attᵀ tanh(proj_i + h_{t−1} W_att)   (N, L)     additive (Bahdanau) scores: the paper's f_att
    α_t    = softmax_i(e_t)                        (N, L)     where to look: Σ_i α_ti = 1
    z_t    = Σ_i α_ti a_i                          (N, F)     the context: a weighted mean of the annotations
    β_t    = σ(h_{t−1} · w_β + b_β)                (N, 1)     the gating scalar: how much of the context to use
    ẑ_t    = β_t z_t
    h_t, c_t = LSTM([x_t, ẑ_t], h_{t−1}, c_{t−1})            the context enters the gates WITH the word vector
    h_0 = tanh(ā W_h0 + b_h0),  c_0 = tanh(ā W_c0 + b_c0),  ā = (1/L) Σ_i a_i        the state starts from the photo

Optionally the paper's deep output layer (its eq. 7) lets the word scores read the previous word and the context
directly: o_t = tanh(x_t + h_t L_h + ẑ_t L_z + b_out), scores_t = o_t W_vocab + b_vocab (`deep_output_forward`).

And the doubly stochastic regulariser λ Σ_i (1 − Σ_t α_ti)² asks every location to be looked at about once over
the caption (Σ_i α_ti = 1 holds by the softmax; this asks for Σ_t α_ti ≈ 1 too).

The LSTM step is `minicap.nn.lstm.lstm_step_forward` itself, fed the concatenation [x_t, ẑ_t] (N, W + F): its input
weights Wx (W + F, 4H) are the word rows Wx[:W] stacked on the context rows Wx[W:]. The words do not depend on the
state, so a fast path may project all T of them with one GEMM before the loop; ẑ_t depends on h_{t−1}, so the
context's projection cannot be hoisted: attention and recurrence are coupled step by step, in BPTT too.

Letters: N batch, T time steps, L annotation vectors (locations), F annotation size, A attention size,
W word-vector size, H hidden size. Every backward here is gradient-checked in float64 (`minicap gradcheck`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicap.nn.layers import sigmoid
from minicap.nn.lstm import LSTMStepCache, lstm_step_backward, lstm_step_forward
from minicap.nn.rnn import running_mask

__all__ = [
    "AttentionCache",
    "attention_forward",
    "attention_backward",
    "GateCache",
    "gate_forward",
    "gate_backward",
    "InitStateCache",
    "init_state_forward",
    "init_state_backward",
    "AttentionLSTMStepCache",
    "AttentionLSTMStepGrads",
    "attention_lstm_step_forward",
    "attention_lstm_step_backward",
    "AttentionLSTMCache",
    "AttentionLSTMGrads",
    "step_context",
    "attention_lstm_forward",
    "attention_contexts",
    "attention_lstm_backward",
    "DeepOutputCache",
    "deep_output_forward",
    "deep_output_backward",
    "doubly_stochastic_loss",
]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """softmax by log-sum-exp: the row maximum is subtracted first, so no exp overflows."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------------------------------ additive attention


class AttentionCache(NamedTuple):
    annotations: np.ndarray  # (N, L, F) a
    prev_h: np.ndarray  # (N, H) h_{t−1}
    W_att: np.ndarray  # (H, A)
    w_att: np.ndarray  # (A,)
    s: np.ndarray  # (N, L, A) tanh(proj + h_{t−1} W_att)
    alpha: np.ndarray  # (N, L) softmax of the scores


def attention_forward(
    annotations: np.ndarray, proj: np.ndarray, prev_h: np.ndarray, W_att: np.ndarray, w_att: np.ndarray
) -> tuple[np.ndarray, np.ndarray, AttentionCache]:
    """Where to look, and what is seen there:

        s_i = tanh(proj_i + h_{t−1} W_att)     e_i = s_i · w_att     α = softmax_i(e)     z = Σ_i α_i a_i

    annotations a: (N, L, F); proj: (N, L, A), the precomputed a U + b_att; prev_h: (N, H); W_att: (H, A); w_att: (A,)
    Returns (z (N, F), α (N, L), cache).
    """
    s = np.tanh(proj + (prev_h @ W_att)[:, None, :])  # (N, L, A)
    alpha = softmax(s @ w_att, axis=1)  # (N, L)
    z = (alpha[:, None, :] @ annotations)[:, 0]  # (N, 1, L) @ (N, L, F) -> (N, F)
    return z, alpha, AttentionCache(annotations, prev_h, W_att, w_att, s, alpha)


def attention_backward(
    dz: np.ndarray, dalpha: np.ndarray | None, cache: AttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backward through `attention_forward`, given dz = ∂L/∂z (N, F) and optionally dalpha = ∂L/∂α (N, L) from
    elsewhere (the regulariser reads α directly).

        ∂L/∂α_i   = dz · a_i  (+ dalpha_i)                      z is linear in α
        de_i      = α_i (∂L/∂α_i − Σ_j α_j ∂L/∂α_j)             the softmax's Jacobian, diag(α) − α αᵀ, applied
        dw_att    = Σ_{n,i} de_i s_i,    ds_i = de_i w_att,    dpre_i = ds_i ⊙ (1 − s_i²)
        dproj_i   = dpre_i,              dprev_h = (Σ_i dpre_i) W_attᵀ,    dW_att = h_{t−1}ᵀ Σ_i dpre_i
        da_i      = α_i dz                                       (the path through z; proj has its own, via U)

    Returns (dannotations (N, L, F), dproj (N, L, A), dprev_h (N, H), dW_att (H, A), dw_att (A,)).
    """
    a, alpha, s = cache.annotations, cache.alpha, cache.s
    dalpha_total = (a @ dz[:, :, None])[:, :, 0]  # (N, L, F) @ (N, F, 1) -> (N, L)
    if dalpha is not None:
        dalpha_total = dalpha_total + dalpha
    de = alpha * (dalpha_total - (alpha * dalpha_total).sum(axis=1, keepdims=True))  # (N, L)
    dw_att = np.einsum("nl,nla->a", de, s)
    dpre = de[:, :, None] * cache.w_att * (1.0 - s**2)  # (N, L, A)
    dpre_sum = dpre.sum(axis=1)  # (N, A): h_{t−1} W_att was broadcast over the L locations
    dprev_h = dpre_sum @ cache.W_att.T
    dW_att = cache.prev_h.T @ dpre_sum
    da = alpha[:, :, None] * dz[:, None, :]  # (N, L, F)
    return da, dpre, dprev_h, dW_att, dw_att


# ------------------------------------------------------------------------------------------ the gating scalar


class GateCache(NamedTuple):
    z: np.ndarray  # (N, F) context before gating
    prev_h: np.ndarray  # (N, H)
    w_beta: np.ndarray  # (H,)
    beta: np.ndarray  # (N, 1) σ(h_{t−1} · w_β + b_β)


def gate_forward(
    z: np.ndarray, prev_h: np.ndarray, w_beta: np.ndarray, b_beta: np.ndarray
) -> tuple[np.ndarray, GateCache]:
    """ẑ = β z with β = σ(h_{t−1} · w_β + b_β), one scalar per caption and step (the paper's §4.2.1: the
    model learns to turn the image down for words like "of" and "a").

    z: (N, F), prev_h: (N, H), w_beta: (H,), b_beta: (1,)  ->  ẑ (N, F) and the cache (β is cache.beta).
    """
    beta = sigmoid((prev_h @ w_beta)[:, None] + b_beta)  # (N, 1)
    return beta * z, GateCache(z, prev_h, w_beta, beta)


def gate_backward(dzhat: np.ndarray, cache: GateCache) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """dz = β dẑ;  dβ = Σ_f dẑ_f z_f;  dg = dβ β(1 − β);  dprev_h = dg w_β;  dw_β = h_{t−1}ᵀ dg;  db_β = Σ_n dg.

    Returns (dz (N, F), dprev_h (N, H), dw_beta (H,), db_beta (1,)).
    """
    beta = cache.beta
    dg = (dzhat * cache.z).sum(axis=1, keepdims=True) * beta * (1.0 - beta)  # (N, 1)
    return beta * dzhat, dg * cache.w_beta, cache.prev_h.T @ dg[:, 0], dg.sum(axis=0)


# ------------------------------------------------------------------------------ the initial state from the photo


class InitStateCache(NamedTuple):
    mean: np.ndarray  # (N, F) ā, the mean annotation
    num_locations: int  # L
    W_h0: np.ndarray  # (F, H)
    W_c0: np.ndarray  # (F, H)
    h0: np.ndarray  # (N, H)
    c0: np.ndarray  # (N, H)


def init_state_forward(
    annotations: np.ndarray, W_h0: np.ndarray, b_h0: np.ndarray, W_c0: np.ndarray, b_c0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, InitStateCache]:
    """h_0 = tanh(ā W_h0 + b_h0), c_0 = tanh(ā W_c0 + b_c0), with ā = (1/L) Σ_i a_i (the paper's §3.1.2).

    annotations: (N, L, F); W_h0, W_c0: (F, H); b_h0, b_c0: (H,)  ->  h0 (N, H), c0 (N, H), cache.
    """
    mean = annotations.mean(axis=1)
    h0 = np.tanh(mean @ W_h0 + b_h0)
    c0 = np.tanh(mean @ W_c0 + b_c0)
    return h0, c0, InitStateCache(mean, annotations.shape[1], W_h0, W_c0, h0, c0)


def init_state_backward(
    dh0: np.ndarray, dc0: np.ndarray, cache: InitStateCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """dpre_h = dh0 ⊙ (1 − h0²), dpre_c = dc0 ⊙ (1 − c0²); dW = āᵀ dpre, db = Σ_n dpre;
    dā = dpre_h W_h0ᵀ + dpre_c W_c0ᵀ, and every a_i gets dā / L (ā is their mean).

    Returns (dannotations (N, L, F), dW_h0, db_h0, dW_c0, db_c0).
    """
    dpre_h = dh0 * (1.0 - cache.h0**2)
    dpre_c = dc0 * (1.0 - cache.c0**2)
    dmean = dpre_h @ cache.W_h0.T + dpre_c @ cache.W_c0.T  # (N, F)
    da = np.repeat((dmean / cache.num_locations)[:, None, :], cache.num_locations, axis=1)
    return da, cache.mean.T @ dpre_h, dpre_h.sum(axis=0), cache.mean.T @ dpre_c, dpre_c.sum(axis=0)


# ------------------------------------------------------------------------------------- one attention-LSTM step


class AttentionLSTMStepCache(NamedTuple):
    attention: AttentionCache  # where the step looked (α is attention.alpha)
    gate: GateCache  # β
    lstm: LSTMStepCache  # the LSTM step on [x_t, ẑ_t]
    wordvec_size: int  # W: the first W columns of the LSTM's input are the word vector


class AttentionLSTMStepGrads(NamedTuple):
    dx: np.ndarray  # (N, W) word vector
    dprev_h: np.ndarray  # (N, H)
    dprev_c: np.ndarray  # (N, H)
    dannotations: np.ndarray  # (N, L, F)
    dproj: np.ndarray  # (N, L, A)
    dW_att: np.ndarray  # (H, A)
    dw_att: np.ndarray  # (A,)
    dw_beta: np.ndarray  # (H,)
    db_beta: np.ndarray  # (1,)
    dWx: np.ndarray  # (W + F, 4H)
    dWh: np.ndarray  # (H, 4H)
    db: np.ndarray  # (4H,)


def attention_lstm_step_forward(
    x: np.ndarray,
    prev_h: np.ndarray,
    prev_c: np.ndarray,
    annotations: np.ndarray,
    proj: np.ndarray,
    W_att: np.ndarray,
    w_att: np.ndarray,
    w_beta: np.ndarray,
    b_beta: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, AttentionLSTMStepCache]:
    """One step of the attention decoder: look (α from h_{t−1}), gate (β), then the LSTM on [word, context].

        z_t, α_t = attention(a, proj, h_{t−1})       ẑ_t = β_t z_t       h_t, c_t = LSTM([x_t, ẑ_t], h_{t−1}, c_{t−1})

    x: (N, W) word vector; prev_h, prev_c: (N, H); annotations: (N, L, F); proj: (N, L, A) = a U + b_att;
    W_att: (H, A); w_att: (A,); w_beta: (H,); b_beta: (1,); Wx: (W + F, 4H); Wh: (H, 4H); b: (4H,)
    Returns (next_h (N, H), next_c (N, H), α (N, L), cache).
    """
    z, alpha, att_cache = attention_forward(annotations, proj, prev_h, W_att, w_att)
    zhat, gate_cache = gate_forward(z, prev_h, w_beta, b_beta)
    next_h, next_c, lstm_cache = lstm_step_forward(np.concatenate([x, zhat], axis=1), prev_h, prev_c, Wx, Wh, b)
    return next_h, next_c, alpha, AttentionLSTMStepCache(att_cache, gate_cache, lstm_cache, x.shape[1])


def step_context(cache: AttentionLSTMStepCache) -> np.ndarray:
    """ẑ_t = β_t z_t (N, F), the gated context the step fed to the LSTM (the deep output layer reads it too)."""
    return cache.lstm.x[:, cache.wordvec_size :]


def attention_lstm_step_backward(
    dnext_h: np.ndarray,
    dnext_c: np.ndarray,
    dalpha: np.ndarray | None,
    cache: AttentionLSTMStepCache,
    dcontext: np.ndarray | None = None,
) -> AttentionLSTMStepGrads:
    """Backward through one step: the LSTM (`lstm_step_backward`, unchanged), then the gate, then attention.

    h_{t−1} has three consumers in the step — the LSTM's recurrent weights, the gate β and the attention scores —
    and its gradient is the sum of the three. dalpha: optional (N, L) gradient reaching α_t directly; dcontext:
    optional (N, F) gradient reaching ẑ_t directly (from a deep output layer), added to the LSTM's.
    """
    dxz, dprev_h, dprev_c, dWx, dWh, db = lstm_step_backward(dnext_h, dnext_c, cache.lstm)
    W = cache.wordvec_size
    dzhat = dxz[:, W:] if dcontext is None else dxz[:, W:] + dcontext
    dz, dprev_h_gate, dw_beta, db_beta = gate_backward(dzhat, cache.gate)
    da, dproj, dprev_h_att, dW_att, dw_att = attention_backward(dz, dalpha, cache.attention)
    return AttentionLSTMStepGrads(
        dxz[:, :W], dprev_h + dprev_h_gate + dprev_h_att, dprev_c, da, dproj, dW_att, dw_att, dw_beta, db_beta,
        dWx, dWh, db,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- the whole caption


class AttentionLSTMCache(NamedTuple):
    steps: list[AttentionLSTMStepCache]  # T caches, in time order
    running: np.ndarray  # (N, T) bool: caption n was still running at step t


class AttentionLSTMGrads(NamedTuple):
    dx: np.ndarray  # (N, T, W)
    dh0: np.ndarray  # (N, H)
    dc0: np.ndarray  # (N, H)
    dannotations: np.ndarray  # (N, L, F) through the contexts (the initial state and U have their own paths)
    dproj: np.ndarray  # (N, L, A) summed over the steps
    dW_att: np.ndarray
    dw_att: np.ndarray
    dw_beta: np.ndarray
    db_beta: np.ndarray
    dWx: np.ndarray
    dWh: np.ndarray
    db: np.ndarray


def attention_lstm_forward(
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    annotations: np.ndarray,
    proj: np.ndarray,
    W_att: np.ndarray,
    w_att: np.ndarray,
    w_beta: np.ndarray,
    b_beta: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, AttentionLSTMCache]:
    """The attention decoder over a whole caption: `attention_lstm_step_forward` once per step.

    x: (N, T, W) word vectors; h0, c0: (N, H); annotations (N, L, F), proj (N, L, A) (the same at every step);
    the weights as in the step. lengths: optional (N,) int; after its last step a caption keeps its state (as in
    `lstm_forward`) and its α is reported as 0 there, so padding never reaches the loss or the regulariser.
    Returns h (N, T, H), alphas (N, T, L) and the cache.
    """
    N, T, _ = x.shape
    if T < 1:
        raise ValueError(f"attention_lstm_forward needs at least one step, got x of shape {x.shape}")
    running = running_mask(lengths, N, T)
    h, c = h0, c0
    hs, alphas, steps = [], [], []
    for t in range(T):
        next_h, next_c, alpha, step = attention_lstm_step_forward(
            x[:, t], h, c, annotations, proj, W_att, w_att, w_beta, b_beta, Wx, Wh, b
        )
        keep = running[:, t, None]  # (N, 1)
        h, c = np.where(keep, next_h, h), np.where(keep, next_c, c)
        hs.append(h)
        alphas.append(alpha * keep)
        steps.append(step)
    return np.stack(hs, axis=1), np.stack(alphas, axis=1), AttentionLSTMCache(steps, running)


def attention_contexts(cache: AttentionLSTMCache) -> np.ndarray:
    """The gated contexts ẑ_t of every step, (N, T, F), 0 where a caption had ended (as its α)."""
    return np.stack([step_context(step) for step in cache.steps], axis=1) * cache.running[:, :, None]


def attention_lstm_backward(
    dh: np.ndarray, dalphas: np.ndarray | None, cache: AttentionLSTMCache, dcontexts: np.ndarray | None = None
) -> AttentionLSTMGrads:
    """BPTT through the attention decoder: `attention_lstm_step_backward` from the last step to the first.

    dh: (N, T, H) upstream gradient of every h_t (from the word scores); dalphas: optional (N, T, L) gradient of
    every α_t (from the regulariser); dcontexts: optional (N, T, F) gradient of every ẑ_t (`attention_contexts`,
    read by a deep output layer). The weights, the annotations and their projection are shared by every step,
    so their gradients are summed over the steps. An ended caption only copied its state: its gradient passes
    through that step unchanged (as in `lstm_backward`).
    """
    N, T, _ = dh.shape
    first = cache.steps[0]
    W = first.wordvec_size
    dnext_h = np.zeros_like(first.lstm.prev_h)
    dnext_c = np.zeros_like(first.lstm.prev_c)
    dx = np.zeros((N, T, W), dtype=dh.dtype)
    totals: dict[str, np.ndarray] = {}
    for t in reversed(range(T)):
        keep = cache.running[:, t, None]
        dh_t = dnext_h + dh[:, t]
        dalpha_t = None if dalphas is None else dalphas[:, t] * keep
        dcontext_t = None if dcontexts is None else dcontexts[:, t] * keep
        g = attention_lstm_step_backward(dh_t * keep, dnext_c * keep, dalpha_t, cache.steps[t], dcontext_t)
        dx[:, t] = g.dx
        dnext_h = np.where(keep, g.dprev_h, dh_t)
        dnext_c = np.where(keep, g.dprev_c, dnext_c)
        for name in ("dannotations", "dproj", "dW_att", "dw_att", "dw_beta", "db_beta", "dWx", "dWh", "db"):
            value = getattr(g, name)
            totals[name] = value if name not in totals else totals[name] + value
    return AttentionLSTMGrads(dx, dnext_h, dnext_c, **totals)


# ---------------------------------------------------------------------------------------- the deep output layer


class DeepOutputCache(NamedTuple):
    x: np.ndarray  # (N, T, W) word vectors
    h: np.ndarray  # (N, T, H)
    contexts: np.ndarray  # (N, T, F) ẑ_t
    L_h: np.ndarray  # (H, W)
    L_z: np.ndarray  # (F, W)
    out: np.ndarray  # (N, T, W) o_t


def deep_output_forward(
    x: np.ndarray, h: np.ndarray, contexts: np.ndarray, L_h: np.ndarray, L_z: np.ndarray, b_out: np.ndarray
) -> tuple[np.ndarray, DeepOutputCache]:
    """o_t = tanh(x_t + h_t L_h + ẑ_t L_z + b_out) for every step: the paper's deep output layer (eq. 7).

    x: (N, T, W); h: (N, T, H); contexts: (N, T, F) (or one step: (N, W), (N, H), (N, F)); L_h: (H, W);
    L_z: (F, W); b_out: (W,)  ->  o (N, T, W) (or (N, W)), cache.
    """
    out = np.tanh(x + h @ L_h + contexts @ L_z + b_out)
    return out, DeepOutputCache(x, h, contexts, L_h, L_z, out)


def deep_output_backward(
    dout: np.ndarray, cache: DeepOutputCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """dpre = dout ⊙ (1 − o²);  dx = dpre;  dh = dpre L_hᵀ;  dẑ = dpre L_zᵀ;  dL_h = Σ_t h_tᵀ dpre_t;
    dL_z = Σ_t ẑ_tᵀ dpre_t;  db_out = Σ dpre.   Returns (dx, dh, dcontexts, dL_h, dL_z, db_out)."""
    dpre = dout * (1.0 - cache.out**2)  # (N, T, W)
    rows = dpre.reshape(-1, dpre.shape[2])
    dL_h = cache.h.reshape(-1, cache.h.shape[2]).T @ rows
    dL_z = cache.contexts.reshape(-1, cache.contexts.shape[2]).T @ rows
    return dpre, dpre @ cache.L_h.T, dpre @ cache.L_z.T, dL_h, dL_z, rows.sum(axis=0)


# ------------------------------------------------------------------------------------ the doubly stochastic term


def doubly_stochastic_loss(alphas: np.ndarray, mask: np.ndarray, lam: float) -> tuple[np.floating, np.ndarray]:
    """The paper's regulariser (§4.2.1), per caption, averaged over the batch like the word loss:

        R = (λ / N) Σ_n Σ_i (1 − Σ_t m_nt α_nti)²          m: (N, T) the caption's real steps (padding masked)
        ∂R/∂α_nti = −(2λ / N) m_nt (1 − Σ_t m_nt α_nti)

    alphas: (N, T, L); mask: (N, T) bool; lam: λ ≥ 0.  Returns (R, dalphas (N, T, L)), of alphas' dtype.
    """
    N = alphas.shape[0]
    m = mask.astype(alphas.dtype)[:, :, None]  # (N, T, 1)
    gap = 1.0 - (alphas * m).sum(axis=1)  # (N, L): 1 − Σ_t α_ti over real steps
    loss = (lam / N) * np.sum(gap * gap)
    dalphas = (-2.0 * lam / N) * gap[:, None, :] * m
    return loss, dalphas

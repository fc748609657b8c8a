"""The FAST attention decoder: `minicap.nn.attention.attention_lstm_forward/backward` rearranged for speed.

Read `attention.py` first: there the sequence is a plain loop over `attention_lstm_step_forward`. These two
functions take the same arguments and return the same numbers (the tests and `minicap gradcheck` prove forward
≤ 1e-12 and every gradient ≤ 1e-10 apart in float64, with and without lengths); `AttentionCaptionModel` uses them
when `model.fast` is set (the default). They are also `minicap.nn.fast.attention_lstm_forward/backward`.

The tricks (the same family as `minicap.nn.fast`'s LSTM), measured with `benchmarks/bench_attention.py`:

1. The words' input projection x_t Wx[:W] + b for all T steps as ONE GEMM before the loop. The context's cannot
   be hoisted (ẑ_t depends on h_{t−1}); inside the loop [ẑ_t, h_{t−1}] meets the stacked weights [Wx[W:]; Wh]
   (F + H, 4H) in ONE GEMM per step instead of two.
2. After the backward loop, ONE GEMM each: dWx and dWh from the stored pre-activation gradients of all steps
   ([x, ẑ, h_{t−1}]ᵀ DA), dx = DA Wx[:W]ᵀ, dW_att and dw_β from the stored per-step sums.
3. The annotations' gradient through the contexts, Σ_t α_t dz_tᵀ per image, as ONE batched matrix product
   (N, L, T) @ (N, T, F) after the loop, instead of an (N, L, F) outer product added up at every step.
4. Time-major buffers (T, N, ·) allocated once; the gates activated in place.
5. Packed lengths: with `lengths` sorted longest first, step t works only on the captions still running.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicap.nn.attention import AttentionLSTMGrads
from minicap.nn.layers import sigmoid
from minicap.nn.packing import active_counts

__all__ = ["FastAttentionLSTMCache", "attention_lstm_forward", "attention_contexts", "attention_lstm_backward"]


class FastAttentionLSTMCache(NamedTuple):
    x: np.ndarray  # (T, N, W) word vectors, time-major
    annotations: np.ndarray  # (N, L, F)
    W_att: np.ndarray
    w_att: np.ndarray
    w_beta: np.ndarray
    Wx: np.ndarray  # (W + F, 4H)
    W_zh: np.ndarray  # (F + H, 4H) = [Wx[W:]; Wh]
    hs: np.ndarray  # (T + 1, N, H) states h_0 … h_T
    cs: np.ndarray  # (T + 1, N, H)
    gates: np.ndarray  # (T, N, 4H) activated i, f, o, g
    tanh_c: np.ndarray  # (T, N, H)
    zh: np.ndarray  # (T, N, F + H) [ẑ_t, h_{t−1}] (zeros where a caption had ended)
    z: np.ndarray  # (T, N, F) context before gating
    beta: np.ndarray  # (T, N, 1)
    s: np.ndarray  # (T, N, L, A) tanh of the attention pre-activations
    alphas: np.ndarray  # (T, N, L), zero where a caption had ended
    active: np.ndarray  # (T,) captions running at each step


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
) -> tuple[np.ndarray, np.ndarray, FastAttentionLSTMCache]:
    """Same arguments and results as `minicap.nn.attention.attention_lstm_forward` (lengths sorted longest first)."""
    N, T, W = x.shape
    if T < 1:
        raise ValueError(f"attention_lstm_forward needs at least one step, got x of shape {x.shape}")
    H, (L, F), A = h0.shape[1], annotations.shape[1:], proj.shape[2]
    dtype = x.dtype
    active = active_counts(lengths, N, T)
    x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))  # (T, N, W)
    gates = (x_tm.reshape(T * N, W) @ Wx[:W]).reshape(T, N, 4 * H)  # trick 1: every word at once ...
    gates += b
    W_zh = np.concatenate([Wx[W:], Wh])  # ... and [ẑ_t, h_{t−1}] in one product per step
    hs, cs = np.empty((T + 1, N, H), dtype), np.empty((T + 1, N, H), dtype)
    hs[0], cs[0] = h0, c0
    tanh_c = np.zeros((T, N, H), dtype)
    zh = np.zeros((T, N, F + H), dtype)
    z_all = np.zeros((T, N, F), dtype)
    beta_all = np.zeros((T, N, 1), dtype)
    s_all = np.zeros((T, N, L, A), dtype)
    alphas = np.zeros((T, N, L), dtype)
    for t in range(T):
        n = active[t]
        h = hs[t, :n]
        s = np.tanh(proj[:n] + (h @ W_att)[:, None, :], out=s_all[t, :n])
        e = s @ w_att  # (n, L)
        e -= e.max(axis=1, keepdims=True)
        alpha = np.exp(e, out=alphas[t, :n])
        alpha /= alpha.sum(axis=1, keepdims=True)
        z = np.matmul(alpha[:, None, :], annotations[:n], out=z_all[t, :n, None, :])[:, 0]
        beta = sigmoid((h @ w_beta)[:, None] + b_beta, out=beta_all[t, :n])
        np.multiply(beta, z, out=zh[t, :n, :F])
        zh[t, :n, F:] = h
        a = gates[t, :n]
        a += zh[t, :n] @ W_zh
        sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])  # trick 4: i, f, o in place
        np.tanh(a[:, 3 * H :], out=a[:, 3 * H :])  # g
        c = a[:, H : 2 * H] * cs[t, :n]
        c += a[:, :H] * a[:, 3 * H :]
        cs[t + 1, :n] = c
        np.tanh(c, out=tanh_c[t, :n])
        np.multiply(a[:, 2 * H : 3 * H], tanh_c[t, :n], out=hs[t + 1, :n])
        hs[t + 1, n:], cs[t + 1, n:] = hs[t, n:], cs[t, n:]  # ended captions keep their state
    cache = FastAttentionLSTMCache(
        x_tm, annotations, W_att, w_att, w_beta, Wx, W_zh, hs, cs, gates, tanh_c, zh, z_all, beta_all, s_all, alphas,
        active,
    )  # fmt: skip
    return hs[1:].transpose(1, 0, 2), alphas.transpose(1, 0, 2), cache


def attention_contexts(cache: FastAttentionLSTMCache) -> np.ndarray:
    """Same as `minicap.nn.attention.attention_contexts`: the gated contexts ẑ_t, (N, T, F), 0 after the end."""
    return cache.zh[:, :, : cache.annotations.shape[2]].transpose(1, 0, 2)


def attention_lstm_backward(
    dh: np.ndarray, dalphas: np.ndarray | None, cache: FastAttentionLSTMCache, dcontexts: np.ndarray | None = None
) -> AttentionLSTMGrads:
    """Same arguments and results as `minicap.nn.attention.attention_lstm_backward`."""
    N, T, H = dh.shape
    W = cache.x.shape[2]
    F = cache.annotations.shape[2]
    dtype = dh.dtype
    dh_tm = dh.transpose(1, 0, 2)
    dalphas_tm = None if dalphas is None else dalphas.transpose(1, 0, 2)
    dcontexts_tm = None if dcontexts is None else dcontexts.transpose(1, 0, 2)
    dnext_h, dnext_c = np.zeros((N, H), dtype), np.zeros((N, H), dtype)
    DA = np.zeros((T, N, 4 * H), dtype)  # pre-activation gradients of every step (trick 2)
    DZ = np.zeros((T, N, F), dtype)  # ∂L/∂z_t (trick 3)
    DP = np.zeros((T, N, cache.W_att.shape[1]), dtype)  # Σ_i dpre_ti per step, for dW_att
    DG = np.zeros((T, N), dtype)  # the gate's pre-activation gradients, for dw_β
    dproj = np.zeros(cache.annotations.shape[:2] + (cache.W_att.shape[1],), dtype)
    dw_att = np.zeros_like(cache.w_att)
    gates = cache.gates
    for t in reversed(range(T)):
        n = cache.active[t]
        dnext_h[n:] += dh_tm[t, n:]  # an ended caption's gradient passes through the step unchanged
        if n == 0:
            continue
        g_t = gates[t, :n]
        i, f, o, g = g_t[:, :H], g_t[:, H : 2 * H], g_t[:, 2 * H : 3 * H], g_t[:, 3 * H :]
        tc = cache.tanh_c[t, :n]
        dh_t = dnext_h[:n] + dh_tm[t, :n]
        dc = dnext_c[:n] + dh_t * o * (1.0 - tc * tc)
        da = DA[t, :n]
        np.multiply(dc * g, i * (1.0 - i), out=da[:, :H])
        np.multiply(dc * cache.cs[t, :n], f * (1.0 - f), out=da[:, H : 2 * H])
        np.multiply(dh_t * tc, o * (1.0 - o), out=da[:, 2 * H : 3 * H])
        np.multiply(dc * i, 1.0 - g * g, out=da[:, 3 * H :])
        dnext_c[:n] = dc * f
        dzh = da @ cache.W_zh.T  # (n, F + H): [∂L/∂ẑ_t, ∂L/∂h_{t−1} through the gates]
        dprev_h = dzh[:, F:]
        if dcontexts_tm is not None:
            dzh[:, :F] += dcontexts_tm[t, :n]  # ẑ_t also reached the deep output layer
        beta, z = cache.beta[t, :n], cache.z[t, :n]
        dg = (dzh[:, :F] * z).sum(axis=1) * (beta * (1.0 - beta))[:, 0]  # the gate β
        DG[t, :n] = dg
        dprev_h += dg[:, None] * cache.w_beta
        dz = np.multiply(beta, dzh[:, :F], out=DZ[t, :n])
        alpha, s = cache.alphas[t, :n], cache.s[t, :n]
        dalpha = (cache.annotations[:n] @ dz[:, :, None])[:, :, 0]  # attention
        if dalphas_tm is not None:
            dalpha += dalphas_tm[t, :n]
        de = alpha * (dalpha - (alpha * dalpha).sum(axis=1, keepdims=True))
        dw_att += np.einsum("nl,nla->a", de, s)
        dpre = de[:, :, None] * cache.w_att
        dpre *= 1.0 - s * s
        dproj[:n] += dpre
        dpre_sum = dpre.sum(axis=1, out=DP[t, :n])
        dprev_h += dpre_sum @ cache.W_att.T
        dnext_h[:n] = dprev_h
    # trick 2: the weight products of all steps at once
    rows = T * N
    dWx_words = cache.x.reshape(rows, W).T @ DA.reshape(rows, 4 * H)
    dW_zh = cache.zh.reshape(rows, F + H).T @ DA.reshape(rows, 4 * H)
    dWx = np.concatenate([dWx_words, dW_zh[:F]])
    dx = (DA.reshape(rows, 4 * H) @ cache.Wx[:W].T).reshape(T, N, W).transpose(1, 0, 2)
    h_prev = cache.hs[:-1].reshape(rows, H)
    dW_att = h_prev.T @ DP.reshape(rows, -1)
    dw_beta = h_prev.T @ DG.reshape(rows)
    # trick 3: Σ_t α_t dz_tᵀ for every image, one batched product
    dannotations = np.matmul(cache.alphas.transpose(1, 2, 0), DZ.transpose(1, 0, 2))
    return AttentionLSTMGrads(
        np.ascontiguousarray(dx), dnext_h, dnext_c, dannotations, dproj, dW_att, dw_att, dw_beta,
        DG.sum(keepdims=True).reshape(1), dWx, dW_zh[F:], DA.sum(axis=(0, 1)),
    )  # fmt: skip

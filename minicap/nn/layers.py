"""Feed-forward layers and the losses: affine, word embedding, inverted dropout, temporal affine, masked temporal
softmax loss, MSE.

Every layer is a pair of pure functions:

    out, cache = layer_forward(inputs..., params...)
    d_inputs..., d_params... = layer_backward(dout, cache)

The cache is a `NamedTuple` whose fields say what they hold; nothing is kept between calls anywhere else.
Shapes use the same letters in every module: N batch, T time steps, D input size, H hidden size, M output size,
V vocabulary size, F image-feature size. The dtype follows the inputs (float32 to train, float64 to check).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse

__all__ = [
    "sigmoid",
    "log_softmax",
    "AffineCache",
    "affine_forward",
    "affine_backward",
    "EmbeddingCache",
    "word_embedding_forward",
    "word_embedding_backward",
    "DropoutCache",
    "dropout_mask",
    "dropout_forward",
    "dropout_backward",
    "TemporalAffineCache",
    "temporal_affine_forward",
    "temporal_affine_backward",
    "temporal_softmax_loss",
    "words_loss",
    "mse_loss",
]


# --------------------------------------------------------------------------------------- stable activations


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic sigmoid σ(x) = 1 / (1 + e^(−x)), computed without overflow for any x.

    The textbook formula overflows: e^(−x) exceeds float32's range for x < −88.7 (float64: x < −709.8). Below
    −80 (float32) or −700 (float64), σ(x) < 2e-35 (resp. 1e-304) — already at the bottom of what the dtype holds
    — so we clamp x there first: e^(−x) stays finite, the results stay normal numbers (no slow denormals), and
    the value changes by less than 2e-35 (resp. 1e-304). That is four cheap passes over the array, about 20%
    faster than the branchy `x ≥ 0 ? 1/(1+e^−x) : e^x/(1+e^x)` version with masks (measured on 128 × 1536
    float32), which matters because the LSTM calls this at every time step.

    `out` may be `x` itself (in place) or a preallocated array of the same shape; the LSTM's hot loop passes its
    gate buffer to avoid allocating a new array at every step.
    """
    if out is None:
        out = np.empty_like(x)
    clamp = _SIGMOID_CLAMP.get(x.dtype, 80.0)
    np.maximum(x, -clamp, out=out)
    np.negative(out, out=out)  # −x ≤ clamp
    np.exp(out, out=out)  # e^(−x), finite
    out += 1.0
    np.reciprocal(out, out=out)  # 1 / (1 + e^(−x))
    return out


_SIGMOID_CLAMP = {np.dtype(np.float32): 80.0, np.dtype(np.float64): 700.0}


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log softmax(x) = x − logsumexp(x), shifted by the maximum so that no `exp` can overflow:

    logsumexp(x) = m + log Σ_j exp(x_j − m),   m = max_j x_j     (every exponent is ≤ 0)
    """
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# --------------------------------------------------------------------------------------------------- affine


class AffineCache(NamedTuple):
    x: np.ndarray  # (N, D) input
    W: np.ndarray  # (D, M) weights


def affine_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, AffineCache]:
    """out = x W + b.

    x: (N, D), W: (D, M), b: (M,)  ->  out: (N, M)
    """
    out = x @ W
    out += b  # in place: `x @ W + b` would allocate and fill a second (N, M) array
    return out, AffineCache(x, W)


def affine_backward(dout: np.ndarray, cache: AffineCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of out = x W + b, given dout = ∂L/∂out (N, M).

    dx = dout Wᵀ (N, D),  dW = xᵀ dout (D, M),  db = Σ_n dout (M,)
    """
    return dout @ cache.W.T, cache.x.T @ dout, dout.sum(axis=0)


# ------------------------------------------------------------------------------------------- word embedding


class EmbeddingCache(NamedTuple):
    words: np.ndarray  # (N, T) integer word ids
    vocab_size: int  # V, rows of the embedding matrix


def word_embedding_forward(words: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, EmbeddingCache]:
    """Look up one vector per word: out[n, t] = W[words[n, t]].

    words: (N, T) int in [0, V), W: (V, D)  ->  out: (N, T, D)
    """
    if words.min(initial=0) < 0 or words.max(initial=0) >= W.shape[0]:
        raise IndexError(f"word ids must lie in [0, {W.shape[0]}), got [{words.min()}, {words.max()}]")
    return W[words], EmbeddingCache(words, W.shape[0])


def word_embedding_backward(dout: np.ndarray, cache: EmbeddingCache) -> np.ndarray:
    """dW[v] = Σ over every (n, t) with words[n, t] = v of dout[n, t].   dout: (N, T, D) -> dW: (V, D)

    The lookup W[words] is the product P W with the one-hot matrix P (N·T, V), P[m, words[m]] = 1, so
    dW = Pᵀ dout. A word that occurs twice gets both contributions (the naive `dW[words] += dout` would keep only
    one of them). P has a single 1 per row, so we build Pᵀ as a sparse matrix: the product is a scatter-add,
    about 5× faster than `np.add.at` at N·T = 2048, V = 10,000, D = 256.
    """
    D = dout.shape[-1]
    words = cache.words.reshape(-1)
    one_hot_t = scipy.sparse.csr_matrix(
        (np.ones(words.size, dtype=dout.dtype), (words, np.arange(words.size))), shape=(cache.vocab_size, words.size)
    )
    return np.asarray(one_hot_t @ dout.reshape(-1, D))


# ------------------------------------------------------------------------------------------ inverted dropout


class DropoutCache(NamedTuple):
    mask: np.ndarray  # (same shape as x) keep / (1 − p): 0 where a unit was dropped, 1 / (1 − p) where it was kept


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator, dtype: np.dtype) -> np.ndarray:
    """The scaled keep mask of inverted dropout: m = keep / (1 − p), keep ~ Bernoulli(1 − p) per entry.

    The uniform numbers are drawn in float32 whatever `dtype` is, so one generator state gives the same mask in
    float32 (training) and in float64 or extended precision (gradient checks).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate p must be in [0, 1), got {p}")
    keep = rng.random(shape, dtype=np.float32) >= p
    return keep.astype(dtype) * np.asarray(1.0 / (1.0 - p), dtype=dtype)


def dropout_forward(
    x: np.ndarray, p: float, rng: np.random.Generator | None = None, mask: np.ndarray | None = None
) -> tuple[np.ndarray, DropoutCache]:
    """Inverted dropout (Srivastava et al. 2014): zero each entry with probability p, scale the survivors.

        out = x ⊙ m,    m = keep / (1 − p),   keep ~ Bernoulli(1 − p)        E[out] = x

    Scaling by 1 / (1 − p) at TRAINING time keeps every unit's expected value, so at evaluation (and decoding)
    the network is used as it is: no dropout, no rescaling (that is what "inverted" means).

    x: any shape; p: the dropout rate in [0, 1); the mask is drawn from `rng` (`dropout_mask`), or given as `mask`
    (the same shape as x; gradient checks fix it this way). p = 0 keeps everything (mask of ones).
    """
    if mask is None:
        if rng is None:
            raise ValueError("dropout_forward needs a generator `rng` to draw its mask, or a fixed `mask`")
        mask = dropout_mask(x.shape, p, rng, x.dtype)
    elif mask.shape != x.shape:
        raise ValueError(f"dropout mask has shape {mask.shape}, input has {x.shape}")
    return x * mask, DropoutCache(mask)


def dropout_backward(dout: np.ndarray, cache: DropoutCache) -> np.ndarray:
    """dx = dout ⊙ m: a dropped unit passes no gradient, a kept one passes it scaled by 1 / (1 − p)."""
    return dout * cache.mask


# ------------------------------------------------------------------------------------------ temporal affine


class TemporalAffineCache(NamedTuple):
    x: np.ndarray  # (N, T, D) input
    W: np.ndarray  # (D, M) weights


def temporal_affine_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, TemporalAffineCache]:
    """The same affine map at every time step: out[n, t] = x[n, t] W + b, as ONE matrix product.

    x: (N, T, D), W: (D, M), b: (M,)  ->  out: (N, T, M)
    """
    N, T, D = x.shape
    out = (x.reshape(N * T, D) @ W + b).reshape(N, T, -1)
    return out, TemporalAffineCache(x, W)


def temporal_affine_backward(dout: np.ndarray, cache: TemporalAffineCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of `temporal_affine_forward`, with the (N, T) axes flattened into one GEMM each.

    dout: (N, T, M) -> dx: (N, T, D), dW: (D, M), db: (M,)
    """
    N, T, D = cache.x.shape
    dout2 = dout.reshape(N * T, -1)
    dx = (dout2 @ cache.W.T).reshape(N, T, D)
    dW = cache.x.reshape(N * T, D).T @ dout2
    return dx, dW, dout2.sum(axis=0)


# ------------------------------------------------------------------------------- masked softmax cross-entropy


def softmax_loss(
    logits: np.ndarray, targets: np.ndarray, weights: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.floating, np.ndarray]:
    """Weighted softmax cross-entropy over rows:

        L = −Σ_m weights[m] · log softmax(logits[m])[targets[m]]
        ∂L/∂logits[m] = weights[m] · (softmax(logits[m]) − onehot(targets[m]))

    Numerically safe by construction:
    - log softmax by log-sum-exp with the row maximum m subtracted: every exponent is ≤ 0, so logits of ±1e4
      give finite results, and Σ_j exp(x_j − m) ≥ 1 (the maximum contributes e^0), so its log is finite;
    - the loss gathers only the target's log-probability and multiplies it by its weight, so a row of weight 0
      contributes exactly 0 (never `0 · log 0 = NaN`), and its gradient row is exactly 0.

    logits: (M, V) float, targets: (M,) int in [0, V), weights: (M,) of the logits' dtype.
    out: optional (M, V) buffer for dlogits; it may be `logits` itself when the caller no longer needs them (the
        caption model does this: with V = 10,000 the logits are the largest array of a training step).
    Returns (loss, dlogits): a NumPy scalar (not a Python float, so a gradient check in extended precision keeps
    every digit) and (M, V), both of the logits' dtype.
    """
    rows = np.arange(logits.shape[0])
    # One buffer holds, in turn, the shifted logits, their exponentials and finally the gradient: each step is
    # an in-place pass over the (M, V) array instead of a new array.
    grad = np.subtract(logits, logits.max(axis=1, keepdims=True), out=out)
    target_logit = grad[rows, targets]  # (M,) shifted logit of the right word, gathered before exp
    np.exp(grad, out=grad)
    sum_exp = grad.sum(axis=1)  # (M,), each ≥ 1
    loss = -np.dot(weights, target_logit - np.log(sum_exp))

    grad *= (weights / sum_exp)[:, None]  # weights · softmax, in one pass
    grad[rows, targets] -= weights  # − weights · onehot
    return loss, grad


def temporal_softmax_loss(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[np.floating, np.ndarray]:
    """Masked softmax cross-entropy summed over time and averaged over the batch.

        L = −(1/N) Σ_n Σ_t mask[n, t] · log softmax(logits[n, t])[targets[n, t]]

    Dividing by N (not by the number of unmasked words) is the convention of CS231n and of most captioners: the
    loss is "nats per caption", so long captions weigh more than short ones. Masked positions contribute exactly 0
    to the loss and get exactly 0 gradient, even when every target of a row is masked (see `softmax_loss`).

    logits: (N, T, V) float, targets: (N, T) int in [0, V), mask: (N, T) bool
    Returns (loss, dlogits (N, T, V)), both of the logits' dtype.
    """
    N, T, V = logits.shape
    weights = (mask.reshape(N * T) / N).astype(logits.dtype)  # 1/N where counted, 0 where masked
    loss, grad = softmax_loss(logits.reshape(N * T, V), targets.reshape(N * T), weights)
    return loss, grad.reshape(N, T, V)


def words_loss(
    h: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    W_vocab: np.ndarray,
    b_vocab: np.ndarray,
    weight: float,
    backward: bool = True,
) -> tuple[np.floating, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """The words a language model predicts: vocabulary scores from the hidden states, then the masked loss.

        scores = h W_vocab + b_vocab                                 (N, T, V), `temporal_affine_forward`
        L      = −weight · Σ_{(n,t) counted} log softmax(scores[n, t])[targets[n, t]]

    h: (N, T, H) hidden states; targets: (N, T) int; mask: (N, T) bool, the positions that count;
    W_vocab: (H, V), b_vocab: (V,); weight: each counted position's weight (1/N gives nats per caption, the
    caption model's loss; 1/K, K = mask.sum(), gives nats per token, the language model's).
    Returns (loss, (dh (N, T, H), dW_vocab (H, V), db_vocab (V,))), or (loss, None) when backward is False.
    `minicap.nn.fast.words_loss` gives the same numbers without scoring the masked positions.
    """
    N, T, _ = h.shape
    V = W_vocab.shape[1]
    scores, cache = temporal_affine_forward(h, W_vocab, b_vocab)
    weights = (mask.reshape(N * T) * weight).astype(h.dtype)  # 0 where masked: exactly 0 loss and gradient
    loss, dscores = softmax_loss(scores.reshape(N * T, V), targets.reshape(N * T), weights)
    if not backward:
        return loss, None
    return loss, temporal_affine_backward(dscores.reshape(N, T, V), cache)


# ------------------------------------------------------------------------------------------ mean squared error


def mse_loss(pred: np.ndarray, target: np.ndarray) -> tuple[np.floating, np.ndarray]:
    """Mean squared error over every entry, and its gradient (regression, e.g. the adding problem).

        L = (1/n) Σ_i (pred_i − target_i)²        ∂L/∂pred_i = (2/n) (pred_i − target_i)        n = pred.size

    pred: any shape, float; target: the same shape (cast to pred's dtype).
    Returns (loss, dpred): loss a NumPy scalar of pred's dtype (so a gradient check in extended precision keeps
    every digit), dpred of pred's shape and dtype.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred has shape {pred.shape} but target has shape {target.shape}")
    if pred.size == 0:
        raise ValueError("mse_loss: empty input, the mean of no errors is undefined")
    diff = pred - target.astype(pred.dtype, copy=False)
    flat = diff.reshape(-1)
    n = diff.size
    loss = np.dot(flat, flat) / n  # Σ diff² as one dot product, no array of squares
    diff *= 2.0 / n  # reuse the buffer: dpred = (2/n) (pred − target)
    return loss, diff

"""AttentionCaptionModel: the decoder looks at a different part of the photo for every word (Show, Attend and Tell).

    annotations a (N, L, F) ──U──▶ proj (N, L, A)                       once per image, before the loop
    a ──mean──▶ ā ──affine+tanh──▶ h0, c0 (N, H)                        the state starts from the whole photo
    <START> w1 w2 … ──embedding──▶ x (N, T, W)
    for t: α_t = softmax(wᵀ tanh(proj + h_{t−1} W_att)),  ẑ_t = σ(h_{t−1}·w_β + b_β) Σ_i α_ti a_i,
           h_t, c_t = LSTM([x_t, ẑ_t], h_{t−1}, c_{t−1})               (minicap.nn.attention)
    h ──affine──▶ scores ──masked softmax loss──▶ + λ Σ_i (1 − Σ_t α_ti)² / N ──▶ loss

With `deep_output` the word scores read more than h_t: the paper's deep output layer (its eq. 7),

    o_t = tanh(x_t + h_t L_h + ẑ_t L_z + b_out)   (N, T, W)       scores_t = o_t W_vocab + b_vocab

so the previous word and the context reach the scores directly, not only through the LSTM.

In training (a loss given a generator `rng`), inverted dropout with rate `dropout` acts where it does in the
mean-pooled `CaptionModel`: on the word vectors x before the decoder and on its outputs h before the word scores.
The attention, the context and the recurrent connections are left alone; validation and decoding use the whole
network.

The mean-pooled `CaptionModel` sees the photo once, as ONE vector in h0; this model keeps the L annotation vectors
(EfficientNet-Lite0: the 7 × 7 grid of its last feature map, F = 1280) and reads a weighted mean of them at every
step. The weights α_t are the attention map drawn beside each word (`minicap.plots.plot_attention`).
Parameters (flat dict, gradients with the same keys):

    W_h0, W_c0 (F, H), b_h0, b_c0 (H,)       mean annotation -> initial state
    U_att (F, A), b_att (A,)                  annotations -> attention space (precomputed per image)
    W_att (H, A), w_att (A,)                  state -> attention space; scores
    w_beta (H,), b_beta (1,)                  the gating scalar β
    W_embed (V, W)                            word vectors
    Wx (W + F, 4H), Wh (H, 4H), b (4H,)       the LSTM on [word, context]; rows Wx[:W] read the word
    W_vocab (H, V), b_vocab (V,)              hidden state -> word scores
    with deep_output: L_h (H, W), L_z (F, W), b_out (W,), and W_vocab (W, V) reads o_t instead of h_t

Letters: N batch, T time steps, L locations, F annotation size, A attention size, W word-vector size,
H hidden size, V vocabulary size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from minicap import nn
from minicap.models.base import SequenceModel, StandardisedFeatures, log_frequency_bias, normal_init
from minicap.nn import attention as att
from minicap.tokens import SPECIAL_TOKENS, target_mask

__all__ = ["AttentionState", "AttentionCaptionModel"]


class AttentionState(NamedTuple):
    """The decoder's state between steps. The annotations and their projection ride along with h and c so that the
    decoders (greedy, beam search) can repeat and reorder every row of the state alike; α is the map of the word
    the last step produced (zeros before the first step)."""

    h: np.ndarray  # (N, H)
    c: np.ndarray  # (N, H)
    annotations: np.ndarray  # (N, L, F), standardised
    proj: np.ndarray  # (N, L, A) = annotations U_att + b_att
    alpha: np.ndarray  # (N, L)

    # Fields that are the same for every hypothesis of one image: beam search repeats them, never reorders them.
    per_image = ("annotations", "proj")


class AttentionCaptionModel(StandardisedFeatures, SequenceModel):
    """Soft-attention captioner with hand-written gradients.

    Parameters
    ----------
    vocab_size : V, including the special tokens.
    feature_size : F, the size of one annotation vector (channels of the encoder's last feature map).
    wordvec_size, hidden_size : W, H.
    attention_size : A, the size of the space the additive scores are computed in.
    reg : λ of the doubly stochastic regulariser (0 switches it off).
    dtype : float32 to train, float64 for gradient checks.
    seed : initialisation seed.
    word_counts : optional (V,): the output bias starts at log word frequencies (`log_frequency_bias`).
    dropout : rate p of the inverted dropout on the word vectors and on the decoder's outputs in training (0: none;
        with deep_output the dropped outputs are o_t).
    deep_output : the deep output layer (above): the scores read tanh(x_t + h_t L_h + ẑ_t L_z + b_out).
    """

    def __init__(
        self,
        vocab_size: int,
        feature_size: int,
        wordvec_size: int = 128,
        hidden_size: int = 256,
        attention_size: int = 256,
        reg: float = 1.0,
        dtype: npt.DTypeLike = np.float32,
        seed: int = 0,
        word_counts: np.ndarray | None = None,
        dropout: float = 0.0,
        deep_output: bool = False,
    ) -> None:
        if vocab_size < len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must count the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
        for name, size in (
            ("feature_size", feature_size),
            ("wordvec_size", wordvec_size),
            ("hidden_size", hidden_size),
            ("attention_size", attention_size),
        ):
            if int(size) < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        if not (np.isfinite(reg) and reg >= 0):
            raise ValueError(f"reg (λ) must be a finite number >= 0, got {reg}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size = int(vocab_size)
        self.feature_size = int(feature_size)
        self.wordvec_size = int(wordvec_size)
        self.hidden_size = int(hidden_size)
        self.attention_size = int(attention_size)
        self.reg = float(reg)
        self.dropout = float(dropout)
        self.deep_output = bool(deep_output)
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        self.feature_mean: np.ndarray | None = None
        self.feature_std: np.ndarray | None = None
        self.params = self._init_params(word_counts)

    def _init_params(self, word_counts: np.ndarray | None) -> dict[str, np.ndarray]:
        """Weights ~ N(0, 1/fan_in); forget-gate bias 1; β starts at σ(0) = 1/2."""
        rng = np.random.default_rng(self.seed)
        V, F, W, H, A = self.vocab_size, self.feature_size, self.wordvec_size, self.hidden_size, self.attention_size
        params = {
            "W_h0": normal_init(rng, (F, H), F),
            "b_h0": np.zeros(H),
            "W_c0": normal_init(rng, (F, H), F),
            "b_c0": np.zeros(H),
            "U_att": normal_init(rng, (F, A), F),
            "b_att": np.zeros(A),
            "W_att": normal_init(rng, (H, A), H),
            "w_att": normal_init(rng, (A,), A),
            "w_beta": normal_init(rng, (H,), H),
            "b_beta": np.zeros(1),
            "W_embed": rng.standard_normal((V, W)) * 0.1,
            "Wx": normal_init(rng, (W + F, 4 * H), W + F),
            "Wh": normal_init(rng, (H, 4 * H), H),
            "b": np.zeros(4 * H),
            "W_vocab": normal_init(rng, (H, V), H),
            "b_vocab": np.zeros(V),
        }
        if self.deep_output:  # drawn after the others: the same seed gives the other weights the same values
            params["L_h"] = normal_init(rng, (H, W), H)
            params["L_z"] = normal_init(rng, (F, W), F)
            params["b_out"] = np.zeros(W)
            params["W_vocab"] = normal_init(rng, (W, V), W)
        params["b"][H : 2 * H] = 1.0  # forget gate
        if word_counts is not None:
            if np.shape(word_counts) != (V,):
                raise ValueError(f"word_counts must have shape ({V},), got {np.shape(word_counts)}")
            params["b_vocab"] = log_frequency_bias(word_counts)
        return {k: v.astype(self.dtype) for k, v in params.items()}

    @property
    def config(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "feature_size": self.feature_size,
            "wordvec_size": self.wordvec_size,
            "hidden_size": self.hidden_size,
            "attention_size": self.attention_size,
            "reg": self.reg,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "dropout": self.dropout,
            "deep_output": self.deep_output,
        }

    def _check_annotations(self, annotations: np.ndarray) -> np.ndarray:
        """Validate (N, L, F) annotations, cast once to the model's dtype, standardise if configured."""
        annotations = np.asarray(annotations)
        if annotations.ndim != 3 or annotations.shape[2] != self.feature_size or annotations.shape[1] < 1:
            raise ValueError(
                f"annotations must have shape (N, L, {self.feature_size}) for this model, got {annotations.shape}: "
                "an attention captioner reads the encoder's spatial maps (`minicap extract --spatial`)"
            )
        annotations = annotations.astype(self.dtype, copy=False)
        if self.feature_mean is not None and self.feature_std is not None:
            annotations = (annotations - self.feature_mean) / self.feature_std
        return annotations

    def _decoder_params(self) -> tuple[np.ndarray, ...]:
        p = self.params
        return p["W_att"], p["w_att"], p["w_beta"], p["b_beta"], p["Wx"], p["Wh"], p["b"]

    # -------------------------------------------------------------------------------------------- the loss

    def loss(
        self,
        annotations: np.ndarray,
        captions: np.ndarray,
        backward: bool = True,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.floating, dict[str, np.ndarray]]:
        """Words loss (nats per caption) + the doubly stochastic regulariser, and every parameter's gradient.

        annotations: (N, L, F); captions: (N, T+1) int, <START> w1 … <END> then <NULL> padding (as CaptionModel).
        rng: a training loss: the dropout masks (rate `self.dropout`; word vectors (N, T, W) first, then the
            decoder's outputs (N, T, H)) are drawn from it. None (validation): no dropout.
        """
        a = self._check_annotations(annotations)
        captions = np.asarray(captions)
        if captions.ndim != 2 or captions.shape[0] != a.shape[0] or captions.shape[1] < 2:
            raise ValueError(f"captions must be (N, T+1) with N = {a.shape[0]}, T ≥ 1; got {captions.shape}")
        p, seq = self.params, self.sequence
        N, T = captions.shape[0], captions.shape[1] - 1
        mask = target_mask(captions[:, 1:])  # (N, T) the real steps
        lengths = np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0)
        # Longest caption first, so that the fast path stops working on a caption once it has ended (its packed
        # lengths). The loss is a sum over captions: the order changes nothing else.
        order = np.argsort(-lengths, kind="stable")
        a, captions, mask, lengths = a[order], captions[order], mask[order], lengths[order]

        # Forward.
        proj, _ = nn.temporal_affine_forward(a, p["U_att"], p["b_att"])  # once per image
        h0, c0, init_cache = att.init_state_forward(a, p["W_h0"], p["b_h0"], p["W_c0"], p["b_c0"])
        words_in, targets = captions[:, :-1], captions[:, 1:]
        x, embed_cache = nn.word_embedding_forward(words_in, p["W_embed"])
        dropping = rng is not None and self.dropout > 0
        if dropping:
            x, drop_x = nn.dropout_forward(x, self.dropout, rng)  # (N, T, W): some word-vector entries zeroed
        decoder = nn.fast if self.fast else att  # the same numbers; nn.fast's loop is faster
        h, alphas, dec_cache = decoder.attention_lstm_forward(
            x, h0, c0, a, proj, *self._decoder_params(), lengths=lengths
        )
        out = h  # what the word scores read: h_t, or the deep output o_t
        if self.deep_output:
            contexts = decoder.attention_contexts(dec_cache)  # (N, T, F) the gated contexts ẑ_t
            out, deep_cache = att.deep_output_forward(x, h, contexts, p["L_h"], p["L_z"], p["b_out"])
        if dropping:
            out, drop_h = nn.dropout_forward(out, self.dropout, rng)  # some decoder outputs zeroed
        loss, vocab_grads = seq.words_loss(out, targets, mask, p["W_vocab"], p["b_vocab"], 1.0 / N, backward)
        reg_loss, dalphas = att.doubly_stochastic_loss(alphas, mask, self.reg)
        loss = loss + reg_loss if self.reg else loss
        if vocab_grads is None:
            return loss, {}

        # Backward.
        grads: dict[str, np.ndarray] = {}
        dout, grads["W_vocab"], grads["b_vocab"] = vocab_grads
        if dropping:
            dout = nn.dropout_backward(dout, drop_h)
        dh, dx_out, dcontexts = dout, None, None
        if self.deep_output:
            dx_out, dh, dcontexts, *deep_grads = att.deep_output_backward(dout, deep_cache)
            grads.update(zip(("L_h", "L_z", "b_out"), deep_grads, strict=True))
        g = decoder.attention_lstm_backward(dh, dalphas if self.reg else None, dec_cache, dcontexts)
        grads.update(W_att=g.dW_att, w_att=g.dw_att, w_beta=g.dw_beta, b_beta=g.db_beta, Wx=g.dWx, Wh=g.dWh, b=g.db)
        dx = g.dx if dx_out is None else g.dx + dx_out  # x reached the LSTM and, with deep_output, the scores
        grads["W_embed"] = nn.word_embedding_backward(nn.dropout_backward(dx, drop_x) if dropping else dx, embed_cache)
        _da0, grads["W_h0"], grads["b_h0"], grads["W_c0"], grads["b_c0"] = att.init_state_backward(
            g.dh0, g.dc0, init_cache
        )
        # proj = a U + b: only dU and db are needed. The annotations are inputs (the encoder is frozen), so their
        # gradient dproj Uᵀ, an (N·L, A) × (A, F) product as large as the forward one, is never formed.
        grads["U_att"] = a.reshape(-1, a.shape[2]).T @ g.dproj.reshape(-1, g.dproj.shape[2])
        grads["b_att"] = g.dproj.sum(axis=(0, 1))
        return loss, grads

    # ---------------------------------------------------------------------------------------------- decoding

    def initial_state(self, annotations: np.ndarray) -> AttentionState:
        """h0, c0 from the mean annotation; the annotations and their projection, computed once. (N, L, F)"""
        a = self._check_annotations(annotations)
        p = self.params
        proj = a @ p["U_att"] + p["b_att"]
        h0, c0, _ = att.init_state_forward(a, p["W_h0"], p["b_h0"], p["W_c0"], p["b_c0"])
        return AttentionState(h0, c0, a, proj, np.zeros(a.shape[:2], dtype=self.dtype))

    def step(self, words: np.ndarray, state: AttentionState) -> tuple[np.ndarray, AttentionState]:
        """One word in, the next word's scores (N, V) out, with the attention map this step used (state.alpha).

        One `attention_lstm_step_forward`: the step the training loop repeats.
        """
        p = self.params
        x = p["W_embed"][np.asarray(words)]
        h, c, alpha, cache = att.attention_lstm_step_forward(
            x, state.h, state.c, state.annotations, state.proj, *self._decoder_params()
        )
        out = h
        if self.deep_output:
            out, _ = att.deep_output_forward(x, h, att.step_context(cache), p["L_h"], p["L_z"], p["b_out"])
        return out @ p["W_vocab"] + p["b_vocab"], AttentionState(h, c, state.annotations, state.proj, alpha)

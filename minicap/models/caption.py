"""CaptionModel: an image feature vector starts a recurrent network that writes the caption one word at a time.

    features (N, F) ──affine──▶ h0 (N, H)                                     "show": the image sets the state
    <START> w1 w2 … (N, T) ──embedding──▶ x (N, T, W) ──LSTM/RNN──▶ h (N, T, H)
    h ──affine──▶ scores ──softmax loss against w1 w2 … <END> (padding masked)──▶ loss           "and tell"

The architecture of Vinyals et al. (2015, "Show and Tell"), with one difference: the image enters through the
initial hidden state h0 (as in CS231n and Karpathy's neuraltalk), where Show and Tell feeds it as the first input
x₋₁. Through h0 the image costs no time step and the LSTM's input weights see only words. Everything is composed
from `minicap.nn`; the backward pass below is the forward pass read from the bottom up. Parameters are a flat dict
of arrays, gradients a dict with the same keys, so optimisers and checkpoints need to know nothing about the model.

    W_proj (F, H), b_proj (H,)         image feature -> initial hidden state
    W_embed (V, W)                     word vectors
    Wx (W, G), Wh (H, G), b (G,)       recurrent cell, G = 4H for the LSTM (gate order i, f, o, g), H for the RNN
    W_vocab (H, V), b_vocab (V,)       hidden state -> word scores

Letters: N batch, T time steps, W word-vector size, H hidden size, V vocabulary size, F image-feature size.

In training (a loss given a generator `rng`), inverted dropout with rate `dropout` acts where Show and Tell's
im2txt puts it: on the word vectors x before the LSTM and on its outputs h before the word scores. The image
projection and the recurrent connections h_{t−1} -> h_t are left alone. Validation losses and decoding use the
whole network (inverted dropout scaled the kept units in training, so nothing is rescaled here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from minicap import nn
from minicap.models.base import SequenceModel, StandardisedFeatures, State, log_frequency_bias, normal_init
from minicap.tokens import SPECIAL_TOKENS, target_mask

__all__ = ["CaptionModel"]

CELLS = ("lstm", "rnn")


class CaptionModel(StandardisedFeatures, SequenceModel):
    """An image-conditioned recurrent language model with hand-written gradients.

    Parameters
    ----------
    vocab_size : V, including the special tokens (minicap.tokens).
    feature_size : F, length of one image's feature vector.
    wordvec_size : W, length of a word vector.
    hidden_size : H.
    cell : "lstm" or "rnn" (vanilla tanh RNN).
    dtype : float32 to train (default), float64 for gradient checks.
    seed : initialisation seed; the same seed gives the same parameters bit for bit.
    word_counts : optional (V,) counts of each word as a training target: the output bias then starts at
        log p(word) (`log_frequency_bias`), so the untrained model already predicts the unigram distribution.
    dropout : rate p of the inverted dropout on the word vectors and on the LSTM outputs in training (0: none).
    """

    # On the fast path the LSTM runs packed (`_loss_packed`); False keeps the fast functions' (N, T, ·) interface,
    # for benchmarks/bench_train_step.py --reference to measure what packing buys.
    packed: bool = True

    def __init__(
        self,
        vocab_size: int,
        feature_size: int,
        wordvec_size: int = 128,
        hidden_size: int = 256,
        cell: str = "lstm",
        dtype: npt.DTypeLike = np.float32,
        seed: int = 0,
        word_counts: np.ndarray | None = None,
        dropout: float = 0.0,
    ) -> None:
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if vocab_size < len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must count the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
        for name, size in (
            ("feature_size", feature_size),
            ("wordvec_size", wordvec_size),
            ("hidden_size", hidden_size),
        ):
            if int(size) < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.vocab_size = int(vocab_size)
        self.feature_size = int(feature_size)
        self.wordvec_size = int(wordvec_size)
        self.hidden_size = int(hidden_size)
        self.cell = cell
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        # Optional standardisation of the input features, set from training-set statistics before training and
        # saved with the model, so that every later use (decoding, `minicap caption`) applies the same one.
        self.feature_mean: np.ndarray | None = None
        self.feature_std: np.ndarray | None = None
        self.params = self._init_params(word_counts)
        # The fast path's temporaries, kept from one `loss` call to the next (never returned: see
        # nn.fast_packed.Workspace)
        self._workspace: nn.fast_packed.Workspace | None = None

    # ------------------------------------------------------------------------------------------- parameters

    def _init_params(self, word_counts: np.ndarray | None) -> dict[str, np.ndarray]:
        """Seeded initialisation. Weights ~ N(0, 1/fan_in) keep activations at unit scale layer after layer;
        the LSTM's forget-gate bias starts at 1 so the cell remembers by default (Gers et al. 2000; Jozefowicz
        et al. 2015)."""
        rng = np.random.default_rng(self.seed)
        V, F, W, H = self.vocab_size, self.feature_size, self.wordvec_size, self.hidden_size
        G = 4 * H if self.cell == "lstm" else H
        params = {
            "W_proj": normal_init(rng, (F, H), F),
            "b_proj": np.zeros(H),
            "W_embed": rng.standard_normal((V, W)) * 0.1,
            "Wx": normal_init(rng, (W, G), W),
            "Wh": normal_init(rng, (H, G), H),
            "b": np.zeros(G),
            "W_vocab": normal_init(rng, (H, V), H),
            "b_vocab": np.zeros(V),
        }
        if self.cell == "lstm":
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
            "cell": self.cell,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "dropout": self.dropout,
        }

    # ------------------------------------------------------------------------------------------------ inputs

    def _check_features(self, features: np.ndarray) -> np.ndarray:
        """Validate (N, F) features, cast to the model's dtype once, and standardise them if configured."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise ValueError(
                f"features must have shape (N, {self.feature_size}) for this model, got {features.shape}: "
                "were they extracted with a different encoder?"
            )
        features = features.astype(self.dtype, copy=False)
        if self.feature_mean is not None and self.feature_std is not None:
            features = (features - self.feature_mean) / self.feature_std
        return features

    # -------------------------------------------------------------------------------------------- the loss

    def loss(
        self,
        features: np.ndarray,
        captions: np.ndarray,
        backward: bool = True,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.floating, dict[str, np.ndarray]]:
        """Training loss and the gradient of every parameter.

        features: (N, F) image features.
        captions: (N, T+1) int word ids, each row <START> w1 … wk <END> then <NULL> = 0 padding.
            The network reads captions[:, :-1] and must predict captions[:, 1:] (the same words shifted by one);
            targets that are <NULL> or come after the first <END> are masked out (`minicap.tokens.target_mask`).
        backward: False skips the backward pass (validation), returning an empty grads dict.
        rng: a training loss: the dropout masks (rate `self.dropout`) are drawn from this generator. None (the
            default; validation): no dropout. The same generator state gives the same masks on both paths and in
            every dtype, which is how the gradient checks fix them.

        Returns (loss, grads): loss = summed masked cross-entropy / N (nats per caption), a NumPy scalar of the
        model's dtype; grads has the keys of `self.params`.
        """
        features = self._check_features(features)
        captions = np.asarray(captions)
        if captions.ndim != 2 or captions.shape[0] != features.shape[0] or captions.shape[1] < 2:
            raise ValueError(f"captions must be (N, T+1) with N = {features.shape[0]}, T ≥ 1; got {captions.shape}")
        p, seq = self.params, self.sequence
        N, T = captions.shape[0], captions.shape[1] - 1
        mask = target_mask(captions[:, 1:])  # (N, T) target positions that count in the loss
        # Longest caption first, so that the fast recurrence stops working on a caption once it has ended
        # (`lengths`). The loss is a sum over captions: the order changes nothing else.
        lengths = np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0)  # last counted step + 1
        order = np.argsort(-lengths, kind="stable")
        features, captions, mask, lengths = features[order], captions[order], mask[order], lengths[order]
        words_in, targets = captions[:, :-1], captions[:, 1:]
        if self.fast and self.packed and self.cell == "lstm":
            return self._loss_packed(features, words_in, targets, mask, lengths, backward, rng)

        # Forward: image -> h0; words -> vectors; recurrence; scores and loss (Σ cross-entropy / N).
        h0, proj_cache = nn.affine_forward(features, p["W_proj"], p["b_proj"])
        x, embed_cache = nn.word_embedding_forward(words_in, p["W_embed"])
        dropping = rng is not None and self.dropout > 0
        if dropping:
            x, drop_x = nn.dropout_forward(x, self.dropout, rng)  # (N, T, W): some word-vector entries zeroed
        if self.cell == "lstm":
            h, rec_cache = seq.lstm_forward(x, h0, p["Wx"], p["Wh"], p["b"], lengths=lengths)
        else:
            h, rec_cache = seq.rnn_forward(x, h0, p["Wx"], p["Wh"], p["b"], lengths=lengths)
        if dropping:
            h, drop_h = nn.dropout_forward(h, self.dropout, rng)  # (N, T, H): some LSTM outputs zeroed
        loss, vocab_grads = seq.words_loss(h, targets, mask, p["W_vocab"], p["b_vocab"], 1.0 / N, backward)
        if vocab_grads is None:
            return loss, {}

        # Backward: the same path in reverse.
        grads: dict[str, np.ndarray] = {}
        dh, grads["W_vocab"], grads["b_vocab"] = vocab_grads
        if dropping:
            dh = nn.dropout_backward(dh, drop_h)
        if self.cell == "lstm":
            dx, dh0, _dc0, grads["Wx"], grads["Wh"], grads["b"] = seq.lstm_backward(dh, rec_cache)
        else:
            dx, dh0, grads["Wx"], grads["Wh"], grads["b"] = seq.rnn_backward(dh, rec_cache)
        if dropping:
            dx = nn.dropout_backward(dx, drop_x)
        grads["W_embed"] = nn.word_embedding_backward(dx, embed_cache)
        _dfeatures, grads["W_proj"], grads["b_proj"] = nn.affine_backward(dh0, proj_cache)
        return loss, grads

    def _loss_packed(
        self,
        features: np.ndarray,
        words_in: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray,
        lengths: np.ndarray,
        backward: bool,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.floating, dict[str, np.ndarray]]:
        """`loss` on the fast path for the LSTM (`self.fast`): the same numbers, every array packed (only the
        positions up to each caption's end, time-major: `nn.packing.pack`), temporaries in a workspace kept from
        step to step. The batch arrives sorted longest first. Dropout draws the readable path's (N, T, ·) masks
        from `rng` in the same order (word vectors, then LSTM outputs) and keeps their packed rows."""
        p, fast = self.params, nn.fast_packed
        N, T = words_in.shape
        if self._workspace is None:
            self._workspace = fast.Workspace()
        ws, pool = self._workspace, fast.shared_pool()
        packing = nn.packing.pack(lengths, T)
        words = words_in.reshape(N * T)[packing.index]  # (K,) the words read at the packed positions
        counted = mask.reshape(N * T)[packing.index]  # (K,) all True unless a caption has a hole
        weights = np.where(counted, self.dtype.type(1.0 / N), self.dtype.type(0.0))

        h0, proj_cache = nn.affine_forward(features, p["W_proj"], p["b_proj"])
        x, embed_cache = nn.word_embedding_forward(words[None, :], p["W_embed"])  # (1, K, W)
        x = x[0]
        dropping = rng is not None and self.dropout > 0
        if dropping:  # the masks the readable path draws for x (N, T, W) and h (N, T, H), at the packed rows
            W, H = x.shape[1], self.hidden_size
            drop_x = nn.dropout_mask((N, T, W), self.dropout, rng, self.dtype).reshape(N * T, W)[packing.index]
            drop_h = nn.dropout_mask((N, T, H), self.dropout, rng, self.dtype).reshape(N * T, H)[packing.index]
            x = x * drop_x
        h, rec_cache = fast.lstm_forward_packed(x, h0, p["Wx"], p["Wh"], p["b"], packing, workspace=ws, pool=pool)
        if dropping:
            h = h * drop_h
        loss, vocab_grads = fast.words_loss_packed(
            h,
            targets.reshape(N * T)[packing.index],
            weights,
            p["W_vocab"],
            p["b_vocab"],
            backward,
            workspace=ws,
            pool=pool,
        )
        if vocab_grads is None:
            return loss, {}
        grads: dict[str, np.ndarray] = {}
        dh, grads["W_vocab"], grads["b_vocab"] = vocab_grads
        if dropping:
            dh = dh * drop_h
        dx, dh0, _dc0, grads["Wx"], grads["Wh"], grads["b"] = fast.lstm_backward_packed(
            dh, rec_cache, workspace=ws, pool=pool
        )
        if dropping:
            dx *= drop_x
        grads["W_embed"] = nn.word_embedding_backward(dx[None], embed_cache)
        _dfeatures, grads["W_proj"], grads["b_proj"] = nn.affine_backward(dh0, proj_cache)
        return loss, grads

    # ---------------------------------------------------------------------------------------------- decoding

    def initial_state(self, features: np.ndarray) -> State:
        """The state before the first word: h0 = features W_proj + b_proj, c0 = 0. features: (N, F)"""
        features = self._check_features(features)
        h0 = features @ self.params["W_proj"] + self.params["b_proj"]
        return State(h0, np.zeros_like(h0) if self.cell == "lstm" else None)

    def step(self, words: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Feed one word per sequence and get the scores of the next word.

        words: (N,) int ids; state: h (N, H) [, c (N, H)]  ->  logits (N, V) and the new state.
        One `lstm_step_forward` / `rnn_step_forward`: the step the reference sequence loop repeats in training.
        """
        p = self.params
        x = p["W_embed"][np.asarray(words)]  # (N, W)
        if self.cell == "lstm":
            assert state.c is not None
            h, c, _ = nn.lstm_step_forward(x, state.h, state.c, p["Wx"], p["Wh"], p["b"])
        else:
            h, _ = nn.rnn_step_forward(x, state.h, p["Wx"], p["Wh"], p["b"])
            c = None
        logits = h @ p["W_vocab"]
        logits += p["b_vocab"]  # in place: one (N, V) array, not two
        return logits, State(h, c)

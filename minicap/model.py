"""CaptionModel: an image feature vector starts a recurrent network that writes the caption one word at a time.

    features (N, F) ──affine──▶ h0 (N, H)                                     "show": the image sets the state
    <START> w1 w2 … (N, T) ──embedding──▶ x (N, T, W) ──LSTM/RNN──▶ h (N, T, H)
    h ──affine──▶ scores ──softmax loss against w1 w2 … <END> (padding masked)──▶ loss           "and tell"

This is the architecture of Vinyals et al. (2015, "Show and Tell"), with the image entering through the initial
hidden state as in CS231n and Karpathy's neuraltalk. Everything is composed from `minicap.nn`; the backward pass
below is the forward pass read from the bottom up. Parameters are a flat dict of arrays (names below), gradients a
dict with the same keys, so optimisers and checkpoints need to know nothing about the model.

    W_proj (F, H), b_proj (H,)         image feature -> initial hidden state
    W_embed (V, W)                     word vectors
    Wx (W, G), Wh (H, G), b (G,)       recurrent cell, G = 4H for the LSTM (gate order i, f, o, g), H for the RNN
    W_vocab (H, V), b_vocab (V,)       hidden state -> word scores

Letters: N batch, T time steps, W word-vector size, H hidden size, V vocabulary size, F image-feature size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minicap import nn

__all__ = ["CaptionModel", "RecurrentState", "target_mask", "load_params", "counted_words_loss"]

NULL_ID, START_ID, END_ID = 0, 1, 2  # the Vocabulary's fixed special ids (minicap.data): <NULL> is padding


def target_mask(targets: np.ndarray) -> np.ndarray:
    """Which target positions count in the loss: (N, T) int -> (N, T) bool.

    A position counts when its target is a real word or the caption's first <END>. Everything after the first
    <END> — <NULL> padding or any other token — is masked, so what follows a caption's end can never change the
    loss or the gradients.
    """
    is_end = targets == END_ID
    ended_before = (np.cumsum(is_end, axis=1) - is_end) > 0  # an <END> occurred strictly earlier in the row
    return (targets != NULL_ID) & ~ended_before


def load_params(into: dict[str, np.ndarray], params: dict[str, np.ndarray], dtype: np.dtype) -> None:
    """Copy `params` (e.g. from a checkpoint) into a freshly built model's parameter dict `into`, as `dtype`.

    Every name must be there and nothing else, and every shape must match: a clear error names what does not fit,
    before anything is copied.
    """
    missing = sorted(set(into) - set(params))
    unexpected = sorted(set(params) - set(into))
    if missing or unexpected:
        raise ValueError(f"parameters do not fit the model: missing {missing}, unexpected {unexpected}")
    for name, value in params.items():
        if value.shape != into[name].shape:
            raise ValueError(f"parameter {name}: shape {value.shape}, model expects {into[name].shape}")
    for name, value in params.items():
        into[name] = np.array(value, dtype=dtype)


def counted_words_loss(
    h: np.ndarray,
    targets: np.ndarray,
    counted: np.ndarray,
    W_vocab: np.ndarray,
    b_vocab: np.ndarray,
    weight: float,
    backward: bool = True,
) -> tuple[np.floating, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Cross-entropy of the words predicted at the counted positions, each with the same `weight`, and its
    backward through the vocabulary projection: scores = h W_vocab + b_vocab, then `nn.softmax_loss`.

    h: (N, T, H) hidden states; targets: (N, T) int; counted: (N·T,) bool, the positions that count;
    W_vocab: (H, V), b_vocab: (V,); weight: 1/N for a loss per caption, 1/K for a loss per counted token.
    Returns (loss, (dh (N, T, H), dW_vocab (H, V), db_vocab (V,))), or (loss, None) when backward is False.

    Only the K counted positions go through the vocabulary projection and the softmax. Masked positions would
    contribute exactly 0 to the loss and its gradient, so scoring them is pure waste — with V = 10,000 these
    (K, V) arrays are the largest of a training step, and a COCO batch padded to T = 16 is about 30% padding.
    """
    N, T, H = h.shape
    h_counted = h.reshape(N * T, H)[counted]  # (K, H)
    scores, vocab_cache = nn.affine_forward(h_counted, W_vocab, b_vocab)  # (K, V)
    weights = np.full(scores.shape[0], weight, dtype=h.dtype)
    # (the gradient overwrites the scores, which nothing needs any more: no second (K, V) array)
    loss, dscores = nn.softmax_loss(scores, targets.reshape(N * T)[counted], weights, out=scores)
    if not backward:
        return loss, None
    dh_counted, dW_vocab, db_vocab = nn.affine_backward(dscores, vocab_cache)
    dh = np.zeros((N * T, H), dtype=h.dtype)
    dh[counted] = dh_counted  # positions that do not count get exactly 0
    return loss, (dh.reshape(N, T, H), dW_vocab, db_vocab)


class RecurrentState(NamedTuple):
    """The state carried from one generated word to the next while decoding."""

    h: np.ndarray  # (N, H)
    c: np.ndarray | None  # (N, H) for the LSTM, None for the RNN


class CaptionModel:
    """An image-conditioned recurrent language model with hand-written gradients.

    Parameters
    ----------
    vocab_size : V, including the special tokens (<NULL>=0, <START>=1, <END>=2, <UNK>=3).
    feature_size : F, length of one image's feature vector.
    wordvec_size : W, length of a word vector.
    hidden_size : H.
    cell : "lstm" or "rnn" (vanilla tanh RNN).
    dtype : float32 to train (default), float64 for gradient checks.
    seed : initialisation seed; the same seed gives the same parameters bit for bit.
    word_counts : optional (V,) counts of each word as a training target. When given, the output bias starts at
        log p(word), so the untrained model already predicts the unigram distribution instead of a uniform one
        over V words (neuraltalk's trick): the first steps of training no longer spend their effort learning word
        frequencies, and the initial loss drops from about T·log V to the unigram entropy.
    """

    def __init__(
        self,
        vocab_size: int,
        feature_size: int,
        wordvec_size: int = 256,
        hidden_size: int = 512,
        cell: str = "lstm",
        dtype: Any = np.float32,
        seed: int = 0,
        word_counts: np.ndarray | None = None,
    ) -> None:
        if cell not in ("lstm", "rnn"):
            raise ValueError(f'cell must be "lstm" or "rnn", got {cell!r}')
        if vocab_size < 4:
            raise ValueError(f"vocab_size must count the 4 special tokens at least, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.feature_size = int(feature_size)
        self.wordvec_size = int(wordvec_size)
        self.hidden_size = int(hidden_size)
        self.cell = cell
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        # Optional standardisation of the input features, set from training-set statistics by the trainer and
        # saved with the model, so that every later use (decoding, `minicap caption`) applies the same one.
        self.feature_mean: np.ndarray | None = None
        self.feature_std: np.ndarray | None = None
        self.params = self._init_params(word_counts)

    # ------------------------------------------------------------------------------------------- parameters

    def _init_params(self, word_counts: np.ndarray | None) -> dict[str, np.ndarray]:
        """Seeded initialisation. Weights ~ N(0, 1/fan_in) keep activations at unit scale layer after layer;
        the LSTM's forget-gate bias starts at 1 so the cell remembers by default (Gers et al. 2000; Jozefowicz
        et al. 2015)."""
        rng = np.random.default_rng(self.seed)
        V, F, W, H = self.vocab_size, self.feature_size, self.wordvec_size, self.hidden_size
        G = 4 * H if self.cell == "lstm" else H

        def normal(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
            return rng.standard_normal(shape) / np.sqrt(fan_in)

        params = {
            "W_proj": normal((F, H), F),
            "b_proj": np.zeros(H),
            "W_embed": rng.standard_normal((V, W)) * 0.1,
            "Wx": normal((W, G), W),
            "Wh": normal((H, G), H),
            "b": np.zeros(G),
            "W_vocab": normal((H, V), H),
            "b_vocab": np.zeros(V),
        }
        if self.cell == "lstm":
            params["b"][H : 2 * H] = 1.0  # forget gate
        if word_counts is not None:
            params["b_vocab"] = self.log_frequency_bias(word_counts)
        return {k: v.astype(self.dtype) for k, v in params.items()}

    @staticmethod
    def log_frequency_bias(word_counts: np.ndarray) -> np.ndarray:
        """b_vocab[v] = log p(v) − max_v log p(v), with p from counts (+1 smoothing so unseen words stay finite)."""
        counts = np.asarray(word_counts, dtype=np.float64) + 1.0
        log_p = np.log(counts / counts.sum())
        return log_p - log_p.max()

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (JSON-able); the parameters travel separately."""
        return {
            "vocab_size": self.vocab_size,
            "feature_size": self.feature_size,
            "wordvec_size": self.wordvec_size,
            "hidden_size": self.hidden_size,
            "cell": self.cell,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        params: dict[str, np.ndarray],
        feature_mean: np.ndarray | None = None,
        feature_std: np.ndarray | None = None,
    ) -> CaptionModel:
        """Rebuild a model from `config` and a parameter dict (e.g. from a checkpoint), checking every shape."""
        model = cls(**config)
        load_params(model.params, params, model.dtype)
        if feature_mean is not None and feature_std is not None:
            model.set_feature_standardisation(feature_mean, feature_std)
        return model

    def set_feature_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Use (features − mean) / std as the model's input from now on. mean, std: (F,)"""
        mean, std = np.asarray(mean), np.asarray(std)
        if mean.shape != (self.feature_size,) or std.shape != (self.feature_size,):
            raise ValueError(f"mean and std must have shape ({self.feature_size},), got {mean.shape}, {std.shape}")
        self.feature_mean = mean.astype(self.dtype)
        self.feature_std = np.maximum(std, 1e-6).astype(self.dtype)

    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

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
        self, features: np.ndarray, captions: np.ndarray, backward: bool = True
    ) -> tuple[np.floating, dict[str, np.ndarray]]:
        """Training loss and the gradient of every parameter.

        features: (N, F) image features.
        captions: (N, T+1) int word ids, each row <START> w1 … wk <END> then <NULL> = 0 padding.
            The network reads captions[:, :-1] and must predict captions[:, 1:] (the same words shifted by one);
            targets that are <NULL> or come after the first <END> are masked out (`target_mask`).

        backward: False skips the backward pass (validation), returning an empty grads dict.

        Returns (loss, grads): loss = summed masked cross-entropy / N (nats per caption), a NumPy scalar of the
        model's dtype; grads has the keys of `self.params`.
        """
        features = self._check_features(features)
        captions = np.asarray(captions)
        if captions.ndim != 2 or captions.shape[0] != features.shape[0] or captions.shape[1] < 2:
            raise ValueError(f"captions must be (N, T+1) with N = {features.shape[0]}, T ≥ 1; got {captions.shape}")
        p = self.params
        N, T = captions.shape[0], captions.shape[1] - 1
        mask = target_mask(captions[:, 1:])  # (N, T) target positions that count in the loss
        # Sort the batch longest caption first, so that the recurrence can stop working on a caption once it has
        # ended (`lengths`). The loss is a sum over captions, so the order changes nothing else.
        lengths = np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0)  # last counted step + 1
        order = np.argsort(-lengths, kind="stable")
        features, captions, mask, lengths = features[order], captions[order], mask[order], lengths[order]
        words_in, targets = captions[:, :-1], captions[:, 1:]
        counted = mask.reshape(N * T)  # (N·T,)

        # Forward: image -> h0; words -> vectors; recurrence; scores; loss.
        h0, proj_cache = nn.affine_forward(features, p["W_proj"], p["b_proj"])
        x, embed_cache = nn.word_embedding_forward(words_in, p["W_embed"])
        if self.cell == "lstm":
            h, rec_cache = nn.lstm_forward(x, h0, p["Wx"], p["Wh"], p["b"], lengths=lengths)
        else:
            h, rec_cache = nn.rnn_forward(x, h0, p["Wx"], p["Wh"], p["b"], lengths=lengths)
        # loss = Σ cross-entropy / N; its backward through the vocabulary projection comes with it.
        loss, vocab_grads = counted_words_loss(h, targets, counted, p["W_vocab"], p["b_vocab"], 1.0 / N, backward)
        if vocab_grads is None:
            return loss, {}

        # Backward: the same path in reverse.
        grads: dict[str, np.ndarray] = {}
        dh, grads["W_vocab"], grads["b_vocab"] = vocab_grads
        if self.cell == "lstm":
            dx, dh0, _dc0, grads["Wx"], grads["Wh"], grads["b"] = nn.lstm_backward(dh, rec_cache)
        else:
            dx, dh0, grads["Wx"], grads["Wh"], grads["b"] = nn.rnn_backward(dh, rec_cache)
        grads["W_embed"] = nn.word_embedding_backward(dx, embed_cache)
        _dfeatures, grads["W_proj"], grads["b_proj"] = nn.affine_backward(dh0, proj_cache)
        return loss, grads

    # ---------------------------------------------------------------------------------------------- decoding

    def initial_state(self, features: np.ndarray) -> RecurrentState:
        """The state before the first word: h0 = features W_proj + b_proj, c0 = 0. features: (N, F)"""
        features = self._check_features(features)
        h0 = features @ self.params["W_proj"] + self.params["b_proj"]
        return RecurrentState(h0, np.zeros_like(h0) if self.cell == "lstm" else None)

    def step(self, words: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        """Feed one word per sequence and get the scores of the next word.

        words: (N,) int ids; state: h (N, H) [, c (N, H)]  ->  logits (N, V) and the new state.
        Uses the same step functions as training (`minicap.nn`), so a decoder sees exactly the trained network.
        """
        p = self.params
        x = p["W_embed"][np.asarray(words)]  # (N, W)
        if self.cell == "lstm":
            assert state.c is not None
            h, c, _ = nn.lstm_step_forward(x, state.h, state.c, p["Wx"], p["Wh"], p["b"])
        else:
            h, _ = nn.rnn_step_forward(x, state.h, p["Wx"], p["Wh"], p["b"])
            c = None
        logits = h @ p["W_vocab"] + p["b_vocab"]
        return logits, RecurrentState(h, c)

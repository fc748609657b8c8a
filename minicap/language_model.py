"""Caption language models: an LSTM trained with truncated BPTT, and the n-gram baselines it has to beat.

A language model gives every caption a probability, one word at a time:

    P(w1 … wk <END>) = P(w1 | <START>) · P(w2 | <START> w1) · … · P(<END> | <START> w1 … wk)

It is the captioner without the image. How well it predicts held-out captions is measured by the PERPLEXITY

    perplexity = exp(−(1/K) Σ log P(token | its history))      over all K predicted tokens, <END> included

the geometric mean of 1/P over the tokens: "as uncertain as a uniform choice among this many words". Three models,
all over the same closed vocabulary (rare words are <UNK>, which is predicted like any other token):

    UnigramModel        P(w)            word frequencies; ignores the history altogether
    BigramModel         P(w | v)        the previous word only, smoothed: Jelinek–Mercer interpolation with the
                                        unigram, or interpolated Kneser–Ney (absolute discounting)
    LSTMLanguageModel   P(w | history)  an LSTM over every earlier word of the caption, composed only from
                                        `minicap.nn`: embedding -> LSTM -> affine -> softmax loss

No model ever predicts <NULL> (padding) or <START> (always given): their probability is exactly 0, and every
distribution sums to 1 over the other V − 2 tokens.

Letters: N batch, T time steps, W word-vector size, H hidden size, V vocabulary size, M captions, K tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse

from minicap import nn
from minicap.decode import sample_from_state
from minicap.model import END_ID, NULL_ID, START_ID, CaptionModel, counted_words_loss, load_params, target_mask

__all__ = [
    "UNK_ID",
    "perplexity",
    "CorpusScore",
    "predictable_tokens",
    "bigram_pairs",
    "UnigramModel",
    "BigramModel",
    "SMOOTHINGS",
    "LMState",
    "LSTMLanguageModel",
    "caption_stream",
    "StreamChunk",
    "stream_chunks",
]

UNK_ID = 3  # the Vocabulary's <UNK> (minicap.data.UNK)


# ------------------------------------------------------------------------------------------------ perplexity


def perplexity(log_prob: float, num_tokens: int) -> float:
    """exp(−log_prob / num_tokens): the perplexity of `num_tokens` predictions whose natural-log probabilities
    sum to `log_prob`. One nat per token more costs a factor e in perplexity."""
    if num_tokens < 1:
        raise ValueError(f"perplexity needs at least one predicted token, got num_tokens={num_tokens}")
    return float(np.exp(-float(log_prob) / num_tokens))


class CorpusScore(NamedTuple):
    """How well a model predicted a set of captions: Σ log P (natural log) over `num_tokens` predictions."""

    log_prob: float
    num_tokens: int

    @property
    def nats_per_token(self) -> float:
        return -self.log_prob / self.num_tokens

    @property
    def perplexity(self) -> float:
        return perplexity(self.log_prob, self.num_tokens)


def predictable_tokens(vocab_size: int) -> np.ndarray:
    """(V,) bool: the tokens a model predicts. Every token except <NULL> (padding) and <START> (always given)."""
    if vocab_size < 4:
        raise ValueError(f"vocab_size must count the 4 special tokens at least, got {vocab_size}")
    allowed = np.ones(vocab_size, dtype=bool)
    allowed[[NULL_ID, START_ID]] = False
    return allowed


def _check_captions(captions: np.ndarray, vocab_size: int) -> np.ndarray:
    captions = np.asarray(captions)
    if captions.ndim != 2 or captions.shape[1] < 2 or not np.issubdtype(captions.dtype, np.integer):
        raise ValueError(
            f"captions must be an (M, L ≥ 2) int array of padded rows, got {captions.dtype}{captions.shape}"
        )
    if captions.size and (captions.min() < 0 or captions.max() >= vocab_size):
        raise ValueError(f"caption token ids must lie in [0, {vocab_size}), got [{captions.min()}, {captions.max()}]")
    if captions.size and np.any(captions[:, 0] != START_ID):
        raise ValueError("every caption row must start with <START> (rows as `minicap.data.encode_captions` makes)")
    return captions


def bigram_pairs(captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every prediction a caption asks for, as (previous token, next token) pairs.

    captions: (M, L) int rows <START> w1 … wk <END> <NULL> … (as `minicap.data.encode_captions` makes them).
    Returns (prev (K,), next (K,)) int64: (<START>, w1), (w1, w2), …, (wk, <END>) for every row, the k + 1
    predictions of a k-word caption, in row order. These are exactly the K tokens every model here is scored on.
    """
    captions = np.asarray(captions)
    words_in, targets = captions[:, :-1], captions[:, 1:]
    counted = target_mask(targets)
    return words_in[counted].astype(np.int64), targets[counted].astype(np.int64)


# ----------------------------------------------------------------------------------------------- n-grams


class UnigramModel:
    """P(w) from training-token counts with add-one (Laplace) smoothing over the V − 2 predictable tokens:

        P(w) = (c(w) + 1) / (K + (V − 2))        c(w): how often w is a training target, K = Σ_w c(w)

    The +1 only matters for a token never seen as a target (e.g. <UNK> when no training word is rare): without
    it, one such token in the held-out data would make the perplexity infinite.
    """

    def __init__(self, counts: np.ndarray) -> None:
        counts = np.asarray(counts, dtype=np.float64)
        allowed = predictable_tokens(counts.shape[0])
        if np.any(counts < 0):
            raise ValueError("unigram counts must be non-negative")
        self.vocab_size = counts.shape[0]
        self.counts = np.where(allowed, counts, 0.0)
        smoothed = np.where(allowed, self.counts + 1.0, 0.0)
        self.probs = smoothed / smoothed.sum()  # (V,)

    @classmethod
    def fit(cls, captions: np.ndarray, vocab_size: int) -> UnigramModel:
        """Count the targets of (M, L) padded caption rows (<END> counted, <START> never)."""
        _, targets = bigram_pairs(_check_captions(captions, vocab_size))
        return cls(np.bincount(targets, minlength=vocab_size))

    def next_word_probs(self, prev: np.ndarray) -> np.ndarray:
        """(M,) previous tokens (ignored) -> (M, V) next-token distributions, each the unigram."""
        return np.broadcast_to(self.probs, (np.asarray(prev).shape[0], self.vocab_size)).copy()

    def log_prob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """log P(next) for (K,) pairs -> (K,) float64."""
        return np.log(self.probs[np.asarray(nxt)])

    def score(self, captions: np.ndarray) -> CorpusScore:
        """Σ log P over every prediction of (M, L) padded caption rows (see `bigram_pairs`)."""
        prev, nxt = bigram_pairs(_check_captions(captions, self.vocab_size))
        return CorpusScore(float(self.log_prob(prev, nxt).sum()), int(nxt.size))


SMOOTHINGS = ("interpolated", "kneser_ney")


class BigramModel:
    """P(w | v): the next token given the previous one, from training counts c(v, w), smoothed.

    Maximum likelihood, c(v, w) / c(v), gives probability 0 to every pair never seen in training — and a single
    such pair in held-out text makes the perplexity infinite (about 1 in 11 held-out COCO pairs is unseen in
    20,000 training captions, with V ≈ 2,100). Two standard repairs, each with ONE parameter tuned on a
    validation split:

    smoothing="interpolated" (Jelinek & Mercer 1980), weight = λ ∈ [0, 1]:

        P(w | v) = λ · c(v, w) / c(v) + (1 − λ) · P_uni(w)          (P_uni(w) when c(v) = 0)

      A mixture of two distributions is a distribution, and every token keeps at least (1 − λ) P_uni(w) > 0.
      The held-out log-likelihood Σ log(λ a + (1 − λ) b) is concave in λ, so its maximum is unique.

    smoothing="kneser_ney" (interpolated Kneser–Ney; Kneser & Ney 1995, Chen & Goodman 1998), weight = d ∈ (0, 1]:

        P(w | v) = max(c(v, w) − d, 0) / c(v) + γ(v) · P_cont(w),    γ(v) = d · N₁₊(v •) / c(v)
        P_cont(w) = (N₁₊(• w) + 1) / (N₁₊(• •) + V − 2)             (P_cont(w) when c(v) = 0)

      Absolute discounting takes d from every seen pair's count (counts are integers ≥ 1 ≥ d, so nothing goes
      negative) and gives the mass it collected, d · N₁₊(v •) / c(v), to the lower-order distribution. Kneser–Ney's
      idea is WHICH lower-order distribution: not how often w occurs, but after how many DIFFERENT words it occurs
      (N₁₊(• w)). A word that is frequent but only after one context ("table" after "dining"?) should get little of
      the mass reserved for contexts where it was never seen. N₁₊(v •): distinct words seen after v; N₁₊(• w):
      distinct words seen before w; the +1 keeps every predictable token's probability > 0.

    <NULL> and <START> get probability exactly 0 under both; each row sums to 1 over the other V − 2 tokens.
    """

    def __init__(self, pair_counts: scipy.sparse.csr_matrix, smoothing: str = "interpolated", weight: float = 0.9):
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
        V = pair_counts.shape[0]
        if pair_counts.shape != (V, V):
            raise ValueError(f"pair counts must be a square (V, V) matrix, got {pair_counts.shape}")
        self.vocab_size = V
        self.smoothing = smoothing
        allowed = predictable_tokens(V)
        counts = scipy.sparse.csr_matrix(pair_counts, dtype=np.float64)
        counts = counts @ scipy.sparse.diags(allowed.astype(np.float64))  # never count <NULL>/<START> as a target
        counts.eliminate_zeros()
        self.pair_counts = counts  # (V, V) sparse: c(v, w)
        self.context_counts = np.asarray(counts.sum(axis=1)).ravel()  # (V,) c(v)
        self.unigram = UnigramModel(np.asarray(counts.sum(axis=0)).ravel())
        seen = counts.copy()
        seen.data[:] = 1.0
        self.followers = np.asarray(seen.sum(axis=1)).ravel()  # (V,) N₁₊(v •)
        continuation = np.where(allowed, np.asarray(seen.sum(axis=0)).ravel() + 1.0, 0.0)  # N₁₊(• w) + 1
        self.continuation = continuation / continuation.sum()  # (V,) P_cont(w)
        self.weight = self._check_weight(weight)

    def _check_weight(self, weight: float) -> float:
        weight = float(weight)
        if self.smoothing == "interpolated" and not 0.0 <= weight <= 1.0:
            raise ValueError(f"the interpolation weight λ must be in [0, 1], got {weight}")
        if self.smoothing == "kneser_ney" and not 0.0 < weight <= 1.0:
            raise ValueError(f"the Kneser–Ney discount d must be in (0, 1], got {weight}")
        return weight

    @classmethod
    def fit(
        cls, captions: np.ndarray, vocab_size: int, smoothing: str = "interpolated", weight: float = 0.9
    ) -> BigramModel:
        """Count the (previous, next) pairs of (M, L) padded caption rows (see `bigram_pairs`)."""
        prev, nxt = bigram_pairs(_check_captions(captions, vocab_size))
        ones = np.ones(prev.size, dtype=np.float64)
        counts = scipy.sparse.coo_matrix((ones, (prev, nxt)), shape=(vocab_size, vocab_size)).tocsr()  # sums duplicates
        return cls(counts, smoothing, weight)

    def with_weight(self, weight: float) -> BigramModel:
        """The same counts with another λ (or d): no recounting."""
        model = BigramModel.__new__(BigramModel)
        model.__dict__.update(self.__dict__)
        model.weight = model._check_weight(weight)
        return model

    # ---------------------------------------------------------------------------------------- probabilities

    def _pair_statistics(self, prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, ...]:
        """What the formulas need for (K,) pairs: c(v, w), c(v), N₁₊(v •), P_uni(w), P_cont(w), each (K,)."""
        prev, nxt = np.asarray(prev, dtype=np.int64), np.asarray(nxt, dtype=np.int64)
        pair = np.asarray(self.pair_counts[prev, nxt]).ravel()
        return (
            pair,
            self.context_counts[prev],
            self.followers[prev],
            self.unigram.probs[nxt],
            self.continuation[nxt],
        )

    @staticmethod
    def _formula(
        smoothing: str,
        weight: float | np.ndarray,
        pair: np.ndarray,
        context: np.ndarray,
        followers: np.ndarray,
        p_uni: np.ndarray,
        p_cont: np.ndarray,
    ) -> np.ndarray:
        """P(w | v) from the statistics; `weight` may be an array (K, 1) to evaluate many weights at once."""
        seen = context > 0
        safe = np.where(seen, context, 1.0)
        if smoothing == "interpolated":
            p = weight * pair / safe + (1.0 - weight) * p_uni
            return np.where(seen, p, p_uni)
        p = np.maximum(pair - weight, 0.0) / safe + weight * followers / safe * p_cont
        return np.where(seen, p, p_cont)

    def prob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """P(next | prev) for (K,) pairs -> (K,) float64."""
        return self._formula(self.smoothing, self.weight, *self._pair_statistics(prev, nxt))

    def log_prob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """log P(next | prev) for (K,) pairs -> (K,) float64."""
        return np.log(self.prob(prev, nxt))

    def next_word_probs(self, prev: np.ndarray) -> np.ndarray:
        """(M,) previous tokens -> (M, V) float64 next-token distributions (each row sums to 1)."""
        prev = np.asarray(prev, dtype=np.int64)
        M, V = prev.size, self.vocab_size
        everything = np.tile(np.arange(V), M)
        return self.prob(np.repeat(prev, V), everything).reshape(M, V)

    def score(self, captions: np.ndarray) -> CorpusScore:
        """Σ log P over every prediction of (M, L) padded caption rows (see `bigram_pairs`)."""
        prev, nxt = bigram_pairs(_check_captions(captions, self.vocab_size))
        return CorpusScore(float(self.log_prob(prev, nxt).sum()), int(nxt.size))

    # ---------------------------------------------------------------------------------------------- tuning

    def tune(self, captions: np.ndarray, weights: np.ndarray | None = None) -> tuple[BigramModel, np.ndarray]:
        """Choose λ (or d) by held-out perplexity on VALIDATION captions (never on the test captions).

        weights: the candidates; default 0.01, 0.02, …, 0.99 (λ = 1 or d = 0 would give unseen pairs
        probability 0). All candidates are evaluated at once: the pair statistics are gathered once, then the
        formula runs on a (candidates, K) array.
        Returns (the model with the best weight, (candidates, 2) array of [weight, validation perplexity]).
        """
        weights = np.arange(1, 100) / 100.0 if weights is None else np.asarray(weights, dtype=np.float64)
        for w in weights:
            self._check_weight(w)
        prev, nxt = bigram_pairs(_check_captions(captions, self.vocab_size))
        stats = self._pair_statistics(prev, nxt)
        log_p = np.log(self._formula(self.smoothing, weights[:, None], *stats))  # (candidates, K)
        ppl = np.exp(-log_p.mean(axis=1))
        best = int(np.argmin(ppl))
        return self.with_weight(weights[best]), np.stack([weights, ppl], axis=1)


# -------------------------------------------------------------------------------------------------- the LSTM


class LMState(NamedTuple):
    """The LSTM's state after a chunk: carried into the next chunk in truncated BPTT, or while sampling."""

    h: np.ndarray  # (N, H)
    c: np.ndarray  # (N, H)


class LSTMLanguageModel:
    """A word-level LSTM language model with hand-written gradients, composed only from `minicap.nn`:

        words (N, T) ──embedding──▶ x (N, T, W) ──LSTM (h0, c0)──▶ h (N, T, H) ──affine──▶ scores ──softmax──▶ P(next)

    The CaptionModel without the image: its state starts at (h0, c0) given by the caller — zeros for a caption
    on its own, or the final state of the previous chunk in truncated BPTT — instead of at a projected image.

    Parameters (a flat dict, gradients with the same keys):

        W_embed (V, W)                     word vectors
        Wx (W, 4H), Wh (H, 4H), b (4H,)    LSTM, gate order i, f, o, g (minicap.nn.lstm)
        W_vocab (H, V), b_vocab (V,)       hidden state -> next-word scores

    word_counts: optional (V,) training target counts; the output bias then starts at log P_uni(w) (neuraltalk's
        trick), so the untrained model already predicts like the unigram model and training starts from its
        perplexity instead of from V.
    """

    def __init__(
        self,
        vocab_size: int,
        wordvec_size: int = 128,
        hidden_size: int = 256,
        dtype: Any = np.float32,
        seed: int = 0,
        word_counts: np.ndarray | None = None,
    ) -> None:
        predictable_tokens(vocab_size)  # validates vocab_size
        self.vocab_size = int(vocab_size)
        self.wordvec_size = int(wordvec_size)
        self.hidden_size = int(hidden_size)
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        self.params = self._init_params(word_counts)

    def _init_params(self, word_counts: np.ndarray | None) -> dict[str, np.ndarray]:
        """Seeded; weights ~ N(0, 1/fan_in); forget-gate bias 1 (remember by default), as in CaptionModel."""
        rng = np.random.default_rng(self.seed)
        V, W, H = self.vocab_size, self.wordvec_size, self.hidden_size
        params = {
            "W_embed": rng.standard_normal((V, W)) * 0.1,
            "Wx": rng.standard_normal((W, 4 * H)) / np.sqrt(W),
            "Wh": rng.standard_normal((H, 4 * H)) / np.sqrt(H),
            "b": np.zeros(4 * H),
            "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H),
            "b_vocab": np.zeros(V),
        }
        params["b"][H : 2 * H] = 1.0  # forget gate
        if word_counts is not None:
            word_counts = np.asarray(word_counts)
            if word_counts.shape != (V,):
                raise ValueError(f"word_counts must have shape ({V},), got {word_counts.shape}")
            params["b_vocab"] = CaptionModel.log_frequency_bias(word_counts)
        return {k: v.astype(self.dtype) for k, v in params.items()}

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (JSON-able); the parameters travel separately."""
        return {
            "vocab_size": self.vocab_size,
            "wordvec_size": self.wordvec_size,
            "hidden_size": self.hidden_size,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], params: dict[str, np.ndarray]) -> LSTMLanguageModel:
        """Rebuild a model from `config` and a parameter dict, checking every name and shape."""
        model = cls(**config)
        load_params(model.params, params, model.dtype)
        return model

    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def initial_state(self, N: int) -> LMState:
        """Zeros (N, H): the state of a fresh stream (and the default h0, c0 of `loss`)."""
        zeros = np.zeros((N, self.hidden_size), dtype=self.dtype)
        return LMState(zeros, zeros.copy())

    def caption_start_state(self, N: int) -> LMState:
        """The state a caption read ON ITS OWN starts from: zeros, then one <END> read.

        Why not zeros: trained on a stream of captions (`stream_chunks`), the model meets every <START> right
        after an <END>, carrying whatever state that left — never at zeros. Reading one <END> from zeros puts it
        where training always had it. This state is the same for every caption (it depends on no other caption),
        so a caption's score still uses nothing but the caption itself.
        """
        _, state = self.step(np.full(N, END_ID), self.initial_state(N))
        return state

    # ------------------------------------------------------------------------------------------- forward

    def _check_inputs(
        self,
        words_in: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray | None,
        h0: np.ndarray | None,
        c0: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        words_in, targets = np.asarray(words_in), np.asarray(targets)
        if words_in.ndim != 2 or words_in.shape != targets.shape or words_in.shape[1] < 1:
            raise ValueError(f"words_in and targets must both be (N, T ≥ 1), got {words_in.shape} and {targets.shape}")
        if targets.size and (targets.min() < 0 or targets.max() >= self.vocab_size):
            raise ValueError(f"targets must lie in [0, {self.vocab_size}), got [{targets.min()}, {targets.max()}]")
        mask = np.ones(targets.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != targets.shape:
            raise ValueError(f"mask must have the targets' shape {targets.shape}, got {mask.shape}")
        N = words_in.shape[0]
        default = self.initial_state(N)
        state = []
        for name, given, zero in (("h0", h0, default.h), ("c0", c0, default.c)):
            if given is None:
                state.append(zero)
                continue
            given = np.asarray(given)
            if given.shape != zero.shape:
                raise ValueError(f"{name} must have shape {zero.shape}, got {given.shape}")
            state.append(given.astype(self.dtype, copy=False))
        return words_in, targets, mask, state[0], state[1]

    def _forward(
        self, words_in: np.ndarray, h0: np.ndarray, c0: np.ndarray
    ) -> tuple[np.ndarray, nn.EmbeddingCache, nn.LSTMCache]:
        """embedding -> LSTM: h (N, T, H) and the caches."""
        p = self.params
        x, embed_cache = nn.word_embedding_forward(words_in, p["W_embed"])
        h, lstm_cache = nn.lstm_forward(x, h0, p["Wx"], p["Wh"], p["b"], c0=c0)
        return h, embed_cache, lstm_cache

    def loss(
        self,
        words_in: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray | None = None,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
    ) -> tuple[np.floating, dict[str, np.ndarray], LMState]:
        """Mean cross-entropy per counted target, its gradients, and the final state.

        words_in: (N, T) int, the tokens read; targets: (N, T) int, the tokens to predict (usually words_in
        shifted by one); mask: (N, T) bool, which targets count (None: all); h0, c0: (N, H) state to start
        from (None: zeros).

            loss = −(1/K) Σ_{counted (n, t)} log P(targets[n, t] | words_in[n, :t+1], h0, c0)     K = #counted

        The mean PER TOKEN (not per caption, as in CaptionModel) is what perplexity is made of: exp(loss) is the
        chunk's perplexity. Returns (loss, grads, LMState(h_T, c_T)).

        Truncated BPTT: (h0, c0) are treated as constants. Pass the previous chunk's final state to continue
        a stream; no gradient flows back into that chunk (its graph is gone), so memory and the gradient path
        are bounded by this chunk's T steps. The returned state is a value, not part of any graph.
        """
        words_in, targets, mask, h0, c0 = self._check_inputs(words_in, targets, mask, h0, c0)
        p = self.params
        N, T = words_in.shape
        counted = mask.reshape(N * T)
        K = int(counted.sum())

        h, embed_cache, lstm_cache = self._forward(words_in, h0, c0)
        # Only counted positions are scored, as in CaptionModel; weight 1/K: the mean over the counted targets.
        loss, vocab_grads = counted_words_loss(h, targets, counted, p["W_vocab"], p["b_vocab"], 1.0 / max(K, 1))
        assert vocab_grads is not None

        grads: dict[str, np.ndarray] = {}
        dh, grads["W_vocab"], grads["b_vocab"] = vocab_grads
        # dh0, dc0 would flow into the previous chunk: truncated BPTT drops them here.
        dx, _dh0, _dc0, grads["Wx"], grads["Wh"], grads["b"] = nn.lstm_backward(dh, lstm_cache)
        grads["W_embed"] = nn.word_embedding_backward(dx, embed_cache)
        return loss, grads, LMState(lstm_cache.h_last.copy(), lstm_cache.c_last.copy())

    def log_likelihood(
        self,
        words_in: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray | None = None,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
    ) -> tuple[CorpusScore, LMState]:
        """Forward only: Σ log P(target) over the counted targets (float64 sum), their number, the final state.

        Same arguments as `loss`. Used for evaluation (no caches for a backward pass are kept beyond the call).
        """
        words_in, targets, mask, h0, c0 = self._check_inputs(words_in, targets, mask, h0, c0)
        N, T = words_in.shape
        counted = mask.reshape(N * T)
        h, _, lstm_cache = self._forward(words_in, h0, c0)
        scores = h.reshape(N * T, -1)[counted] @ self.params["W_vocab"] + self.params["b_vocab"]  # (K, V)
        # log P(target) = s_target − logsumexp(s), by log-sum-exp with the row maximum subtracted (as in
        # nn.softmax_loss), in ONE (K, V) buffer: only the K target log-probabilities are needed, not all K·V.
        rows = np.arange(scores.shape[0])
        row_max = scores.max(axis=1)
        target_score = scores[rows, targets.reshape(N * T)[counted]] - row_max
        scores -= row_max[:, None]
        np.exp(scores, out=scores)
        log_p = target_score - np.log(scores.sum(axis=1))
        score = CorpusScore(float(log_p.sum(dtype=np.float64)), int(counted.sum()))
        return score, LMState(lstm_cache.h_last.copy(), lstm_cache.c_last.copy())

    def score(self, captions: np.ndarray, batch_size: int = 512, from_zeros: bool = False) -> CorpusScore:
        """Σ log P over every prediction of (M, L) padded caption rows, each caption read ON ITS OWN.

        Every caption starts from `caption_start_state` (or, with from_zeros, the zero state) with <START>, and
        its k + 1 predictions w1 … wk <END> are exactly those the n-gram models are scored on (`bigram_pairs`),
        so the perplexities are comparable: no model sees anything but the caption's own earlier words.
        Captions are batched by length (sorted) so that little time goes into padding.
        """
        captions = _check_captions(captions, self.vocab_size)
        lengths = target_mask(captions[:, 1:]).sum(axis=1)  # predictions per caption
        order = np.argsort(lengths, kind="stable")
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            T = int(lengths[rows].max())
            batch = captions[rows, : T + 1]
            h0, c0 = self.initial_state(len(rows)) if from_zeros else self.caption_start_state(len(rows))
            score, _ = self.log_likelihood(batch[:, :-1], batch[:, 1:], target_mask(batch[:, 1:]), h0, c0)
            total += score.log_prob
            count += score.num_tokens
        return CorpusScore(total, count)

    # -------------------------------------------------------------------------------------------- sampling

    def step(self, words: np.ndarray, state: LMState) -> tuple[np.ndarray, LMState]:
        """Read one token per row: words (N,) int, state (N, H) ×2 -> next-token scores (N, V), new state.
        The same `minicap.nn` step as training, so sampling sees exactly the trained network."""
        p = self.params
        x = p["W_embed"][np.asarray(words)]
        h, c, _ = nn.lstm_step_forward(x, state.h, state.c, p["Wx"], p["Wh"], p["b"])
        return h @ p["W_vocab"] + p["b_vocab"], LMState(h, c)

    def sample(
        self,
        num_samples: int,
        temperature: float = 1.0,
        rng: np.random.Generator | int | None = None,
        max_length: int = 30,
        allow_unk: bool = False,
    ) -> np.ndarray:
        """Write captions from nothing: start at `caption_start_state` with <START>, draw every next token
        from softmax(scores / temperature), feed it back, stop at <END>.

        temperature > 0: 1 samples the model's own distribution; < 1 sharpens it (safer, more repetitive);
        > 1 flattens it (more varied, more mistakes). <NULL>, <START> and (unless allow_unk) <UNK> are never
        drawn: their scores are set to −∞, so the others are renormalised.
        Returns (num_samples, max_length) int32: tokens up to and including <END>, then <NULL>.
        """
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"need num_samples ≥ 1, got {num_samples}")
        # The same loop as the captioner's sampler; only the starting state differs.
        return sample_from_state(
            self.step,
            self.caption_start_state(int(num_samples)),
            self.vocab_size,
            temperature,
            rng,
            max_length,
            allow_unk,
        )


# ------------------------------------------------------------------------------- streams for truncated BPTT


def caption_stream(captions: np.ndarray) -> np.ndarray:
    """(M, L) padded caption rows -> one 1-D int64 stream of their tokens back to back, padding removed:

        <START> a dog runs <END> <START> two cats sleep <END> <START> …

    The order of the rows is the order in the stream: shuffle the rows first for a new stream each epoch.
    """
    captions = np.asarray(captions)
    keep = np.concatenate([np.ones((captions.shape[0], 1), dtype=bool), target_mask(captions[:, 1:])], axis=1)
    return captions[keep].astype(np.int64)


class StreamChunk(NamedTuple):
    """One truncated-BPTT chunk: row n continues where row n of the previous chunk stopped."""

    words_in: np.ndarray  # (N, k)
    targets: np.ndarray  # (N, k)  words_in shifted by one along the stream
    mask: np.ndarray  # (N, k) bool: False where the target is <START> (given, never predicted)


def stream_chunks(stream: np.ndarray, batch_size: int, chunk_size: int) -> Iterator[StreamChunk]:
    """Cut a token stream into `batch_size` parallel rows and walk along them `chunk_size` steps at a time.

    The stream is split into N = batch_size contiguous pieces of equal length (the last few tokens that do not
    fill a row are dropped), one per row. Chunk j holds columns [j·k, (j+1)·k) of every row, so row n of chunk
    j + 1 continues row n of chunk j: carry the LSTM's final (h, c) from one chunk into the next and every row
    reads its piece as one long sequence, while backpropagation stops at each chunk's first step.

    The target after a caption's <END> is the next caption's <START>, which no model predicts (it is given):
    those positions are masked, so the loss counts exactly the tokens perplexity counts (words and <END>).
    """
    stream = np.asarray(stream)
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be ≥ 1, got {batch_size} and {chunk_size}")
    row_length = (stream.size - 1) // batch_size  # inputs per row; each input needs its next token as target
    if row_length < 1:
        raise ValueError(f"a stream of {stream.size} tokens is too short for {batch_size} rows")
    rows = stream[: batch_size * row_length + 1]
    inputs = rows[:-1].reshape(batch_size, row_length)
    targets = rows[1:].reshape(batch_size, row_length)
    for start in range(0, row_length, chunk_size):
        t = targets[:, start : start + chunk_size]
        yield StreamChunk(inputs[:, start : start + chunk_size], t, t != START_ID)

"""The n-gram language models a caption LSTM has to beat: unigram and bigram, smoothed.

    UnigramModel        P(w)            word frequencies; ignores the history altogether
    BigramModel         P(w | v)        the previous word only, smoothed: Jelinek–Mercer interpolation with the
                                        unigram, or interpolated Kneser–Ney (absolute discounting)

Both are scored on exactly the predictions the LSTM is scored on (`minicap.models.language.bigram_pairs`), over
the same closed vocabulary, so the perplexities compare.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from minicap.models.language import CorpusScore, bigram_pairs, check_captions
from minicap.tokens import predictable_tokens

__all__ = ["UnigramModel", "BigramModel", "SMOOTHINGS"]


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
        _, targets = bigram_pairs(check_captions(captions, vocab_size))
        return cls(np.bincount(targets, minlength=vocab_size))

    def next_word_probs(self, prev: np.ndarray) -> np.ndarray:
        """(M,) previous tokens (ignored) -> (M, V) next-token distributions, each the unigram."""
        return np.broadcast_to(self.probs, (np.asarray(prev).shape[0], self.vocab_size)).copy()

    def log_prob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """log P(next) for (K,) pairs -> (K,) float64."""
        return np.log(self.probs[np.asarray(nxt)])

    def score(self, captions: np.ndarray) -> CorpusScore:
        """Σ log P over every prediction of (M, L) padded caption rows (see `bigram_pairs`)."""
        prev, nxt = bigram_pairs(check_captions(captions, self.vocab_size))
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
        prev, nxt = bigram_pairs(check_captions(captions, vocab_size))
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
        prev, nxt = bigram_pairs(check_captions(captions, self.vocab_size))
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
        prev, nxt = bigram_pairs(check_captions(captions, self.vocab_size))
        stats = self._pair_statistics(prev, nxt)
        log_p = np.log(self._formula(self.smoothing, weights[:, None], *stats))  # (candidates, K)
        ppl = np.exp(-log_p.mean(axis=1))
        best = int(np.argmin(ppl))
        return self.with_weight(weights[best]), np.stack([weights, ppl], axis=1)

"""The caption language model: an LSTM over the words of captions, trained with truncated BPTT, and how a
language model is scored.

A language model gives every caption a probability, one word at a time:

    P(w1 … wk <END>) = P(w1 | <START>) · P(w2 | <START> w1) · … · P(<END> | <START> w1 … wk)

It is the captioner without the image. How well it predicts held-out captions is measured by the PERPLEXITY

    perplexity = exp(−(1/K) Σ log P(token | its history))      over all K predicted tokens, <END> included

the geometric mean of 1/P over the tokens: "as uncertain as a uniform choice among this many words". The n-gram
baselines it has to beat are in `minicap.models.ngram`. No model ever predicts <NULL> (padding) or <START> (always
given): their probability is exactly 0, and every distribution sums to 1 over the other V − 2 tokens.

Letters: N batch, T time steps, W word-vector size, H hidden size, V vocabulary size, M captions, K tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from minicap import nn
from minicap.dataset import Dataset
from minicap.models.base import SequenceModel, State, log_frequency_bias, normal_init
from minicap.tokens import END, START, predictable_tokens, target_mask

__all__ = [
    "perplexity",
    "CorpusScore",
    "check_captions",
    "bigram_pairs",
    "LSTMLanguageModel",
    "caption_stream",
    "StreamChunk",
    "stream_chunks",
    "StreamDataset",
    "CarriedState",
    "stream_log_probs",
]


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


def check_captions(captions: np.ndarray, vocab_size: int) -> np.ndarray:
    captions = np.asarray(captions)
    if captions.ndim != 2 or captions.shape[1] < 2 or not np.issubdtype(captions.dtype, np.integer):
        raise ValueError(
            f"captions must be an (M, L ≥ 2) int array of padded rows, got {captions.dtype}{captions.shape}"
        )
    if captions.size and (captions.min() < 0 or captions.max() >= vocab_size):
        raise ValueError(f"caption token ids must lie in [0, {vocab_size}), got [{captions.min()}, {captions.max()}]")
    if captions.size and np.any(captions[:, 0] != START):
        raise ValueError("every caption row must start with <START> (rows as `minicap.text.encode_captions` makes)")
    return captions


def bigram_pairs(captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every prediction a caption asks for, as (previous token, next token) pairs.

    captions: (M, L) int rows <START> w1 … wk <END> <NULL> … (as `minicap.text.encode_captions` makes them).
    Returns (prev (K,), next (K,)) int64: (<START>, w1), (w1, w2), …, (wk, <END>) for every row, the k + 1
    predictions of a k-word caption, in row order. These are exactly the K tokens every model here is scored on.
    """
    captions = np.asarray(captions)
    words_in, targets = captions[:, :-1], captions[:, 1:]
    counted = target_mask(targets)
    return words_in[counted].astype(np.int64), targets[counted].astype(np.int64)


# -------------------------------------------------------------------------------------------------- the LSTM


class LSTMLanguageModel(SequenceModel):
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
        dtype: npt.DTypeLike = np.float32,
        seed: int = 0,
        word_counts: np.ndarray | None = None,
    ) -> None:
        predictable_tokens(vocab_size)  # validates vocab_size
        if int(wordvec_size) < 1 or int(hidden_size) < 1:
            raise ValueError(f"wordvec_size and hidden_size must be >= 1, got {wordvec_size} and {hidden_size}")
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
            "Wx": normal_init(rng, (W, 4 * H), W),
            "Wh": normal_init(rng, (H, 4 * H), H),
            "b": np.zeros(4 * H),
            "W_vocab": normal_init(rng, (H, V), H),
            "b_vocab": np.zeros(V),
        }
        params["b"][H : 2 * H] = 1.0  # forget gate
        if word_counts is not None:
            word_counts = np.asarray(word_counts)
            if word_counts.shape != (V,):
                raise ValueError(f"word_counts must have shape ({V},), got {word_counts.shape}")
            params["b_vocab"] = log_frequency_bias(word_counts)
        return {k: v.astype(self.dtype) for k, v in params.items()}

    @property
    def config(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "wordvec_size": self.wordvec_size,
            "hidden_size": self.hidden_size,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def initial_state(self, N: int) -> State:
        """Zeros (N, H): the state of a fresh stream (and the default h0, c0 of `loss`)."""
        zeros = np.zeros((N, self.hidden_size), dtype=self.dtype)
        return State(zeros, zeros.copy())

    def caption_start_state(self, N: int) -> State:
        """The state a caption read ON ITS OWN starts from: zeros, then one <END> read.

        Why not zeros: trained on a stream of captions (`stream_chunks`), the model meets every <START> right
        after an <END>, carrying whatever state that left — never at zeros. Reading one <END> from zeros puts it
        where training always had it. This state is the same for every caption (it depends on no other caption),
        so a caption's score still uses nothing but the caption itself.
        """
        _, state = self.step(np.full(N, END), self.initial_state(N))
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
    ) -> tuple[np.ndarray, nn.EmbeddingCache, nn.LSTMCache | nn.fast.FastLSTMCache]:
        """embedding -> LSTM: h (N, T, H) and the caches."""
        p = self.params
        x, embed_cache = nn.word_embedding_forward(words_in, p["W_embed"])
        h, lstm_cache = self.sequence.lstm_forward(x, h0, p["Wx"], p["Wh"], p["b"], c0=c0)
        return h, embed_cache, lstm_cache

    def loss(
        self,
        words_in: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray | None = None,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
        backward: bool = True,
    ) -> tuple[np.floating, dict[str, np.ndarray]]:
        """Mean cross-entropy per counted target and its gradients (the model contract); see `loss_and_state`."""
        loss, grads, _ = self.loss_and_state(words_in, targets, mask, h0, c0, backward)
        return loss, grads

    def loss_and_state(
        self,
        words_in: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray | None = None,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
        backward: bool = True,
    ) -> tuple[np.floating, dict[str, np.ndarray], State]:
        """Mean cross-entropy per counted target, its gradients, and the final state.

        words_in: (N, T) int, the tokens read; targets: (N, T) int, the tokens to predict (usually words_in
        shifted by one); mask: (N, T) bool, which targets count (None: all); h0, c0: (N, H) state to start
        from (None: zeros).

            loss = −(1/K) Σ_{counted (n, t)} log P(targets[n, t] | words_in[n, :t+1], h0, c0)     K = #counted

        The mean PER TOKEN (not per caption, as in CaptionModel) is what perplexity is made of: exp(loss) is the
        chunk's perplexity. Returns (loss, grads, State(h_T, c_T)).

        Truncated BPTT: (h0, c0) are treated as constants. Pass the previous chunk's final state to continue
        a stream; no gradient flows back into that chunk (its graph is gone), so memory and the gradient path
        are bounded by this chunk's T steps. The returned state is a value, not part of any graph.
        """
        words_in, targets, mask, h0, c0 = self._check_inputs(words_in, targets, mask, h0, c0)
        p = self.params
        K = int(mask.sum())

        h, embed_cache, lstm_cache = self._forward(words_in, h0, c0)
        final = State(lstm_cache.h_last.copy(), lstm_cache.c_last.copy())
        # weight 1/K: the mean over the counted targets (the caption model uses 1/N: nats per caption).
        loss, vocab_grads = self.sequence.words_loss(
            h, targets, mask, p["W_vocab"], p["b_vocab"], 1.0 / max(K, 1), backward
        )
        if vocab_grads is None:
            return loss, {}, final

        grads: dict[str, np.ndarray] = {}
        dh, grads["W_vocab"], grads["b_vocab"] = vocab_grads
        # dh0, dc0 would flow into the previous chunk: truncated BPTT drops them here.
        dx, _dh0, _dc0, grads["Wx"], grads["Wh"], grads["b"] = self.sequence.lstm_backward(dh, lstm_cache)
        grads["W_embed"] = nn.word_embedding_backward(dx, embed_cache)
        return loss, grads, final

    def token_log_probs(
        self,
        words_in: np.ndarray,
        targets: np.ndarray,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
    ) -> tuple[np.ndarray, State]:
        """Forward only: log P(targets[n, t] | words_in[n, :t+1], h0, c0) at EVERY position, and the final state.

        words_in, targets: (N, T) int; h0, c0: (N, H) or None (zeros). Returns ((N, T) float64 natural-log
        probabilities, State(h_T, c_T)). For evaluation: where in a sequence the model is sure or unsure.
        """
        words_in, targets, _, h0, c0 = self._check_inputs(words_in, targets, None, h0, c0)
        N, T = words_in.shape
        h, _, lstm_cache = self._forward(words_in, h0, c0)
        scores = h.reshape(N * T, -1) @ self.params["W_vocab"] + self.params["b_vocab"]  # (N·T, V)
        # log P(target) = s_target − logsumexp(s), by log-sum-exp with the row maximum subtracted (as in
        # nn.softmax_loss), in ONE (N·T, V) buffer: only the target log-probabilities are needed, not all of them.
        rows = np.arange(N * T)
        row_max = scores.max(axis=1)
        target_score = scores[rows, targets.reshape(N * T)] - row_max
        scores -= row_max[:, None]
        np.exp(scores, out=scores)
        log_p = target_score.astype(np.float64) - np.log(scores.sum(axis=1, dtype=np.float64))
        return log_p.reshape(N, T), State(lstm_cache.h_last.copy(), lstm_cache.c_last.copy())

    def log_likelihood(
        self,
        words_in: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray | None = None,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
    ) -> tuple[CorpusScore, State]:
        """Forward only: Σ log P(target) over the counted targets (float64 sum), their number, the final state.

        Same arguments as `loss`. Used for evaluation (no caches for a backward pass are kept beyond the call).
        """
        words_in, targets, mask, h0, c0 = self._check_inputs(words_in, targets, mask, h0, c0)
        log_p, state = self.token_log_probs(words_in, targets, h0, c0)
        return CorpusScore(float(log_p[mask].sum()), int(mask.sum())), state

    def score(self, captions: np.ndarray, batch_size: int = 512, from_zeros: bool = False) -> CorpusScore:
        """Σ log P over every prediction of (M, L) padded caption rows, each caption read ON ITS OWN.

        Every caption starts from `caption_start_state` (or, with from_zeros, the zero state) with <START>, and
        its k + 1 predictions w1 … wk <END> are exactly those the n-gram models are scored on (`bigram_pairs`),
        so the perplexities are comparable: no model sees anything but the caption's own earlier words.
        Captions are batched by length (sorted) so that little time goes into padding.
        """
        captions = check_captions(captions, self.vocab_size)
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

    def step(self, words: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Read one token per row: words (N,) int, state (N, H) ×2 -> next-token scores (N, V), new state.
        The same `minicap.nn` step as training, so sampling sees exactly the trained network."""
        p = self.params
        x = p["W_embed"][np.asarray(words)]
        h, c, _ = nn.lstm_step_forward(x, state.h, state.c, p["Wx"], p["Wh"], p["b"])
        return h @ p["W_vocab"] + p["b_vocab"], State(h, c)


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
        yield StreamChunk(inputs[:, start : start + chunk_size], t, t != START)


class StreamDataset(Dataset):
    """A token stream as the Trainer reads it for truncated BPTT: N = batch_size parallel rows (`stream_chunks`),
    read k = `chunk` tokens at a time, IN ORDER, so that `CarriedState` can carry the state from chunk to chunk.

    stream: the (K,) token stream, or a function rng -> stream that makes a new one for every pass (captions:
        shuffle the rows, then `caption_stream`; a long text: the same text every pass).
    chunks_per_epoch: split each pass into Trainer epochs of this many chunks (a validation after each); None:
        one epoch is one whole pass. The epochs continue along the stream; once it is used up a new pass begins.
    max_chunks: use only the first `max_chunks` chunks of a pass (a short run on the start of every row).

    Each batch is (words_in (N, k), targets (N, k), mask (N, k), starts_pass): `starts_pass` is True for the first
    chunk of a pass, whose rows start afresh (the rows of a new pass do not continue the old ones).
    The position along the stream lives in this object: a run stopped mid-pass and resumed restarts the pass.
    """

    def __init__(
        self,
        stream: np.ndarray | Callable[[np.random.Generator], np.ndarray],
        chunk: int,
        chunks_per_epoch: int | None = None,
        max_chunks: int | None = None,
    ) -> None:
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        for name, value in (("chunks_per_epoch", chunks_per_epoch), ("max_chunks", max_chunks)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if callable(stream):
            self.make_stream = stream
        else:
            fixed = np.asarray(stream)
            self.make_stream = lambda rng: fixed
        self.chunk, self.chunks_per_epoch, self.max_chunks = int(chunk), chunks_per_epoch, max_chunks
        self.tokens = self.make_stream(np.random.default_rng(0)).size  # the same every pass: only the order changes
        self._pass: list[StreamChunk] = []
        self._next = 0  # the next chunk of the pass in progress

    def __len__(self) -> int:
        return self.tokens - 1  # every stream position but the last is an input with a target

    def chunks_per_pass(self, batch_size: int) -> int:
        per_pass = -(-((self.tokens - 1) // batch_size) // self.chunk)
        return per_pass if self.max_chunks is None else min(per_pass, self.max_chunks)

    def batches_per_epoch(self, batch_size: int) -> int:
        per_pass = self.chunks_per_pass(batch_size)
        return per_pass if self.chunks_per_epoch is None else min(per_pass, self.chunks_per_epoch)

    def epoch(self, rng: np.random.Generator, batch_size: int) -> list[tuple[int, bool]]:
        if self._next >= len(self._pass):  # a new pass: a new stream, rows from its start
            stream = self.make_stream(rng)
            self._pass = list(stream_chunks(stream, batch_size, self.chunk))[: self.chunks_per_pass(batch_size)]
            self._next = 0
        keys = [(j, j == 0) for j in range(self._next, min(self._next + self.batches_per_epoch(batch_size),
                                                           len(self._pass)))]  # fmt: skip
        self._next += len(keys)
        return keys

    def batch(self, key: tuple[int, bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        j, starts_pass = key
        piece = self._pass[j]
        return piece.words_in, piece.targets, piece.mask, starts_pass


class CarriedState:
    """The Trainer's loss_fn for truncated BPTT over a `StreamDataset`.

    carry=True: a chunk starts from the state the previous chunk ENDED in (each pass from zeros). Forward, the
        rows are read as one long sequence; `loss_and_state` treats the carried state as a constant, so the
        gradient stops at the chunk's first step (the truncation).
    carry=False: every chunk starts from zeros, as if the chunks were unrelated sequences — the comparison that
        shows what carrying the state is worth.
    """

    def __init__(self, carry: bool = True) -> None:
        self.carry = bool(carry)
        self.state: State | None = None
        self.tokens = 0  # counted (predicted) tokens seen

    def __call__(self, model: LSTMLanguageModel, batch: tuple) -> tuple[np.floating, dict[str, np.ndarray]]:
        words_in, targets, mask, starts_pass = batch
        if starts_pass or self.state is None or not self.carry:
            self.state = model.initial_state(len(words_in))
        loss, grads, self.state = model.loss_and_state(words_in, targets, mask, self.state.h, self.state.c)
        self.tokens += int(mask.sum())
        return loss, grads


def stream_log_probs(
    model: LSTMLanguageModel, stream: np.ndarray, rows: int = 64, chunk: int = 250, reset_every: int | None = None
) -> np.ndarray:
    """log P of every token of a held-out stream read as `rows` parallel rows (`stream_chunks`): (rows, L) float64.

    Every row is read from zeros as ONE sequence, the state carried from chunk to chunk (chunk: only how many
    steps are computed at once; it does not change the numbers) — or, with reset_every = R, restarted from zeros
    every R tokens, so that no prediction sees more than R tokens of its past. Column j of the result is the
    j-th prediction of each row; with reset_every = R, column j has seen j mod R earlier tokens of its row.
    A target that is never predicted (the <START> after an <END> in a caption stream) is NaN.
    """
    if reset_every is not None and int(reset_every) < 1:
        raise ValueError(f"reset_every must be >= 1 or None, got {reset_every}")
    step = chunk if reset_every is None else int(reset_every)
    out, state = [], model.initial_state(rows)
    for piece in stream_chunks(np.asarray(stream), rows, step):
        if reset_every is not None:
            state = model.initial_state(rows)
        log_p, state = model.token_log_probs(piece.words_in, piece.targets, state.h, state.c)
        out.append(np.where(piece.mask, log_p, np.nan))
    return np.concatenate(out, axis=1)

"""Turning a trained CaptionModel into captions: greedy decoding, temperature sampling, beam search.

All three decoders talk to the model through two calls only:

    state = model.initial_state(features)          features (N, F) -> the state before the first word
    logits, state = model.step(words, state)       words (N,) -> next-word scores (N, V) and the new state

(the model contract, `minicap.models.base`), so they work for any cell and never see the model's internals.
Every decoder starts each caption with <START> and feeds back the word it chose.

Conventions shared by the decoders:

* A model whose state has an `alpha` field (the attention captioner, `minicap.models.attention`) reports where it
  looked for each word; `greedy(..., return_attention=True)` and `beam_search(..., return_attention=True)` return
  those maps with the words, and beam search keeps every hypothesis' maps, reordered with its tokens.
* `max_length` is the most tokens generated per caption, <END> included: a caption is either k < max_length words
  followed by <END>, or max_length words cut off there (no <END>).
* The result is an int32 array (N, max_length): the generated ids, then <NULL> (= 0) after <END>.
  `decode_captions(ids, vocab)` turns it into text.
* A decoder writes only `minicap.tokens.decodable_tokens`: never <NULL> or <START> (they are not words), and by
  default not <UNK> either (`allow_unk=True` permits it). The other tokens' logits are set to −∞ before the softmax,
  so the probabilities are renormalised over the tokens a caption may contain. Log-probabilities reported here
  (`beam_search(..., return_scores=True)`, `caption_log_probs`) are under that renormalised distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from minicap.models.base import State
from minicap.nn import log_softmax
from minicap.text import Vocabulary
from minicap.tokens import END, NULL, START, decodable_tokens

__all__ = [
    "Decodable",
    "greedy",
    "sample",
    "sample_from_state",
    "sample_language_model",
    "beam_search",
    "BeamStep",
    "length_penalty_factor",
    "caption_log_probs",
    "decode_captions",
    "generate_captions",
]


class StartsCaptions(Protocol):
    """What `sample_language_model` needs: a vocabulary size, the state a caption starts from, and one step."""

    vocab_size: int

    def caption_start_state(self, N: int) -> State: ...

    def step(self, words: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...


class Decodable(Protocol):
    """What a decoder needs of a model: its vocabulary size, its state before the first word, and one step."""

    vocab_size: int

    def initial_state(self, features: np.ndarray) -> State: ...

    def step(self, words: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...


def _check_args(model: Decodable, features: np.ndarray, max_length: int) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim not in (2, 3):
        raise ValueError(f"features must be (N, F) (or annotations (N, L, F)), got shape {features.shape}")
    if int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be an integer >= 1, got {max_length}")
    return features


def _masked_log_probs(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(N, V) logits -> (N, V) float64 log-probabilities over the allowed tokens (−∞ elsewhere).

    float64: beam search adds these up over many steps and compares the sums.
    Computed in blocks of rows (~1 MB each) so that the seven passes of each block run in the core's cache; every
    row goes through the same operations as `log_softmax` of the whole array: the same numbers, bit for bit.
    """
    out = np.empty(logits.shape, dtype=np.float64)
    rows = max(1, (1 << 17) // max(1, logits.shape[1]))
    for r in range(0, logits.shape[0], rows):
        out[r : r + rows] = log_softmax(np.where(allowed, logits[r : r + rows].astype(np.float64), -np.inf), axis=1)
    return out


# --------------------------------------------------------------------------------------------------- greedy


def greedy(
    model: Decodable,
    features: np.ndarray,
    max_length: int = 20,
    allow_unk: bool = False,
    return_attention: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The most likely next word at every step: features (N, F) -> ids (N, max_length) int32.

    Fast and deterministic, but short-sighted: a likely first word can lead to a caption that is less likely
    overall than one starting with a less likely word (beam search looks further).
    return_attention: also return (N, max_length, L) float64, the attention map of every generated token (0 after
    the caption's <END>); the model's state must carry `alpha`.
    """
    features = _check_args(model, features, max_length)
    N = features.shape[0]
    allowed = decodable_tokens(model.vocab_size, allow_unk)
    ids = np.full((N, max_length), NULL, dtype=np.int32)
    words = np.full(N, START, dtype=np.int64)
    done = np.zeros(N, dtype=bool)
    state = model.initial_state(features)
    maps = _attention_buffer(state, (N, max_length), return_attention)
    for t in range(max_length):
        logits, state = model.step(words, state)
        words = np.where(allowed, logits, -np.inf).argmax(axis=1)
        words[done] = NULL  # a finished caption is padded (its row is still computed: simpler, and cheap)
        ids[:, t] = words
        if maps is not None:
            maps[:, t] = np.where(done[:, None], 0.0, state.alpha)  # type: ignore[attr-defined]
        done |= words == END
        if done.all():
            break
    return ids if maps is None else (ids, maps)


def _attention_buffer(state: tuple, shape: tuple[int, ...], wanted: bool) -> np.ndarray | None:
    """Zeros of shape (*shape, L) for the attention maps, when wanted (the model's state must carry `alpha`)."""
    if not wanted:
        return None
    alpha = getattr(state, "alpha", None)
    if alpha is None:
        raise ValueError("return_attention needs a model that attends (its state has no `alpha`)")
    return np.zeros((*shape, alpha.shape[1]))


# --------------------------------------------------------------------------------------------------- sampling


def sample(
    model: Decodable,
    features: np.ndarray,
    temperature: float = 1.0,
    rng: np.random.Generator | int | None = None,
    max_length: int = 20,
    allow_unk: bool = False,
) -> np.ndarray:
    """Draw each next word at random from softmax(logits / temperature): features (N, F) -> ids (N, max_length).

    temperature: > 0. 1 samples from the model's own distribution; below 1 sharpens it (→ 0 approaches greedy
        decoding); above 1 flattens it (more varied, more mistakes). Use `greedy` for temperature 0.
    rng: a Generator, or a seed for one. The same seed gives the same captions.
    """
    features = _check_args(model, features, max_length)
    return sample_from_state(
        model.step, model.initial_state(features), model.vocab_size, temperature, rng, max_length, allow_unk
    )


def sample_from_state(
    step: Callable[[np.ndarray, State], tuple[np.ndarray, State]],
    state: State,
    vocab_size: int,
    temperature: float = 1.0,
    rng: np.random.Generator | int | None = None,
    max_length: int = 20,
    allow_unk: bool = False,
    first_words: np.ndarray | None = None,
) -> np.ndarray:
    """The sampling loop of `sample`, for any model with `logits, state = step(words, state)`: from `state`
    (a batch of N sequences, each about to read <START>) -> ids (N, max_length). The caption model starts from
    its image; the language model (minicap.models.language) starts from its caption-start state.

    first_words: (N,) the tokens read first instead of <START> (a character model continuing a text: the last
    character of the text it has read, with `state` the state that reading left).
    """
    temperature = float(temperature)
    if not (np.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be a finite number > 0 (use greedy() for temperature 0), got {temperature}")
    if int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be an integer >= 1, got {max_length}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    N = len(state[0])
    allowed = decodable_tokens(vocab_size, allow_unk)
    ids = np.full((N, max_length), NULL, dtype=np.int32)
    words = np.full(N, START, dtype=np.int64) if first_words is None else np.asarray(first_words, dtype=np.int64)
    if words.shape != (N,):
        raise ValueError(f"first_words must have shape ({N},), got {words.shape}")
    done = np.zeros(N, dtype=bool)
    for t in range(max_length):
        logits, state = step(words, state)
        probs = np.exp(_masked_log_probs(logits.astype(np.float64) / temperature, allowed))  # (N, V)
        # Inverse-CDF sampling, all rows at once: the first token whose cumulative probability exceeds u ~ U[0, 1).
        # Dividing by the last entry makes it exactly 1 > u, so the answer is always a token of probability > 0
        # (never one the mask removed, whatever the rounding of the sum).
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        words = (cdf <= rng.random((N, 1))).sum(axis=1)
        words[done] = NULL
        ids[:, t] = words
        done |= words == END
        if done.all():
            break
    return ids


def sample_language_model(
    model: StartsCaptions,
    num_samples: int,
    temperature: float = 1.0,
    rng: np.random.Generator | int | None = None,
    max_length: int = 30,
    allow_unk: bool = False,
) -> np.ndarray:
    """Captions written from nothing by a language model (minicap.models.language.LSTMLanguageModel): start at its
    `caption_start_state` with <START>, draw every next token from softmax(scores / temperature), feed it back,
    stop at <END> — the captioner's sampling loop (`sample_from_state`), from another starting state.

    Returns (num_samples, max_length) int32: tokens up to and including <END>, then <NULL>.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"need num_samples ≥ 1, got {num_samples}")
    start = model.caption_start_state(int(num_samples))
    return sample_from_state(model.step, start, model.vocab_size, temperature, rng, max_length, allow_unk)


# --------------------------------------------------------------------------------------------------- beam search


def length_penalty_factor(lengths: np.ndarray, alpha: float) -> np.ndarray:
    """GNMT's length penalty lp(len) = ((5 + len) / 6) ** alpha (Wu et al. 2016, eq. 14).

    A hypothesis is ranked by log P(caption) / lp(len), len = tokens generated (<END> included). Every log P is
    negative and longer captions have more terms, so the plain sum favours short captions; dividing by lp(len)
    undoes part of that. alpha = 0 gives lp = 1 (rank by probability alone); GNMT used alpha ≈ 0.6–0.7.
    """
    return ((5.0 + np.asarray(lengths, dtype=np.float64)) / 6.0) ** alpha


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row of (N, M) `scores`, largest first: (N, k).

    argpartition finds the k best in O(M) per row, then only those k are sorted (a full sort of the B·V
    candidates measured ~15x slower: ~1 s per step for 200 images, B = 3, V = 10,000). Equal scores among the k
    are ordered by index; which of several entries tied for the k-th place is kept is argpartition's choice.
    k = 1 is argmax, the first maximum, exactly as greedy decoding picks.
    """
    if k == 1:
        return scores.argmax(axis=1)[:, None]
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # the k best, in no particular order
    order = np.lexsort((top, -np.take_along_axis(scores, top, axis=1)), axis=1)  # by score, then index
    return np.take_along_axis(top, order, axis=1)


def _expand_all(
    logits: np.ndarray, scores: np.ndarray, finished: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of beam search, as its definition reads: score every continuation, keep the B best.

    logits (N·B, V) of the hypotheses' next words; scores (N, B) their summed log-probabilities; finished (N, B).
    Returns (new scores, parent, word), each (N, B), best first: candidate b' of image n extends hypothesis
    parent[n, b'] with word[n, b'].
    """
    N, B = scores.shape
    V = logits.shape[1]
    log_p = _masked_log_probs(logits, allowed).reshape(N, B, V)
    log_p[finished] = -np.inf  # a finished hypothesis continues only with <NULL>, at no cost
    log_p[finished, NULL] = 0.0
    candidates = (scores[:, :, None] + log_p).reshape(N, B * V)  # all B·V continuations of each image
    best = _top_k(candidates, B)  # (N, B) indices into B·V, best first
    return np.take_along_axis(candidates, best, axis=1), best // V, best % V


def _top_words(logits: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable allowed words of each row: (ids (R, k) int64, log-probabilities (R, k) float64).

    The log-probabilities are `_masked_log_probs`' numbers bit for bit (the same float64 operations on the same
    blocks of rows), but only k of every row's V are kept: one pass finds the row's maximum, one its normaliser
    Σ exp(x − max), and k passes of argmax (the first maximum: ties go to the lower id) pick the words, without
    writing the (R, V) array of log-probabilities that `_expand_all` then scans.
    """
    R, V = logits.shape
    ids = np.empty((R, k), dtype=np.int64)
    log_p = np.empty((R, k), dtype=np.float64)
    rows = max(1, (1 << 17) // max(1, V))  # the same blocks as _masked_log_probs: the same sums, bit for bit
    use_argmax = k <= 4  # k argmax passes beat one argpartition for small k (else argpartition); needs k < allowed
    for r in range(0, R, rows):
        shifted = np.where(allowed, logits[r : r + rows].astype(np.float64), -np.inf)
        shifted -= shifted.max(axis=1, keepdims=True)  # x − max: ≤ 0, the best word at 0
        if use_argmax:
            n = np.arange(shifted.shape[0])
            picked = np.empty((shifted.shape[0], k), dtype=np.int64)
            values = np.empty((shifted.shape[0], k))
            for j in range(k):
                picked[:, j] = shifted.argmax(axis=1)
                values[:, j] = shifted[n, picked[:, j]]
                shifted[n, picked[:, j]] = -np.inf  # out of the next pass (restored before the normaliser)
            shifted[n[:, None], picked] = values
        else:
            picked = _top_k(shifted, k)
            values = np.take_along_axis(shifted, picked, axis=1)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        ids[r : r + rows] = picked
        log_p[r : r + rows] = values - log_norm
    return ids, log_p


def _expand_pruned(
    logits: np.ndarray, scores: np.ndarray, finished: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_expand_all`'s answer from B·B candidates instead of B·V (the fast path of beam search).

    The B best continuations of an image never use a word outside the B best of its hypothesis: a hypothesis'
    (B+1)-th word is beaten by its own B better words. So each hypothesis offers only its B best words
    (`_top_words`), and the B best of those B·B candidates are the B best of all B·V. Ties are broken as
    `_expand_all` breaks them, by the candidate's index parent·V + word.
    """
    N, B = scores.shape
    V = logits.shape[1]
    words, log_p = _top_words(logits, allowed, B)
    words, log_p = words.reshape(N, B, B), log_p.reshape(N, B, B)
    words[finished] = NULL  # a finished hypothesis offers one continuation: <NULL>, at no cost
    log_p[finished] = -np.inf
    log_p[finished, 0] = 0.0
    candidates = (scores[:, :, None] + log_p).reshape(N, B * B)
    index = (np.arange(B)[None, :, None] * V + words).reshape(N, B * B)  # parent·V + word, as in _expand_all
    best = np.lexsort((index, -candidates), axis=1)[:, :B]
    best_index = np.take_along_axis(index, best, axis=1)
    return np.take_along_axis(candidates, best, axis=1), best_index // V, best_index % V


class BeamStep(NamedTuple):
    """The beam after one step of `beam_search` (what `trace` collects): for image n, hypothesis b (best first)."""

    tokens: np.ndarray  # (N, B, t + 1) int32: the tokens so far (<NULL> after an <END>)
    scores: np.ndarray  # (N, B) float64: log P of those tokens, summed
    word_log_probs: np.ndarray  # (N, B) float64: log P of the token this step added (0 once finished)
    parents: np.ndarray  # (N, B) int: which hypothesis of the previous step each one extends
    finished: np.ndarray  # (N, B) bool: has emitted <END>
    alphas: np.ndarray | None = None  # (N, B, t + 1, L): each hypothesis' attention maps (attending models only)


def beam_search(
    model: Decodable,
    features: np.ndarray,
    beam_size: int = 3,
    max_length: int = 20,
    length_penalty: float = 0.0,
    allow_unk: bool = False,
    return_scores: bool = False,
    trace: list[BeamStep] | None = None,
    return_attention: bool = False,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Keep the `beam_size` most probable partial captions at every step; return the best finished one per image.

    features (N, F) -> ids (N, max_length) int32; with `return_scores`, also (N,) float64 total log-probabilities
    log P(caption) of the returned captions (not length-normalised).

    All images are searched together: the N·B hypotheses (B = beam_size) are the rows of one `model.step` call.
    At each step, for image n with hypotheses b = 1..B of scores s_b (summed log-probabilities so far):

        candidates  s_b + log p(w | hypothesis b)    for every b and every allowed word w   (B·V of them)
        keep        the B best candidates; their words extend their hypotheses, their states are gathered

    A hypothesis that has emitted <END> stays in the beam with its score frozen (its only continuation is <NULL>
    at cost 0), so it competes with the unfinished ones by plain log-probability. The search stops when every
    hypothesis has ended or after `max_length` tokens. The answer is the hypothesis with the best
    score / lp(len), lp = `length_penalty_factor` with alpha = `length_penalty`; with alpha = 0 that is the most
    probable hypothesis found. beam_size = 1 is greedy decoding.

    At the first step all B hypotheses would be the same "<START>", so only one starts with score 0 (the others
    −∞) and the first B candidates are B different words.

    The step above is `_expand_all`, used when `model.fast` is False. The fast path, `_expand_pruned`, gets the same
    B best from B·B candidates (each hypothesis offers only its own B best words) and never writes the (N·B, V)
    log-probabilities: measured 2.1x faster at V = 10,000 (256 images, B = 3, 1 thread), the same beams bit for bit.

    trace: a list to which every step appends its beam (a `BeamStep`), to watch the search (lesson 06).
    return_attention: also return (N, max_length, L), the attention maps of the returned captions' tokens (0 after
        <END>), after the scores if those are asked for too. Every hypothesis keeps its own maps: they are reordered
        with its tokens at every step (and are in the trace).
    """
    if int(beam_size) != beam_size or beam_size < 1:
        raise ValueError(f"beam_size must be an integer >= 1, got {beam_size}")
    if not np.isfinite(length_penalty) or length_penalty < 0:
        raise ValueError(f"length_penalty (alpha) must be a finite number >= 0, got {length_penalty}")
    features = _check_args(model, features, max_length)
    N, B, V = features.shape[0], int(beam_size), model.vocab_size
    allowed = decodable_tokens(V, allow_unk)

    state = model.initial_state(features)
    remake = type(state)  # State, or a model's own state type (the attention captioner's carries α and a)
    state = remake(*(None if s is None else np.repeat(s, B, axis=0) for s in state))  # rows n·B + b
    # A state's fields are reordered with the hypotheses at every step, except those a state type declares the
    # same for every hypothesis of an image (`per_image`: the attention captioner's annotations and their
    # projection, (N·B, L, F) — a gather of them cost more than the rest of its step, and changes nothing).
    fields, per_image = state._fields, getattr(remake, "per_image", ())
    keep_maps = return_attention or (trace is not None and getattr(state, "alpha", None) is not None)
    maps = _attention_buffer(state, (N, B, max_length), keep_maps)
    words = np.full(N * B, START, dtype=np.int64)
    tokens = np.full((N, B, max_length), NULL, dtype=np.int32)
    scores = np.full((N, B), -np.inf)
    scores[:, 0] = 0.0
    lengths = np.zeros((N, B), dtype=np.int64)
    finished = np.zeros((N, B), dtype=bool)
    image = np.arange(N)[:, None]
    # The fast path's B·B candidates need B < the allowed words; both give the same beams (tests/test_decode.py).
    expand = _expand_pruned if getattr(model, "fast", True) and B < allowed.sum() else _expand_all

    for t in range(max_length):
        logits, state = model.step(words, state)
        new_scores, parent, word = expand(logits, scores, finished, allowed)  # (N, B) each, best first
        previous = scores[image, parent]
        scores = new_scores
        tokens = tokens[image, parent]  # each new hypothesis copies its parent's tokens...
        tokens[:, :, t] = word  # ...and adds its word
        was_finished = finished[image, parent]
        if maps is not None:  # ... and its maps, plus the map its parent's row used for this word
            alpha = state.alpha.reshape(N, B, -1)[image, parent]  # type: ignore[attr-defined]
            maps = maps[image, parent]
            maps[:, :, t] = np.where(was_finished[:, :, None], 0.0, alpha)
        lengths = lengths[image, parent] + ~was_finished
        finished = was_finished | (word == END)
        if trace is not None:
            word_log_p = np.where(np.isfinite(scores), scores - np.where(np.isfinite(previous), previous, 0.0), -np.inf)
            step_maps = None if maps is None else maps[:, :, : t + 1].copy()
            trace.append(
                BeamStep(tokens[:, :, : t + 1].copy(), scores.copy(), word_log_p, parent, finished.copy(), step_maps)
            )
        rows = (image * B + parent).reshape(-1)
        state = remake(
            *(s if s is None or name in per_image else s[rows] for name, s in zip(fields, state, strict=True))
        )
        words = word.reshape(-1)
        if finished.all():
            break

    ranked = scores / length_penalty_factor(np.maximum(lengths, 1), length_penalty)
    choice = ranked.argmax(axis=1)
    ids = tokens[np.arange(N), choice]
    out: tuple[np.ndarray, ...] = (ids,)
    if return_scores:
        out += (scores[np.arange(N), choice],)
    if return_attention:
        assert maps is not None
        out += (maps[np.arange(N), choice],)
    return out if len(out) > 1 else ids


# --------------------------------------------------------------------------------------------------- scoring, text


def caption_log_probs(model: Decodable, features: np.ndarray, ids: np.ndarray, allow_unk: bool = False) -> np.ndarray:
    """log P(caption | image) of given captions under the decoders' distribution: (N, F), (N, L) -> (N,) float64.

    ids as the decoders return them: tokens up to and including the first <END>, then <NULL>. The sum covers
    the tokens before the first <NULL> (so <END> counts). A token a decoder may not emit scores −∞.
    """
    features = np.asarray(features)
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[0] != features.shape[0]:
        raise ValueError(f"ids must be (N, L) with N = {features.shape[0]}, got {ids.shape}")
    allowed = decodable_tokens(model.vocab_size, allow_unk)
    total = np.zeros(ids.shape[0])
    active = np.ones(ids.shape[0], dtype=bool)  # still inside the caption
    words = np.full(ids.shape[0], START, dtype=np.int64)
    state = model.initial_state(features)
    for t in range(ids.shape[1]):
        target = ids[:, t].astype(np.int64)
        active &= target != NULL
        if not active.any():
            break
        logits, state = model.step(words, state)
        log_p = _masked_log_probs(logits, allowed)
        total += np.where(active, log_p[np.arange(len(target)), target], 0.0)
        active &= target != END
        words = target
    return total


def decode_captions(ids: np.ndarray, vocab: Vocabulary) -> list[str]:
    """(N, L) ids -> N caption strings (stops at <END>, skips <NULL>/<START>; see `Vocabulary.decode`)."""
    return [vocab.decode(row) for row in np.asarray(ids)]


def generate_captions(
    model: Decodable,
    vocab: Vocabulary,
    features: np.ndarray,
    beam_size: int = 1,
    max_length: int = 17,
    allow_unk: bool = False,
    length_penalty: float = 0.0,
    batch_size: int = 256,
) -> list[str]:
    """Captions for images with features (N, F): greedy when beam_size = 1, else beam search. N strings."""
    out: list[str] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        if beam_size == 1:
            ids = greedy(model, chunk, max_length=max_length, allow_unk=allow_unk)
        else:
            ids = beam_search(
                model, chunk, beam_size, max_length=max_length, length_penalty=length_penalty, allow_unk=allow_unk
            )
        out.extend(decode_captions(ids, vocab))
    return out

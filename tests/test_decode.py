"""Decoders: greedy, temperature sampling and beam search against hand-built models whose answers are known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from minicap.decode import (
    BeamStep,
    beam_search,
    caption_log_probs,
    decode_captions,
    generate_captions,
    greedy,
    length_penalty_factor,
    sample,
    sample_from_state,
)
from minicap.models import CaptionModel, State
from minicap.nn import log_softmax
from minicap.text import Vocabulary
from minicap.tokens import END, NULL, START, UNK, decodable_tokens

A, B = 4, 5  # the two words of the hand-built vocabulary: <NULL> <START> <END> <UNK> a b
V_SMALL = 6
MASKED = -30.0  # a logit for tokens the decoders mask anyway (<NULL>, <START>, <UNK>)


def bigram_model(probs: dict[int, dict[int, float]]) -> tuple[CaptionModel, np.ndarray]:
    """A CaptionModel whose next-word logits depend only on the previous token: logits(prev) = L[prev].

    RNN cell with one-hot word vectors, Wx = I, Wh = 0, b = 0: h = tanh(e_prev) = tanh(1)·e_prev, so
    h @ W_vocab = L[prev] when W_vocab = L / tanh(1). `probs[prev]` gives the next-token probabilities over
    <END>, a, b; the image does not matter (W_proj = 0). Returns the model and L (V, V).
    """
    L = np.full((V_SMALL, V_SMALL), MASKED)
    for prev, row in probs.items():
        for tok, p in row.items():
            L[prev, tok] = np.log(p)
    model = CaptionModel(
        V_SMALL, feature_size=3, wordvec_size=V_SMALL, hidden_size=V_SMALL, cell="rnn", dtype=np.float64
    )
    p = model.params
    p["W_embed"][:] = np.eye(V_SMALL)
    p["Wx"][:] = np.eye(V_SMALL)
    p["Wh"][:] = 0.0
    p["b"][:] = 0.0
    p["W_proj"][:] = 0.0
    p["b_proj"][:] = 0.0
    p["W_vocab"][:] = L / np.tanh(1.0)
    p["b_vocab"][:] = 0.0
    return model, L


def brute_force(L: np.ndarray, max_length: int, alpha: float = 0.0) -> tuple[tuple[int, ...], float]:
    """Best caption over ALL captions of up to `max_length` tokens by log P / lp(len), straight from L.

    A caption is k < max_length words then <END>, or max_length words (cut off). Log-probabilities are over the
    allowed tokens (<END>, a, b), as the decoders define them. Returns (tokens, total log P).
    """
    allowed = [END, A, B]
    log_p = log_softmax(L[:, allowed], axis=1)  # (V, 3) renormalised over the allowed tokens
    col = {tok: k for k, tok in enumerate(allowed)}
    best, best_ranked, best_logp = None, -np.inf, None
    captions = [[*words, END] for k in range(max_length) for words in itertools.product([A, B], repeat=k)]
    captions += [list(words) for words in itertools.product([A, B], repeat=max_length)]  # cut off, no <END>
    for caption in captions:
        prev, total = START, 0.0
        for tok in caption:
            total += log_p[prev, col[tok]]
            prev = tok
        ranked = total / length_penalty_factor(np.array(len(caption)), alpha)
        if ranked > best_ranked:
            best, best_ranked, best_logp = tuple(caption), ranked, total
    return best, best_logp


def _tokens(row: np.ndarray) -> tuple[int, ...]:
    """The generated tokens of one output row (up to the first <NULL>)."""
    row = [int(t) for t in row]
    return tuple(row[: row.index(NULL)] if NULL in row else row)


# A model where greedy decoding goes wrong: "a" is the likelier first word, but after "a" every continuation is
# a coin toss, while "b" is almost always followed by <END>. Best caption: "b <END>" (0.4 · 0.9 = 0.36).
GREEDY_TRAP = {
    START: {A: 0.5, B: 0.4, END: 0.1},
    A: {A: 0.34, B: 0.33, END: 0.33},
    B: {END: 0.9, A: 0.05, B: 0.05},
}


def random_model(cell: str = "lstm", V: int = 15, seed: int = 0) -> CaptionModel:
    """A random (untrained) model with spread-out logits, so decoders have real choices to make."""
    model = CaptionModel(V, feature_size=6, wordvec_size=5, hidden_size=8, cell=cell, dtype=np.float64, seed=seed)
    model.params["W_vocab"] *= 4.0
    return model


def test_beam_search_finds_the_best_caption_that_greedy_misses():
    model, L = bigram_model(GREEDY_TRAP)
    features = np.zeros((1, 3))
    max_length = 4
    greedy_ids = greedy(model, features, max_length=max_length)
    beam_ids, beam_logp = beam_search(model, features, beam_size=2, max_length=max_length, return_scores=True)
    best, best_logp = brute_force(L, max_length)

    assert _tokens(greedy_ids[0]) == (A, A, A, A)  # greedy follows the likeliest first word and never ends
    assert _tokens(beam_ids[0]) == best == (B, END)
    greedy_logp = caption_log_probs(model, features, greedy_ids)[0]
    assert beam_logp[0] > greedy_logp + 2.0  # log 0.36 ≈ −1.02 against log(0.5·0.34³) ≈ −3.93
    assert beam_logp[0] == pytest.approx(best_logp, abs=1e-9)
    assert caption_log_probs(model, features, beam_ids)[0] == pytest.approx(beam_logp[0], abs=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.7, 3.0])
def test_exhaustive_beam_equals_brute_force_under_length_normalisation(alpha):
    # "b <END>" is the most probable caption; longer ones are less probable in total but better per token.
    probs = {
        START: {A: 0.45, B: 0.5, END: 0.05},
        A: {A: 0.7, B: 0.05, END: 0.25},
        B: {END: 0.6, A: 0.2, B: 0.2},
    }
    model, L = bigram_model(probs)
    features = np.zeros((1, 3))
    # 3 + 9 + 27 + 81 hypotheses at most: a beam of 128 keeps all of them, so the search is exhaustive.
    ids, logp = beam_search(model, features, beam_size=128, max_length=4, length_penalty=alpha, return_scores=True)
    best, best_logp = brute_force(L, 4, alpha)
    assert _tokens(ids[0]) == best
    assert logp[0] == pytest.approx(best_logp, abs=1e-9)


def test_length_penalty_changes_the_answer_towards_longer_captions():
    probs = {
        START: {A: 0.45, B: 0.5, END: 0.05},
        A: {A: 0.7, B: 0.05, END: 0.25},
        B: {END: 0.6, A: 0.2, B: 0.2},
    }
    model, _ = bigram_model(probs)
    features = np.zeros((1, 3))
    plain = _tokens(beam_search(model, features, beam_size=8, max_length=6, length_penalty=0.0)[0])
    normalised = _tokens(beam_search(model, features, beam_size=8, max_length=6, length_penalty=3.0)[0])
    assert plain == (B, END)
    assert len(normalised) > len(plain)
    assert length_penalty_factor(np.array([1, 4]), 0.0).tolist() == [1.0, 1.0]
    assert length_penalty_factor(np.array(7), 1.0) == pytest.approx(2.0)  # ((5 + 7) / 6)^1


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_beam_size_one_is_greedy(cell, rng):
    model = random_model(cell)
    features = rng.standard_normal((12, 6))
    np.testing.assert_array_equal(beam_search(model, features, beam_size=1, max_length=9), greedy(model, features, 9))


def test_batched_beam_search_equals_one_image_at_a_time(rng):
    model = random_model("lstm", seed=3)
    features = rng.standard_normal((5, 6))
    together, scores = beam_search(model, features, beam_size=4, max_length=8, length_penalty=0.6, return_scores=True)
    for n in range(5):
        alone, score = beam_search(model, features[n : n + 1], 4, 8, length_penalty=0.6, return_scores=True)
        np.testing.assert_array_equal(together[n], alone[0])
        assert scores[n] == pytest.approx(score[0], abs=1e-12)


def test_outputs_have_fixed_shape_and_pad_after_end(rng):
    model = random_model("rnn", seed=1)
    features = rng.standard_normal((20, 6))
    for ids in (
        greedy(model, features, max_length=7),
        sample(model, features, temperature=1.5, rng=0, max_length=7),
        beam_search(model, features, beam_size=3, max_length=7),
    ):
        assert ids.shape == (20, 7) and ids.dtype == np.int32
        for row in ids:
            ends = np.flatnonzero(row == END)
            if ends.size:  # everything after the first <END> is <NULL>, and nothing before it is
                assert np.all(row[ends[0] + 1 :] == NULL)
                assert np.all(row[: ends[0]] != NULL)
            else:
                assert np.all(row != NULL)  # cut off at max_length: all words
            assert not np.any(row == START)


def test_unk_is_never_emitted_by_default_even_when_it_is_the_likeliest_token(rng):
    model = random_model("lstm")
    model.params["b_vocab"][UNK] = 50.0  # <UNK> dominates every step
    features = rng.standard_normal((10, 6))
    for ids in (
        greedy(model, features, 6),
        sample(model, features, temperature=2.0, rng=1, max_length=6),
        beam_search(model, features, beam_size=3, max_length=6),
    ):
        assert not np.any(ids == UNK)
    assert np.all(greedy(model, features, 6, allow_unk=True) == UNK)
    assert np.all(beam_search(model, features, 2, 6, allow_unk=True) == UNK)


def test_null_and_start_are_never_emitted_even_when_likeliest(rng):
    model = random_model("rnn")
    model.params["b_vocab"][[NULL, START]] = 50.0
    features = rng.standard_normal((10, 6))
    ids = sample(model, features, temperature=1.0, rng=0, max_length=6)
    assert not np.any(ids == START)
    for row in ids:  # <NULL> only as padding after <END>
        generated = _tokens(row)
        assert NULL not in generated and (len(generated) == 6 or generated[-1] == END)
    assert not np.any(greedy(model, features, 6) == START)


def test_sampling_follows_the_model_distribution():
    model, L = bigram_model(GREEDY_TRAP)
    features = np.zeros((20000, 3))
    first = sample(model, features, temperature=1.0, rng=7, max_length=1)[:, 0]
    freq = np.bincount(first, minlength=V_SMALL) / len(first)
    # Sampling std of a frequency near 0.5 with 20000 draws is 0.0035; 0.02 is over 5 standard deviations.
    np.testing.assert_allclose(freq[[END, A, B]], [0.1, 0.5, 0.4], atol=0.02)
    # Temperature 2 flattens: p ∝ p^(1/2).
    hot = sample(model, features, temperature=2.0, rng=7, max_length=1)[:, 0]
    expected = np.sqrt([0.1, 0.5, 0.4])
    np.testing.assert_allclose(
        np.bincount(hot, minlength=V_SMALL)[[END, A, B]] / 20000, expected / expected.sum(), atol=0.02
    )


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_sampling_at_temperature_near_zero_is_greedy(cell, rng):
    model = random_model(cell, seed=5)
    features = rng.standard_normal((30, 6))
    np.testing.assert_array_equal(
        sample(model, features, temperature=1e-8, rng=0, max_length=8), greedy(model, features, 8)
    )
    # ...while at temperature 1 the samples differ from greedy somewhere, and the same seed repeats them.
    warm = sample(model, features, temperature=1.0, rng=0, max_length=8)
    assert np.any(warm != greedy(model, features, 8))
    np.testing.assert_array_equal(warm, sample(model, features, temperature=1.0, rng=0, max_length=8))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_is_validated(temperature):
    model = random_model()
    with pytest.raises(ValueError, match="temperature"):
        sample(model, np.zeros((1, 6)), temperature=temperature, rng=0)


def test_argument_validation():
    model = random_model()
    with pytest.raises(ValueError, match="max_length"):
        greedy(model, np.zeros((1, 6)), max_length=0)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, np.zeros((1, 6)), beam_size=0)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, np.zeros((1, 6)), length_penalty=-1.0)
    with pytest.raises(ValueError, match="features"):
        greedy(model, np.zeros((1, 5)))  # the model expects F = 6


def test_decode_captions_turns_ids_into_text():
    vocab = Vocabulary.from_captions(["a dog runs", "a man's dog"])
    idx = vocab.word_to_idx
    ids = np.array(
        [
            [idx["a"], idx["dog"], idx["runs"], END, NULL],
            [idx["a"], idx["man"], idx["'s"], idx["dog"], idx["dog"]],
        ]
    )
    assert decode_captions(ids, vocab) == ["a dog runs", "a man's dog dog"]


def test_top_k_matches_a_full_stable_sort(rng):
    from minicap.decode import _top_k

    scores = rng.integers(0, 20, size=(50, 60)).astype(np.float64)  # many ties
    scores[:, :5] = -np.inf
    for k in (1, 3, 7):
        top = _top_k(scores, k)
        ranked = np.take_along_axis(scores, top, axis=1)
        assert np.all(np.diff(ranked, axis=1) <= 0)  # best first
        np.testing.assert_array_equal(ranked, -np.sort(-scores, axis=1)[:, :k])  # the k best values
        assert np.all(np.diff(top, axis=1)[np.diff(ranked, axis=1) == 0] > 0)  # equal scores: lower index first
    np.testing.assert_array_equal(_top_k(scores, 1)[:, 0], scores.argmax(axis=1))


def test_decodable_tokens_are_the_words_and_end():
    allowed = decodable_tokens(V_SMALL)
    assert allowed.tolist() == [False, False, True, False, True, True]  # <NULL> <START> <END> <UNK> a b
    assert decodable_tokens(V_SMALL, allow_unk=True).tolist() == [False, False, True, True, True, True]
    with pytest.raises(ValueError, match="special tokens"):
        decodable_tokens(3)


class TableModel:
    """Not a CaptionModel: any object with `vocab_size`, `initial_state` and `step` over `State` can be decoded.

    Its state h is the last token read as a one-hot row (zeros before the first; c = None, as for a vanilla RNN),
    and the next-token logits are read from the new state: logits = h @ L = L[prev].
    """

    def __init__(self, L: np.ndarray) -> None:
        self.L, self.vocab_size = L, L.shape[0]

    def initial_state(self, features: np.ndarray) -> State:
        return State(np.zeros((len(features), self.vocab_size)), None)

    def step(self, words: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        assert state.c is None and state.h.shape == (len(words), self.vocab_size)
        h = np.eye(self.vocab_size)[words]
        return h @ self.L, State(h, None)


def test_decoders_need_only_the_state_contract():
    model, L = bigram_model(GREEDY_TRAP)
    table = TableModel(L)
    features = np.zeros((2, 3))
    for decode in (
        lambda m: greedy(m, features, max_length=4),
        lambda m: beam_search(m, features, beam_size=2, max_length=4),
        lambda m: sample(m, features, temperature=1.0, rng=3, max_length=4),
    ):
        np.testing.assert_array_equal(decode(table), decode(model))
    assert _tokens(beam_search(table, features, beam_size=2, max_length=4)[0]) == (B, END)
    np.testing.assert_allclose(
        caption_log_probs(table, features, greedy(table, features, 4)),
        caption_log_probs(model, features, greedy(model, features, 4)),
        atol=1e-9,
    )


def test_generate_captions_is_greedy_or_beam_search_in_batches(rng):
    vocab = Vocabulary.from_captions(["a b c d e f g h i j k"])  # 4 specials + 11 words = V 15
    model = random_model("lstm", V=len(vocab), seed=2)
    features = rng.standard_normal((7, 6))
    greedy_text = decode_captions(greedy(model, features, max_length=6), vocab)
    beam_text = decode_captions(beam_search(model, features, 3, max_length=6, length_penalty=0.5), vocab)
    assert generate_captions(model, vocab, features, 1, 6) == greedy_text
    assert generate_captions(model, vocab, features, 3, 6, length_penalty=0.5) == beam_text
    assert generate_captions(model, vocab, features, 3, 6, length_penalty=0.5, batch_size=2) == beam_text
    assert generate_captions(model, vocab, features, 1, 6, batch_size=3) == greedy_text
    assert generate_captions(model, vocab, features[:0], 3, 6) == []
    model.params["b_vocab"][UNK] = 50.0
    assert "<UNK>" not in " ".join(generate_captions(model, vocab, features, 3, 6))
    assert set(" ".join(generate_captions(model, vocab, features, 1, 6, allow_unk=True)).split()) == {"<UNK>"}


def test_beam_trace_records_every_step_of_the_search():
    model, _ = bigram_model(GREEDY_TRAP)
    features = np.zeros((1, 3))
    steps: list[BeamStep] = []
    ids, logp = beam_search(model, features, beam_size=2, max_length=4, return_scores=True, trace=steps)
    assert 1 <= len(steps) <= 4 and all(s.tokens.shape[:2] == (1, 2) for s in steps)
    assert [s.tokens.shape[2] for s in steps] == list(range(1, len(steps) + 1))
    for t, step in enumerate(steps):
        # Each beam's score is its parent's score plus the log P of the word it added (0 once finished), and the
        # score of its tokens, recomputed from scratch.
        previous = np.zeros(2) if t == 0 else steps[t - 1].scores[0]
        for b in range(2):
            if not np.isfinite(step.scores[0, b]):
                continue
            parent = 0.0 if t == 0 else previous[step.parents[0, b]]
            assert step.scores[0, b] == pytest.approx(parent + step.word_log_probs[0, b], abs=1e-12)
            padded = np.zeros((1, 4), dtype=np.int32)
            padded[0, : t + 1] = step.tokens[0, b]
            assert caption_log_probs(model, features, padded)[0] == pytest.approx(step.scores[0, b], abs=1e-9)
    assert steps[-1].scores[0].max() == pytest.approx(logp[0])  # the answer is the best of the last beam
    assert _tokens(ids[0]) == (B, END) and steps[-1].finished[0].any()


def test_sampling_can_continue_from_given_first_words():
    model, _ = bigram_model({START: {A: 0.9, B: 0.05, END: 0.05}, A: {A: 0.9, B: 0.05, END: 0.05},
                             B: {END: 0.9, A: 0.05, B: 0.05}})  # fmt: skip
    state = model.initial_state(np.zeros((2, 3)))
    cold = {"temperature": 0.01, "rng": 3, "max_length": 3}
    after_b = sample_from_state(model.step, state, V_SMALL, first_words=np.array([B, A]), **cold)
    assert after_b[0].tolist() == [END, NULL, NULL] and after_b[1].tolist() == [A, A, A]  # as if B, A were read
    assert sample_from_state(model.step, state, V_SMALL, **cold).tolist() == [[A, A, A]] * 2  # <START> first
    with pytest.raises(ValueError, match="first_words"):
        sample_from_state(model.step, state, V_SMALL, first_words=np.array([A]))


def test_masked_log_probs_in_row_blocks_is_bit_identical_to_one_log_softmax():
    """decode._masked_log_probs works in blocks of rows; every row gets exactly the numbers of one log_softmax."""
    from minicap.decode import _masked_log_probs

    rng = np.random.default_rng(0)
    for M, V in ((3, 11), (70, 5000), (1, 300000)):  # one block; several blocks and a partial last one; one row
        logits = (rng.standard_normal((M, V)) * 3).astype(np.float32)
        allowed = decodable_tokens(V)
        expected = log_softmax(np.where(allowed, logits.astype(np.float64), -np.inf), axis=1)
        np.testing.assert_array_equal(_masked_log_probs(logits, allowed), expected)


# ------------------------------------------------------------------------ the fast beam step (B·B candidates)


def _beams(model, features, **kw):
    """Everything beam search reports, with its trace: (outputs tuple, list of BeamStep)."""
    trace: list = []
    out = beam_search(model, features, return_scores=True, trace=trace, **kw)
    return out, trace


def _assert_same_beams(a, b):
    (out_a, trace_a), (out_b, trace_b) = a, b
    assert len(out_a) == len(out_b) and len(trace_a) == len(trace_b)
    for x, y in zip(out_a, out_b, strict=True):
        np.testing.assert_array_equal(x, y)
    for step_a, step_b in zip(trace_a, trace_b, strict=True):
        for field in step_a._fields:
            x, y = getattr(step_a, field), getattr(step_b, field)
            assert (x is None) == (y is None), field
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=field)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("V", [11, 60, 2000])
def test_fast_beam_search_keeps_exactly_the_beams_of_the_readable_one(cell, V):
    """model.fast picks `_expand_pruned` (B best words per hypothesis, B·B candidates), model.fast = False
    `_expand_all` (all B·V): the same tokens, scores, parents and per-word log-probabilities at every step, bit for
    bit, for every beam width (B ≥ 8, V = 11's allowed words, falls back to `_expand_all`)."""
    for seed in range(2):
        model = CaptionModel(V, 7, wordvec_size=8, hidden_size=16, cell=cell, seed=seed)
        features = np.random.default_rng(seed).standard_normal((9, 7)) * 3
        for beam_size in (1, 2, 3, 5, 8):
            for alpha in (0.0, 0.7):
                kw = {"beam_size": beam_size, "max_length": 12, "length_penalty": alpha}
                model.fast = False
                readable = _beams(model, features, **kw)
                model.fast = True
                _assert_same_beams(_beams(model, features, **kw), readable)
                ended = any(step.finished.any() for step in readable[1])
    assert ended or V > 100  # with few words some hypotheses end: that branch is compared too


def test_fast_beam_search_keeps_the_attention_maps_of_the_readable_one():
    from minicap.models import AttentionCaptionModel

    model = AttentionCaptionModel(40, 6, wordvec_size=5, hidden_size=8, attention_size=4, seed=1)
    annotations = np.random.default_rng(2).standard_normal((5, 4, 6))
    model.fast = False
    readable = _beams(model, annotations, beam_size=3, max_length=10, return_attention=True)
    model.fast = True
    _assert_same_beams(_beams(model, annotations, beam_size=3, max_length=10, return_attention=True), readable)


def test_top_words_are_the_masked_log_probs_of_the_best_words():
    """`_top_words` gives the B best allowed words of every row and their log-probabilities, the very numbers of
    `_masked_log_probs` (several row blocks, a partial last one; B ≤ 4 by argmax passes, larger by argpartition)."""
    from minicap.decode import _masked_log_probs, _top_k, _top_words

    rng = np.random.default_rng(0)
    for R, V in ((7, 11), (70, 5000)):
        logits = (rng.standard_normal((R, V)) * 3).astype(np.float32)
        allowed = decodable_tokens(V)
        full = _masked_log_probs(logits, allowed)
        for k in (1, 3, 4, 5):
            ids, log_p = _top_words(logits, allowed, k)
            np.testing.assert_array_equal(ids, _top_k(full, k))
            np.testing.assert_array_equal(log_p, np.take_along_axis(full, ids, axis=1))


def test_pruning_to_fewer_than_b_words_per_hypothesis_changes_the_beams(monkeypatch):
    """The comparison above can fail: offering B − 1 words per hypothesis instead of B loses candidates that the
    full search keeps (two hypotheses of an image may both want their B best words)."""
    from minicap import decode

    model = CaptionModel(60, 7, wordvec_size=8, hidden_size=16, seed=0)
    features = np.random.default_rng(0).standard_normal((9, 7)) * 3
    kw = {"beam_size": 3, "max_length": 12}
    model.fast = False
    readable = _beams(model, features, **kw)
    model.fast = True
    real = decode._top_words

    def fewer(logits, allowed, k):
        ids, log_p = real(logits, allowed, k)
        log_p[:, -1] = -np.inf  # the B-th word of every hypothesis dropped
        return ids, log_p

    monkeypatch.setattr(decode, "_top_words", fewer)
    with pytest.raises(AssertionError):
        _assert_same_beams(_beams(model, features, **kw), readable)

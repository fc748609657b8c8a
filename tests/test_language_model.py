"""Caption language models: the LSTM's gradients (float64 against extended precision), truncated BPTT state carrying,
the n-gram baselines' distributions and perplexities computed by hand, streams, sampling, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minicap import nn
from minicap.decode import sample_language_model
from minicap.gradcheck import NORM_REL, REFERENCE_DTYPE, SEQUENCE_MAX_REL, compare, numerical_gradient
from minicap.models import LSTMLanguageModel, State
from minicap.models.language import (
    CarriedState,
    CorpusScore,
    StreamDataset,
    bigram_pairs,
    caption_stream,
    perplexity,
    stream_chunks,
    stream_log_probs,
)
from minicap.models.ngram import SMOOTHINGS, BigramModel, UnigramModel
from minicap.tokens import END, NULL, START, UNK

V_SMALL = 11


def _model(dtype=np.float64, fast=True, **kw) -> LSTMLanguageModel:
    model = LSTMLanguageModel(vocab_size=V_SMALL, wordvec_size=4, hidden_size=5, dtype=dtype, seed=3, **kw)
    model.fast = fast
    return model


# model.fast: True runs minicap.nn.fast, False the readable loops of minicap.nn; every property holds for both.
FAST = pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])


def _chunk(seed: int, N: int = 3, T: int = 6):
    """Deterministic words_in, targets (N, T) over real words and <END>, a mask with holes, a non-zero state."""
    rng = np.random.default_rng(seed)
    words_in = rng.integers(2, V_SMALL, size=(N, T))
    targets = rng.integers(2, V_SMALL, size=(N, T))
    mask = rng.random((N, T)) > 0.25
    mask[0, 0] = True
    h0 = rng.standard_normal((N, 5)) * 0.5
    c0 = rng.standard_normal((N, 5))
    return words_in, targets, mask, h0, c0


# ------------------------------------------------------------------------------------------- gradients


@FAST
@pytest.mark.parametrize("with_state", [True, False])
def test_lstm_language_model_gradients(with_state, fast):
    """Every parameter's analytic gradient (float64) against centred differences in extended precision."""
    words_in, targets, mask, h0, c0 = _chunk(0)
    if not with_state:
        h0 = c0 = None  # zero state, every target counted
        mask = None
    model = _model(word_counts=np.arange(V_SMALL) + 1.0, fast=fast)
    _, grads = model.loss(words_in, targets, mask, h0, c0)
    reference = LSTMLanguageModel.from_config({**model.config, "dtype": REFERENCE_DTYPE.name}, model.params)
    h0_ref = None if h0 is None else h0.astype(REFERENCE_DTYPE)
    c0_ref = None if c0 is None else c0.astype(REFERENCE_DTYPE)
    assert set(grads) == set(model.params)
    for name in sorted(model.params):
        numeric = numerical_gradient(
            lambda: reference.loss(words_in, targets, mask, h0_ref, c0_ref)[0], reference.params[name]
        )
        result = compare("LSTMLanguageModel", name, grads[name], numeric, SEQUENCE_MAX_REL)
        assert result.norm_rel <= NORM_REL and result.max_rel <= SEQUENCE_MAX_REL, result.line()
        assert grads[name].dtype == np.float64


@FAST
def test_loss_is_the_mean_per_counted_token_and_masked_targets_change_nothing(rng, fast):
    words_in, targets, mask, h0, c0 = _chunk(1)
    model = _model(fast=fast)
    loss, grads = model.loss(words_in, targets, mask, h0, c0)
    score, _ = model.log_likelihood(words_in, targets, mask, h0, c0)
    assert score.num_tokens == mask.sum()
    assert loss == pytest.approx(-score.log_prob / score.num_tokens, rel=1e-12)
    assert math.exp(loss) == pytest.approx(score.perplexity, rel=1e-12)
    scrambled = targets.copy()
    scrambled[~mask] = rng.integers(0, V_SMALL, size=(~mask).sum())
    loss2, grads2 = model.loss(words_in, scrambled, mask, h0, c0)
    assert loss2 == loss
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)


@FAST
def test_loss_is_loss_and_state_without_the_state(fast):
    """The contract's loss(...) -> (loss, grads); loss_and_state adds the final State, the one log_likelihood
    and a step-by-step run reach."""
    words_in, targets, mask, h0, c0 = _chunk(6)
    model = _model(fast=fast)
    loss, grads = model.loss(words_in, targets, mask, h0, c0)
    loss2, grads2, state = model.loss_and_state(words_in, targets, mask, h0, c0)
    assert loss2 == loss and set(grads2) == set(grads) == set(model.params)
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)
    assert isinstance(state, State)
    _, state_ll = model.log_likelihood(words_in, targets, mask, h0, c0)
    np.testing.assert_array_equal(state.h, state_ll.h)
    np.testing.assert_array_equal(state.c, state_ll.c)
    stepped = State(h0, c0)
    for t in range(words_in.shape[1]):
        _, stepped = model.step(words_in[:, t], stepped)
    np.testing.assert_allclose(state.h, stepped.h, rtol=0, atol=1e-14)
    np.testing.assert_allclose(state.c, stepped.c, rtol=0, atol=1e-14)
    no_grad_loss, no_grads, _ = model.loss_and_state(words_in, targets, mask, h0, c0, backward=False)
    assert no_grad_loss == loss and no_grads == {}


# ------------------------------------------------------------------------------------- truncated BPTT


@FAST
def test_carrying_the_state_across_chunks_reproduces_the_whole_sequence(fast):
    """Forward: chunks with (h, c) carried give exactly the values of one pass over the whole sequence."""
    words_in, targets, mask, _, _ = _chunk(2, N=2, T=12)
    model = _model(fast=fast)
    whole, whole_state = model.log_likelihood(words_in, targets, mask)
    total, count, state = 0.0, 0, model.initial_state(2)
    for a, b in ((0, 5), (5, 10), (10, 12)):
        part, state = model.log_likelihood(words_in[:, a:b], targets[:, a:b], mask[:, a:b], state.h, state.c)
        total += part.log_prob
        count += part.num_tokens
    assert count == whole.num_tokens
    assert total == pytest.approx(whole.log_prob, rel=1e-12)
    np.testing.assert_allclose(state.h, whole_state.h, rtol=0, atol=1e-14)
    np.testing.assert_allclose(state.c, whole_state.c, rtol=0, atol=1e-14)
    # Without the carried state the second chunk is predicted from zeros: different numbers.
    cold, _ = model.log_likelihood(words_in[:, 5:10], targets[:, 5:10], mask[:, 5:10])
    carried, _ = model.log_likelihood(words_in[:, :5], targets[:, :5], mask[:, :5])
    _, mid = model.log_likelihood(words_in[:, :5], targets[:, :5], mask[:, :5])
    warm, _ = model.log_likelihood(words_in[:, 5:10], targets[:, 5:10], mask[:, 5:10], mid.h, mid.c)
    assert abs(cold.log_prob - warm.log_prob) > 1e-6


@FAST
def test_chunked_training_gradients_are_the_libraries_truncated_bptt(fast):
    """Σ over chunks of the chunk gradients = the gradient of nn.lstm_forward_truncated / lstm_backward_truncated
    (gradient stopped at every chunk boundary) — and differs from full BPTT, which the truncation approximates."""
    words_in, targets, mask, _, _ = _chunk(3, N=2, T=9)
    model = _model(fast=fast)
    p = model.params
    chunk = 4

    summed: dict[str, np.ndarray] = {k: np.zeros_like(v) for k, v in p.items()}
    state = model.initial_state(2)
    for a in range(0, 9, chunk):
        sl = slice(a, a + chunk)
        loss, grads, state = model.loss_and_state(words_in[:, sl], targets[:, sl], mask[:, sl], state.h, state.c)
        K = int(mask[:, sl].sum())
        for k in summed:
            summed[k] += grads[k] * K  # undo the per-chunk mean: Σ of log-losses over every counted token

    def sum_loss_grads(truncated: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, _ = nn.word_embedding_forward(words_in, p["W_embed"])
        h0 = np.zeros((2, 5))
        if truncated:
            h, caches = nn.lstm_forward_truncated(x, h0, None, p["Wx"], p["Wh"], p["b"], chunk)
        else:
            h, cache = nn.lstm_forward(x, h0, p["Wx"], p["Wh"], p["b"])
        scores = h.reshape(-1, 5) @ p["W_vocab"] + p["b_vocab"]
        _, dscores = nn.softmax_loss(scores, targets.reshape(-1), mask.reshape(-1).astype(np.float64))
        dh = (dscores @ p["W_vocab"].T).reshape(2, 9, 5)
        g = nn.lstm_backward_truncated(dh, caches) if truncated else nn.lstm_backward(dh, cache)
        return g.dWx, g.dWh, g.db

    for name, expected in zip(("Wx", "Wh", "b"), sum_loss_grads(truncated=True), strict=True):
        np.testing.assert_allclose(summed[name], expected, rtol=1e-10, atol=1e-12, err_msg=name)
    full_dWh = sum_loss_grads(truncated=False)[1]
    assert not np.allclose(summed["Wh"], full_dWh, rtol=1e-6, atol=1e-9)  # the truncation did drop something


def test_stream_chunks_continue_each_row_and_mask_the_given_start():
    captions = np.array(
        [
            [START, 4, 5, END, NULL, NULL],
            [START, 6, END, NULL, NULL, NULL],
            [START, 7, 8, 9, 10, END],
            [START, 4, END, NULL, NULL, NULL],
        ]
    )
    stream = caption_stream(captions)
    np.testing.assert_array_equal(stream, [1, 4, 5, 2, 1, 6, 2, 1, 7, 8, 9, 10, 2, 1, 4, 2])
    chunks = list(stream_chunks(stream, batch_size=2, chunk_size=3))
    inputs = np.concatenate([c.words_in for c in chunks], axis=1)
    targets = np.concatenate([c.targets for c in chunks], axis=1)
    mask = np.concatenate([c.mask for c in chunks], axis=1)
    assert [c.words_in.shape[1] for c in chunks] == [3, 3, 1]  # row length (16 − 1) // 2 = 7
    np.testing.assert_array_equal(inputs, [stream[0:7], stream[7:14]])  # each row a contiguous piece
    np.testing.assert_array_equal(targets, [stream[1:8], stream[8:15]])  # the next token of the stream
    np.testing.assert_array_equal(mask, targets != START)
    # Counted targets are the words and <END>s: the tokens the n-gram models are scored on, minus what the
    # tail that fills no row dropped (stream[15], an <END>).
    assert mask.sum() + (stream[15:] != START).sum() == bigram_pairs(captions)[1].size
    with pytest.raises(ValueError, match="too short"):
        list(stream_chunks(stream[:2], batch_size=4, chunk_size=3))


# ------------------------------------------------------------------------------------ n-gram baselines

# A toy corpus with words a = 4, b = 5 (V = 6): every probability below is worked out by hand.
A, B = 4, 5
TOY_TRAIN = np.array([[START, A, B, END], [START, A, END, NULL], [START, B, END, NULL]])
TOY_TEST = np.array([[START, A, END, NULL]])


def test_unigram_by_hand():
    # targets a, b, <END>, a, <END>, b, <END>: c(a) = 2, c(b) = 2, c(<END>) = 3, c(<UNK>) = 0; K = 7
    # add-one over the 4 predictable tokens {<END>, <UNK>, a, b}: P = (c + 1) / 11
    uni = UnigramModel.fit(TOY_TRAIN, vocab_size=6)
    np.testing.assert_allclose(uni.probs, [0, 0, 4 / 11, 1 / 11, 3 / 11, 3 / 11], rtol=1e-15)
    score = uni.score(TOY_TEST)  # predictions a, <END>
    assert score.num_tokens == 2
    assert score.perplexity == pytest.approx(math.sqrt(11 / 3 * 11 / 4), rel=1e-12)


def test_interpolated_bigram_by_hand():
    # pairs (S,a)×2 (S,b) (a,b) (a,E) (b,E)×2: c(S) = 3, c(a) = 2, c(b) = 2
    # λ = 1/2: P(a|S) = ½·2/3 + ½·3/11 = 31/66,  P(E|a) = ½·1/2 + ½·4/11 = 19/44
    bi = BigramModel.fit(TOY_TRAIN, vocab_size=6, smoothing="interpolated", weight=0.5)
    np.testing.assert_allclose(bi.prob(np.array([START, A]), np.array([A, END])), [31 / 66, 19 / 44], rtol=1e-14)
    assert bi.score(TOY_TEST).perplexity == pytest.approx(math.sqrt(66 / 31 * 44 / 19), rel=1e-12)
    # A context never seen in training (<END> is never followed by anything) falls back to the unigram.
    np.testing.assert_allclose(bi.next_word_probs(np.array([END]))[0], bi.unigram.probs, rtol=1e-15)


def test_kneser_ney_bigram_by_hand():
    # d = 1/2. N₁₊(S•) = 2; continuation N₁₊(•w) + 1 over {E, UNK, a, b} = 3, 1, 2, 3 (total 9):
    # P(a|S) = (2 − ½)/3 + ½·2/3·2/9 = 31/54,  P(E|a) = (1 − ½)/2 + ½·2/2·3/9 = 5/12
    kn = BigramModel.fit(TOY_TRAIN, vocab_size=6, smoothing="kneser_ney", weight=0.5)
    np.testing.assert_allclose(kn.continuation, [0, 0, 3 / 9, 1 / 9, 2 / 9, 3 / 9], rtol=1e-15)
    np.testing.assert_allclose(kn.prob(np.array([START, A]), np.array([A, END])), [31 / 54, 5 / 12], rtol=1e-14)
    assert kn.score(TOY_TEST).perplexity == pytest.approx(math.sqrt(54 / 31 * 12 / 5), rel=1e-12)
    np.testing.assert_allclose(kn.next_word_probs(np.array([END]))[0], kn.continuation, rtol=1e-15)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("weight", [0.05, 0.5, 0.99])
def test_every_bigram_distribution_sums_to_one(smoothing, weight, rng):
    V = 30
    captions = np.zeros((200, 9), dtype=np.int64)
    for row in captions:
        k = rng.integers(1, 7)
        row[0], row[k + 1] = START, END
        row[1 : k + 1] = rng.zipf(1.5, size=k).clip(max=V - 3) + 2  # ids 3 … V−1: <UNK> (3) and words, many rare
    bi = BigramModel.fit(captions, V, smoothing, weight)
    probs = bi.next_word_probs(np.arange(V))  # every context, seen or not
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(probs[:, [NULL, START]] == 0.0)
    assert np.all(probs[:, 2:] > 0.0)  # smoothing: no predictable token has probability 0
    np.testing.assert_allclose(bi.unigram.probs.sum(), 1.0, rtol=0, atol=1e-12)
    # The pair-wise formula and the row-wise one agree.
    prev, nxt = bigram_pairs(captions)
    np.testing.assert_allclose(bi.prob(prev, nxt), probs[prev, nxt], rtol=1e-14)


def test_tuning_picks_the_validation_minimum():
    bi = BigramModel.fit(TOY_TRAIN, vocab_size=6)
    best, table = bi.tune(TOY_TEST, weights=np.array([0.1, 0.5, 0.9]))
    assert table.shape == (3, 2)
    for w, ppl in table:
        assert ppl == pytest.approx(bi.with_weight(w).score(TOY_TEST).perplexity, rel=1e-12)
    assert best.weight == table[np.argmin(table[:, 1]), 0]
    assert bi.weight == 0.9  # tuning returns a new model; the original is unchanged
    with pytest.raises(ValueError, match="λ"):
        bi.with_weight(1.5)
    with pytest.raises(ValueError, match="discount"):
        BigramModel.fit(TOY_TRAIN, 6, "kneser_ney", weight=0.0)
    with pytest.raises(ValueError, match="smoothing"):
        BigramModel.fit(TOY_TRAIN, 6, "add-one")


def test_perplexity_helper():
    assert perplexity(-2 * math.log(4.0), 2) == pytest.approx(4.0)
    assert CorpusScore(-3 * math.log(10.0), 3).perplexity == pytest.approx(10.0)
    with pytest.raises(ValueError, match="at least one"):
        perplexity(0.0, 0)


# --------------------------------------------------------------------------------- scoring and sampling


def test_lstm_score_reads_each_caption_on_its_own():
    """Batched, length-sorted scoring = one caption at a time from the zero state, over the bigram_pairs tokens."""
    model = _model()
    rng = np.random.default_rng(4)
    captions = np.zeros((7, 8), dtype=np.int64)
    for row in captions:
        k = rng.integers(1, 6)
        row[0], row[1 : k + 1], row[k + 1] = START, rng.integers(3, V_SMALL, size=k), END
    for from_zeros in (False, True):
        batched = model.score(captions, batch_size=3, from_zeros=from_zeros)
        assert batched.num_tokens == bigram_pairs(captions)[1].size
        start = model.initial_state(1) if from_zeros else model.caption_start_state(1)
        one_by_one = 0.0
        for row in captions:
            k = int(np.flatnonzero(row == END)[0])
            one_by_one += model.log_likelihood(row[None, :k], row[None, 1 : k + 1], None, *start)[0].log_prob
        assert batched.log_prob == pytest.approx(one_by_one, rel=1e-12)


def test_a_caption_on_its_own_starts_where_the_stream_starts_captions():
    """caption_start_state = zeros after reading one <END>, as every <START> follows an <END> in the stream."""
    model = _model()
    start = model.caption_start_state(2)
    _, after_end = model.log_likelihood(np.full((2, 1), END), np.full((2, 1), START))
    np.testing.assert_allclose(start.h, after_end.h, rtol=0, atol=1e-15)
    np.testing.assert_allclose(start.c, after_end.c, rtol=0, atol=1e-15)
    assert np.all(start.h[0] == start.h[1]) and np.any(start.h != 0.0)  # the same for every caption, not zeros


def test_samples_are_well_formed_and_reproducible():
    model = _model(dtype=np.float32)
    a = sample_language_model(model, 50, temperature=1.0, rng=7, max_length=12)
    b = sample_language_model(model, 50, temperature=1.0, rng=7, max_length=12)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50, 12) and a.dtype == np.int32
    assert not np.isin(a, [START, UNK]).any()
    for row in a:
        ends = np.flatnonzero(row == END)
        stop = ends[0] + 1 if ends.size else 12
        assert np.all(row[:stop] != NULL) and np.all(row[stop:] == NULL)


def test_a_cold_temperature_approaches_the_most_likely_word():
    model = _model()
    cold = sample_language_model(model, 5, temperature=1e-4, rng=0, max_length=6)
    state, words = model.caption_start_state(5), np.full(5, START)
    for t in range(6):
        scores, state = model.step(words, state)
        scores[:, [NULL, START, UNK]] = -np.inf
        words = scores.argmax(axis=1)
        alive = (cold[:, :t] != END).all(axis=1)
        np.testing.assert_array_equal(cold[alive, t], words[alive])


def test_clear_errors():
    model = _model()
    words_in, targets, mask, h0, c0 = _chunk(5)
    with pytest.raises(ValueError, match="targets"):
        model.loss(words_in, targets[:, :-1])
    with pytest.raises(ValueError, match="h0"):
        model.loss(words_in, targets, mask, h0[:, :-1], c0)
    with pytest.raises(ValueError, match="mask"):
        model.loss(words_in, targets, mask[:, :-1])
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        model.loss(words_in, targets + V_SMALL)
    with pytest.raises(ValueError, match="<START>"):
        model.score(np.array([[4, 5, END]]))
    with pytest.raises(ValueError, match="temperature"):
        sample_language_model(model, 2, temperature=0.0)
    with pytest.raises(ValueError, match="word_counts"):
        _model(word_counts=np.ones(3))
    with pytest.raises(ValueError, match="missing"):
        LSTMLanguageModel.from_config(model.config, {"W_embed": model.params["W_embed"]})


# ------------------------------------------------------------------------------- a long stream: truncated BPTT


def test_token_log_probs_are_the_log_likelihood_position_by_position(rng):
    model = _model()
    words_in, targets, mask, h0, c0 = _chunk(5)
    log_p, state = model.token_log_probs(words_in, targets, h0, c0)
    score, state2 = model.log_likelihood(words_in, targets, mask, h0, c0)
    assert log_p.shape == words_in.shape and np.all(log_p < 0)
    assert log_p[mask].sum() == pytest.approx(score.log_prob, rel=1e-12)
    np.testing.assert_array_equal(state.h, state2.h)
    loss, _ = model.loss(words_in, targets, mask, h0, c0, backward=False)
    assert -log_p[mask].mean() == pytest.approx(float(loss), rel=1e-10)


def test_stream_dataset_reads_the_chunks_in_order_across_epochs_and_passes():
    stream = np.arange(4, 4 + 41) % V_SMALL  # 41 tokens: 2 rows of 20 inputs, chunks of 3 -> 7 chunks a pass
    data = StreamDataset(stream, chunk=3, chunks_per_epoch=3)
    rng = np.random.default_rng(0)
    assert data.chunks_per_pass(2) == 7 and data.batches_per_epoch(2) == 3
    keys = [data.epoch(rng, 2) for _ in range(4)]  # 3 + 3 + 1 chunks, then a new pass
    assert keys == [[(0, True), (1, False), (2, False)], [(3, False), (4, False), (5, False)], [(6, False)],
                    [(0, True), (1, False), (2, False)]]  # fmt: skip
    data = StreamDataset(stream, chunk=3)
    read = [data.batch(k) for k in data.epoch(rng, 2)]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in read], axis=1), [stream[:20], stream[20:40]])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in read], axis=1), [stream[1:21], stream[21:41]])
    assert len(StreamDataset(stream, chunk=3, max_chunks=2).epoch(rng, 2)) == 2
    with pytest.raises(ValueError, match="chunk"):
        StreamDataset(stream, chunk=0)


@FAST
def test_carried_state_continues_the_rows_and_reset_starts_each_chunk_from_zeros(fast):
    model = _model(fast=fast)
    stream = np.random.default_rng(2).integers(2, V_SMALL, size=61)
    data = StreamDataset(stream, chunk=5)
    batches = [data.batch(k) for k in data.epoch(np.random.default_rng(0), 3)]
    whole_in, whole_out = np.concatenate([b[0] for b in batches], 1), np.concatenate([b[1] for b in batches], 1)
    whole_loss, _ = model.loss(whole_in, whole_out, backward=False)  # one pass over the whole rows, from zeros
    carried, reset = CarriedState(), CarriedState(carry=False)
    carried_losses = [float(carried(model, b)[0]) for b in batches]
    reset_losses = [float(reset(model, b)[0]) for b in batches]
    assert np.mean(carried_losses) == pytest.approx(float(whole_loss), rel=1e-10)  # equal chunks: mean of means
    assert reset_losses[0] == pytest.approx(carried_losses[0], rel=1e-12)  # both start the pass from zeros
    assert not np.allclose(reset_losses[1:], carried_losses[1:])
    independent = [float(model.loss(b[0], b[1], backward=False)[0]) for b in batches]
    np.testing.assert_allclose(reset_losses, independent, rtol=1e-12)
    assert carried.tokens == reset.tokens == whole_in.size


def test_stream_log_probs_read_whole_or_restarted_every_r_tokens():
    model = _model()
    stream = np.random.default_rng(4).integers(2, V_SMALL, size=49)  # 2 rows of 24 predictions
    whole = stream_log_probs(model, stream, rows=2, chunk=5)
    rows = np.stack([stream[:25], stream[24:49]])
    expected, _ = model.token_log_probs(rows[:, :-1], rows[:, 1:])
    np.testing.assert_allclose(whole, expected, rtol=1e-12)  # the chunk size changes nothing
    cut = stream_log_probs(model, stream, rows=2, reset_every=8)
    for start in range(0, 24, 8):  # every piece of 8 read from zeros on its own
        piece, _ = model.token_log_probs(rows[:, start : start + 8], rows[:, start + 1 : start + 9])
        np.testing.assert_allclose(cut[:, start : start + 8], piece, rtol=1e-12)
    np.testing.assert_allclose(cut[:, :8], whole[:, :8], rtol=1e-12)  # the first piece has the same (no) past
    captions = caption_stream(np.array([[START, 4, END], [START, 5, END]]))  # <START> targets are not predicted
    assert np.isnan(stream_log_probs(model, captions, rows=1)).sum() == 1

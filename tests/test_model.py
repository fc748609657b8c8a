"""CaptionModel: masking, batching, decoding steps, configuration and errors (its gradients: test_gradcheck.py)."""

from __future__ import annotations

import numpy as np
import pytest

from minicap import nn
from minicap.gradcheck import small_caption_batch
from minicap.model import END_ID, NULL_ID, START_ID, CaptionModel, target_mask


def _model(cell="lstm", dtype=np.float64, **kw):
    return CaptionModel(vocab_size=11, feature_size=7, wordvec_size=4, hidden_size=5, cell=cell, dtype=dtype, **kw)


def test_target_mask_stops_at_the_first_end():
    targets = np.array([[5, 6, END_ID, NULL_ID, NULL_ID], [5, END_ID, 7, END_ID, 9], [4, 5, 6, 7, 8]])
    expected = np.array(
        [[True, True, True, False, False], [True, True, False, False, False], [True, True, True, True, True]]
    )
    np.testing.assert_array_equal(target_mask(targets), expected)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_tokens_after_the_end_change_nothing(cell, rng):
    features, captions = small_caption_batch(0)
    model = _model(cell)
    loss, grads = model.loss(features, captions)
    scrambled = captions.copy()
    for n in range(len(captions)):
        end = int(np.flatnonzero(captions[n] == END_ID)[0])
        scrambled[n, end + 1 :] = rng.integers(4, 11, size=captions.shape[1] - end - 1)  # real words after <END>
    loss2, grads2 = model.loss(features, scrambled)
    assert loss2 == loss
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_gradients_at_padded_positions_are_exactly_zero(cell):
    features, captions = small_caption_batch(0)
    model = _model(cell)
    _, grads = model.loss(features, captions)
    # <NULL> and <END> are only ever *read* after a caption has ended: their word vectors get exactly 0.
    assert np.all(grads["W_embed"][NULL_ID] == 0.0)
    assert np.all(grads["W_embed"][END_ID] == 0.0)
    assert np.any(grads["W_embed"][START_ID] != 0.0)

    # The same at layer level: the loss gradient at masked positions is 0, and so is BPTT's dx there.
    p = model.params
    h0 = features @ p["W_proj"] + p["b_proj"]
    x, _ = nn.word_embedding_forward(captions[:, :-1], p["W_embed"])
    forward, backward = (nn.lstm_forward, nn.lstm_backward) if cell == "lstm" else (nn.rnn_forward, nn.rnn_backward)
    h, cache = forward(x, h0, p["Wx"], p["Wh"], p["b"])
    scores, vcache = nn.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    mask = target_mask(captions[:, 1:])
    _, dscores = nn.temporal_softmax_loss(scores, captions[:, 1:], mask)
    assert np.all(dscores[~mask] == 0.0)
    dh, _, _ = nn.temporal_affine_backward(dscores, vcache)
    dx = backward(dh, cache)[0]
    assert np.all(dx[~mask] == 0.0) and np.any(dx[mask] != 0.0)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_a_batch_equals_its_examples_one_at_a_time(cell):
    features, captions = small_caption_batch(1, N=4)
    model = _model(cell)
    loss, grads = model.loss(features, captions)
    N = len(captions)
    per_example = [model.loss(features[n : n + 1], captions[n : n + 1]) for n in range(N)]
    assert loss == pytest.approx(sum(l for l, _ in per_example) / N, rel=1e-12)  # loss = Σ / N
    for name in grads:
        np.testing.assert_allclose(grads[name], sum(g[name] for _, g in per_example) / N, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_decoding_steps_see_the_trained_network(cell):
    """Feeding the caption word by word through initial_state/step gives the loss the training path computes."""
    features, captions = small_caption_batch(2)
    model = _model(cell)
    loss, _ = model.loss(features, captions)
    state = model.initial_state(features)
    logits = []
    for t in range(captions.shape[1] - 1):
        step_logits, state = model.step(captions[:, t], state)
        logits.append(step_logits)
    targets = captions[:, 1:]
    step_loss, _ = nn.temporal_softmax_loss(np.stack(logits, axis=1), targets, target_mask(targets))
    assert step_loss == pytest.approx(loss, rel=1e-12)


def test_float32_by_default_and_grads_follow():
    features, captions = small_caption_batch(0)
    model = CaptionModel(vocab_size=11, feature_size=7, wordvec_size=4, hidden_size=5)
    assert all(p.dtype == np.float32 for p in model.params.values())
    loss, grads = model.loss(features, captions)  # float64 features are cast once, at the input
    assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


def test_seeded_initialisation_and_config_round_trip():
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)
    assert np.all(a.params["b"][5:10] == 1.0) and np.all(a.params["b"][:5] == 0.0)  # forget-gate bias 1

    rebuilt = CaptionModel.from_config(a.config, {k: v * 2 for k, v in a.params.items()})
    assert rebuilt.config == a.config
    np.testing.assert_array_equal(rebuilt.params["Wh"], 2 * a.params["Wh"])
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        CaptionModel.from_config(a.config, {k: v for k, v in a.params.items() if k != "b"})
    with pytest.raises(ValueError, match="W_vocab: shape"):
        CaptionModel.from_config(a.config, {**a.params, "W_vocab": np.zeros((5, 3))})


def test_output_bias_from_word_frequencies_lowers_the_initial_loss():
    features, captions = small_caption_batch(0, N=8)
    counts = np.bincount(captions[:, 1:][target_mask(captions[:, 1:])], minlength=11)
    plain = _model()
    informed = _model(word_counts=counts)
    assert informed.params["b_vocab"].max() == 0.0 and informed.params["b_vocab"][NULL_ID] < 0
    assert informed.loss(features, captions)[0] < plain.loss(features, captions)[0]


def test_feature_standardisation_is_applied_everywhere():
    features, captions = small_caption_batch(0)
    model = _model()
    mean, std = features.mean(axis=0), features.std(axis=0)
    expected = model.loss((features - mean) / std, captions)[0]
    model.set_feature_standardisation(mean, std)
    assert model.loss(features, captions)[0] == pytest.approx(expected, rel=1e-12)
    h0 = model.initial_state(features).h
    np.testing.assert_allclose(h0, ((features - mean) / std) @ model.params["W_proj"], atol=1e-12)


def test_clear_errors_for_bad_inputs():
    features, captions = small_caption_batch(0)
    model = _model()
    with pytest.raises(ValueError, match=r"features must have shape \(N, 7\).*different encoder"):
        model.loss(np.zeros((3, 1280)), captions)
    with pytest.raises(ValueError, match="captions must be"):
        model.loss(features, captions[:2])
    with pytest.raises(ValueError, match="cell"):
        CaptionModel(11, 7, cell="gru")


def test_forward_only_loss_equals_the_training_loss():
    features, captions = small_caption_batch(0)
    model = _model()
    loss, grads = model.loss(features, captions)
    loss_only, no_grads = model.loss(features, captions, backward=False)
    assert loss_only == loss and no_grads == {} and grads


def test_counted_words_loss_gradients_in_float64():
    """The shared vocabulary-projection loss of CaptionModel and the language model, checked on its own."""
    from minicap.gradcheck import NORM_REL, REFERENCE_DTYPE, norm_rel_error, numerical_gradient, rel_error
    from minicap.model import counted_words_loss

    rng = np.random.default_rng(3)
    N, T, H, V = 3, 4, 5, 7
    inputs = {"h": rng.standard_normal((N, T, H)), "W": rng.standard_normal((H, V)), "b": rng.standard_normal(V)}
    targets = rng.integers(0, V, size=(N, T))
    counted = rng.random(N * T) > 0.3
    counted[T : 2 * T] = False  # the second caption counts nowhere
    loss, (dh, dW, db) = counted_words_loss(inputs["h"], targets, counted, inputs["W"], inputs["b"], 1.0 / N)

    ref = {k: v.astype(REFERENCE_DTYPE) for k, v in inputs.items()}
    f = lambda: counted_words_loss(ref["h"], targets, counted, ref["W"], ref["b"], 1.0 / N, backward=False)[0]  # noqa: E731
    for name, analytic in (("h", dh), ("W", dW), ("b", db)):
        numeric = numerical_gradient(f, ref[name])
        assert rel_error(analytic, numeric) <= 1e-7, name
        assert norm_rel_error(analytic, numeric) <= NORM_REL, name
    assert np.all(dh.reshape(N * T, H)[~counted] == 0.0)  # positions that do not count: exactly 0

    # The same loss as the masked softmax over every position (scaled: temporal_softmax_loss divides by N too).
    scores = inputs["h"] @ inputs["W"] + inputs["b"]
    expected, _ = nn.temporal_softmax_loss(scores, targets, counted.reshape(N, T))
    assert loss == pytest.approx(expected, rel=1e-12)

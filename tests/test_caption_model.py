"""CaptionModel: masking, batching, decoding steps, configuration and errors, on the readable path (model.fast =
False) and the fast one (its gradients: test_gradcheck.py; fast == reference: test_fast_path.py)."""

from __future__ import annotations

import numpy as np
import pytest

from minicap import nn
from minicap.gradcheck import small_caption_batch
from minicap.models import CaptionModel, SequenceModel
from minicap.tokens import END, NULL, START, target_mask

# model.fast: True runs minicap.nn.fast, False the readable loops of minicap.nn; every property holds for both.
FAST = pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])


def _model(cell="lstm", dtype=np.float64, fast=True, **kw):
    model = CaptionModel(vocab_size=11, feature_size=7, wordvec_size=4, hidden_size=5, cell=cell, dtype=dtype, **kw)
    model.fast = fast
    return model


@FAST
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_tokens_after_the_end_change_nothing(cell, fast, rng):
    features, captions = small_caption_batch(0)
    model = _model(cell, fast=fast)
    loss, grads = model.loss(features, captions)
    scrambled = captions.copy()
    for n in range(len(captions)):
        end = int(np.flatnonzero(captions[n] == END)[0])
        scrambled[n, end + 1 :] = rng.integers(4, 11, size=captions.shape[1] - end - 1)  # real words after <END>
    loss2, grads2 = model.loss(features, scrambled)
    assert loss2 == loss
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)


@FAST
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_gradients_at_padded_positions_are_exactly_zero(cell, fast):
    features, captions = small_caption_batch(0)
    model = _model(cell, fast=fast)
    _, grads = model.loss(features, captions)
    # <NULL> and <END> are only ever *read* after a caption has ended: their word vectors get exactly 0.
    assert np.all(grads["W_embed"][NULL] == 0.0)
    assert np.all(grads["W_embed"][END] == 0.0)
    assert np.any(grads["W_embed"][START] != 0.0)

    # The same at layer level: the loss gradient at masked positions is 0, and so is BPTT's dx there.
    p, seq = model.params, model.sequence
    assert seq is (nn.fast if fast else nn)
    h0 = features @ p["W_proj"] + p["b_proj"]
    x, _ = nn.word_embedding_forward(captions[:, :-1], p["W_embed"])
    forward, backward = (seq.lstm_forward, seq.lstm_backward) if cell == "lstm" else (seq.rnn_forward, seq.rnn_backward)
    h, cache = forward(x, h0, p["Wx"], p["Wh"], p["b"])
    scores, vcache = nn.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    mask = target_mask(captions[:, 1:])
    _, dscores = nn.temporal_softmax_loss(scores, captions[:, 1:], mask)
    assert np.all(dscores[~mask] == 0.0)
    dh, _, _ = nn.temporal_affine_backward(dscores, vcache)
    dx = backward(dh, cache)[0]
    assert np.all(dx[~mask] == 0.0) and np.any(dx[mask] != 0.0)


@FAST
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_a_batch_equals_its_examples_one_at_a_time(cell, fast):
    features, captions = small_caption_batch(1, N=4)
    model = _model(cell, fast=fast)
    loss, grads = model.loss(features, captions)
    N = len(captions)
    per_example = [model.loss(features[n : n + 1], captions[n : n + 1]) for n in range(N)]
    assert loss == pytest.approx(sum(l for l, _ in per_example) / N, rel=1e-12)  # loss = Σ / N
    for name in grads:
        np.testing.assert_allclose(grads[name], sum(g[name] for _, g in per_example) / N, rtol=0, atol=1e-13)


@FAST
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_decoding_steps_see_the_trained_network(cell, fast):
    """Feeding the caption word by word through initial_state/step gives the loss the training path computes."""
    features, captions = small_caption_batch(2)
    model = _model(cell, fast=fast)
    loss, _ = model.loss(features, captions)
    state = model.initial_state(features)
    logits = []
    for t in range(captions.shape[1] - 1):
        step_logits, state = model.step(captions[:, t], state)
        logits.append(step_logits)
    targets = captions[:, 1:]
    step_loss, _ = nn.temporal_softmax_loss(np.stack(logits, axis=1), targets, target_mask(targets))
    assert step_loss == pytest.approx(loss, rel=1e-12)


@FAST
def test_float32_by_default_and_grads_follow(fast):
    features, captions = small_caption_batch(0)
    model = CaptionModel(vocab_size=11, feature_size=7, wordvec_size=4, hidden_size=5)
    assert model.fast is True  # the fast path by default
    model.fast = fast
    assert all(p.dtype == np.float32 for p in model.params.values())
    loss, grads = model.loss(features, captions)  # float64 features are cast once, at the input
    assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


def test_seeded_initialisation_and_config_round_trip():
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)
    assert np.all(a.params["b"][5:10] == 1.0) and np.all(a.params["b"][:5] == 0.0)  # forget-gate bias 1

    assert a.config == {
        "vocab_size": 11,
        "feature_size": 7,
        "wordvec_size": 4,
        "hidden_size": 5,
        "cell": "lstm",
        "dtype": "float64",
        "seed": 3,
        "dropout": 0.0,
    }
    rebuilt = CaptionModel.from_config(a.config, {k: v * 2 for k, v in a.params.items()})
    assert rebuilt.config == a.config and rebuilt.constants == {}
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
    assert informed.params["b_vocab"].max() == 0.0 and informed.params["b_vocab"][NULL] < 0
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

    # The standardisation is one of the model's constants: it travels with from_config, copy() and astype().
    assert set(model.constants) == {"feature_mean", "feature_std"}
    rebuilt = CaptionModel.from_config(model.config, model.params, model.constants)
    assert rebuilt.loss(features, captions)[0] == model.loss(features, captions)[0]
    assert model.copy().loss(features, captions)[0] == model.loss(features, captions)[0]
    np.testing.assert_allclose(model.astype(np.float32).initial_state(features).h, h0, rtol=1e-5, atol=1e-5)
    assert CaptionModel.from_config(model.config, model.params).constants == {}  # none given: none applied
    with pytest.raises(ValueError, match="unknown CaptionModel constants"):
        CaptionModel.from_config(model.config, model.params, {"mean": mean})


@FAST
def test_copy_and_astype_are_independent_and_keep_the_path(fast):
    features, captions = small_caption_batch(0)
    model = _model(fast=fast)
    twin = model.copy()
    assert isinstance(twin, CaptionModel) and isinstance(twin, SequenceModel)
    assert twin.fast is fast and twin.config == model.config
    assert twin.loss(features, captions)[0] == model.loss(features, captions)[0]
    twin.params["Wh"] += 1.0  # training the copy leaves the original alone
    assert not np.array_equal(twin.params["Wh"], model.params["Wh"])
    single = model.astype(np.float32)
    assert single.fast is fast and single.dtype == np.float32 and single.config["dtype"] == "float32"
    assert all(p.dtype == np.float32 for p in single.params.values())
    assert single.loss(features, captions)[0] == pytest.approx(model.loss(features, captions)[0], rel=1e-5)
    assert model.num_params() == sum(p.size for p in model.params.values())


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


@pytest.mark.parametrize("words_loss", [nn.words_loss, nn.fast.words_loss], ids=["reference", "fast"])
def test_words_loss_gradients_in_float64(words_loss):
    """The shared vocabulary-projection loss of CaptionModel and the language model, checked on its own."""
    from minicap.gradcheck import NORM_REL, REFERENCE_DTYPE, norm_rel_error, numerical_gradient, rel_error

    rng = np.random.default_rng(3)
    N, T, H, V = 3, 4, 5, 7
    inputs = {"h": rng.standard_normal((N, T, H)), "W": rng.standard_normal((H, V)), "b": rng.standard_normal(V)}
    targets = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    mask[1] = False  # the second caption counts nowhere
    loss, (dh, dW, db) = words_loss(inputs["h"], targets, mask, inputs["W"], inputs["b"], 1.0 / N)

    ref = {k: v.astype(REFERENCE_DTYPE) for k, v in inputs.items()}
    f = lambda: words_loss(ref["h"], targets, mask, ref["W"], ref["b"], 1.0 / N, backward=False)[0]  # noqa: E731
    for name, analytic in (("h", dh), ("W", dW), ("b", db)):
        numeric = numerical_gradient(f, ref[name])
        assert rel_error(analytic, numeric) <= 1e-7, name
        assert norm_rel_error(analytic, numeric) <= NORM_REL, name
    assert np.all(dh[~mask] == 0.0)  # positions that do not count: exactly 0
    assert words_loss(inputs["h"], targets, mask, inputs["W"], inputs["b"], 1.0 / N, backward=False)[1] is None

    # The same loss as the masked softmax over every position (scaled: temporal_softmax_loss divides by N too).
    scores = inputs["h"] @ inputs["W"] + inputs["b"]
    expected, _ = nn.temporal_softmax_loss(scores, targets, mask)
    assert loss == pytest.approx(expected, rel=1e-12)

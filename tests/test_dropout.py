"""Inverted dropout: the nn pair (minicap.nn.dropout_forward/backward), the caption model that uses it in training
(word vectors and LSTM outputs, as in Show and Tell) and nowhere else, both sequence paths, the configuration and
the flag, and exact resumption of a run with dropout."""

from __future__ import annotations

import numpy as np
import pytest
from test_captioner import TRAIN, VAL, assert_same_params
from test_experiments import TINY, colour_data

from minicap import gradcheck, nn
from minicap.captioner import new_captioner, train_captioner
from minicap.cli import build_parser
from minicap.cli.flags import config_from_flags
from minicap.config import CaptionerConfig
from minicap.decode import greedy
from minicap.gradcheck import small_caption_batch
from minicap.models import CaptionModel

# ------------------------------------------------------------------------------------------------ the nn pair


def test_dropout_keeps_about_one_minus_p_and_the_expected_value():
    rng = np.random.default_rng(0)
    x = np.ones((200, 500), dtype=np.float32)
    out, cache = nn.dropout_forward(x, 0.3, rng)
    kept = out != 0
    assert out.dtype == np.float32 and cache.mask.dtype == np.float32
    assert abs(kept.mean() - 0.7) < 0.005  # 100,000 Bernoulli(0.7): sd 0.0014
    assert np.allclose(out[kept], 1 / 0.7) and abs(out.mean() - 1.0) < 0.01  # E[out] = x
    dout = np.arange(x.size, dtype=np.float32).reshape(x.shape)
    dx = nn.dropout_backward(dout, cache)
    assert np.array_equal(dx, dout * cache.mask) and np.all(dx[~kept] == 0)


def test_the_same_generator_state_gives_the_same_mask_in_every_dtype():
    masks = [nn.dropout_mask((3, 4, 5), 0.5, np.random.default_rng(3), np.dtype(t)) for t in (np.float32, np.float64)]
    assert np.array_equal(masks[0], masks[1])
    other = nn.dropout_mask((3, 4, 5), 0.5, np.random.default_rng(4), np.dtype(np.float64))
    assert not np.array_equal(masks[1], other)


def test_dropout_zero_is_the_identity_and_bad_arguments_are_refused():
    x = np.random.default_rng(0).standard_normal((4, 5))
    out, _ = nn.dropout_forward(x, 0.0, np.random.default_rng(0))
    assert np.array_equal(out, x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        nn.dropout_forward(x, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="generator"):
        nn.dropout_forward(x, 0.5)
    with pytest.raises(ValueError, match="mask has shape"):
        nn.dropout_forward(x, 0.5, mask=np.ones((5, 4)))


def test_dropout_gradient_check_with_a_fixed_mask():
    results = gradcheck.check_dropout()
    assert results and all(r.passed for r in results)


def test_a_wrong_dropout_backward_is_caught(monkeypatch):
    """The check can fail: a backward that forgets the 1 / (1 − p) scaling is off by a factor on every kept unit."""
    monkeypatch.setattr(nn, "dropout_backward", lambda dout, cache: dout * (cache.mask != 0))
    assert not all(r.passed for r in gradcheck.check_dropout())


# ------------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("fast", [False, True])
def test_caption_model_gradients_with_dropout(fast):
    results = gradcheck.check_caption_dropout(fast)
    # 8 parameters per mean-pooled cell (lstm, rnn), 16 for the attention captioner, 19 with its deep output layer
    assert len(results) == 32 + 19 and all(r.passed for r in results)
    assert sum("AttentionCaptionModel" in r.function for r in results) == 16 + 19


def test_fast_equals_reference_with_the_same_dropout_masks():
    results = [r for r in gradcheck.check_fast_equals_reference() if "dropout" in r.function]
    # + the attention captioner's loss and 16 gradients, and with its deep output layer the loss and 19 gradients
    assert len(results) == 18 + 17 + 20 and all(r.passed for r in results)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_dropout_acts_only_in_a_training_loss(cell):
    features, captions = small_caption_batch()
    plain = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, cell=cell, dtype=np.float64)
    dropped = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, cell=cell, dtype=np.float64, dropout=0.5)
    assert all(np.array_equal(plain.params[k], dropped.params[k]) for k in plain.params)  # dropout draws no weights
    rng = lambda: np.random.default_rng(1)  # noqa: E731
    # Without a generator (validation) the model is the whole network: the same loss as without dropout.
    assert dropped.loss(features, captions, backward=False)[0] == plain.loss(features, captions, backward=False)[0]
    # A rate-0 model ignores the generator; with dropout the training loss differs, and changes with the masks.
    assert plain.loss(features, captions, rng=rng())[0] == plain.loss(features, captions)[0]
    train_a = dropped.loss(features, captions, rng=rng())[0]
    assert train_a != plain.loss(features, captions)[0]
    assert train_a == dropped.loss(features, captions, rng=rng())[0]
    assert train_a != dropped.loss(features, captions, rng=np.random.default_rng(2))[0]
    # Decoding never drops anything.
    assert np.array_equal(greedy(dropped, features, max_length=6), greedy(plain, features, max_length=6))


def test_float32_training_loss_with_dropout_stays_float32():
    features, captions = small_caption_batch()
    model = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, dropout=0.3)
    loss, grads = model.loss(features.astype(np.float32), captions, rng=np.random.default_rng(0))
    assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


def test_dropout_travels_with_the_model_config():
    model = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, dropout=0.25)
    assert model.config["dropout"] == 0.25 and model.copy().dropout == 0.25
    assert (
        CaptionModel.from_config({k: v for k, v in model.config.items() if k != "dropout"}, model.params).dropout == 0
    )
    with pytest.raises(ValueError, match="dropout"):
        CaptionModel(11, 7, dropout=1.0)


# ------------------------------------------------------------------------------------------ config, flag, training


def test_config_field_and_command_line_flag():
    assert CaptionerConfig(dropout=0.4).model_options["dropout"] == 0.4
    with pytest.raises(ValueError, match="dropout"):
        CaptionerConfig(dropout=1.0)
    args = build_parser().parse_args(["evaluate", "--folds", "2", "--coco", "x", "--dropout", "0.4"])
    config, given = config_from_flags(args)
    assert config.dropout == 0.4 and "dropout" in given
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--folds", "2", "--coco", "x", "--dropout", "1"])


def test_new_captioner_has_the_configured_dropout():
    coco, table = colour_data()
    from minicap.captioner import captioner_data

    data = captioner_data(coco, table, TRAIN, VAL, TINY)
    assert new_captioner(TINY.replace(dropout=0.3), data.vocab, data.train).dropout == 0.3


def test_a_run_with_dropout_resumes_exactly_and_differs_from_one_without(tmp_path):
    """The Trainer gives each update the generator default_rng((seed, step)), so a run stopped after any update and
    resumed draws the same masks: the same parameters, bit for bit, as a run never stopped."""
    coco, table = colour_data()
    config = TINY.replace(epochs=2, batch_size=10, dropout=0.3)  # 36 training captions: 4 updates per epoch
    straight = train_captioner(coco, table, TRAIN, VAL, config, out_dir=tmp_path / "a")
    first = train_captioner(coco, table, TRAIN, VAL, config, out_dir=tmp_path / "b", max_seconds=1e-9)
    assert first.result.stopped == "time budget"
    for _ in range(20):
        resumed = train_captioner(coco, table, TRAIN, VAL, config, resume=tmp_path / "b" / "last.npz", max_seconds=1e-9)
        if resumed.result.stopped != "time budget":
            break
    assert resumed.result.stopped == "completed"
    assert_same_params(resumed.result.model.params, straight.result.model.params)
    without = train_captioner(coco, table, TRAIN, VAL, config.replace(dropout=0.0))
    assert not np.array_equal(without.result.model.params["Wx"], straight.result.model.params["Wx"])

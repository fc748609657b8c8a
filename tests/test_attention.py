"""Soft attention (minicap.nn.attention, minicap.models.attention): every backward against numerical gradients with
the thresholds of minicap.gradcheck, the sequence loop against the step, padding that changes nothing, the
regulariser, and the model's step against its loss."""

from __future__ import annotations

import numpy as np
import pytest

import minicap.nn.attention as att
from minicap import gradcheck
from minicap.gradcheck import NORM_REL, SEQUENCE_MAX_REL, STEP_MAX_REL
from minicap.gradcheck.attention import attention_lstm_inputs
from minicap.models import AttentionCaptionModel, AttentionState
from minicap.tokens import target_mask

STEP_CHECKS = [
    gradcheck.check_attention,
    gradcheck.check_gate,
    gradcheck.check_init_state,
    gradcheck.check_attention_lstm_step,
    gradcheck.check_doubly_stochastic,
    gradcheck.check_deep_output,
]


def _assert_within(results, max_rel):
    assert results
    for r in results:
        assert r.max_rel_threshold == max_rel and r.norm_rel_threshold == NORM_REL
        assert r.passed, r.line()


@pytest.mark.parametrize("check", STEP_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_step_level_gradients(check, seed):
    _assert_within(check(seed), STEP_MAX_REL)


@pytest.mark.parametrize("lengths", [None, (5, 3, 3, 1, 0), (2, 5, 1)])
@pytest.mark.parametrize("contexts", [False, True], ids=["", "dcontexts"])
def test_sequence_gradients_with_padding(lengths, contexts):
    _assert_within(gradcheck.check_attention_lstm_sequence(lengths=lengths, contexts=contexts), SEQUENCE_MAX_REL)


def test_whole_attention_model_gradients():
    results = [r for r in gradcheck.check_models() if r.function.startswith("AttentionCaptionModel")]
    assert {r.function for r in results} == {
        "AttentionCaptionModel(λ=0)",
        "AttentionCaptionModel(λ=1.5)",
        "AttentionCaptionModel(λ=1.5, deep output)",
    }
    assert len(results) == 2 * 16 + 19  # every parameter, with and without the regulariser; + L_h, L_z, b_out
    _assert_within(results, SEQUENCE_MAX_REL)


def test_gradcheck_report_lists_the_attention_functions():
    names = {r.function for r in gradcheck.attention_checks()}
    assert names >= {
        "attention",
        "attention gate β",
        "attention init_state (h0, c0)",
        "attention_lstm_step",
        "attention_lstm_forward/backward",
        "attention_lstm_forward/backward (lengths)",
        "doubly_stochastic_loss",
    }


def test_a_wrong_attention_backward_is_caught(monkeypatch):
    """Forgetting the −Σ_j α_j ∂L/∂α_j term of the softmax Jacobian must fail the check."""

    def buggy(dz, dalpha, cache):
        a, alpha, s = cache.annotations, cache.alpha, cache.s
        dalpha_total = (a @ dz[:, :, None])[:, :, 0] + (0 if dalpha is None else dalpha)
        de = alpha * dalpha_total  # the bug
        dpre = de[:, :, None] * cache.w_att * (1.0 - s**2)
        return (
            alpha[:, :, None] * dz[:, None, :],
            dpre,
            dpre.sum(1) @ cache.W_att.T,
            cache.prev_h.T @ dpre.sum(1),
            np.einsum("nl,nla->a", de, s),
        )

    monkeypatch.setattr(att, "attention_backward", buggy)
    assert not all(r.passed for r in gradcheck.check_attention())
    assert not all(r.passed for r in gradcheck.check_attention_lstm_step())


def _inputs(seed=0, N=4, T=6):
    rng = np.random.default_rng(seed)
    return attention_lstm_inputs(rng, N=N, T=T)


def test_sequence_is_a_loop_over_the_step():
    inputs = _inputs()
    h, alphas, _ = att.attention_lstm_forward(**inputs)
    prev_h, prev_c = inputs["h0"], inputs["c0"]
    weights = {k: inputs[k] for k in ("annotations", "proj", "W_att", "w_att", "w_beta", "b_beta", "Wx", "Wh", "b")}
    for t in range(inputs["x"].shape[1]):
        prev_h, prev_c, alpha, _ = att.attention_lstm_step_forward(inputs["x"][:, t], prev_h, prev_c, **weights)
        np.testing.assert_array_equal(h[:, t], prev_h)
        np.testing.assert_array_equal(alphas[:, t], alpha)


def test_attention_maps_are_distributions_and_zero_on_padding():
    inputs = _inputs(N=3)
    _, alphas, _ = att.attention_lstm_forward(**inputs, lengths=np.array([6, 2, 0]))
    np.testing.assert_allclose(alphas[0].sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(alphas[1, :2].sum(axis=1), 1.0, atol=1e-12)
    assert (alphas[1, 2:] == 0).all() and (alphas[2] == 0).all()
    assert (alphas >= 0).all()


def test_padding_changes_nothing():
    """A caption's h and α do not depend on what is in its padded steps."""
    inputs = _inputs(N=2)
    lengths = np.array([6, 3])
    h1, a1, _ = att.attention_lstm_forward(**inputs, lengths=lengths)
    inputs["x"][1, 3:] = 1e3
    h2, a2, _ = att.attention_lstm_forward(**inputs, lengths=lengths)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(a1, a2)


def test_doubly_stochastic_loss_values():
    alphas = np.zeros((1, 3, 2))
    alphas[0, :, 0] = 1.0 / 3  # location 0 gets 1/3 per step: Σ_t = 1 over three real steps
    alphas[0, :, 1] = 2.0 / 3
    mask = np.ones((1, 3), bool)
    loss, _ = att.doubly_stochastic_loss(alphas, mask, 2.0)
    assert loss == pytest.approx(2.0 * (0.0**2 + (1 - 2.0) ** 2))
    mask[0, 2] = False  # the last step is padding: Σ_t α over real steps is 2/3 and 4/3
    loss, dalphas = att.doubly_stochastic_loss(alphas, mask, 2.0)
    assert loss == pytest.approx(2.0 * ((1 / 3) ** 2 + (1 / 3) ** 2))
    assert (dalphas[0, 2] == 0).all()
    assert att.doubly_stochastic_loss(alphas, mask, 0.0)[0] == 0


def _model_and_batch(reg=0.0, dtype=np.float64, deep_output=False):
    features, captions = gradcheck.small_caption_batch(0, N=4, T=7)
    rng = np.random.default_rng(3)
    annotations = rng.standard_normal((4, 5, 7))
    model = AttentionCaptionModel(
        11, 7, wordvec_size=4, hidden_size=6, attention_size=3, reg=reg, dtype=dtype, deep_output=deep_output
    )
    return model, annotations, captions


@pytest.mark.parametrize("deep_output", [False, True], ids=["", "deep output"])
def test_step_reproduces_the_loss(deep_output):
    """Teacher-forcing the model through `step` gives the same words loss as `loss` (λ = 0)."""
    model, annotations, captions = _model_and_batch(deep_output=deep_output)
    loss, _ = model.loss(annotations, captions, backward=False)
    state = model.initial_state(annotations)
    assert isinstance(state, AttentionState)
    total = 0.0
    targets = captions[:, 1:]
    mask = target_mask(targets)
    for t in range(targets.shape[1]):
        logits, state = model.step(captions[:, t], state)
        np.testing.assert_allclose(state.alpha.sum(axis=1), 1.0)
        log_p = logits - logits.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        total -= np.sum(mask[:, t] * log_p[np.arange(len(targets)), targets[:, t]])
    assert loss == pytest.approx(total / len(captions), rel=1e-12)


def test_regulariser_adds_to_the_loss():
    model, annotations, captions = _model_and_batch(reg=0.0)
    base, _ = model.loss(annotations, captions, backward=False)
    reg_model = AttentionCaptionModel.from_config({**model.config, "reg": 2.0}, model.params)
    with_reg, _ = reg_model.loss(annotations, captions, backward=False)
    assert with_reg > base


def test_bad_annotations_are_refused():
    model, annotations, captions = _model_and_batch()
    with pytest.raises(ValueError, match="spatial"):
        model.loss(annotations.mean(axis=1), captions)
    with pytest.raises(ValueError, match="reg"):
        AttentionCaptionModel(11, 7, reg=-1.0)


def test_float32_training_dtype_is_kept():
    model, annotations, captions = _model_and_batch(dtype=np.float32)
    loss, grads = model.loss(annotations, captions)
    assert loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert set(grads) == set(model.params)


# ------------------------------------------------------------------------------------------ decoding with α


def test_greedy_and_beam_keep_the_attention_maps_of_their_captions():
    """The maps a decoder returns are those the model uses when it reads the returned caption again."""
    from minicap.decode import beam_search, greedy
    from minicap.tokens import END, NULL, START

    model, annotations, _ = _model_and_batch()
    ids_g, maps_g = greedy(model, annotations, max_length=6, return_attention=True)
    ids_b, scores, maps_b = beam_search(model, annotations, 3, max_length=6, return_scores=True, return_attention=True)
    np.testing.assert_array_equal(greedy(model, annotations, max_length=6), ids_g)
    np.testing.assert_array_equal(beam_search(model, annotations, 3, max_length=6), ids_b)
    assert maps_g.shape == maps_b.shape == (4, 6, 5) and scores.shape == (4,)
    for ids, maps in ((ids_g, maps_g), (ids_b, maps_b)):
        state = model.initial_state(annotations)
        words = np.full(4, START)
        for t in range(6):
            _, state = model.step(words, state)
            live = ids[:, t] != NULL
            np.testing.assert_allclose(maps[live, t], state.alpha[live], atol=1e-12)
            assert (maps[~live, t] == 0).all()
            words = np.where(live, ids[:, t], END)


def test_return_attention_needs_a_model_that_attends():
    from minicap.decode import greedy
    from minicap.models import CaptionModel

    model = CaptionModel(11, 7, 4, 5, dtype=np.float64)
    with pytest.raises(ValueError, match="alpha"):
        greedy(model, np.zeros((2, 7)), max_length=3, return_attention=True)


# ------------------------------------------------------------------------------------------ training end to end


def spatial_colour_data(n: int = 15, F: int = 8, seed: int = 0):
    """The colour COCO of test_experiments, but the colour sits in ONE cell of a 2 × 2 feature map (a different
    cell per image); the other cells are noise. A FeatureStore with spatial maps (float16, as extracted)."""
    from test_experiments import colour_data

    from minicap.vision.store import FeatureStore

    coco, _ = colour_data(n, F, seed)
    rng = np.random.default_rng(seed)
    maps = 0.1 * rng.standard_normal((n, 2, 2, F))
    for k in range(n):
        maps[k, (k // 3) % 2, (k // 6) % 2, k % 3] += 3.0
    maps = maps.astype(np.float16)
    pooled = maps.astype(np.float32).mean(axis=(1, 2))
    return coco, FeatureStore(np.arange(1, n + 1, dtype=np.int64), pooled, {"architecture": "test"}, maps)


def test_the_attention_captioner_trains_with_the_one_loop_and_saves_and_loads(tmp_path):
    from test_experiments import TINY

    from minicap.checkpoint import load_checkpoint
    from minicap.experiments import MODEL_GREEDY, holdout_evaluation

    coco, store = spatial_colour_data()
    config = TINY.replace(model="attention", attention_size=8, epochs=30)
    result = holdout_evaluation(coco, store, list(range(1, 12)), [12], [13, 14, 15], config, out_dir=tmp_path)
    model = result.captioner.model
    assert isinstance(model, AttentionCaptionModel) and model.attention_size == 8 and model.reg == 1.0
    colours = {13: "red", 14: "green", 15: "blue"}
    right = sum(colours[i] in result.hypotheses[MODEL_GREEDY][i] for i in colours)
    assert right >= 2, result.hypotheses[MODEL_GREEDY]
    ckpt = load_checkpoint(result.captioner.result.best_path)
    assert isinstance(ckpt.model, AttentionCaptionModel)
    assert ckpt.extra["config"]["model"] == "attention"
    a = store.lookup_spatial([13]).reshape(1, 4, 8)
    np.testing.assert_array_equal(ckpt.model.initial_state(a).h, model.initial_state(a).h)


def test_dropout_acts_only_in_a_training_loss_of_the_attention_captioner():
    """Dropout (word vectors and decoder outputs) changes the training loss only: validation and decoding use the
    whole network; the masks come from the generator, so the same generator gives the same loss."""
    from minicap.decode import greedy

    plain, annotations, captions = _model_and_batch(reg=1.0)
    dropped = AttentionCaptionModel.from_config({**plain.config, "dropout": 0.5}, plain.params)
    rng = lambda: np.random.default_rng(1)  # noqa: E731
    assert dropped.loss(annotations, captions, backward=False)[0] == plain.loss(annotations, captions, False)[0]
    assert plain.loss(annotations, captions, rng=rng())[0] == plain.loss(annotations, captions)[0]
    train_a = dropped.loss(annotations, captions, rng=rng())[0]
    assert train_a != plain.loss(annotations, captions)[0]
    assert train_a == dropped.loss(annotations, captions, rng=rng())[0]
    assert train_a != dropped.loss(annotations, captions, rng=np.random.default_rng(2))[0]
    np.testing.assert_array_equal(greedy(dropped, annotations, max_length=6), greedy(plain, annotations, max_length=6))
    assert dropped.copy().dropout == 0.5
    assert (
        AttentionCaptionModel.from_config(
            {k: v for k, v in plain.config.items() if k != "dropout"}, plain.params
        ).dropout
        == 0
    )
    with pytest.raises(ValueError, match="dropout"):
        AttentionCaptionModel(11, 7, dropout=1.0)


def test_the_attention_captioner_trains_with_dropout_from_the_config():
    from test_experiments import TINY

    from minicap.captioner import train_captioner

    coco, store = spatial_colour_data()
    config = TINY.replace(model="attention", attention_size=8, epochs=2, dropout=0.3)
    trained = train_captioner(coco, store, list(range(1, 12)), [12], config)
    assert trained.model.dropout == 0.3
    without = train_captioner(coco, store, list(range(1, 12)), [12], config.replace(dropout=0.0))
    assert not np.array_equal(trained.result.model.params["Wx"], without.result.model.params["Wx"])


def test_the_deep_output_layer_is_a_setting_of_the_attention_captioner():
    """The deep output layer adds L_h (H, W), L_z (F, W), b_out (W,) and makes W_vocab (W, V); the other weights
    start as without it (the same seed); the setting survives config/from_config and reaches the model from the
    configuration and the command line."""
    from minicap.cli import build_parser
    from minicap.cli.flags import choices_from_flag, config_from_flags
    from minicap.config import CaptionerConfig

    plain, _, _ = _model_and_batch()
    deep, annotations, captions = _model_and_batch(deep_output=True)
    assert set(deep.params) - set(plain.params) == {"L_h", "L_z", "b_out"}
    assert deep.params["L_h"].shape == (6, 4) and deep.params["L_z"].shape == (7, 4)
    assert deep.params["W_vocab"].shape == (4, 11) and plain.params["W_vocab"].shape == (6, 11)
    for name in set(plain.params) - {"W_vocab"}:
        np.testing.assert_array_equal(deep.params[name], plain.params[name])
    assert deep.loss(annotations, captions, False)[0] != plain.loss(annotations, captions, False)[0]
    again = AttentionCaptionModel.from_config(deep.config, deep.params)
    assert (
        again.deep_output and again.loss(annotations, captions, False)[0] == deep.loss(annotations, captions, False)[0]
    )
    old = {k: v for k, v in plain.config.items() if k != "deep_output"}  # a checkpoint from before the setting
    assert AttentionCaptionModel.from_config(old, plain.params).deep_output is False
    assert CaptionerConfig(model="attention", deep_output=True).model_options["deep_output"] is True
    assert "deep_output" not in CaptionerConfig(deep_output=True).model_options  # attention only, as attention_size
    args = build_parser().parse_args(["train", "--features", "f", "--captions", "c", "--model", "attention",
                                      "--deep-output", "yes"])  # fmt: skip
    config, given = config_from_flags(args)
    assert config.deep_output is True and "deep_output" in given
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--features", "f", "--captions", "c", "--deep-output", "maybe"])
    chosen = choices_from_flag(["deep-output=no,yes"], CaptionerConfig(model="attention"))  # evaluate --choose
    assert [c.deep_output for c in chosen] == [False, True]


def test_the_attention_captioner_with_a_deep_output_layer_trains_saves_and_loads(tmp_path):
    from test_experiments import TINY

    from minicap.captioner import train_captioner
    from minicap.checkpoint import load_checkpoint

    coco, store = spatial_colour_data()
    config = TINY.replace(model="attention", attention_size=8, epochs=2, deep_output=True)
    trained = train_captioner(coco, store, list(range(1, 12)), [12], config, out_dir=tmp_path)
    assert trained.model.deep_output and {"L_h", "L_z", "b_out"} <= set(trained.model.params)
    ckpt = load_checkpoint(trained.result.best_path)
    assert ckpt.model.deep_output and ckpt.extra["config"]["deep_output"] is True
    a = store.lookup_spatial([13]).reshape(1, 4, 8)
    words = np.array([1])
    scores, _ = ckpt.model.step(words, ckpt.model.initial_state(a))
    expected, _ = trained.model.step(words, trained.model.initial_state(a))
    np.testing.assert_array_equal(scores, expected)


def test_attention_config_is_checked():
    from minicap.config import CaptionerConfig

    with pytest.raises(ValueError, match="model must be"):
        CaptionerConfig(model="transformer")
    with pytest.raises(ValueError, match="LSTM"):
        CaptionerConfig(model="attention", cell="rnn")
    with pytest.raises(ValueError, match="attention_reg"):
        CaptionerConfig(attention_reg=-1.0)
    assert CaptionerConfig(model="attention").model_options["reg"] == 1.0


def test_a_store_without_spatial_maps_is_refused_with_a_clear_message():
    from test_experiments import TINY, colour_data

    from minicap.captioner import captioner_data
    from minicap.vision.store import FeatureStore

    coco, table = colour_data()
    store = FeatureStore(table.image_ids, table.features)
    with pytest.raises(ValueError, match="--spatial"):
        captioner_data(coco, store, [1, 2, 3], [], TINY.replace(model="attention"))


def test_attention_figure_is_drawn(tmp_path):
    from minicap.plots import plot_attention, upsample_attention

    heat = upsample_attention(np.array([0.0, 0.0, 0.0, 1.0]), (2, 2), 32)
    assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0)
    assert heat[24:, 24:].mean() > heat[:8, :8].mean()  # the bottom-right cell is the bright one
    photo = np.full((32, 32, 3), 128, np.uint8)
    path = plot_attention(photo, ["a", "dog", "<end>"], np.full((3, 4), 0.25), (2, 2), tmp_path / "att.png", "a dog")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="alphas"):
        plot_attention(photo, ["a"], np.full((2, 4), 0.25), (2, 2), tmp_path / "x.png")


# ------------------------------------------------------------------------------------------ demo and caption


def test_demo_and_caption_with_attention_figures(tmp_path, capsys):
    """`run_demo` with model="attention" extracts spatial maps, trains the attention captioner; `minicap caption
    --attention` then decodes a JPEG through the same encoder and writes the figure, with the demo's caption."""
    from test_experiments import TINY
    from test_pipeline import make_coco
    from test_vision_extract import make_tiny_encoder

    from minicap.cli import main
    from minicap.experiments import MODEL_GREEDY
    from minicap.pipeline import run_demo

    coco_dir = make_coco(tmp_path / "coco")
    encoder = tmp_path / "tiny.onnx"
    make_tiny_encoder(encoder)
    config = TINY.replace(model="attention", attention_size=8, epochs=8)
    result = run_demo(
        coco_dir, tmp_path / "demo", config=config, encoder=encoder, scorer=None, progress=False, log=None
    )
    assert result.features.name == "features_spatial.pkl"
    assert (tmp_path / "demo" / "attention_maps.png").stat().st_size > 1000  # the demo's attention figure
    test_id = result.split["test"][0]
    photo = coco_dir / "images" / f"{test_id:012d}.jpg"
    figures = tmp_path / "figures"
    args = ["caption", str(photo), "--checkpoint", str(result.checkpoint), "--attention", "--figures", str(figures)]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{photo}: {result.hypotheses[MODEL_GREEDY][test_id]}"
    figure = figures / f"{photo.stem}_attention.png"
    assert out[1] == f"{photo}: attention figure -> {figure}" and figure.stat().st_size > 1000
    # `minicap evaluate --folds K --model attention` on the spatial store the demo made
    args = [
        "evaluate",
        "--folds",
        "2",
        "--features",
        str(result.features),
        "--captions",
        str(coco_dir / "captions.json"),
    ]
    args += ["--model", "attention", "--epochs", "2", "--hidden", "16", "--wordvec", "8", "--attention-size", "8"]
    assert main([*args, "--cider-only", "--min-count", "1"]) == 0
    assert "2-fold cross-validation" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the fast decoder


@pytest.mark.parametrize("lengths", [None, (5, 3, 3, 1, 0)])
def test_fast_decoder_gradients(lengths):
    _assert_within(gradcheck.check_attention_lstm_sequence(lengths=lengths, fast=True), SEQUENCE_MAX_REL)


def test_fast_decoder_equals_the_readable_loop():
    results = gradcheck.check_fast_attention_equals_reference()
    assert len(results) == 2 * (3 + 12)  # h, α, ẑ and the 12 gradients, without and with lengths
    failed = [r.line() for r in results if not r.passed]
    assert not failed, failed


def test_fast_and_readable_models_agree_in_float32():
    model, annotations, captions = _model_and_batch(reg=1.0, dtype=np.float32)
    model.fast = True
    loss_fast, grads_fast = model.loss(annotations, captions)
    model.fast = False
    loss_ref, grads_ref = model.loss(annotations, captions)
    assert float(loss_fast) == pytest.approx(float(loss_ref), rel=1e-5)
    for name in grads_ref:
        np.testing.assert_allclose(grads_fast[name], grads_ref[name], rtol=1e-3, atol=1e-5)


def test_fast_decoder_refuses_unsorted_lengths():
    from minicap.nn import fast

    inputs = _inputs(N=3)
    with pytest.raises(ValueError, match="longest first"):
        fast.attention_lstm_forward(**inputs, lengths=np.array([2, 6, 1]))


def test_beam_search_leaves_the_per_image_fields_in_place_and_that_changes_nothing(monkeypatch):
    """AttentionState.per_image (annotations, projection) are the same for all hypotheses of an image, so beam
    search does not gather them every step; gathering them too gives the very same captions, scores and maps."""
    from minicap.decode import beam_search

    model, annotations, _ = _model_and_batch(reg=1.0)
    kept = beam_search(model, annotations, beam_size=3, max_length=8, return_scores=True, return_attention=True)
    monkeypatch.setattr(AttentionState, "per_image", ())
    gathered = beam_search(model, annotations, beam_size=3, max_length=8, return_scores=True, return_attention=True)
    for a, b in zip(kept, gathered, strict=True):
        np.testing.assert_array_equal(a, b)

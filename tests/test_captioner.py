"""minicap.captioner: the one recipe behind `minicap train`, `demo` and `evaluate` — vocabulary and datasets of a
split, a new captioner, the validation CIDEr-D that picks its best epoch, and training it with the one Trainer.

On the synthetic colour COCO of test_experiments.py (features in a FeatureTable; no files, no ONNX).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_experiments import TINY, colour_data

from minicap.captioner import (
    CaptionerData,
    ValidationCider,
    captioner_data,
    new_captioner,
    train_captioner,
)
from minicap.checkpoint import load_checkpoint, save_checkpoint
from minicap.coco import CocoCaptions
from minicap.dataset import FeatureTable, MissingFeaturesError, feature_statistics
from minicap.decode import greedy
from minicap.metrics import CiderD
from minicap.models import CaptionModel, LSTMLanguageModel, State
from minicap.models.base import log_frequency_bias
from minicap.text import tokenize

TRAIN, VAL = list(range(1, 13)), [13, 14, 15]


def assert_same_params(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"parameter {name} differs"


# ----------------------------------------------------------------------------------------------- the data of a split


def test_captioner_data_builds_the_vocabulary_from_the_training_captions_only():
    coco, table = colour_data()
    coco.captions.append((14, "a purple picture"))  # a word only a validation image has
    data = captioner_data(coco, table, TRAIN, VAL, TINY)
    assert isinstance(data, CaptionerData)
    assert "purple" not in data.vocab and "red" in data.vocab and data.vocab.num_captions == 36
    assert len(data.train) == 36 and len(data.val) == 10
    assert set(data.train.image_ids.tolist()) == set(TRAIN) and set(data.val.image_ids.tolist()) == set(VAL)
    assert data.val.image_ids[-1] == 14 and data.vocab.decode(data.val.captions[-1]) == "a <UNK> picture"
    assert isinstance(data.val_metric, ValidationCider) and data.val_metric.image_ids == VAL
    # min_count and max_length come from the configuration; a given vocabulary is used as it is.
    rare = captioner_data(coco, table, TRAIN, VAL, TINY.replace(min_count=13, max_length=2))
    assert rare.vocab.idx_to_word[4:] == ["a"]  # 24 times; every other word occurs 12 times in training
    assert rare.train.captions.shape[1] == 2 + 2 and rare.vocab.decode(rare.train.captions[0]) == "a <UNK>"
    again = captioner_data(coco, table, [1, 2, 3], VAL, TINY, vocab=data.vocab)
    assert again.vocab is data.vocab


def test_captioner_data_without_validation_images_or_with_loss_early_stopping():
    coco, table = colour_data()
    no_val = captioner_data(coco, table, TRAIN, [], TINY)
    assert no_val.val is None and no_val.val_metric is None
    by_loss = captioner_data(coco, table, TRAIN, VAL, TINY.replace(early_stopping="loss"))
    assert by_loss.val is not None and by_loss.val_metric is None
    with pytest.raises(ValueError, match="1 images are in both the train and the val split"):
        captioner_data(coco, table, TRAIN, [12, 13], TINY)


def test_captions_without_features_give_one_error_before_any_model_exists():
    rng = np.random.default_rng(0)
    ids = np.arange(100, 150)
    coco = CocoCaptions(
        {int(i): {"id": int(i), "file_name": f"{i}.jpg"} for i in ids}, [(int(i), "a b c") for i in ids]
    )
    partial = FeatureTable(ids[:40], rng.standard_normal((40, 8)))  # images 140..149 have no features
    with pytest.raises(MissingFeaturesError) as info:
        captioner_data(coco, partial, ids, [], TINY)
    message = str(info.value)
    assert "10 of 50 requested image ids have no features" in message
    assert "10 training captions belong to these images" in message and "first: 140, 141, 142, 143, 144" in message
    with pytest.raises(MissingFeaturesError, match="10 validation captions belong to these images"):
        captioner_data(coco, partial, ids[:30], ids[30:], TINY)


# ----------------------------------------------------------------------------------------------- a new captioner


def test_new_captioner_is_the_configured_model_with_training_statistics_only():
    coco, table = colour_data()
    data = captioner_data(coco, table, TRAIN, VAL, TINY)
    model = new_captioner(TINY.replace(cell="rnn", seed=3), data.vocab, data.train)
    assert isinstance(model, CaptionModel)
    assert (model.cell, model.hidden_size, model.wordvec_size, model.seed) == ("rnn", 32, 16, 3)
    assert (model.vocab_size, model.feature_size) == (len(data.vocab), 8)
    np.testing.assert_array_equal(
        model.params["b_vocab"], log_frequency_bias(data.vocab.word_frequencies()).astype(np.float32)
    )
    mean, std = feature_statistics(data.train.image_ids, table)
    np.testing.assert_allclose(model.feature_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(model.feature_std, std, rtol=1e-6)
    everything = feature_statistics(table.image_ids, table)[0]
    assert not np.allclose(model.feature_mean, everything, rtol=1e-3)  # validation images left out
    plain = new_captioner(TINY.replace(standardise_features=False), data.vocab, data.train)
    assert plain.feature_mean is None and plain.constants == {}
    assert_same_params(
        new_captioner(TINY, data.vocab, data.train).params, new_captioner(TINY, data.vocab, data.train).params
    )


# ----------------------------------------------------------------------------------------------- validation CIDEr-D


def test_validation_cider_is_the_mean_cider_d_of_greedy_captions():
    coco, table = colour_data()
    data = captioner_data(coco, table, TRAIN, VAL, TINY)
    model = new_captioner(TINY, data.vocab, data.train)
    metric = ValidationCider(data.vocab, VAL, coco.references(), table.lookup(VAL), 7, corpus_ids=TRAIN)
    refs = coco.references()
    cider = CiderD([tokenize(c) for c in refs[i]] for i in sorted(TRAIN + VAL))  # df: training + validation images
    ids = greedy(model, table.lookup(VAL), max_length=7)
    expected = np.mean(
        [
            cider.score(data.vocab.decode_tokens(row), [tokenize(c) for c in refs[i]])
            for row, i in zip(ids, VAL, strict=True)
        ]
    )
    assert metric(model) == pytest.approx(expected, rel=1e-12)
    # What captioner_data builds for the configuration: the same metric.
    assert data.val_metric(model) == pytest.approx(
        ValidationCider(data.vocab, VAL, refs, table.lookup(VAL), TINY.decode_max_length, corpus_ids=TRAIN)(model)
    )


class Scripted:
    """A decodable model that writes the same token ids for every image; its state counts the steps."""

    def __init__(self, vocab_size: int, ids: list[int]) -> None:
        self.vocab_size, self.ids = vocab_size, ids

    def initial_state(self, features: np.ndarray) -> State:
        return State(np.zeros(len(features), dtype=np.int64), None)

    def step(self, words: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits = np.zeros((len(words), self.vocab_size))
        logits[:, self.ids[int(state.h[0])]] = 10.0
        return logits, State(state.h + 1, None)


def test_validation_cider_needs_a_corpus_beyond_one_image():
    coco, table = colour_data()
    refs = coco.references()
    data = captioner_data(coco, table, TRAIN, VAL, TINY)
    perfect = Scripted(len(data.vocab), data.vocab.encode(tokenize(refs[13][0]))[1:])  # a reference of image 13
    alone = ValidationCider(data.vocab, [13], refs, table.lookup([13]), 7)
    assert alone(perfect) == 0.0  # one image: every n-gram has IDF log(1/1) = 0
    assert ValidationCider(data.vocab, [13], refs, table.lookup([13]), 7, corpus_ids=TRAIN)(perfect) > 1.0
    with pytest.raises(ValueError, match="2 validation ids but 1 feature rows"):
        ValidationCider(data.vocab, [13, 14], refs, table.lookup([13]))


# ----------------------------------------------------------------------------------------------- training


def test_train_captioner_returns_the_best_epoch_and_writes_the_run(tmp_path):
    coco, table = colour_data()
    config = TINY.replace(epochs=12)
    trained = train_captioner(coco, table, TRAIN, VAL, config, out_dir=tmp_path, extra={"note": 1})
    result = trained.result
    assert result.stopped == "completed" and result.epochs == 12 and result.criterion == "val_metric"
    assert result.history["initial"]["val_metric"] is not None
    best = load_checkpoint(tmp_path / "best.npz")
    assert best.epoch == result.best_epoch and best.metrics["val_metric"] == result.best_score
    assert_same_params(trained.model.params, best.model.params)  # the returned model is the best epoch's
    assert trained.vocab == best.vocab and best.extra == {"config": config.to_dict(), "note": 1}
    assert best.train_config == config.train_config().to_dict()
    for name in ("last.npz", "history.json", "training_curves.png"):
        assert (tmp_path / name).is_file(), name
    assert train_captioner(coco, table, TRAIN, VAL, config).model.params.keys() == trained.model.params.keys()


def test_train_captioner_resumes_exactly_after_a_time_budget(tmp_path):
    coco, table = colour_data()
    config = TINY.replace(epochs=3, batch_size=10)  # 36 training captions: 4 updates per epoch
    straight = train_captioner(coco, table, TRAIN, VAL, config, out_dir=tmp_path / "a")
    first = train_captioner(coco, table, TRAIN, VAL, config, out_dir=tmp_path / "b", max_seconds=1e-9)
    assert first.result.stopped == "time budget" and first.result.steps == 1
    calls = 1
    while True:
        resumed = train_captioner(coco, table, TRAIN, VAL, config, resume=tmp_path / "b" / "last.npz", max_seconds=1e-9)
        calls += 1
        if resumed.result.stopped != "time budget":
            break
    assert calls == 12 and resumed.result.stopped == "completed"
    assert_same_params(resumed.result.model.params, straight.result.model.params)
    assert_same_params(resumed.model.params, straight.model.params)  # the best epoch, chosen alike
    assert resumed.result.best_epoch == straight.result.best_epoch
    assert load_checkpoint(tmp_path / "b" / "best.npz").extra == load_checkpoint(tmp_path / "a" / "best.npz").extra


def test_train_captioner_refuses_to_resume_what_is_not_a_captioner(tmp_path):
    coco, table = colour_data()
    save_checkpoint(tmp_path / "lm.npz", LSTMLanguageModel(10, 4, 4))
    with pytest.raises(ValueError, match="does not hold a captioner .*LSTMLanguageModel"):
        train_captioner(coco, table, TRAIN, VAL, TINY, resume=tmp_path / "lm.npz")

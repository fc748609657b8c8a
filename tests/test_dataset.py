"""minicap.dataset: minibatches, the Dataset interface (ArrayDataset, CaptionDataset), FeatureTable and the feature
checks that run before training (MissingFeaturesError, check_features_available, feature_statistics)."""

from __future__ import annotations

import numpy as np
import pytest

from minicap.dataset import (
    ArrayDataset,
    CaptionBatch,
    CaptionDataset,
    Dataset,
    FeatureTable,
    MissingFeaturesError,
    caption_indices_for_images,
    check_features_available,
    feature_statistics,
    minibatches,
    missing_feature_ids,
)
from minicap.text import Vocabulary, encode_captions
from minicap.tokens import END, START

# ----------------------------------------------------------------------------------------------- minibatches


def test_minibatches_cover_each_index_once_per_epoch_and_reshuffle():
    rng = np.random.default_rng(0)
    epochs = [list(minibatches(10, 3, rng)) for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [3, 3, 3, 1]
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(10))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    dropped = list(minibatches(10, 3, rng, drop_last=True))
    assert [len(b) for b in dropped] == [3, 3, 3]
    assert len(np.unique(np.concatenate(dropped))) == 9


def test_minibatches_resume_from_saved_generator_state():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state  # what a checkpoint stores before an epoch starts
    first = [b.copy() for b in minibatches(20, 4, rng)]
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = state
    resumed = list(minibatches(20, 4, resumed_rng))
    for a, b in zip(first, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        minibatches(5, 0, rng)


def test_caption_indices_for_images_selects_every_caption_of_the_images():
    per_caption = np.array([7, 3, 7, 5, 3, 9])
    np.testing.assert_array_equal(caption_indices_for_images(per_caption, [3, 7]), [0, 1, 2, 4])
    np.testing.assert_array_equal(caption_indices_for_images(per_caption, np.array([9, 42])), [5])
    assert caption_indices_for_images(per_caption, []).shape == (0,)


# ----------------------------------------------------------------------------------------------- the interface


class _Squares(Dataset):
    """The smallest Dataset: only __len__ and batch, everything else inherited."""

    def __len__(self) -> int:
        return 7

    def batch(self, key):
        return (np.asarray(key) ** 2,)


def test_dataset_base_epochs_in_order_and_no_fingerprint():
    ds = _Squares()
    rng = np.random.default_rng(1)
    epochs = [ds.epoch(rng, 3) for _ in range(2)]
    for keys in epochs:
        assert [len(k) for k in keys] == [3, 3, 1] and len(keys) == ds.batches_per_epoch(3)
        np.testing.assert_array_equal(np.sort(np.concatenate(keys)), np.arange(7))  # every example once
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))  # reshuffled
    # the same generator state gives the same epoch (what an exact resume relies on)
    np.testing.assert_array_equal(np.concatenate(ds.epoch(np.random.default_rng(1), 3)), np.concatenate(epochs[0]))
    assert ds.batches_per_epoch(7) == 1 and ds.batches_per_epoch(2) == 4
    ordered = list(ds.in_order(3))
    assert [k.tolist() for k in ordered] == [[0, 1, 2], [3, 4, 5], [6]]
    np.testing.assert_array_equal(ds.batch(ordered[1])[0], [9, 16, 25])
    assert ds.fingerprint() is None
    with pytest.raises(NotImplementedError):
        len(Dataset())
    with pytest.raises(NotImplementedError):
        Dataset().batch(np.arange(2))


def test_array_dataset_rows_and_fingerprint():
    x = np.arange(12.0).reshape(6, 2)
    y = np.arange(6) * 10
    ds = ArrayDataset(x, y)
    assert len(ds) == 6
    bx, by = ds.batch(np.array([4, 1]))
    np.testing.assert_array_equal(bx, x[[4, 1]])
    np.testing.assert_array_equal(by, [40, 10])
    assert ds.fingerprint() == ArrayDataset(x.copy(), y.copy()).fingerprint()  # the same data, the same string
    assert ds.fingerprint() != ArrayDataset(x, y + 1).fingerprint()
    assert ds.fingerprint() != ArrayDataset(x.astype(np.float32), y).fingerprint()  # dtype counts too
    with pytest.raises(ValueError, match="same length"):
        ArrayDataset(x, y[:5])
    with pytest.raises(ValueError, match="same length"):
        ArrayDataset()


# ----------------------------------------------------------------------------------------------- features


def test_feature_table_lookup_in_requested_order_and_missing_ids():
    feats = np.arange(12.0).reshape(3, 4)
    table = FeatureTable(np.array([30, 10, 20]), feats)
    assert len(table) == 3
    np.testing.assert_array_equal(table.lookup([20, 30, 20]), feats[[2, 0, 2]])
    np.testing.assert_array_equal(table([10]), feats[[1]])  # callable like its lookup
    with pytest.raises(MissingFeaturesError) as info:
        table.lookup([10, 1, 2, 3, 4, 5, 6, 7])
    err = info.value
    assert isinstance(err, KeyError) and err.missing == [1, 2, 3, 4, 5, 6, 7]
    assert str(err).startswith("7 of 8 requested image ids have no features in this feature table")
    assert "(first: 1, 2, 3, 4, 5, ...)" in str(err)  # not KeyError's quoted repr
    with pytest.raises(ValueError, match=r"need features \(n, F\)"):
        FeatureTable(np.array([1, 2]), np.zeros((3, 4)))


def test_missing_feature_ids_and_check_features_available(rng):
    table = FeatureTable(np.array([1, 2]), rng.standard_normal((2, 4)))
    per_caption = np.array([1, 1, 7, 7, 7, 2, 9])
    assert missing_feature_ids(np.array([2, 1, 1]), table) == []
    assert missing_feature_ids(per_caption, table) == [7, 9]
    check_features_available(np.array([2, 1, 1]), table)  # all there: no error
    with pytest.raises(MissingFeaturesError) as info:
        check_features_available(per_caption, table, what="validation")
    assert info.value.missing == [7, 9]
    assert str(info.value).startswith(
        "2 of 4 requested image ids have no features in the features given "
        "(4 validation captions belong to these images) (first: 7, 9)"
    )
    assert "minicap extract" in str(info.value)  # and how to fix it


def test_feature_statistics_count_each_image_once_in_chunks():
    feats = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 3.0], [100.0, -100.0]], dtype=np.float32)
    table = FeatureTable(np.array([10, 20, 30, 40]), feats)
    per_caption = np.array([10, 10, 10, 10, 20, 30, 30])  # image 10 has four captions; image 40 is not asked for
    mean, std = feature_statistics(per_caption, table)
    assert mean.dtype == np.float64 and std.shape == (2,)
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(std, feats[:3].astype(np.float64).std(axis=0))
    for chunk in (1, 2):  # chunked passes give the same exact numbers
        m, s = feature_statistics(per_caption, table, chunk=chunk)
        np.testing.assert_allclose(m, mean, rtol=1e-15)
        np.testing.assert_allclose(s, std, rtol=1e-15)
    with pytest.raises(ValueError, match="no images"):
        feature_statistics(np.array([], dtype=np.int64), table)
    with pytest.raises(MissingFeaturesError, match="first: 50"):
        feature_statistics(np.array([10, 50]), table)


# ----------------------------------------------------------------------------------------------- captions


def test_caption_dataset_batches_features_and_trims_padding(rng):
    vocab = Vocabulary.from_captions(["a b c d e f g"])
    enc = encode_captions([(1, "a b"), (2, "a b c d e f g"), (3, "c")], vocab, max_length=8)
    feats = rng.standard_normal((3, 5)).astype(np.float32)
    table = FeatureTable(np.array([3, 1, 2]), feats)
    ds = CaptionDataset(enc.captions, enc.image_ids, table)
    assert len(ds) == 3 and ds.feature_size == 5
    batch = ds.batch(np.array([2, 0]))
    assert isinstance(batch, CaptionBatch) and CaptionBatch._fields == ("features", "captions")
    np.testing.assert_array_equal(ds.image_ids[[2, 0]], [3, 1])
    np.testing.assert_array_equal(batch.features, feats[[0, 1]])  # the rows of images 3 and 1
    # longest caption in this batch: <START> a b <END> -> 4 columns, not 10
    assert batch.captions.shape == (2, 4)
    np.testing.assert_array_equal(batch.captions[1], enc.captions[0, :4])
    features, captions = batch  # unpacks into the arguments of model.loss(features, captions)
    assert features is batch.features and captions is batch.captions
    assert ds.batch(np.array([1])).captions.shape == (1, 9)
    rows = caption_indices_for_images(ds.image_ids, [1, 3])  # one split's captions
    sub = CaptionDataset(ds.captions[rows], ds.image_ids[rows], table)
    np.testing.assert_array_equal(sub.image_ids, [1, 3])


def test_caption_dataset_fingerprint_follows_the_captions_not_the_features(rng):
    vocab = Vocabulary.from_captions(["a b c"])
    enc = encode_captions([(1, "a b"), (2, "c"), (1, "b c a")], vocab, max_length=4)
    table = FeatureTable(np.array([1, 2]), rng.standard_normal((2, 3)))
    other_table = FeatureTable(np.array([1, 2]), rng.standard_normal((2, 3)))
    ds = CaptionDataset(enc.captions, enc.image_ids, table)
    assert ds.fingerprint() == CaptionDataset(enc.captions.copy(), enc.image_ids.copy(), other_table).fingerprint()
    assert ds.fingerprint() != CaptionDataset(enc.captions[::-1], enc.image_ids[::-1], table).fingerprint()
    assert ds.fingerprint() != CaptionDataset(enc.captions, np.array([2, 2, 1]), table).fingerprint()
    # The features have their own fingerprint: other values for these images differ, extra images do not count.
    assert ds.features_fingerprint() != CaptionDataset(enc.captions, enc.image_ids, other_table).features_fingerprint()
    wider = FeatureTable(np.array([1, 2, 3]), np.vstack([table.features, rng.standard_normal((1, 3))]))
    assert ds.features_fingerprint() == CaptionDataset(enc.captions, enc.image_ids, wider).features_fingerprint()


def test_caption_dataset_fails_early_on_missing_features(rng):
    table = FeatureTable(np.array([1, 2]), rng.standard_normal((2, 4)))
    with pytest.raises(MissingFeaturesError, match=r"2 of 3 requested image ids have no features .*\(first: 5, 9\)"):
        table.lookup([1, 9, 5, 9])
    captions = np.array([[START, 4, END], [START, 5, END], [START, 4, END]], dtype=np.int32)
    with pytest.raises(MissingFeaturesError, match="first: 7\\)"):
        CaptionDataset(captions, np.array([1, 7, 2]), table)
    with pytest.raises(MissingFeaturesError, match="validation captions"):
        CaptionDataset(captions, np.array([1, 7, 2]), table, what="validation")
    with pytest.raises(ValueError, match="need captions"):
        CaptionDataset(captions, np.array([1, 2]), table)
    with pytest.raises(TypeError, match="integer token ids"):
        CaptionDataset(captions.astype(np.float32), np.array([1, 2, 1]), table)
    with pytest.raises(ValueError, match="unique"):
        FeatureTable(np.array([1, 1]), np.zeros((2, 3)))

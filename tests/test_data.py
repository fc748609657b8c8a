"""minicap.data: COCO loading, tokenization, Vocabulary, encoding, splits, minibatches, CaptionDataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from minicap.data import (
    END,
    NULL,
    SPECIAL_TOKENS,
    START,
    UNK,
    CaptionDataset,
    CocoFormatError,
    FeatureTable,
    MissingFeaturesError,
    Vocabulary,
    caption_indices_for_images,
    detokenize,
    encode_captions,
    kfold_by_image,
    load_coco_captions,
    minibatches,
    split_by_image,
    tokenize,
)

# ----------------------------------------------------------------------------------------------- loading


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _coco(images, annotations) -> dict:
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations}


def _image(i: int, year: int = 2017) -> dict:
    name = f"{i:012d}.jpg" if year == 2017 else f"COCO_val2014_{i:012d}.jpg"
    return {"id": i, "file_name": name, "width": 640, "height": 480, "coco_url": f"http://x/{name}"}


def test_load_2014_format_drops_and_counts_empty_captions(tmp_path):
    anns = [
        {"image_id": 1, "id": 10, "caption": "A dog on a couch."},
        {"image_id": 1, "id": 11, "caption": "   "},
        {"image_id": 2, "id": 12, "caption": "Two cats."},
        {"image_id": 2, "id": 13, "caption": "..."},
    ]
    data = load_coco_captions(
        _write_json(tmp_path / "c.json", _coco([_image(1, 2014), _image(2, 2014), _image(3)], anns))
    )
    assert data.num_images == 3
    assert data.num_captions == 2
    assert data.num_dropped_empty == 2
    assert data.captions == [(1, "A dog on a couch."), (2, "Two cats.")]
    assert data.images[1]["file_name"] == "COCO_val2014_000000000001.jpg"
    assert data.image_ids().tolist() == [1, 2]  # image 3 has no caption
    assert data.references() == {1: ["A dog on a couch."], 2: ["Two cats."]}
    assert "2 empty captions dropped" in data.summary()
    sub = data.subset([2])
    assert sub.captions == [(2, "Two cats.")] and list(sub.images) == [2]
    with pytest.raises(KeyError, match="1 image ids"):
        data.subset([99])


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"images": []}, "top-level key 'annotations' is missing"),
        ({"annotations": []}, "top-level key 'images' is missing"),
        ([{"image_id": 1, "caption": "a"}], "COCO \\*results\\* file"),
        (_coco([{"file_name": "x.jpg"}], []), r"images\[0\] has no 'id' key"),
        (_coco([_image(1)], [{"image_id": 1, "bbox": [0, 0, 1, 1]}]), "no 'caption' key.*instances"),
        (_coco([_image(1)], [{"caption": "a dog"}]), "no 'image_id' key"),
        (_coco([_image(1)], [{"image_id": "1", "caption": "a dog"}]), "integer id"),
        (_coco([_image(1), _image(1)], []), "listed twice"),
        (_coco([_image(1)], [{"image_id": 1, "caption": 5}]), "not text"),
    ],
)
def test_load_rejects_what_is_not_coco_captions(tmp_path, obj, message):
    with pytest.raises(CocoFormatError, match=message):
        load_coco_captions(_write_json(tmp_path / "bad.json", obj))


def test_load_reports_unknown_image_ids_with_count_and_first_ids(tmp_path):
    anns = [{"image_id": i, "caption": "a cat"} for i in (1, 7, 5, 7, 9, 8, 6, 11)]
    with pytest.raises(CocoFormatError, match=r"7 annotations .* \(6 distinct ids; first: \[5, 6, 7, 8, 9\]\)"):
        load_coco_captions(_write_json(tmp_path / "c.json", _coco([_image(1)], anns)))


def test_load_rejects_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        load_coco_captions(path)


def test_load_shared_coco_subset(shared_coco):
    data = load_coco_captions(shared_coco / "captions.json")
    assert data.num_images == 271
    assert data.num_captions == 1355
    assert data.num_dropped_empty == 0
    refs = data.references()
    assert len(refs) == 271 and all(len(c) == 5 for c in refs.values())
    for image_id, rec in data.images.items():
        assert rec["file_name"] == f"{image_id:012d}.jpg"
        assert (shared_coco / "images" / rec["file_name"]).exists()
    vocab = Vocabulary.from_captions((t for _, t in data.captions), min_count=2)
    enc = encode_captions(data.captions, vocab, max_length=16)
    assert enc.captions.shape == (1355, 18)
    assert enc.num_dropped_empty == 0
    # Real captions are rarely longer than 16 words.
    assert 0 <= enc.num_truncated < 0.05 * 1355


# ----------------------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man riding a horse.", ["a", "man", "riding", "a", "horse"]),
        ('Dogs, cats; birds: (and) "fish"!?', ["dogs", "cats", "birds", "and", "fish"]),
        ("A MAN In THE Park", ["a", "man", "in", "the", "park"]),
        ("  spaced\tout \n words  ", ["spaced", "out", "words"]),
        # clitics split as in the Penn Treebank; typographic apostrophes count as apostrophes
        ("A man's dog", ["a", "man", "'s", "dog"]),
        ("A man’s dog", ["a", "man", "'s", "dog"]),
        ("it's here, don't go", ["it", "'s", "here", "do", "n't", "go"]),
        ("the boys' toys at 'noon'", ["the", "boys", "toys", "at", "noon"]),
        ("at five o'clock", ["at", "five", "o'clock"]),
        # hyphens and decimal points survive only inside words / numbers
        ("a t-shirt - the two-way street --", ["a", "t-shirt", "the", "two-way", "street"]),
        ("3.5 inches, 1,000 people. 2.", ["3.5", "inches", "1,000", "people", "2"]),
        # unicode: accents kept, full-width folded (NFKC), other scripts with their combining marks kept
        ("Café in der Straße", ["café", "in", "der", "straße"]),
        ("ＡＢＣ ｆｕｌｌ", ["abc", "full"]),
        ("Cafe\u0301", ["café"]),  # NFKC composes e + combining acute
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs are combining marks
        ("日本語 の テスト。", ["日本語", "の", "テスト"]),
        ("snake_case & a/b #1", ["snake", "case", "a", "b", "1"]),
        ("", []),
        ("   \t\n ", []),
        ("... !!! --", []),
    ],
)
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_detokenize_glues_clitics_back():
    assert detokenize(["a", "man", "'s", "dog"]) == "a man's dog"
    assert detokenize(["do", "n't", "go"]) == "don't go"
    assert detokenize(["'s", "x"]) == "'s x"  # nothing to glue onto
    assert detokenize([]) == ""


# ----------------------------------------------------------------------------------------------- vocabulary

TRAIN_TEXTS = ["a dog on a couch", "a cat on a mat", "A dog.", "zebra crossing", ""]


def test_vocabulary_specials_min_count_and_order():
    vocab = Vocabulary.from_captions(TRAIN_TEXTS, min_count=2)
    assert tuple(vocab.idx_to_word[:4]) == SPECIAL_TOKENS
    assert (NULL, START, END, UNK) == (0, 1, 2, 3)
    assert vocab.word_to_idx["<END>"] == END
    # counts: a=5, dog=2, on=2; cat, couch, mat, zebra, crossing once -> <UNK>
    assert vocab.idx_to_word[4:] == ["a", "dog", "on"]
    assert len(vocab) == 7
    assert "cat" not in vocab and "dog" in vocab
    freqs = vocab.word_frequencies()
    assert freqs.shape == (7,) and freqs.dtype == np.float64
    # NULL, START never targets; END once per non-empty caption (4); UNK = 5 rare words
    np.testing.assert_array_equal(freqs, [0, 0, 4, 5, 5, 2, 2])
    assert vocab.num_captions == 4
    full = Vocabulary.from_captions(TRAIN_TEXTS, min_count=1)
    assert len(full) == 4 + 8 and full.word_frequencies()[UNK] == 0
    assert len(Vocabulary.from_captions(TRAIN_TEXTS, max_words=2)) == 6


def test_vocabulary_encode_decode_round_trip_and_unknown_words():
    vocab = Vocabulary.from_captions(TRAIN_TEXTS, min_count=2)
    ids = vocab.encode(tokenize("A dog on a giraffe"))
    assert ids[0] == START and ids[-1] == END
    assert ids[1:-1] == [vocab.word_to_idx[w] for w in ("a", "dog", "on", "a")] + [UNK]
    assert vocab.decode(ids) == "a dog on a <UNK>"
    known = vocab.encode(["a", "dog", "on", "a", "dog"])
    assert vocab.decode(known) == "a dog on a dog"
    # padding and anything after <END> are ignored; <START>/<NULL> skipped
    assert vocab.decode([START, 4, 5, END, 6, 6, NULL]) == "a dog"
    assert vocab.decode([NULL, START, 5]) == "dog"
    with pytest.raises(IndexError, match="outside this vocabulary"):
        vocab.decode([START, 99])
    clitic_vocab = Vocabulary.from_captions(["a man's dog"])
    assert clitic_vocab.decode(clitic_vocab.encode(tokenize("A man’s dog"))) == "a man's dog"


def test_vocabulary_to_dict_from_dict_is_json_round_trip():
    vocab = Vocabulary.from_captions(TRAIN_TEXTS, min_count=2)
    restored = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    assert restored.word_to_idx == vocab.word_to_idx and restored.min_count == 2
    np.testing.assert_array_equal(restored.word_frequencies(), vocab.word_frequencies())
    bad = vocab.to_dict() | {"words": ["a", *vocab.idx_to_word[1:]]}
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary.from_dict(bad)
    with pytest.raises(ValueError, match="format"):
        Vocabulary.from_dict({"words": []})
    with pytest.raises(ValueError, match="more than once"):
        Vocabulary([*SPECIAL_TOKENS, "a", "a"], [0] * 6)


def test_vocabulary_rejects_special_tokens_in_captions_and_bad_min_count():
    with pytest.raises(ValueError, match="special token"):
        Vocabulary.build([["<END>", "dog"]])
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build([["dog"]], min_count=0)


# ----------------------------------------------------------------------------------------------- encoding


def test_encode_captions_pads_truncates_and_counts():
    vocab = Vocabulary.from_captions(["a b c d e f"])
    captions = [(7, "a b"), (8, "  "), (9, "a b c d e f"), (7, "f"), (9, "?!")]
    enc = encode_captions(captions, vocab, max_length=4)
    a, b, c, d, f = (vocab.word_to_idx[w] for w in "abcdf")
    expected = [
        [START, a, b, END, NULL, NULL],
        [START, a, b, c, d, END],  # 6 words cut to 4, still ends with <END>
        [START, f, END, NULL, NULL, NULL],
    ]
    assert enc.captions.dtype == np.int32
    np.testing.assert_array_equal(enc.captions, expected)
    np.testing.assert_array_equal(enc.image_ids, [7, 9, 7])
    assert enc.num_dropped_empty == 2
    assert enc.num_truncated == 1
    assert "1 truncated, 2 empty dropped" in enc.summary()
    with pytest.raises(ValueError, match="max_length"):
        encode_captions(captions, vocab, max_length=0)
    empty = encode_captions([], vocab, max_length=3)
    assert empty.captions.shape == (0, 5) and empty.image_ids.shape == (0,)


# ----------------------------------------------------------------------------------------------- splits


def test_split_by_image_is_deterministic_disjoint_covering_and_order_free():
    per_caption = np.repeat(np.arange(100, 200), 5)  # 100 images, 5 captions each
    split = split_by_image(per_caption, (0.8, 0.1, 0.1), seed=3)
    assert list(split) == ["train", "val", "test"]
    assert [len(v) for v in split.values()] == [80, 10, 10]
    together = np.concatenate(list(split.values()))
    assert len(np.unique(together)) == 100  # disjoint
    np.testing.assert_array_equal(np.sort(together), np.arange(100, 200))  # covering
    shuffled = np.random.default_rng(0).permutation(per_caption)
    again = split_by_image(list(shuffled), (0.8, 0.1, 0.1), seed=3)
    for name in split:
        np.testing.assert_array_equal(split[name], again[name])
        assert split[name].dtype == np.int64
    other = split_by_image(per_caption, (0.8, 0.1, 0.1), seed=4)
    assert not np.array_equal(split["test"], other["test"])
    # all captions of one image land in one split
    for name, ids in split.items():
        rows = caption_indices_for_images(per_caption, ids)
        assert len(rows) == 5 * len(ids)
        assert set(per_caption[rows].tolist()) == set(ids.tolist()), name


def test_split_by_image_counts_rounding_and_errors():
    ids = np.arange(7)
    assert [len(v) for v in split_by_image(ids, (0.5, 0.5)).values()] == [4, 3]  # largest remainder
    assert [len(v) for v in split_by_image(ids, [5, 1, 1]).values()] == [5, 1, 1]
    named = split_by_image(ids, [3, 2, 1, 1], names=["a", "b", "c", "d"])
    assert list(named) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="sum to 6, but there are 7 images"):
        split_by_image(ids, [4, 1, 1])
    with pytest.raises(ValueError, match="not 1"):
        split_by_image(ids, (0.5, 0.2))
    with pytest.raises(ValueError, match="names"):
        split_by_image(ids, [3, 2, 1, 1])


def test_kfold_by_image_partitions_every_image_once():
    ids = np.repeat(np.arange(23) * 10, 3)
    folds = kfold_by_image(ids, k=5, seed=1)
    assert len(folds) == 5
    tests = [t for _, t in folds]
    assert sorted(len(t) for t in tests) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(23) * 10)
    for train, test in folds:
        assert np.intersect1d(train, test).size == 0
        np.testing.assert_array_equal(np.union1d(train, test), np.arange(23) * 10)
    again = kfold_by_image(ids[::-1], k=5, seed=1)
    for (tr1, te1), (tr2, te2) in zip(folds, again, strict=True):
        np.testing.assert_array_equal(tr1, tr2)
        np.testing.assert_array_equal(te1, te2)
    with pytest.raises(ValueError, match="k must be"):
        kfold_by_image(ids, k=1)
    with pytest.raises(ValueError, match="k must be"):
        kfold_by_image(ids, k=24)


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


# ----------------------------------------------------------------------------------------------- dataset


def test_caption_dataset_batches_features_and_trims_padding(rng):
    vocab = Vocabulary.from_captions(["a b c d e f g"])
    enc = encode_captions([(1, "a b"), (2, "a b c d e f g"), (3, "c")], vocab, max_length=8)
    feats = rng.standard_normal((3, 5)).astype(np.float32)
    table = FeatureTable(np.array([3, 1, 2]), feats)
    ds = CaptionDataset(enc.captions, enc.image_ids, table.lookup)
    assert len(ds) == 3
    batch = ds.batch(np.array([2, 0]))
    np.testing.assert_array_equal(batch.image_ids, [3, 1])
    np.testing.assert_array_equal(batch.features, feats[[0, 1]])
    # longest caption in this batch: <START> a b <END> -> 4 columns, not 10
    assert batch.captions.shape == (2, 4)
    np.testing.assert_array_equal(batch.captions[1], enc.captions[0, :4])
    assert ds.batch(np.array([1])).captions.shape == (1, 9)
    sub = ds.subset([1, 3])
    np.testing.assert_array_equal(sub.image_ids, [1, 3])


def test_caption_dataset_fails_early_on_missing_features(rng):
    table = FeatureTable(np.array([1, 2]), rng.standard_normal((2, 4)))
    with pytest.raises(MissingFeaturesError, match=r"2 of 3 requested image ids have no features .*\(first: 5, 9\)"):
        table.lookup([1, 9, 5, 9])
    captions = np.array([[START, 4, END], [START, 5, END], [START, 4, END]], dtype=np.int32)
    with pytest.raises(MissingFeaturesError, match="first: 7\\)"):
        CaptionDataset(captions, np.array([1, 7, 2]), table.lookup)
    with pytest.raises(ValueError, match="need captions"):
        CaptionDataset(captions, np.array([1, 2]), table.lookup)
    with pytest.raises(ValueError, match="unique"):
        FeatureTable(np.array([1, 1]), np.zeros((2, 3)))

"""minicap.coco: COCO captions files, COCO folders and photo paths, and splits BY IMAGE (split_by_image,
kfold_by_image, fold_splits, split_images), and encode_splits (vocabulary from the training captions only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicap.coco import (
    DOWNLOAD_HINT,
    CocoCaptions,
    CocoDataMissing,
    CocoFolder,
    CocoFormatError,
    coco_image_paths,
    coco_photo_path,
    encode_splits,
    find_coco,
    fold_splits,
    kfold_by_image,
    load_coco_captions,
    split_by_image,
    split_images,
)
from minicap.dataset import caption_indices_for_images
from minicap.text import Vocabulary, encode_captions
from minicap.tokens import UNK

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


def test_fold_splits_are_disjoint_and_cover_every_image():
    ids = np.arange(100, 147)
    folds = fold_splits(ids, k=5, seed=3, val_fraction=0.1)
    assert [f.fold for f in folds] == [1, 2, 3, 4, 5]
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == ids.tolist()  # every image tested exactly once
    for f in folds:
        parts = [set(f.train.tolist()), set(f.val.tolist()), set(f.test.tolist())]
        assert sum(len(p) for p in parts) == len(ids) and set().union(*parts) == set(ids.tolist())
        assert len(f.val) == round(0.1 * (len(f.train) + len(f.val)))
        for part in (f.train, f.val, f.test):
            assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted
    again = fold_splits(np.repeat(ids[::-1], 3), k=5, seed=3)  # reversed, and per caption
    for a, b in zip(folds, again, strict=True):  # the same folds whatever the order of the ids
        assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)
    tiny = fold_splits(np.arange(6), k=3, val_fraction=0.01)
    assert all(len(f.val) == 1 for f in tiny)  # at least one validation image
    with pytest.raises(ValueError, match="val_fraction"):
        fold_splits(ids, k=5, val_fraction=1.0)
    with pytest.raises(ValueError, match="fold 1: 1 training images are too few to hold out 1"):
        fold_splits(np.arange(2), k=2)


# ----------------------------------------------------------------------------------------------- split_images


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (271, [217, 24, 30]),  # the COCO sample: 10% would be 27, the minimum 30 wins
        (2525, [2046, 227, 252]),  # 10% = 252 (round(252.5) -> 252), val = round(227.3)
        (10, [7, 1, 2]),  # at most a fifth held out for testing
        (4, [2, 1, 1]),  # n // 5 = 0, but at least one test and one validation image
        (3, [1, 1, 1]),
    ],
)
def test_split_images_sizes(n, sizes):
    split = split_images(np.arange(5000, 5000 + n))
    assert list(split) == ["train", "val", "test"]
    assert [len(split[k]) for k in split] == sizes


def _sizes(split: dict[str, np.ndarray]) -> list[int]:
    return [len(split[k]) for k in ("train", "val", "test")]


def test_split_images_settings():
    ids = np.arange(271)
    assert _sizes(split_images(ids, test_fraction=0.2)) == [195, 22, 54]  # 20% = 54.2 -> 54 > 30
    assert _sizes(split_images(ids, min_test_images=100)) == [195, 22, 54]  # 100 capped at 271 // 5 = 54
    assert _sizes(split_images(ids, min_test_images=5)) == [220, 24, 27]  # now 10% (27.1 -> 27) wins
    assert _sizes(split_images(ids, val_fraction=0.2)) == [193, 48, 30]  # 20% of the 241 left = 48.2
    assert _sizes(split_images(np.arange(2525), test_fraction=0.01, min_test_images=5)) == [2250, 250, 25]


def test_split_images_is_deterministic_disjoint_covering_and_order_free():
    ids = np.arange(300, 571)  # 271 images
    split = split_images(ids, seed=0)
    together = np.concatenate(list(split.values()))
    assert len(np.unique(together)) == len(together) == 271  # disjoint
    np.testing.assert_array_equal(np.sort(together), ids)  # covering
    per_caption = np.random.default_rng(1).permutation(np.repeat(ids, 5))
    again = split_images(per_caption, seed=0)  # the same set of images, five captions each, shuffled
    for name in split:
        np.testing.assert_array_equal(split[name], again[name])
        assert split[name].dtype == np.int64 and np.all(np.diff(split[name]) > 0)
    assert not np.array_equal(split["test"], split_images(ids, seed=1)["test"])
    for n in range(3, 200):  # every size: the parts add up and none is empty
        parts = [len(v) for v in split_images(np.arange(n)).values()]
        assert sum(parts) == n and min(parts) >= 1 and parts[2] <= max(1, n // 5), (n, parts)
    with pytest.raises(ValueError, match="at least 3 images"):
        split_images([1, 2, 2, 1])


# ----------------------------------------------------------------------------------------------- encode_splits


def _captions(pairs: list[tuple[int, str]], extra_images: tuple[int, ...] = ()) -> CocoCaptions:
    ids = sorted({i for i, _ in pairs} | set(extra_images))
    return CocoCaptions(images={i: {"id": i, "file_name": f"{i:012d}.jpg"} for i in ids}, captions=list(pairs))


ENCODE_PAIRS = [
    (1, "a dog on a couch"),
    (1, "a dog sleeping"),
    (2, "a cat on a mat"),
    (3, "a zebra crossing the road"),  # val
    (4, "a giraffe eating"),  # test: "giraffe" twice here, as often as "dog" in training
    (4, "a dog and a giraffe"),
]
TRAIN_TEXTS = ["a dog on a couch", "a dog sleeping", "a cat on a mat"]


def test_encode_splits_builds_the_vocabulary_from_the_training_captions_only():
    coco = _captions(ENCODE_PAIRS)
    split = {"train": [1, 2], "val": [3], "test": np.array([4])}
    enc = encode_splits(coco, split, min_count=2, max_length=16)
    vocab = enc.vocab
    assert vocab == Vocabulary.from_captions(TRAIN_TEXTS, min_count=2)
    assert vocab.idx_to_word[4:] == ["a", "dog", "on"]  # giraffe (2 in test) and the val words are not in it
    assert vocab.num_captions == 3 and vocab.min_count == 2
    assert list(enc.parts) == ["train", "val", "test"]
    train, val, test = enc["train"], enc["val"], enc["test"]
    np.testing.assert_array_equal(train.captions, encode_captions(coco.captions[:3], vocab, 16).captions)
    np.testing.assert_array_equal(train.image_ids, [1, 1, 2])
    np.testing.assert_array_equal(val.image_ids, [3])
    np.testing.assert_array_equal(test.image_ids, [4, 4])
    assert [vocab.decode(row) for row in test.captions] == ["a <UNK> <UNK>", "a dog <UNK> a <UNK>"]
    assert vocab.decode(val.captions[0]) == "a <UNK> <UNK> <UNK> <UNK>"
    assert (val.captions == UNK).sum() == 4
    everything = Vocabulary.from_captions((t for _, t in ENCODE_PAIRS), min_count=2)
    assert "giraffe" in everything  # what a vocabulary over all the captions would have leaked


def test_encode_splits_given_vocabulary_truncation_and_empty_parts():
    coco = _captions(ENCODE_PAIRS, extra_images=(5,))  # image 5 is listed but has no caption
    own = Vocabulary.from_captions(["a giraffe"])
    enc = encode_splits(coco, {"train": [1, 2], "test": [4, 5]}, min_count=2, max_length=3, vocab=own)
    assert enc.vocab is own  # a resumed run keeps its vocabulary
    assert [own.decode(row) for row in enc["test"].captions] == ["a giraffe <UNK>", "a <UNK> <UNK>"]
    assert enc["train"].num_truncated == 2 and enc["train"].captions.shape == (3, 5)
    assert encode_splits(coco, {"train": [1], "val": [5], "test": []}, 1, 16).parts["val"] is None
    assert encode_splits(coco, {"train": [1], "val": [5], "test": []}, 1, 16)["test"] is None
    with pytest.raises(ValueError, match=r"1 images are in both the train and the test split: \[2\]"):
        encode_splits(coco, {"train": [1, 2], "val": [3], "test": [2, 4]}, 1, 16)
    with pytest.raises(ValueError, match="no training captions"):
        encode_splits(coco, {"train": [5], "test": [4]}, 1, 16)
    with pytest.raises(ValueError, match="no training captions"):
        encode_splits(coco, {"val": [1], "test": [4]}, 1, 16)


def test_split_and_encode_the_shared_coco_sample(shared_coco):
    coco = load_coco_captions(shared_coco / "captions.json")
    split = split_images(coco.image_ids())
    assert [len(split[k]) for k in ("train", "val", "test")] == [217, 24, 30]
    enc = encode_splits(coco, split, min_count=3, max_length=16)
    assert enc.vocab.num_captions == 5 * 217 == len(enc["train"].captions)
    assert len(enc["val"].captions) == 5 * 24 and len(enc["test"].captions) == 5 * 30
    train_texts = [t for i, t in coco.captions if i in set(split["train"].tolist())]
    assert enc.vocab == Vocabulary.from_captions(train_texts, min_count=3, max_length=16)  # the words trained on
    assert len(enc.vocab) < len(Vocabulary.from_captions(train_texts, min_count=3))  # not the tails of long ones


# ----------------------------------------------------------------------------------------------- COCO folders


def _jpeg(path: Path) -> Path:
    Image.new("RGB", (8, 8)).save(path)
    return path


def test_coco_image_paths(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _jpeg(d / "000000000139.jpg")
    _jpeg(d / "COCO_val2014_000000000632.jpg")
    images = [
        {"id": 139, "file_name": "000000000139.jpg"},
        {"id": 632, "file_name": "000000000632.jpg"},  # present under its 2014 name
        {"id": 724, "file_name": "000000000724.jpg"},  # absent: left out
    ]
    path = _write_json(tmp_path / "c.json", _coco(images, [{"image_id": 139, "caption": "a dog"}]))
    assert coco_image_paths(path, d) == {
        139: d / "000000000139.jpg",
        632: d / "COCO_val2014_000000000632.jpg",
    }
    assert coco_image_paths(load_coco_captions(path), d) == coco_image_paths(str(path), d)  # loaded or a path
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds none of the 3 images listed in .*c\.json"):
        coco_image_paths(path, empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        coco_image_paths(path, tmp_path / "nope")
    with pytest.raises(TypeError):  # a dict is no longer accepted: one loader, one set of rules
        coco_image_paths(_coco(images, []), d)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("{", "not valid JSON"),
        ({"annotations": []}, "top-level key 'images' is missing"),
        ({"images": [{"id": 139, "file_name": "000000000139.jpg"}]}, "top-level key 'annotations' is missing"),
        (_coco([_image(139), _image(139)], []), "image id 139 is listed twice"),
        ([{"image_id": 139, "caption": "a dog"}], "the top level is a list"),
    ],
)
def test_coco_image_paths_uses_the_one_loader(tmp_path, obj, message):
    d = tmp_path / "imgs"
    d.mkdir()
    _jpeg(d / "000000000139.jpg")
    path = tmp_path / "c.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    with pytest.raises(CocoFormatError, match=message):
        coco_image_paths(path, d)


def test_coco_image_paths_on_shared_data(shared_coco):
    paths = coco_image_paths(shared_coco / "captions.json", shared_coco / "images")
    assert len(paths) == 271 and paths[139] == shared_coco / "images" / "000000000139.jpg"


@pytest.mark.parametrize("layout", ["absent", "no captions", "no images folder", "no jpgs"])
def test_find_coco_missing_data_says_how_to_get_some(tmp_path, layout):
    root = tmp_path / "coco"
    if layout != "absent":
        root.mkdir()
        if layout != "no images folder":
            (root / "images").mkdir()
            (root / "images" / "notes.txt").write_text("not a photo")
        if layout != "no captions":
            (root / "captions.json").write_text("{}")
    with pytest.raises(CocoDataMissing) as e:
        find_coco(root)
    assert isinstance(e.value, FileNotFoundError)
    message = str(e.value)
    expected = {
        "absent": "the folder does not exist",
        "no captions": f"{root / 'captions.json'} is missing",
        "no images folder": f"the folder {root / 'images'} is missing",
        "no jpgs": f"{root / 'images'} holds no .jpg files",
    }[layout]
    assert message.startswith(f"no COCO data at {root}: {expected}")
    assert message.endswith(DOWNLOAD_HINT)
    assert "minicap data download --split val2017 --limit 300 --out data/coco" in message
    assert "assets/coco" in message and "MINICAP_COCO=/path/to/coco make demo" in message


def test_find_coco_and_coco_photo_path(tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    _jpeg(root / "images" / "000000000139.jpg")
    _jpeg(root / "images" / "COCO_train2014_000000000632.jpg")
    images = [_image(139), _image(632), _image(724)]
    anns = [{"image_id": i, "caption": "a photo"} for i in (139, 632, 724)]
    _write_json(root / "captions.json", _coco(images, anns))
    folder = find_coco(str(root))
    assert folder == CocoFolder(root, root / "images", root / "captions.json")
    coco = load_coco_captions(folder.captions)
    assert coco_photo_path(folder, coco, 139) == root / "images" / "000000000139.jpg"
    assert coco_photo_path(folder, coco, 632) == root / "images" / "COCO_train2014_000000000632.jpg"
    with pytest.raises(FileNotFoundError, match=r"no photo of image 724 .*'000000000724\.jpg'"):
        coco_photo_path(folder, coco, 724)

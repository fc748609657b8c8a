"""COCO captions files, COCO folders, and splits BY IMAGE: the one data path every command and lesson uses.

    DIR/captions.json --load_coco_captions--> CocoCaptions (image records + (image_id, raw caption) pairs)
    two such files    --join_captions------> one CocoCaptions (a training folder + a validation folder)
    DIR/images/       --locate_photos------> {image_id: photo path} found, and the photos listed but missing
    image ids         --split_images / fold_splits--> train / val / test ids (every caption of an image together)
    captions + split  --encode_splits------> vocabulary from the TRAINING captions, each part encoded

Splits are by image, never by caption: the five captions of a photo describe the same picture, and a photo whose
captions sit on both sides of a split would let the test set leak into training.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minicap.text import EncodedCaptions, Vocabulary, encode_captions, tokenize

# ============================================================================================ COCO captions


class CocoFormatError(ValueError):
    """The file is not COCO captions JSON (the message names the missing or malformed part)."""


@dataclasses.dataclass
class CocoCaptions:
    """The captions of a COCO captions file (2014 or 2017 format).

    images:   image id -> its record from the file (`file_name`, and when present `width`, `height`,
              `coco_url`, `license`, ...), for every image listed, with or without captions.
    captions: (image_id, raw caption text) in file order; captions that tokenize to nothing (empty,
              whitespace or punctuation only) are dropped and counted in `num_dropped_empty`.
    """

    images: dict[int, dict[str, Any]]
    captions: list[tuple[int, str]]
    num_dropped_empty: int = 0
    source: str = ""

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def image_ids(self) -> np.ndarray:
        """Sorted ids of the images that have at least one caption, shape (num images with captions,)."""
        return np.array(sorted({i for i, _ in self.captions}), dtype=np.int64)

    def references(self) -> dict[int, list[str]]:
        """image id -> its raw captions in file order (the references the metrics compare against)."""
        refs: dict[int, list[str]] = {}
        for image_id, text in self.captions:
            refs.setdefault(image_id, []).append(text)
        return refs

    def subset(self, image_ids: Iterable[int]) -> CocoCaptions:
        """The same data restricted to `image_ids` (e.g. one split)."""
        keep = {int(i) for i in image_ids}
        unknown = keep.difference(self.images)
        if unknown:
            raise KeyError(
                f"{len(unknown)} image ids are not in {self.source or 'this dataset'}: {sorted(unknown)[:5]}"
            )
        return CocoCaptions(
            images={i: rec for i, rec in self.images.items() if i in keep},
            captions=[(i, t) for i, t in self.captions if i in keep],
            num_dropped_empty=0,
            source=self.source,
        )

    def summary(self) -> str:
        with_captions = len({i for i, _ in self.captions})
        return (
            f"{self.num_captions} captions of {with_captions} images ({self.num_images} image records); "
            f"{self.num_dropped_empty} empty captions dropped"
        )


def load_coco_captions(path: str | Path) -> CocoCaptions:
    """Read a COCO captions file (`captions_train2014.json`, `captions_val2017.json`, ...).

    Required: a top-level object with `images` (each with `id` and `file_name`) and `annotations` (each with
    `image_id` and `caption`). Raises `CocoFormatError` naming what is missing, e.g. for an instances file
    (annotations without captions), a results file (a top-level list) or annotations of unknown images.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{path} is not UTF-8 text: {e}") from None

    if isinstance(data, list):
        raise CocoFormatError(
            f"{path}: the top level is a list, not an object with 'images' and 'annotations' "
            "(a list of {image_id, caption} is a COCO *results* file)"
        )
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: the top level is a {type(data).__name__}, not a JSON object")
    for key in ("images", "annotations"):
        if key not in data:
            raise CocoFormatError(
                f"{path}: not COCO captions JSON, the top-level key '{key}' is missing "
                f"(found keys: {sorted(data)[:10]})"
            )
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{path}: '{key}' should be a list, found {type(data[key]).__name__}")

    images: dict[int, dict[str, Any]] = {}
    for k, rec in enumerate(data["images"]):
        for key in ("id", "file_name"):
            if not isinstance(rec, dict) or key not in rec:
                raise CocoFormatError(f"{path}: images[{k}] has no '{key}' key: {str(rec)[:120]}")
        image_id = _as_int_id(rec["id"], f"{path}: images[{k}].id")
        if image_id in images:
            raise CocoFormatError(f"{path}: image id {image_id} is listed twice in 'images'")
        images[image_id] = rec

    captions: list[tuple[int, str]] = []
    num_empty = 0
    unknown: list[int] = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise CocoFormatError(f"{path}: annotations[{k}] is not an object: {str(ann)[:120]}")
        for key in ("image_id", "caption"):
            if key not in ann:
                hint = " (this looks like an instances/keypoints file, not captions)" if "bbox" in ann else ""
                raise CocoFormatError(f"{path}: annotations[{k}] has no '{key}' key{hint}: {str(ann)[:120]}")
        image_id = _as_int_id(ann["image_id"], f"{path}: annotations[{k}].image_id")
        text = ann["caption"]
        if not isinstance(text, str):
            raise CocoFormatError(f"{path}: annotations[{k}].caption is a {type(text).__name__}, not text")
        if image_id not in images:
            unknown.append(image_id)
        elif not tokenize(text):
            num_empty += 1
        else:
            captions.append((image_id, text))
    if unknown:
        first = sorted(set(unknown))[:5]
        raise CocoFormatError(
            f"{path}: {len(unknown)} annotations name image ids that are not in 'images' "
            f"({len(set(unknown))} distinct ids; first: {first})"
        )
    return CocoCaptions(images=images, captions=captions, num_dropped_empty=num_empty, source=str(path))


def join_captions(first: CocoCaptions, second: CocoCaptions) -> CocoCaptions:
    """The captions of two files as one CocoCaptions (e.g. a training folder's and a validation folder's), so that
    one data path serves both. The two must not share an image: ValueError naming the shared ids."""
    shared = sorted(set(first.images) & set(second.images))
    if shared:
        raise ValueError(
            f"{len(shared)} image ids are in both {first.source or 'the first captions'} and "
            f"{second.source or 'the second'} (first: {shared[:5]}): the two folders must not share an image"
        )
    return CocoCaptions(
        images={**first.images, **second.images},
        captions=first.captions + second.captions,
        num_dropped_empty=first.num_dropped_empty + second.num_dropped_empty,
        source=f"{first.source} + {second.source}",
    )


def _as_int_id(value: Any, where: str) -> int:
    # bool is an int subclass, and a float id like 3.5 would silently truncate: accept only real integers.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CocoFormatError(f"{where} should be an integer id, found {value!r}")
    return int(value)


# ============================================================================================ splits


def _unique_sorted_ids(image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
    # Sorting first makes a split depend only on the SET of ids and the seed, never on their order.
    ids = np.unique(np.asarray(list(image_ids) if not isinstance(image_ids, np.ndarray) else image_ids))
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"image ids must be integers, got dtype {ids.dtype}")
    return ids.astype(np.int64)


def _split_sizes(n: int, sizes: Sequence[float] | Sequence[int]) -> list[int]:
    """Fractions (summing to 1) or counts (summing to n) -> counts summing to n (largest remainder)."""
    if len(sizes) < 1:
        raise ValueError("need at least one split size")
    if any(s < 0 for s in sizes):
        raise ValueError(f"split sizes must be non-negative, got {list(sizes)}")
    if all(isinstance(s, int | np.integer) for s in sizes):
        if sum(sizes) != n:
            raise ValueError(f"split counts {list(sizes)} sum to {sum(sizes)}, but there are {n} images")
        return [int(s) for s in sizes]
    if not np.isclose(sum(sizes), 1.0):
        raise ValueError(f"split fractions {list(sizes)} sum to {sum(sizes)}, not 1")
    exact = np.array(sizes, dtype=np.float64) * n
    counts = np.floor(exact).astype(int)
    # Hand the images lost to flooring to the largest remainders (first split wins a tie).
    order = sorted(range(len(sizes)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def split_by_image(
    image_ids: Iterable[int] | np.ndarray,
    sizes: Sequence[float] | Sequence[int] = (0.8, 0.1, 0.1),
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Split images (not captions) into disjoint parts, so no image's captions leak across parts.

    image_ids: per-caption or per-image ids (duplicates are fine; each image is placed once)
    sizes:     fractions summing to 1 (rounded by largest remainder) or integer counts summing to the
               number of distinct images
    names:     defaults to ("train", "val", "test") for 3 parts, ("train", "test") for 2
    Returns name -> sorted (n_part,) int64 image ids. Deterministic: the same set of ids and seed give the
    same split whatever the input order.
    """
    ids = _unique_sorted_ids(image_ids)
    if names is None:
        defaults = {1: ("train",), 2: ("train", "test"), 3: ("train", "val", "test")}
        if len(sizes) not in defaults:
            raise ValueError(f"give `names` for a split into {len(sizes)} parts")
        names = defaults[len(sizes)]
    if len(names) != len(sizes) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct name per size: names={list(names)}, sizes={list(sizes)}")
    counts = _split_sizes(len(ids), sizes)
    shuffled = ids[np.random.default_rng(seed).permutation(len(ids))]
    bounds = np.cumsum([0, *counts])
    return {name: np.sort(shuffled[a:b]) for name, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)}


def kfold_by_image(image_ids: Iterable[int] | np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold cross-validation over images: k pairs (train_ids, test_ids), each sorted int64.

    Every image is in exactly one test fold; fold sizes differ by at most one; deterministic in (id set, seed).
    """
    ids = _unique_sorted_ids(image_ids)
    if not 2 <= k <= len(ids):
        raise ValueError(f"k must be between 2 and the number of images ({len(ids)}), got {k}")
    shuffled = ids[np.random.default_rng(seed).permutation(len(ids))]
    folds = np.array_split(shuffled, k)
    return [(np.sort(np.concatenate(folds[:f] + folds[f + 1 :])), np.sort(fold)) for f, fold in enumerate(folds)]


@dataclasses.dataclass(frozen=True)
class FoldSplit:
    """One fold of k-fold cross-validation: sorted int64 image ids. train and val together are the fold's
    training part; val picks the best epoch and stops training early; test is scored."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def fold_splits(
    image_ids: Sequence[int] | np.ndarray, k: int, seed: int = 0, val_fraction: float = 0.1
) -> list[FoldSplit]:
    """K folds by image (`kfold_by_image`); from each fold's training part a `val_fraction` slice (at least one
    image) is held out for early stopping. Deterministic in (id set, k, seed)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = []
    for f, (train_part, test) in enumerate(kfold_by_image(image_ids, k, seed)):
        n_val = max(1, int(round(val_fraction * len(train_part))))
        if n_val >= len(train_part):
            raise ValueError(f"fold {f + 1}: {len(train_part)} training images are too few to hold out {n_val}")
        split = split_by_image(train_part, [len(train_part) - n_val, n_val], seed=seed + 1 + f, names=("t", "v"))
        out.append(FoldSplit(f + 1, split["t"], split["v"], test))
    return out


def split_images(
    image_ids: Sequence[int] | np.ndarray,
    test_fraction: float = 0.1,
    min_test_images: int = 30,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The one train / val / test split of every command (`CaptionerConfig` holds its settings).

    test: `test_fraction` of the images, but at least `min_test_images` and at most a fifth of them (30 of the 271
    photos of the COCO sample, 252 of 2,525); val: `val_fraction` of the rest (at least one image), which picks the
    best epoch; train: the others. Deterministic in (id set, seed).
    """
    n = len(np.unique(np.asarray(image_ids)))
    if n < 3:
        raise ValueError(f"need at least 3 images to split into train/val/test, got {n}")
    n_test = max(1, min(max(min_test_images, int(round(test_fraction * n))), n // 5))
    n_val = max(1, int(round(val_fraction * (n - n_test))))
    return split_by_image(image_ids, [n - n_test - n_val, n_val, n_test], seed=seed)


# ============================================================================================ encoding a split


@dataclasses.dataclass
class EncodedSplits:
    """The captions of a split, ready for a model: the vocabulary (built from the TRAINING captions only) and each
    part's captions encoded with it (`minicap.text.EncodedCaptions`; a part with no captions is None)."""

    vocab: Vocabulary
    parts: dict[str, EncodedCaptions | None]

    def __getitem__(self, name: str) -> EncodedCaptions | None:
        return self.parts[name]


def encode_splits(
    coco: CocoCaptions,
    split: Mapping[str, Iterable[int]],
    min_count: int,
    max_length: int,
    vocab: Vocabulary | None = None,
) -> EncodedSplits:
    """Vocabulary from the captions of `split["train"]` as they are trained on (their first `max_length` words;
    words seen at least `min_count` times there) — or the `vocab` given (a resumed run keeps its own) — then every
    part of `split` encoded with it (at most `max_length` words per caption). The parts must not share an image."""
    sets = {name: {int(i) for i in ids} for name, ids in split.items()}
    names = list(sets)
    for a_index, a in enumerate(names):
        for b in names[a_index + 1 :]:
            if shared := sets[a] & sets[b]:
                raise ValueError(f"{len(shared)} images are in both the {a} and the {b} split: {sorted(shared)[:5]}")
    pairs = {name: [(i, t) for i, t in coco.captions if i in ids] for name, ids in sets.items()}
    if not pairs.get("train"):
        raise ValueError("no training captions: the training split is empty")
    if vocab is None:
        vocab = Vocabulary.from_captions((t for _, t in pairs["train"]), min_count=min_count, max_length=max_length)
    parts = {name: encode_captions(p, vocab, max_length) if p else None for name, p in pairs.items()}
    return EncodedSplits(vocab, parts)


# ============================================================================================ COCO folders

SAMPLE_COCO = Path(__file__).resolve().parent.parent / "assets" / "coco"
"""The real COCO sample committed with minicap (600 photos, 3,001 captions; assets/coco/README.md): the folder
`minicap demo` reads when neither --coco DIR nor $MINICAP_COCO names one. It is in every source checkout (and so in
an editable install); a wheel does not carry it."""

_SAMPLE_HERE = (
    f"minicap demo --coco {SAMPLE_COCO}"
    if SAMPLE_COCO.is_dir()
    else f"(absent here, at {SAMPLE_COCO}: an installed wheel does not carry it; clone the repository)"
)
DOWNLOAD_HINT = f"""\
Get some COCO data first, in this layout:
    DIR/images/*.jpg      the photos (COCO 2017 names, 000000000139.jpg, or COCO 2014 names)
    DIR/captions.json     COCO captions JSON for them
Use the sample a source checkout of minicap carries, assets/coco: 600 real COCO photos, what `minicap demo`
reads when no folder is named:
    {_SAMPLE_HERE}
or download a few hundred photos with their official captions (needs the internet):
    minicap data download --split val2017 --limit 300 --out data/coco
or point at a folder you already have:
    MINICAP_COCO=/path/to/coco make demo        (or: minicap demo --coco /path/to/coco)"""


def choose_coco_dir(given: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The COCO folder a command should read, and where that choice came from: `given` (a --coco argument) if
    set, else $MINICAP_COCO if set and not empty, else the embedded sample SAMPLE_COCO. Returns (folder, "--coco" |
    "$MINICAP_COCO" | "the embedded sample"); the folder is not checked here (find_coco does that)."""
    if given is not None and str(given) != "":
        return Path(given), "--coco"
    env = os.environ.get("MINICAP_COCO", "")
    if env:
        return Path(env), "$MINICAP_COCO"
    return SAMPLE_COCO, "the embedded sample"


class CocoDataMissing(FileNotFoundError):
    """The COCO folder is absent or incomplete; the message says what is missing and how to get data."""


@dataclasses.dataclass(frozen=True)
class CocoFolder:
    """A COCO folder: `root/images/*.jpg` and `root/captions.json`."""

    root: Path
    images: Path
    captions: Path


def find_coco(coco_dir: str | os.PathLike) -> CocoFolder:
    """Check that `coco_dir` holds images/ (with at least one .jpg) and captions.json; else CocoDataMissing."""
    root = Path(coco_dir)
    images, captions = root / "images", root / "captions.json"
    if not root.is_dir():
        problem = f"no COCO data at {root}: the folder does not exist."
    elif not captions.is_file():
        problem = f"no COCO data at {root}: {captions} is missing."
    elif not images.is_dir():
        problem = f"no COCO data at {root}: the folder {images} is missing."
    elif not any(p.suffix.lower() in (".jpg", ".jpeg") for p in images.iterdir()):
        problem = f"no COCO data at {root}: {images} holds no .jpg files."
    else:
        return CocoFolder(root, images, captions)
    raise CocoDataMissing(f"{problem}\n{DOWNLOAD_HINT}")


def photo_names(image_id: int, record: Mapping[str, Any]) -> list[str]:
    """The file names a COCO photo may have: its `file_name` (COCO 2017: `000000000139.jpg`), then the COCO 2014
    names `COCO_val2014_<12-digit id>.jpg` and `COCO_train2014_<12-digit id>.jpg`."""
    names = [str(record.get("file_name", ""))]
    return [n for n in names if n] + [f"COCO_val2014_{image_id:012d}.jpg", f"COCO_train2014_{image_id:012d}.jpg"]


@dataclasses.dataclass
class Photos:
    """Where the photos of a captions file's images are.

    found:   image id -> the photo's path in the folder
    missing: image id -> where its photo was expected (its `file_name`), for the images listed but absent
    """

    found: dict[int, Path]
    missing: dict[int, Path]

    def everything(self) -> dict[int, Path]:
        """found and missing together, by id: what extraction is given, so that every missing photo is named in
        its output and manifest ("file not found") instead of being left out without a word."""
        return dict(sorted({**self.found, **self.missing}.items()))


def locate_photos(captions: str | os.PathLike | CocoCaptions, images_dir: str | os.PathLike) -> Photos:
    """The photos of the images of a COCO captions file in `images_dir`: those found, and those missing.

    `captions` is the JSON file (read by `load_coco_captions`, the one loader with the one set of rules) or an
    already-loaded CocoCaptions. Each image is looked for under `photo_names`. If NONE is there, a
    `FileNotFoundError` says which names were expected.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image directory {images_dir} does not exist")
    coco = captions if isinstance(captions, CocoCaptions) else load_coco_captions(captions)
    present = {p.name for p in images_dir.iterdir()}
    found: dict[int, Path] = {}
    missing: dict[int, Path] = {}
    for image_id, record in coco.images.items():
        names = photo_names(image_id, record)
        name = next((n for n in names if n in present), None)
        if name is None:
            missing[image_id] = images_dir / names[0]
        else:
            found[image_id] = images_dir / name
    if not found:
        example = next(iter(coco.images.values()), {}).get("file_name", "?")
        raise FileNotFoundError(
            f"{images_dir} holds none of the {len(coco.images)} images listed in {coco.source or 'the captions'} "
            f"(looked for names like {example!r} or 'COCO_val2014_<12-digit id>.jpg')"
        )
    return Photos(found, missing)


def coco_image_paths(captions: str | os.PathLike | CocoCaptions, images_dir: str | os.PathLike) -> dict[int, Path]:
    """{image_id: path} for the images of a COCO captions file that are present in `images_dir` (`locate_photos`
    tells the missing ones too). If NONE is there, a `FileNotFoundError` says which names were expected."""
    return locate_photos(captions, images_dir).found


def coco_photo_path(folder: CocoFolder, coco: CocoCaptions, image_id: int) -> Path:
    """Where the photo of `image_id` is (see `photo_names`); FileNotFoundError naming what was looked for."""
    names = photo_names(image_id, coco.images[image_id])
    for name in names:
        if (folder.images / name).is_file():
            return folder.images / name
    raise FileNotFoundError(f"no photo of image {image_id} in {folder.images} (looked for {names})")

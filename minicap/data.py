"""COCO captions -> tokens -> Vocabulary -> padded integer arrays; splits by image id; minibatches.

The first stage of the data flow, and the only one that reads caption text:

    captions.json --load_coco_captions--> CocoCaptions (image records + (image_id, raw caption) pairs)
                  --tokenize-----------> ["a", "man", "'s", "dog"]
                  --Vocabulary---------> word <-> index, with <NULL>=0 <START>=1 <END>=2 <UNK>=3
                  --encode_captions----> (M, T+1) int32 rows  <START> w1 .. wk <END> <NULL> ..
                  --split_by_image-----> train / val / test image ids (every caption of an image together)
                  --minibatches--------> index batches without replacement, reshuffled every epoch
                  --CaptionDataset-----> (features (N, F), captions (N, T+1)) for the trainer

Letters used for shapes: M captions, N batch, T time steps (words + <END>), F feature size, V vocabulary size.

This module imports nothing of minicap except `safe_io`: image features arrive as arrays or as a lookup
callable (e.g. `FeatureStore.lookup`), so the text side can be studied and tested without any images.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "NULL",
    "START",
    "END",
    "UNK",
    "SPECIAL_TOKENS",
    "CocoCaptions",
    "CocoFormatError",
    "load_coco_captions",
    "tokenize",
    "detokenize",
    "Vocabulary",
    "EncodedCaptions",
    "encode_captions",
    "split_by_image",
    "kfold_by_image",
    "caption_indices_for_images",
    "minibatches",
    "MissingFeaturesError",
    "FeatureTable",
    "CaptionBatch",
    "CaptionDataset",
]

# ============================================================================================ COCO captions


class CocoFormatError(ValueError):
    """The file is not COCO captions JSON (the message names the missing or malformed part)."""


@dataclass
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


def _as_int_id(value: Any, where: str) -> int:
    # bool is an int subclass, and a float id like 3.5 would silently truncate: accept only real integers.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CocoFormatError(f"{where} should be an integer id, found {value!r}")
    return int(value)


# ============================================================================================ tokens

# Typographic apostrophes and hyphens become their ASCII forms so "man’s" and "man's" are the same word.
_ASCII_FORMS = {
    ord("\u2019"): "'",  # right single quotation mark (the usual typographic apostrophe)
    ord("\u2018"): "'",  # left single quotation mark
    ord("\u02bc"): "'",  # modifier letter apostrophe
    ord("`"): "'",
    ord("\u00b4"): "'",  # acute accent used as an apostrophe
    ord("\u2010"): "-",  # hyphen
    ord("\u2011"): "-",  # non-breaking hyphen
}


class _KeepWordCharacters(dict):
    """A `str.translate` table: letters (any script), combining marks, numbers and ' - . , pass; all else -> space.

    Marks (category M*) must pass too: many scripts (Devanagari, Thai, ...) write vowels as combining marks,
    and Python's regex `\\w` does not match them. The table fills itself on first sight of each character
    (`__missing__`), so a caption costs one dict lookup per character after warm-up.
    """

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        keep = unicodedata.category(ch)[0] in "LMN" or ch in "'-.,"
        self[code] = ch if keep else " "
        return self[code]


_KEEP = _KeepWordCharacters()
_W = r"[^\s'.,\-]"  # a word character once _KEEP has run: anything but space and the four kept signs
_LONE_SIGNS = re.compile(rf"(?<!\d)[.,]|[.,](?!\d)|(?<!{_W})['-]|['-](?!{_W})")
_CLITIC = re.compile(rf"(?<={_W})(n't|'s|'re|'ve|'ll|'d|'m)(?!{_W})")


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase word tokens, roughly as the COCO evaluation's PTB tokenizer does.

    1. Unicode NFKC normalisation (full-width and compatibility forms -> plain ones), then lowercase;
       typographic apostrophes/hyphens -> ASCII.
    2. Letters of any script, combining marks and digits are kept; other punctuation and symbols are spaces.
    3. `.` and `,` survive only between digits ("3.5", "1,000"); `'` and `-` survive only inside a word
       ("t-shirt", "o'clock"), so quotes and dashes around words go.
    4. English clitics split off as in the Penn Treebank: "man's" -> "man 's", "it's" -> "it 's",
       "don't" -> "do n't". Keeping "'s" as its own token keeps the vocabulary small ("man" is one word,
       not also "man's") and matches what the metrics' tokenizer does; `detokenize` glues them back.
    5. Split on whitespace. An empty list means the caption had no words (callers drop and count it).

    >>> tokenize("A man’s dog, running!")
    ['a', 'man', "'s", 'dog', 'running']
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_ASCII_FORMS).translate(_KEEP)
    text = _LONE_SIGNS.sub(" ", text)
    text = _CLITIC.sub(r" \1", text)
    return text.split()


def detokenize(tokens: Iterable[str]) -> str:
    """Join tokens with spaces, gluing split clitics back on: ["a", "man", "'s"] -> "a man's"."""
    out: list[str] = []
    for tok in tokens:
        if out and (tok == "n't" or (tok.startswith("'") and len(tok) > 1)):
            out[-1] += tok
        else:
            out.append(tok)
    return " ".join(out)


# ============================================================================================ vocabulary

SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")
NULL, START, END, UNK = 0, 1, 2, 3


class Vocabulary:
    """Word <-> index for the captioner, with four special tokens at fixed indices.

        <NULL>=0   padding after <END>; masked out of the loss
        <START>=1  the first input of every caption
        <END>=2    the last target of every caption: the model learns when to stop
        <UNK>=3    any word seen fewer than `min_count` times in training (or never)

    `counts[i]` is how often token i occurs as a *target* in the training captions: each word's count,
    <UNK> the total of the rare words it replaces, <END> the number of captions (one per caption),
    <NULL> and <START> zero (never predicted). `word_frequencies()` gives them as an array so the model's
    output bias can start at log word frequencies (neuraltalk's trick: the first steps then need not learn
    the unigram distribution).
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int], min_count: int = 1) -> None:
        """Low-level constructor; use `Vocabulary.build` (from tokens) or `from_dict` (from a checkpoint)."""
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, found {words[:4]}")
        if len(counts) != len(words):
            raise ValueError(f"{len(words)} words but {len(counts)} counts")
        self.idx_to_word: list[str] = words
        self.word_to_idx: dict[str, int] = {w: i for i, w in enumerate(words)}
        if len(self.word_to_idx) != len(words):
            dupes = [w for w, c in Counter(words).items() if c > 1]
            raise ValueError(f"a vocabulary lists these words more than once: {dupes[:5]}")
        self.counts: list[int] = [int(c) for c in counts]
        self.min_count = int(min_count)

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_count: int = 1, max_words: int | None = None
    ) -> Vocabulary:
        """Count words in the (training!) captions; keep those seen at least `min_count` times.

        Order: the specials, then words by decreasing count, ties alphabetically, so the same captions always
        give the same indices. `max_words` additionally keeps only the most frequent words.
        Empty token lists are skipped (they are not captions).
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        word_counts: Counter[str] = Counter()
        num_captions = 0
        for tokens in token_lists:
            if not tokens:
                continue
            num_captions += 1
            word_counts.update(tokens)
        clash = set(word_counts).intersection(SPECIAL_TOKENS)
        if clash:
            raise ValueError(f"captions contain the special token(s) {sorted(clash)} as words")
        ranked = sorted(word_counts.items(), key=lambda wc: (-wc[1], wc[0]))
        kept = [(w, c) for w, c in ranked if c >= min_count]
        if max_words is not None:
            kept = kept[:max_words]
        num_unk = sum(word_counts.values()) - sum(c for _, c in kept)
        words = [*SPECIAL_TOKENS, *(w for w, _ in kept)]
        counts = [0, 0, num_captions, num_unk, *(c for _, c in kept)]
        return cls(words, counts, min_count=min_count)

    @classmethod
    def from_captions(cls, texts: Iterable[str], min_count: int = 1, max_words: int | None = None) -> Vocabulary:
        """`build` on raw caption texts (tokenized here)."""
        return cls.build((tokenize(t) for t in texts), min_count=min_count, max_words=max_words)

    def __len__(self) -> int:
        return len(self.idx_to_word)

    def __contains__(self, word: object) -> bool:
        return word in self.word_to_idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, min_count={self.min_count})"

    @property
    def num_captions(self) -> int:
        """How many training captions built this vocabulary (= the <END> count)."""
        return self.counts[END]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """["a", "dog"] -> [<START>, idx("a"), idx("dog"), <END>]; unknown words -> <UNK>."""
        get = self.word_to_idx.get
        return [START, *(get(t, UNK) for t in tokens), END]

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Indices -> tokens: skips <NULL> and <START>, stops at the first <END> (not included)."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (NULL, START):
                continue
            if not 0 <= i < len(self.idx_to_word):
                raise IndexError(f"token index {i} is outside this vocabulary of {len(self)} tokens")
            out.append(self.idx_to_word[i])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Indices -> caption text ("a man's dog"); see `decode_tokens` and `detokenize`."""
        return detokenize(self.decode_tokens(ids))

    def word_frequencies(self) -> np.ndarray:
        """Target counts per token index, shape (V,) float64 (see the class docstring; 0 for NULL/START)."""
        return np.array(self.counts, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (stored in checkpoints next to the weights)."""
        return {
            "format": "minicap.Vocabulary",
            "version": 1,
            "min_count": self.min_count,
            "words": list(self.idx_to_word),
            "counts": list(self.counts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        """Inverse of `to_dict`; raises ValueError naming what is wrong with `d`."""
        if not isinstance(d, dict) or d.get("format") != "minicap.Vocabulary":
            raise ValueError("not a minicap vocabulary (expected a dict with format='minicap.Vocabulary')")
        if d.get("version") != 1:
            raise ValueError(f"unsupported vocabulary version {d.get('version')!r} (this minicap reads 1)")
        for key in ("words", "counts", "min_count"):
            if key not in d:
                raise ValueError(f"vocabulary dict has no '{key}'")
        return cls(d["words"], d["counts"], min_count=d["min_count"])


# ============================================================================================ encoding


class EncodedCaptions(NamedTuple):
    """Captions as a padded integer array, with what was changed on the way.

    captions:  (M, max_length + 2) int32: <START> w1 .. wk <END> <NULL> ... ; the model reads columns
               [:, :-1] as inputs and predicts columns [:, 1:], so T = max_length + 1 time steps
    image_ids: (M,) int64, the image of each row
    num_dropped_empty: captions with no words after tokenizing (not encoded)
    num_truncated:     captions longer than max_length words, cut to their first max_length words (+ <END>)
    """

    captions: np.ndarray
    image_ids: np.ndarray
    num_dropped_empty: int
    num_truncated: int

    def summary(self) -> str:
        M, width = self.captions.shape
        return (
            f"{M} captions encoded, {width - 2} words max; {self.num_truncated} truncated, "
            f"{self.num_dropped_empty} empty dropped"
        )


def encode_captions(captions: Iterable[tuple[int, str]], vocab: Vocabulary, max_length: int = 16) -> EncodedCaptions:
    """Tokenize and encode (image_id, text) pairs into one padded int32 array.

    Captions longer than `max_length` words are TRUNCATED (not dropped: every image keeps all its captions)
    and still end with <END>; how many is reported in `num_truncated`, because many truncations would teach
    the model to stop mid-sentence (COCO: 16 words covers about 98% of captions). Captions with no words
    are dropped and counted.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    rows: list[list[int]] = []
    ids: list[int] = []
    num_empty = num_truncated = 0
    for image_id, text in captions:
        tokens = tokenize(text)
        if not tokens:
            num_empty += 1
            continue
        if len(tokens) > max_length:
            tokens = tokens[:max_length]
            num_truncated += 1
        rows.append(vocab.encode(tokens))
        ids.append(int(image_id))
    out = np.full((len(rows), max_length + 2), NULL, dtype=np.int32)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return EncodedCaptions(out, np.array(ids, dtype=np.int64), num_empty, num_truncated)


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


def caption_indices_for_images(caption_image_ids: np.ndarray, image_ids: Iterable[int]) -> np.ndarray:
    """Row indices (ascending) of the captions whose image is in `image_ids`: select one split's captions."""
    wanted = np.fromiter((int(i) for i in image_ids), dtype=np.int64)
    return np.flatnonzero(np.isin(caption_image_ids, wanted))


# ============================================================================================ minibatches


def minibatches(n: int, batch_size: int, rng: np.random.Generator, drop_last: bool = False) -> Iterator[np.ndarray]:
    """One epoch of minibatch indices: a fresh permutation of range(n), cut into batches.

    Sampling is WITHOUT replacement (every index exactly once per epoch; CS231n's sampler drew with
    replacement, so some captions were never seen in an "epoch"). Call once per epoch with the same `rng`
    for a new order each time. The permutation is drawn when this function is CALLED, not on the first
    `next()`: a trainer that saves `rng.bit_generator.state` before the call, plus how many batches it
    consumed, can resume an interrupted epoch exactly. The last batch may be smaller than `batch_size`
    unless `drop_last`.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    order = rng.permutation(n)
    stop = n - n % batch_size if drop_last else n
    return (order[i : i + batch_size] for i in range(0, stop, batch_size))


# ============================================================================================ dataset


class MissingFeaturesError(KeyError):
    """Some requested image ids have no feature vector: ONE error with the count and the first ids.

    Raised by `FeatureTable.lookup` and `minicap.features.FeatureStore.lookup` alike; `.missing` lists the ids.
    """

    def __init__(self, missing: Sequence[int], requested: int, source: str = "the feature store") -> None:
        self.missing = [int(i) for i in missing]
        first = ", ".join(str(i) for i in self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
        self.message = (
            f"{len(self.missing)} of {requested} requested image ids have no features in {source} "
            f"(first: {first}); extract them with `minicap extract` or drop them from the split"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return self.message


class FeatureTable:
    """An in-memory id -> feature lookup over an (n, F) array, with the same `lookup` contract as FeatureStore."""

    def __init__(self, image_ids: np.ndarray, features: np.ndarray) -> None:
        image_ids = np.asarray(image_ids, dtype=np.int64)
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] != image_ids.shape[0]:
            raise ValueError(f"need features (n, F) for n ids, got {features.shape} for {image_ids.shape[0]} ids")
        self.image_ids = image_ids
        self.features = features
        self._row = {int(i): r for r, i in enumerate(image_ids)}
        if len(self._row) != len(image_ids):
            raise ValueError("image ids in a FeatureTable must be unique")

    def __len__(self) -> int:
        return len(self.image_ids)

    def lookup(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Features of `image_ids` in that order, shape (len(image_ids), F); MissingFeaturesError if any lack one."""
        ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        rows = [self._row.get(int(i), -1) for i in ids]
        missing = sorted({int(i) for i, r in zip(ids, rows, strict=True) if r < 0})
        if missing:
            raise MissingFeaturesError(missing, requested=len(set(ids.tolist())), source="this feature table")
        return self.features[np.array(rows, dtype=np.int64)]

    __call__ = lookup


class CaptionBatch(NamedTuple):
    """One minibatch: features (N, F), captions (N, T+1) int32 trimmed to the batch's longest, image_ids (N,)."""

    features: np.ndarray
    captions: np.ndarray
    image_ids: np.ndarray


@dataclass
class CaptionDataset:
    """Encoded captions tied to their images' features.

    captions:  (M, T+1) int32 from `encode_captions`
    image_ids: (M,) int64, the image of each caption row
    features:  a lookup `ids (N,) -> (N, F)` array, e.g. `FeatureStore.lookup` or `FeatureTable.lookup`;
               it must raise for ids it lacks. With `check=True` (default) every image is looked up once at
               construction, so a missing feature fails here and not hours into training.
    """

    captions: np.ndarray
    image_ids: np.ndarray
    features: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    check: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        self.captions = np.asarray(self.captions)
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        if self.captions.ndim != 2 or self.captions.shape[0] != self.image_ids.shape[0]:
            raise ValueError(
                f"need captions (M, T+1) and image_ids (M,), got {self.captions.shape} and {self.image_ids.shape}"
            )
        if not np.issubdtype(self.captions.dtype, np.integer):
            raise TypeError(f"captions must be integer token ids, got dtype {self.captions.dtype}")
        if self.check:
            unique = np.unique(self.image_ids)
            for start in range(0, len(unique), 4096):  # chunks: never materialise all features at once
                chunk = unique[start : start + 4096]
                got = self.features(chunk)
                if got.ndim != 2 or got.shape[0] != len(chunk):
                    raise ValueError(f"feature lookup returned shape {got.shape} for {len(chunk)} ids")

    def __len__(self) -> int:
        return self.captions.shape[0]

    def unique_image_ids(self) -> np.ndarray:
        return np.unique(self.image_ids)

    def batch(self, indices: np.ndarray) -> CaptionBatch:
        """Rows `indices` (e.g. from `minibatches`) with their features.

        Caption columns after the batch's longest caption are all <NULL> and are cut off: the model's cost
        grows with T, and short batches are common (median COCO caption: 10 words).
        """
        indices = np.asarray(indices, dtype=np.int64)
        captions = self.captions[indices]
        used = np.flatnonzero((captions != NULL).any(axis=0))
        width = int(used[-1]) + 1 if used.size else 1
        ids = self.image_ids[indices]
        return CaptionBatch(self.features(ids), captions[:, :width], ids)

    def subset(self, image_ids: Iterable[int]) -> CaptionDataset:
        """The captions of `image_ids` only (e.g. one split), sharing the same feature lookup."""
        rows = caption_indices_for_images(self.image_ids, image_ids)
        return CaptionDataset(self.captions[rows], self.image_ids[rows], self.features, check=False)

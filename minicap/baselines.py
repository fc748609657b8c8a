"""The baselines a captioner must beat, on the same images and scored by the same metrics.

    most frequent caption   one caption for every image: the floor; it knows captions but sees no image
    nearest neighbour       the caption of the most similar training photo (cosine of features), re-ranked by
                            consensus among the k nearest (Devlin et al. 2015): a strong baseline on small data

Both need only NumPy and the pure-Python `CiderD`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from minicap.coco import CocoCaptions
from minicap.dataset import FeatureLookup
from minicap.metrics import CiderD
from minicap.text import tokenize

__all__ = [
    "MOST_FREQUENT",
    "NEAREST_NEIGHBOUR",
    "most_frequent_caption_baseline",
    "nearest_neighbour_baseline",
    "baseline_captions",
]

MOST_FREQUENT = "most frequent caption"
NEAREST_NEIGHBOUR = "nearest neighbour"

# ============================================================================================ baselines


def most_frequent_caption_baseline(train_captions: Iterable[str]) -> str:
    """The most frequent training caption after `tokenize` (tokens joined by spaces), for every test image.

    The floor any captioner must clear: it knows the language of captions but looks at no image.
    Ties go to the alphabetically first caption, so the result never depends on the input order.
    """
    counts = Counter(" ".join(tokens) for tokens in map(tokenize, train_captions) if tokens)
    if not counts:
        raise ValueError("no non-empty training captions")
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def nearest_neighbour_baseline(
    train_features: np.ndarray,
    train_ids: Sequence[int] | np.ndarray,
    train_refs: Mapping[int, Sequence[str]],
    test_features: np.ndarray,
    test_ids: Sequence[int] | np.ndarray,
    k: int = 1,
) -> dict[int, str]:
    """For each test image, a caption borrowed from its most similar training image(s) (Devlin et al. 2015).

    train_features (N_train, F), train_ids (N_train,); train_refs: training image id -> its captions;
    test_features (N_test, F), test_ids (N_test,). Returns test id -> caption.

    1. Similarity = cosine of feature vectors; the k most similar training images are the neighbours
       (ties -> smaller image id).
    2. Of the neighbours' captions, return the one with the highest CIDEr-D against the OTHER captions of
       the pool ("consensus re-ranking": the caption most of the neighbours' annotators would agree with,
       rather than an idiosyncratic one). CIDEr-D's document frequencies come from all training references.
    Ties between captions go to the alphabetically first one.
    """
    train_features = np.asarray(train_features)
    test_features = np.asarray(test_features)
    train_ids = np.asarray(train_ids, dtype=np.int64)
    test_ids = np.asarray(test_ids, dtype=np.int64)
    if train_features.ndim != 2 or train_features.shape[0] != train_ids.shape[0]:
        raise ValueError(f"train_features {train_features.shape} do not match {train_ids.shape[0]} train ids")
    if test_features.ndim != 2 or test_features.shape[0] != test_ids.shape[0]:
        raise ValueError(f"test_features {test_features.shape} do not match {test_ids.shape[0]} test ids")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"feature sizes differ: train F={train_features.shape[1]}, test F={test_features.shape[1]}")
    if not 1 <= k <= len(train_ids):
        raise ValueError(f"k must be between 1 and the number of training images ({len(train_ids)}), got {k}")
    leaked = np.intersect1d(train_ids, test_ids)
    if leaked.size:
        raise ValueError(f"{leaked.size} test images are also training images (first: {leaked[:5].tolist()})")
    no_refs = [int(i) for i in train_ids if not train_refs.get(int(i))]
    if no_refs:
        raise ValueError(f"{len(no_refs)} training images have no captions in train_refs (first: {no_refs[:5]})")

    # Sort the training set by id so that argmax's first-index tie rule means "smaller id".
    order = np.argsort(train_ids, kind="stable")
    train_ids, train_features = train_ids[order], train_features[order]
    unit_train = _unit_rows(train_features)
    unit_test = _unit_rows(test_features)

    train_tokens = {int(i): [tokenize(c) for c in train_refs[int(i)]] for i in train_ids}
    cider = CiderD(train_tokens.values())

    out: dict[int, str] = {}
    chunk = 256  # test rows per similarity block: bounds memory at chunk * N_train floats
    for start in range(0, len(test_ids), chunk):
        sims = unit_test[start : start + chunk] @ unit_train.T  # (chunk, N_train) cosine similarities
        for row, test_id in zip(sims, test_ids[start : start + chunk], strict=True):
            if k == 1:
                neighbours = [int(np.argmax(row))]
            else:
                neighbours = np.argsort(-row, kind="stable")[:k].tolist()
            pool = [
                (" ".join(text.split()), tokens)
                for j in neighbours
                for text, tokens in zip(train_refs[int(train_ids[j])], train_tokens[int(train_ids[j])], strict=True)
            ]
            out[int(test_id)] = _consensus_caption(pool, cider)
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), in float64 so ties are exact."""
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _consensus_caption(pool: list[tuple[str, list[str]]], cider: CiderD) -> str:
    """The caption of `pool` (text, tokens) with the highest CIDEr-D against all the others."""
    if len(pool) == 1:
        return pool[0][0]
    scored = []
    for c, (text, tokens) in enumerate(pool):
        others = [toks for o, (_, toks) in enumerate(pool) if o != c]
        scored.append((-cider.score(tokens, others), text))
    return min(scored)[1]


def baseline_captions(
    coco: CocoCaptions,
    features: FeatureLookup,
    train_ids: Sequence[int] | np.ndarray,
    test_ids: Sequence[int] | np.ndarray,
    nn_k: int = 5,
) -> dict[str, dict[int, str]]:
    """The two baselines' captions for `test_ids`: {MOST_FREQUENT: {id: caption}, NEAREST_NEIGHBOUR: {...}}.

    Both see only the training images' captions (and, for the nearest neighbour, their raw features).
    """
    lookup = features.lookup
    train_ids = np.asarray(sorted(int(i) for i in train_ids), dtype=np.int64)
    test_ids = np.asarray(sorted(int(i) for i in test_ids), dtype=np.int64)
    refs = coco.references()
    train_refs = {int(i): refs[int(i)] for i in train_ids}
    frequent = most_frequent_caption_baseline(c for i in train_ids for c in train_refs[int(i)])
    nearest = nearest_neighbour_baseline(
        lookup(train_ids), train_ids, train_refs, lookup(test_ids), test_ids, k=min(nn_k, len(train_ids))
    )
    return {MOST_FREQUENT: {int(i): frequent for i in test_ids}, NEAREST_NEIGHBOUR: nearest}

"""What the training loop reads: datasets of examples in minibatches, and where captions meet image features.

    Dataset          the interface of `minicap.train.Trainer`: len, batch(indices) -> the arguments of model.loss,
                     epoch(rng, batch_size) -> this epoch's minibatches (WITHOUT replacement, reshuffled)
    ArrayDataset     examples that are rows of arrays (the adding problem's fixed validation set, ...)
    CaptionDataset   encoded captions tied to a feature lookup: batches of (features (N, F), captions (N, T+1))

A feature lookup is anything with `lookup(ids) -> (N, F)` that raises `MissingFeaturesError` for ids it lacks: a
`FeatureStore` (minicap.vision.store), the in-memory `FeatureTable` below, or `JoinedFeatures` over several of them
(a training folder's store and a validation folder's). This module knows nothing of how the features were made.

Letters: M captions, N batch, T+1 caption length (tokens), F feature size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from minicap.tokens import NULL

__all__ = [
    "minibatches",
    "caption_indices_for_images",
    "Dataset",
    "ArrayDataset",
    "MissingFeaturesError",
    "FeatureLookup",
    "FeatureTable",
    "JoinedFeatures",
    "non_finite_rows",
    "missing_feature_ids",
    "check_features_available",
    "feature_statistics",
    "AnnotationLookup",
    "CaptionBatch",
    "CaptionDataset",
]

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


def caption_indices_for_images(caption_image_ids: np.ndarray, image_ids: Iterable[int]) -> np.ndarray:
    """Row indices (ascending) of the captions whose image is in `image_ids`: select one split's captions."""
    wanted = np.fromiter((int(i) for i in image_ids), dtype=np.int64)
    return np.flatnonzero(np.isin(caption_image_ids, wanted))


# ============================================================================================ the interface


class Dataset:
    """Examples the Trainer reads in minibatches. A subclass implements `__len__` and `batch(indices)`; `epoch`
    may be overridden for data that is drawn fresh every epoch instead of reshuffled."""

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, key: Any) -> tuple[Any, ...]:
        """The positional arguments of `model.loss` for the examples `key` names (an index array here)."""
        raise NotImplementedError

    def epoch(self, rng: np.random.Generator, batch_size: int) -> list[Any]:
        """One epoch's batch keys, drawn from `rng`: every example once, in a fresh order (`minibatches`)."""
        return list(minibatches(len(self), batch_size, rng))

    def batches_per_epoch(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def in_order(self, batch_size: int) -> Iterator[np.ndarray]:
        """Every example once, in order, in batches of at most `batch_size` (for validation)."""
        for start in range(0, len(self), batch_size):
            yield np.arange(start, min(start + batch_size, len(self)))

    def fingerprint(self) -> str | None:
        """A short hash of the data (the same data gives the same string): a resumed run refuses other data.
        None when the data cannot be summed up (e.g. drawn fresh every epoch)."""
        return None

    def features_fingerprint(self) -> str | None:
        """A short hash of the inputs the examples are looked up in, when `fingerprint` does not cover them (the
        image features of a CaptionDataset): a resumed run then says which of the two changed. None: none such."""
        return None


def _hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class ArrayDataset(Dataset):
    """Examples that are the rows of equally long arrays: batch(indices) = (a[indices] for each array)."""

    def __init__(self, *arrays: np.ndarray) -> None:
        if not arrays or len({len(a) for a in arrays}) != 1:
            raise ValueError(f"need one or more arrays of the same length, got lengths {[len(a) for a in arrays]}")
        self.arrays = tuple(np.asarray(a) for a in arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def batch(self, key: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(a[key] for a in self.arrays)

    def fingerprint(self) -> str:
        return _hash_arrays(*self.arrays)


# ============================================================================================ image features


class MissingFeaturesError(KeyError):
    """Some requested image ids have no feature vector: ONE error with the count and the first ids.

    Raised by `FeatureTable.lookup` and `minicap.vision.store.FeatureStore.lookup` alike; `.missing` lists the ids.
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


class FeatureLookup(Protocol):
    """Anything that gives the features of image ids: `lookup(ids (N,)) -> (N, F)`, MissingFeaturesError for ids
    it lacks (a FeatureStore, a FeatureTable)."""

    def lookup(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray: ...


def non_finite_rows(array: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Indices (k,) int64, in order, of the rows of `array` (N, ...) that hold a NaN or an infinity.

    The one rule of every feature lookup (FeatureStore, FeatureTable): features are finite. Checked `chunk` rows at
    a time, so that even large spatial maps need little extra memory.
    """
    array = np.asarray(array)
    bad = [np.zeros(0, np.int64)]
    for start in range(0, array.shape[0], chunk):
        block = array[start : start + chunk]
        finite = np.isfinite(block.reshape(block.shape[0], -1) if block.size else block[:, :0]).all(axis=1)
        bad.append(np.flatnonzero(~finite) + start)
    return np.concatenate(bad)


class FeatureTable:
    """An in-memory id -> feature lookup over an (n, F) array, with the same `lookup` contract as FeatureStore
    (and the same rule: the features must be finite)."""

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
        bad = non_finite_rows(features)
        if len(bad):
            first = image_ids[bad[:5]].tolist()
            raise ValueError(f"the features of {len(bad)} image(s) hold NaN or infinity (image ids {first})")

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


class JoinedFeatures:
    """One lookup over several that hold disjoint images, e.g. the feature stores of a training folder and of a
    validation folder: each id is looked up in the part that `parts` assigns it to, nothing is copied.

    parts: (image ids, lookup) pairs; an id in two parts is a ValueError naming the shared ids. An id in no part
    is a MissingFeaturesError, like any lookup's.
    """

    def __init__(self, *parts: tuple[Iterable[int] | np.ndarray, FeatureLookup]) -> None:
        if not parts:
            raise ValueError("JoinedFeatures needs at least one (image ids, lookup) part")
        self.parts = [lookup for _, lookup in parts]
        self._part: dict[int, int] = {}  # image id -> index of its part
        for k, (ids, _) in enumerate(parts):
            unique = np.unique(np.asarray(ids, dtype=np.int64)).tolist()
            if shared := [i for i in unique if i in self._part]:
                raise ValueError(f"{len(shared)} image ids are in two parts of the joined features: {shared[:5]}")
            self._part.update(dict.fromkeys(unique, k))

    def lookup(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Features of `image_ids` in that order, shape (len(image_ids), F), each from its own part."""
        ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return np.asarray(self.parts[0].lookup(ids))  # (0, F), F as the parts give it
        which = np.array([self._part.get(int(i), -1) for i in ids], dtype=np.int64)
        if (which < 0).any():
            missing = sorted(set(ids[which < 0].tolist()))
            raise MissingFeaturesError(missing, requested=len(set(ids.tolist())), source="the joined features")
        out: np.ndarray | None = None
        for k, part in enumerate(self.parts):
            rows = np.flatnonzero(which == k)
            if rows.size:
                features = np.asarray(part.lookup(ids[rows]))
                if out is None:
                    out = np.empty((ids.size, features.shape[1]), dtype=features.dtype)
                out[rows] = features
        assert out is not None  # every id was found in some part
        return out

    __call__ = lookup


def missing_feature_ids(image_ids: np.ndarray, features: FeatureLookup) -> list[int]:
    """The distinct ids in `image_ids` that `features` has no vector for."""
    unique = np.unique(np.asarray(image_ids, dtype=np.int64))
    try:
        features.lookup(unique)  # the usual case: everything is there, one call
        return []
    except MissingFeaturesError as error:  # a FeatureStore or FeatureTable names the missing ids
        return sorted(set(error.missing))


def check_features_available(image_ids: np.ndarray, features: FeatureLookup, what: str = "training") -> None:
    """Raise ONE MissingFeaturesError naming how many images (and captions) lack features, and the first ids.

    Called before training starts, so a missing image fails in a second and not hours into a run.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    missing = missing_feature_ids(image_ids, features)
    if missing:
        n_captions = int(np.isin(image_ids, missing).sum())
        raise MissingFeaturesError(
            missing,
            requested=len(np.unique(image_ids)),
            source=f"the features given ({n_captions} {what} captions belong to these images)",
        )


def feature_statistics(
    image_ids: np.ndarray, features: FeatureLookup, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (F,) float64 over the DISTINCT images in `image_ids`.

    Each image counts once however many captions it has. Two passes over chunks (mean, then squared deviations):
    exact in float64 and never holds all features at once.
    """
    unique = np.unique(np.asarray(image_ids, dtype=np.int64))
    if unique.size == 0:
        raise ValueError("no images to compute feature statistics from")
    total, count = np.zeros(0), 0
    for start in range(0, unique.size, chunk):
        x = np.asarray(features.lookup(unique[start : start + chunk]), dtype=np.float64)
        x = x.reshape(-1, x.shape[-1])  # annotations (n, L, F): every location of every image, per channel
        total = x.sum(axis=0) if total.size == 0 else total + x.sum(axis=0)
        count += x.shape[0]
    mean = total / count
    squares = np.zeros_like(mean)
    for start in range(0, unique.size, chunk):
        x = np.asarray(features.lookup(unique[start : start + chunk]), dtype=np.float64)
        squares += ((x.reshape(-1, x.shape[-1]) - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(squares / count)


class AnnotationLookup:
    """The annotation vectors of an attention captioner: `lookup(ids) -> (M, L, F)` float32, a feature store's
    spatial maps (M, h, w, F) read as L = h·w vectors (row-major over the grid: location i is row i // w, column
    i % w). `source` is anything with `lookup_spatial(ids)` (a FeatureStore with spatial maps); stores keep them as
    float16 on disk and in memory, and each batch is widened to float32 here."""

    def __init__(self, source: Any) -> None:
        if not hasattr(source, "lookup_spatial"):
            raise TypeError(f"{type(source).__name__} has no spatial maps (lookup_spatial); extract with --spatial")
        if getattr(source, "spatial", True) is None:
            raise ValueError(
                "this feature store has no spatial maps; an attention captioner needs them: "
                "re-extract with `minicap extract --spatial` (an encoder built with --spatial)"
            )
        self.source = source

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the feature map."""
        return tuple(self.source.spatial.shape[1:3])  # type: ignore[return-value]

    def lookup(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        maps = np.asarray(self.source.lookup_spatial(image_ids))
        return maps.reshape(maps.shape[0], -1, maps.shape[-1]).astype(np.float32)

    __call__ = lookup


# ============================================================================================ captions


class CaptionBatch(NamedTuple):
    """One minibatch, the arguments of `CaptionModel.loss`: features (N, F) (annotations (N, L, F) for the
    attention captioner), captions (N, T+1) int32 trimmed to the batch's longest caption."""

    features: np.ndarray
    captions: np.ndarray


class CaptionDataset(Dataset):
    """Encoded captions tied to their images' features.

    captions:  (M, T+1) int32 from `minicap.text.encode_captions`
    image_ids: (M,) int64, the image of each caption row
    features:  a FeatureLookup (FeatureStore, FeatureTable). Every image is checked at construction (one
               MissingFeaturesError with the count and the first ids), so a missing feature fails here and not
               hours into training.
    """

    def __init__(
        self, captions: np.ndarray, image_ids: np.ndarray, features: FeatureLookup, what: str = "training"
    ) -> None:
        self.captions = np.asarray(captions)
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.features = features
        if self.captions.ndim != 2 or self.captions.shape[0] != self.image_ids.shape[0]:
            raise ValueError(
                f"need captions (M, T+1) and image_ids (M,), got {self.captions.shape} and {self.image_ids.shape}"
            )
        if not np.issubdtype(self.captions.dtype, np.integer):
            raise TypeError(f"captions must be integer token ids, got dtype {self.captions.dtype}")
        check_features_available(self.image_ids, features, what)

    def __len__(self) -> int:
        return self.captions.shape[0]

    @property
    def feature_size(self) -> int:
        """F, the length of the feature vectors the lookup gives (of each annotation vector, for (N, L, F))."""
        return int(np.asarray(self.features.lookup(self.image_ids[:1])).shape[-1])

    def batch(self, key: np.ndarray) -> CaptionBatch:
        """Rows `key` (e.g. from `minibatches`) with their features.

        Caption columns after the batch's longest caption are all <NULL> and are cut off: the model's cost
        grows with T, and short batches are common (median COCO caption: 10 words).
        """
        indices = np.asarray(key, dtype=np.int64)
        captions = self.captions[indices]
        used = np.flatnonzero((captions != NULL).any(axis=0))
        width = int(used[-1]) + 1 if used.size else 1
        return CaptionBatch(self.features.lookup(self.image_ids[indices]), captions[:, :width])

    def fingerprint(self) -> str:
        """The captions and which image each belongs to (the features have their own `features_fingerprint`)."""
        h = hashlib.sha256()
        h.update(str(self.captions.shape).encode())
        h.update(np.ascontiguousarray(self.captions, dtype=np.int32).tobytes())
        h.update(np.ascontiguousarray(self.image_ids, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def features_fingerprint(self, chunk: int = 4096) -> str:
        """The features of this dataset's images, in id order: another feature store with other values for these
        images (re-extracted, another encoder's, a damaged copy) gives another string; extra images do not count."""
        h = hashlib.sha256()
        unique = np.unique(self.image_ids)
        for start in range(0, unique.size, chunk):
            features = np.asarray(self.features.lookup(unique[start : start + chunk]))
            h.update(f"{features.dtype.str}{features.shape}".encode())
            h.update(np.ascontiguousarray(features).tobytes())
        return h.hexdigest()[:16]

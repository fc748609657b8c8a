"""The feature store: image features kept ONCE, in a file that is safe to load.

    ids (N,) int64  ·  features (N, F) float32  ·  optional spatial maps (N, h, w, C)  ·  manifest (how they were made)

Training runs the caption model thousands of times over the same images while the CNN encoder is frozen, so its
output for an image never changes: `minicap.vision.extract` runs every image through the encoder exactly once and
writes a `FeatureStore`; everything after that reads the store.

A store is a pickled plain dict of NumPy arrays and builtins. Pickles can run code when loaded, so a store is only
ever read with `minicap.safe_io.RestrictedUnpickler`, which resolves just the few NumPy globals an array needs; a
file naming anything else (`os.system`, `builtins.eval`, ...) is refused before anything runs. Writes are atomic
(a temporary file renamed into place), so a killed process never leaves a half-written store.

Two more rules keep wrong numbers out of training: every feature must be finite (NaN or infinity is refused when a
store is made, saved or loaded, naming the images), and every store carries a sha256 checksum of its contents that
`load` verifies, so a byte changed on disk (a bad copy, a failing disk) is an error instead of a feature value that is
silently a little different. Stores written before checksums existed still load, with a `FeatureStoreWarning`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import operator
import os
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from minicap.dataset import MissingFeaturesError, non_finite_rows  # one error type and one rule for every lookup
from minicap.safe_io import RestrictedUnpickler, UnsafePickleError, atomic_write
from minicap.vision.encoders.spec import EncoderSpec

__all__ = [
    "FORMAT",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureStoreWarning",
    "MissingFeaturesError",
    "UnsafeFeatureStoreError",
]

# Written into every store; bump when the layout changes. The checksum ("sha256") was added without a bump: it is an
# extra key, which older readers ignore, and stores without it still load here.
FORMAT = "minicap.features/1"

# The only globals a store's pickle may name: what NumPy 2 needs to rebuild arrays, dtypes and scalars.
# Protocol 5 (what we write) uses `_frombuffer`; protocols 2-4 use `_reconstruct` + `ndarray` (+ `scalar` for
# NumPy scalars). NumPy 1.x wrote `numpy.core.*`; NumPy 2 renamed it `numpy._core.*` — accept both spellings,
# mapped to the same functions. Nothing from `builtins` is needed: dict, list, str, int, float, bool, None,
# tuple and bytes have their own pickle opcodes.
from numpy._core import multiarray as _multiarray  # noqa: E402  (grouped with the allow-list it feeds)
from numpy._core import numeric as _numeric  # noqa: E402

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _core in ("numpy._core", "numpy.core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer

_PICKLE_PROTOCOL = 5  # in-band buffers: loading rebuilds each array from its bytes without an extra copy


class FeatureStoreError(ValueError):
    """A feature store file or object is malformed, or does not fit what it is used with."""


class UnsafeFeatureStoreError(FeatureStoreError, UnsafePickleError):
    """The file is not a feature store: its pickle names a global that could run code. Nothing in it was executed.

    Both a FeatureStoreError (every command reports it as a bad input file) and an UnsafePickleError."""


class FeatureStoreWarning(UserWarning):
    """A store was loaded, but something about it deserves a word (e.g. it has no checksum to verify)."""


# ------------------------------------------------------------------------------------------------- the store


@dataclasses.dataclass
class FeatureStore:
    """Encoder outputs for N images, with a manifest saying exactly how they were made.

    ids       (N,) int64, unique COCO image ids, row i of every array belongs to ids[i]
    features  (N, F) float32, pooled encoder features
    manifest  dict of builtins: architecture, onnx_sha256, weights_sha256, encoder_spec, created_utc,
              minicap_version, skipped (list of {id, path, reason}), extraction (counts of the last run)
    spatial   optional (N, h, w, C) float16 or float32: the last feature map before pooling (NHWC),
              for attention models
    """

    ids: np.ndarray
    features: np.ndarray
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    spatial: np.ndarray | None = None

    def __post_init__(self) -> None:
        _validate(self.ids, self.features, self.spatial, self.manifest, source="FeatureStore")
        # Rows sorted by id, so a lookup of M ids is one vectorised binary search: O(M log N).
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted_ids = self.ids[self._order]

    # ---- sizes and metadata

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def feature_size(self) -> int:
        """F, the length of one pooled feature vector."""
        return int(self.features.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, int, int] | None:
        """(h, w, C) of the stored feature maps, or None when the store has none."""
        return None if self.spatial is None else tuple(int(s) for s in self.spatial.shape[1:])  # type: ignore[return-value]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Images that could not be extracted: [{"id", "path", "reason"}, ...]."""
        return list(self.manifest.get("skipped", []))

    @property
    def spec(self) -> EncoderSpec | None:
        """The `EncoderSpec` (preprocessing and sizes) the features were made with, if the manifest has it."""
        d = self.manifest.get("encoder_spec")
        return None if d is None else EncoderSpec.from_json(json.dumps(d))

    def check_feature_size(self, expected: int, what: str = "model") -> None:
        """Raise `FeatureStoreError` unless the store's F equals `expected` (e.g. a model's feature size)."""
        if int(expected) != self.feature_size:
            arch = self.manifest.get("architecture", "an unknown encoder")
            raise FeatureStoreError(
                f"the {what} expects {int(expected)}-d image features, but this store holds "
                f"{self.feature_size}-d features from {arch}; re-extract with the matching encoder or build "
                f"the {what} with feature_size={self.feature_size}"
            )

    def check_same_encoder(self, other: FeatureStore, what: str = "the other store") -> None:
        """Raise `FeatureStoreError` unless `other` was made by the same encoder: the same feature size F and the
        same architecture, ONNX file (sha256), weights (sha256) and preprocessing as the manifests record (a value
        one store records and the other does not counts as different: it cannot be checked)."""
        if other.feature_size != self.feature_size:
            raise FeatureStoreError(
                f"{what} holds {other.feature_size}-d features, these are {self.feature_size}-d: features of two "
                "encoders live in different spaces; extract both with the same encoder"
            )
        differ = [
            f"{key} {self.manifest.get(key)!r} vs {other.manifest.get(key)!r}"
            for key in ("architecture", "onnx_sha256", "weights_sha256", "encoder_spec")
            if self.manifest.get(key) != other.manifest.get(key)
        ]
        if differ:
            raise FeatureStoreError(
                f"{what} was not made by the same encoder as these features ({'; '.join(differ)}): features of two "
                "encoders live in different spaces; extract both with the same encoder"
            )

    def encoder_info(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """What a checkpoint records about the encoder that made these features (and where the store is).

        {"architecture", "onnx_sha256", "onnx_file", "weights_sha256", "feature_size", "features_file"}; entries
        the manifest lacks are None. A later run compares `onnx_sha256` to refuse features from another encoder.
        """
        return {
            "architecture": self.manifest.get("architecture"),
            "onnx_sha256": self.manifest.get("onnx_sha256"),
            "onnx_file": self.manifest.get("onnx_file"),
            "weights_sha256": self.manifest.get("weights_sha256"),
            "feature_size": self.feature_size,
            "features_file": None if path is None else str(path),
        }

    # ---- lookups

    def __contains__(self, image_id: object) -> bool:
        try:
            key = operator.index(image_id)  # type: ignore[arg-type]
        except TypeError:
            return False
        pos = int(np.searchsorted(self._sorted_ids, key))
        return pos < len(self) and int(self._sorted_ids[pos]) == key

    def rows(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Row indices (M,) int64 of `image_ids` (M,); `MissingFeaturesError` names any missing ones."""
        query = np.asarray(list(image_ids) if not isinstance(image_ids, np.ndarray) else image_ids)
        if query.size == 0:
            return np.zeros(0, dtype=np.int64)
        if query.ndim != 1 or not np.issubdtype(query.dtype, np.integer):
            raise TypeError(f"image ids must be a 1-D sequence of integers, got dtype {query.dtype} ndim {query.ndim}")
        pos = np.searchsorted(self._sorted_ids, query)
        pos_clipped = np.minimum(pos, max(len(self) - 1, 0))
        found = (pos < len(self)) & (self._sorted_ids[pos_clipped] == query) if len(self) else np.zeros_like(pos, bool)
        if not found.all():
            raise MissingFeaturesError(query[~found].tolist(), requested=int(query.size))
        return self._order[pos_clipped].astype(np.int64)

    def lookup(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Features (M, F) float32 for `image_ids` (M,), in that order (a copy)."""
        return self.features[self.rows(image_ids)]

    def lookup_spatial(self, image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Feature maps (M, h, w, C) for `image_ids` (M,); an error if the store has none."""
        if self.spatial is None:
            raise FeatureStoreError("this store has no spatial feature maps; re-extract with --spatial")
        return self.spatial[self.rows(image_ids)]

    def subset(self, image_ids: Iterable[int] | np.ndarray) -> FeatureStore:
        """A new store holding only `image_ids`, in that order (the manifest is copied)."""
        rows = self.rows(image_ids)
        return FeatureStore(
            ids=self.ids[rows],
            features=self.features[rows],
            manifest=copy.deepcopy(self.manifest),
            spatial=None if self.spatial is None else self.spatial[rows],
        )

    def merge(self, *others: FeatureStore) -> FeatureStore:
        """The union of this store and `others`, made by the same encoder; an id in several keeps its first row.

        One concatenation for any number of stores (merging chunk by chunk would copy O(N^2) bytes). Refuses
        stores from different ONNX files (their features live in different spaces), of different F, or where
        only some have spatial maps.
        """
        stores = [self, *others]
        for other in others:
            mine, theirs = self.manifest.get("onnx_sha256"), other.manifest.get("onnx_sha256")
            if mine != theirs:
                raise FeatureStoreError(
                    f"cannot merge feature stores from different encoders (onnx sha256 {mine} vs {theirs})"
                )
            if self.feature_size != other.feature_size:
                raise FeatureStoreError(f"cannot merge F={self.feature_size} with F={other.feature_size} features")
            if self.spatial_shape != other.spatial_shape:
                raise FeatureStoreError(
                    f"cannot merge stores with spatial maps {self.spatial_shape} and {other.spatial_shape}"
                )
        all_ids = np.concatenate([s.ids for s in stores])
        _, first = np.unique(all_ids, return_index=True)  # the first row of every id
        keep = np.sort(first)  # in the stores' own order
        spatial = None
        if self.spatial is not None:
            spatial = np.concatenate([s.spatial.astype(self.spatial.dtype, copy=False) for s in stores])[keep]
        ids = all_ids[keep]
        kept = set(ids.tolist())
        skipped = {int(x["id"]): x for s in reversed(stores) for x in s.skipped if int(x["id"]) not in kept}
        manifest = copy.deepcopy(self.manifest)
        manifest["skipped"] = [copy.deepcopy(skipped[i]) for i in sorted(skipped)]
        return FeatureStore(
            ids=ids,
            features=np.concatenate([s.features for s in stores])[keep],
            manifest=manifest,
            spatial=spatial,
        )

    def sorted_by_id(self) -> FeatureStore:
        """The same store with rows in increasing id order (what `extract_features` saves)."""
        order = self._order
        return FeatureStore(
            ids=self.ids[order],
            features=self.features[order],
            manifest=self.manifest,
            spatial=None if self.spatial is None else self.spatial[order],
        )

    # ---- files

    def checksum(self) -> str:
        """sha256 (hex) of the store's contents: every array's dtype, shape and bytes, and the manifest."""
        return _checksum(self.ids, self.features, self.spatial, self.manifest)

    def save(self, path: str | os.PathLike) -> None:
        """Write the store to `path` atomically, as a pickled plain dict of arrays and builtins with its checksum."""
        _check_builtins(self.manifest, "manifest")  # so that the restricted loader can read it back
        payload = {
            "format": FORMAT,
            "ids": np.ascontiguousarray(self.ids),
            "features": np.ascontiguousarray(self.features),
            "spatial": None if self.spatial is None else np.ascontiguousarray(self.spatial),
            "manifest": self.manifest,
            "sha256": self.checksum(),
        }
        with atomic_write(path, "wb") as f:
            _dump(payload, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStore:
        """Read a store written by `save`, resolving only NumPy's array-rebuilding globals, and validate it.

        Raises `FileNotFoundError`, or `FeatureStoreError` naming the file: not a feature store (a directory, another
        format, truncated), `UnsafeFeatureStoreError` (its pickle names a global that could run code; nothing was
        executed), a checksum that does not match (the file changed after it was written), or contents a store may
        not hold (NaN or infinite features, repeated ids, ...). A store written before checksums existed loads
        with a `FeatureStoreWarning`.
        """
        path = Path(path)
        if path.is_dir():
            raise FeatureStoreError(f"{path} is a directory, not a feature store file (e.g. {path / 'features.pkl'})")
        if not path.is_file():
            raise FileNotFoundError(f"feature store {path} does not exist (create it with `minicap extract`)")
        with open(path, "rb") as f:
            try:
                payload = RestrictedUnpickler(f, _ALLOWED_GLOBALS, what=f"feature store {path}").load()
            except UnsafePickleError as e:  # its message names the refused global and says nothing was executed
                raise UnsafeFeatureStoreError(f"{path} is not a minicap feature store: {e}") from None
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
                raise FeatureStoreError(
                    f"{path} is not a readable feature store (truncated or corrupt?): {type(e).__name__}: {e}"
                ) from None
        if not isinstance(payload, dict):
            raise FeatureStoreError(f"{path} is not a feature store: it holds a {type(payload).__name__}, not a dict")
        if payload.get("format") != FORMAT:
            raise FeatureStoreError(
                f"{path} is not a feature store of format {FORMAT!r} (found format {payload.get('format')!r})"
            )
        missing = [k for k in ("ids", "features", "manifest") if k not in payload]
        if missing:
            raise FeatureStoreError(f"feature store {path} lacks the keys {missing}")
        try:
            store = cls(
                ids=payload["ids"],
                features=payload["features"],
                manifest=payload["manifest"],
                spatial=payload.get("spatial"),
            )
        except FeatureStoreError as e:  # "FeatureStore: <what is wrong>" -> "feature store <path>: <what is wrong>"
            raise FeatureStoreError(f"feature store {path}: {str(e).removeprefix('FeatureStore: ')}") from None
        _verify_checksum(store, payload.get("sha256"), path)
        return store


def _checksum(ids: np.ndarray, features: np.ndarray, spatial: np.ndarray | None, manifest: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for a in (ids, features, spatial):
        if a is None:
            h.update(b"none")
            continue
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)  # the bytes, without a copy
    h.update(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def _verify_checksum(store: FeatureStore, written: Any, path: Path) -> None:
    """The checksum saved with the store must be the checksum of what was read back."""
    if written is None:
        warnings.warn(
            f"feature store {path} has no checksum (it was written before minicap stored one), so it was loaded "
            "unverified; `minicap extract` with the same --out reuses every feature and adds one",
            FeatureStoreWarning,
            stacklevel=3,
        )
        return
    found = store.checksum()
    if found != written:
        raise FeatureStoreError(
            f"feature store {path} is damaged: its contents do not match the checksum written with them (sha256 "
            f"{str(written)[:12]}... written, {found[:12]}... read), so the file changed after it was saved (a bad "
            "copy, a failing disk). Extract it again: delete it and run `minicap extract`"
        )


def _dump(payload: dict[str, Any], f: IO[bytes]) -> None:
    """Pickle `payload` into `f` (a separate function so a test can make it fail half-way)."""
    pickle.dump(payload, f, protocol=_PICKLE_PROTOCOL)


def _validate(ids: Any, features: Any, spatial: Any, manifest: Any, source: str) -> None:
    """Clear errors for anything a store must not be: wrong types, dtypes, shapes, or repeated ids."""

    def describe(a: Any) -> str:
        return f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__

    if not isinstance(ids, np.ndarray) or ids.dtype != np.int64 or ids.ndim != 1:
        raise FeatureStoreError(f"{source}: ids must be a 1-D int64 array, got {describe(ids)}")
    if not isinstance(features, np.ndarray) or features.dtype != np.float32 or features.ndim != 2:
        raise FeatureStoreError(f"{source}: features must be a 2-D float32 array (N, F), got {describe(features)}")
    if features.shape[0] != ids.shape[0]:
        raise FeatureStoreError(f"{source}: {ids.shape[0]} ids but {features.shape[0]} feature rows")
    if spatial is not None:
        if not isinstance(spatial, np.ndarray) or spatial.dtype not in (np.float16, np.float32) or spatial.ndim != 4:
            raise FeatureStoreError(
                f"{source}: spatial must be None or a 4-D float16/float32 array (N, h, w, C), got {describe(spatial)}"
            )
        if spatial.shape[0] != ids.shape[0]:
            raise FeatureStoreError(f"{source}: {ids.shape[0]} ids but {spatial.shape[0]} spatial maps")
    if not isinstance(manifest, dict):
        raise FeatureStoreError(f"{source}: manifest must be a dict, got {type(manifest).__name__}")
    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != ids.size:
        repeated = unique[counts > 1][:5].tolist()
        raise FeatureStoreError(f"{source}: image ids must be unique; repeated: {repeated}")
    # NaN or infinity in one image's features would surface much later as "training diverged at step 1" or as
    # silently wrong captions and scores: refuse them here, naming the images.
    for name, array in (("features", features), ("spatial maps", spatial)):
        bad = [] if array is None else non_finite_rows(array)
        if len(bad):
            first = ", ".join(str(i) for i in ids[bad[:5]].tolist()) + (", ..." if len(bad) > 5 else "")
            raise FeatureStoreError(
                f"{source}: the {name} of {len(bad)} image(s) hold NaN or infinity (image ids {first}); features "
                "must be finite numbers: extract those images again (and check the encoder file)"
            )


def _check_builtins(obj: Any, where: str) -> None:
    """The manifest may hold only dict (str keys), list, tuple, str, int, float, bool and None."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return
    if isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            _check_builtins(x, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}")
            _check_builtins(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; a manifest holds only builtins (dict, list, str, numbers)")

"""Image features, extracted ONCE through ONNX Runtime and kept in a safe pickled `FeatureStore`.

Training a captioner runs the caption model thousands of times over the same images; the CNN encoder is
frozen, so its output for an image never changes. We therefore run every image through the encoder exactly
once:

    JPEG --(Pillow: decode, EXIF rotate, to RGB, resize, crop, normalise)--> (3, S, S) float32
         --(ONNX Runtime: the encoder graph)--> `features` (F,) [+ `spatial` (h, w, C), optional]
         --> FeatureStore: ids (N,) int64, features (N, F) float32, manifest (how they were made)

Decoding (Pillow, which releases the GIL while it decodes and resizes) runs in a small worker pool while ONNX
Runtime works on the previous batch, so the two overlap instead of adding up.

A store is a pickled plain dict of NumPy arrays and builtins. Pickles can run code when loaded, so a store is
only ever read with `minicap.safe_io.RestrictedUnpickler`, which resolves just the few NumPy globals an array
needs; a file naming anything else (`os.system`, `builtins.eval`, ...) is refused before anything runs.

Extraction is resumable: new features are saved every `save_every` images into `<out>.parts/` (each chunk
written atomically), and a re-run with the same ONNX file computes only the ids that are still missing. The
final store replaces `<out>` atomically, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import operator
import os
import pickle
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from minicap import __version__
from minicap.data import MissingFeaturesError  # one error type for every feature lookup
from minicap.encoders.spec import EncoderSpec, load_rgb, preprocess
from minicap.safe_io import RestrictedUnpickler, UnsafePickleError, atomic_write

__all__ = [
    "FORMAT",
    "FeatureStore",
    "FeatureStoreError",
    "MissingFeaturesError",
    "OnnxEncoder",
    "DecodedBatch",
    "load_image_tensor",
    "decode_batches",
    "extract_features",
    "coco_image_paths",
]

FORMAT = "minicap.features/1"  # written into every store; bump when the layout changes

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

    def save(self, path: str | os.PathLike) -> None:
        """Write the store to `path` atomically, as a pickled plain dict of arrays and builtins."""
        _check_builtins(self.manifest, "manifest")  # so that the restricted loader can read it back
        payload = {
            "format": FORMAT,
            "ids": np.ascontiguousarray(self.ids),
            "features": np.ascontiguousarray(self.features),
            "spatial": None if self.spatial is None else np.ascontiguousarray(self.spatial),
            "manifest": self.manifest,
        }
        with atomic_write(path, "wb") as f:
            _dump(payload, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStore:
        """Read a store written by `save`, resolving only NumPy's array-rebuilding globals, and validate it.

        Raises `FileNotFoundError`, `minicap.safe_io.UnsafePickleError` (the file names a global that could
        run code; nothing was executed) or `FeatureStoreError` (not a feature store, or inconsistent data).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature store {path} does not exist (create it with `minicap extract`)")
        with open(path, "rb") as f:
            try:
                payload = RestrictedUnpickler(f, _ALLOWED_GLOBALS, what=f"feature store {path}").load()
            except UnsafePickleError:
                raise  # its message already names the file and the refused global
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
            return cls(
                ids=payload["ids"],
                features=payload["features"],
                manifest=payload["manifest"],
                spatial=payload.get("spatial"),
            )
        except FeatureStoreError as e:
            raise FeatureStoreError(f"feature store {path}: {e}") from None


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


# ------------------------------------------------------------------------------------------- the ONNX encoder


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxEncoder:
    """An encoder ONNX file opened in ONNX Runtime, with its `EncoderSpec` read from the file's metadata.

    Contract of the file (what `minicap.encoders` builds): input `image` (N, 3, S, S) float32; outputs
    `features` (N, F), `logits` (N, 1000) and optionally `spatial` (N, h, w, C); metadata_props
    `minicap.arch`, `minicap.encoder_spec` (EncoderSpec JSON) and `minicap.weights_sha256`.
    """

    def __init__(
        self, path: str | os.PathLike, *, intra_op_threads: int | None = None, allow_spinning: bool = False
    ) -> None:
        import onnxruntime as ort  # heavy import, only needed here

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"encoder {self.path} does not exist (build one with minicap.encoders.build_encoder)"
            )
        self.sha256 = _sha256_file(self.path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fuse Conv+BN+ReLU etc.
        # None keeps ORT's default, one thread per physical core (2 on the 2-core machine this was measured on;
        # benchmarks/bench_extract.py --sweep compares 1 and 2).
        opts.intra_op_num_threads = 0 if intra_op_threads is None else intra_op_threads
        opts.inter_op_num_threads = 1
        # ORT's worker threads normally spin-wait between ops; that busy CPU would be stolen from the Pillow
        # threads decoding the next batch on this 2-core machine, so let them sleep instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad files
            raise FeatureStoreError(f"{self.path} is not a loadable ONNX model: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "minicap.encoder_spec" not in meta:
            raise FeatureStoreError(
                f"{self.path} has no 'minicap.encoder_spec' metadata: it was not built by minicap.encoders, "
                "so the preprocessing it expects is unknown"
            )
        self.spec = EncoderSpec.from_json(meta["minicap.encoder_spec"])
        self.arch = meta.get("minicap.arch", self.spec.arch)
        self.weights_sha256 = meta.get("minicap.weights_sha256", "unknown")
        inputs = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if inputs != ["image"] or "features" not in self.output_names:
            raise FeatureStoreError(
                f"{self.path} does not follow the encoder contract: inputs {inputs} (want ['image']), "
                f"outputs {self.output_names} (want 'features', 'logits' and optionally 'spatial')"
            )

    @property
    def has_spatial(self) -> bool:
        return "spatial" in self.output_names

    def run(self, images: np.ndarray, spatial: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """images (N, 3, S, S) float32 -> features (N, F) float32 and, if asked, spatial (N, h, w, C)."""
        if spatial and not self.has_spatial:
            raise FeatureStoreError(f"{self.path} has no 'spatial' output; build the encoder with spatial maps")
        names = ["features", "spatial"] if spatial else ["features"]
        outs = self.session.run(names, {"image": images})
        features = outs[0]
        if features.ndim != 2 or features.shape != (images.shape[0], self.spec.feature_size):
            raise FeatureStoreError(
                f"{self.path}: 'features' output has shape {features.shape}, expected "
                f"({images.shape[0]}, {self.spec.feature_size}) from its EncoderSpec"
            )
        return features.astype(np.float32, copy=False), (outs[1] if spatial else None)

    def manifest(self) -> dict[str, Any]:
        """The manifest entries that say which encoder and preprocessing produced a store's features."""
        import onnxruntime as ort

        return {
            "architecture": self.arch,
            "onnx_file": self.path.name,
            "onnx_sha256": self.sha256,
            "weights_sha256": self.weights_sha256,
            "encoder_spec": json.loads(self.spec.to_json()),
            "onnxruntime_version": ort.__version__,
            "minicap_version": __version__,
        }


# ------------------------------------------------------------------------------------------------- decoding


class DecodedBatch(NamedTuple):
    """One batch after decoding: the images that worked and the reasons for those that did not."""

    ids: np.ndarray  # (B,) int64, ids of the decoded images
    images: np.ndarray  # (B, 3, S, S) float32, encoder input
    failures: list[dict[str, Any]]  # [{"id", "path", "reason"}] for images that could not be decoded


def load_image_tensor(path: str | os.PathLike, spec: EncoderSpec) -> np.ndarray:
    """One image file -> (3, S, S) float32 encoder input (EXIF orientation applied, any mode -> RGB)."""
    return preprocess(load_rgb(path), spec)


def _reason(path: Path, e: BaseException) -> str:
    """A short, human reason for a failed decode, as listed in the manifest's `skipped`."""
    if isinstance(e, FileNotFoundError) or not path.exists():
        return "file not found"
    if isinstance(e, IsADirectoryError) or path.is_dir():
        return "is a directory"
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can read (UnidentifiedImageError)"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _decode_batch(items: Sequence[tuple[int, Path]], spec: EncoderSpec) -> DecodedBatch:
    """Decode and preprocess one batch; a file that fails is recorded, never raised."""
    ids, tensors, failures = [], [], []
    for image_id, path in items:
        try:
            tensors.append(load_image_tensor(path, spec))
            ids.append(image_id)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # OSError covers truncated/unidentified images and missing files; Pillow raises ValueError and
            # SyntaxError for some malformed headers, DecompressionBombError for absurd pixel counts.
            failures.append({"id": int(image_id), "path": str(path), "reason": _reason(Path(path), e)})
    s = spec.input_size
    images = np.stack(tensors) if tensors else np.zeros((0, 3, s, s), np.float32)
    return DecodedBatch(np.asarray(ids, dtype=np.int64), images, failures)


def decode_batches(
    items: Sequence[tuple[int, Path]],
    spec: EncoderSpec,
    batch_size: int = 32,
    workers: int = 2,
    pool: Literal["thread", "process"] = "thread",
) -> Iterator[DecodedBatch]:
    """Decode `items` in batches, in order, with `workers` threads (or processes) decoding ahead.

    At most `workers + 1` batches are in flight, so memory stays bounded at about
    (workers + 1) * batch_size * 3 * S * S * 4 bytes while the consumer (ONNX Runtime) works on the current
    batch. `workers=0` decodes in the calling thread (no overlap, for comparison).
    """
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if workers <= 0:
        for b in batches:
            yield _decode_batch(b, spec)
        return
    if pool == "thread":
        executor: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(workers, "minicap-decode")
    elif pool == "process":
        import multiprocessing

        # "spawn": a forked child of a process running ONNX Runtime's thread pool could inherit held locks.
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        raise ValueError(f"pool must be 'thread' or 'process', not {pool!r}")
    in_flight: deque[concurrent.futures.Future[DecodedBatch]] = deque()
    pending = iter(batches)
    try:
        for b in pending:
            in_flight.append(executor.submit(_decode_batch, b, spec))
            if len(in_flight) > workers:
                break
        while in_flight:
            done = in_flight.popleft()
            nxt = next(pending, None)
            if nxt is not None:
                in_flight.append(executor.submit(_decode_batch, nxt, spec))
            yield done.result()
    finally:
        # Reached on normal exit and when the consumer stops early (an error, a kill by exception).
        for fut in in_flight:
            fut.cancel()
        executor.shutdown(wait=True)


# ----------------------------------------------------------------------------------------------- extraction


def _normalise_items(
    images: Mapping[int, str | os.PathLike] | Iterable[tuple[int, str | os.PathLike]],
) -> list[tuple[int, Path]]:
    pairs = images.items() if isinstance(images, Mapping) else images
    items: list[tuple[int, Path]] = []
    seen: set[int] = set()
    for pair in pairs:
        image_id, path = pair
        try:
            key = operator.index(image_id)
        except TypeError:
            raise TypeError(f"image ids must be integers, got {image_id!r} ({type(image_id).__name__})") from None
        if key in seen:
            raise ValueError(f"image id {key} is listed twice")
        seen.add(key)
        items.append((key, Path(path)))
    return items


def _parts_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts")


def _load_previous(out_path: Path, encoder: OnnxEncoder, spatial: bool) -> tuple[FeatureStore | None, int]:
    """Everything earlier runs saved for `out_path` (the store and its partial chunks), checked to come
    from the same ONNX file; and the number of the next chunk file."""

    def check(store: FeatureStore, where: Path) -> None:
        sha = store.manifest.get("onnx_sha256")
        if sha != encoder.sha256:
            raise FeatureStoreError(
                f"{where} holds features from another encoder (onnx sha256 {sha}, this one is "
                f"{encoder.sha256}); refusing to mix them: delete it or choose another output path"
            )
        if (store.spatial is not None) != spatial:
            had = "with" if store.spatial is not None else "without"
            raise FeatureStoreError(
                f"{where} was extracted {had} spatial maps but this run asks spatial={spatial}; "
                "delete it or choose another output path"
            )

    found: list[FeatureStore] = []
    if out_path.exists():
        found.append(FeatureStore.load(out_path))
        check(found[-1], out_path)
    next_part = 0
    parts_dir = _parts_dir(out_path)
    if parts_dir.is_dir():
        for part_path in sorted(parts_dir.glob("part-*.pkl")):
            found.append(FeatureStore.load(part_path))
            check(found[-1], part_path)
            next_part = max(next_part, int(part_path.stem.split("-")[1]) + 1)
    return (found[0].merge(*found[1:]) if found else None), next_part


def extract_features(
    images: Mapping[int, str | os.PathLike] | Iterable[tuple[int, str | os.PathLike]],
    encoder_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 32,
    workers: int = 2,
    spatial: bool = False,
    spatial_dtype: type = np.float16,
    progress: bool = True,
    save_every: int = 1024,
    pool: Literal["thread", "process"] = "thread",
    intra_op_threads: int | None = None,
) -> FeatureStore:
    """Run every image through the encoder once and save a `FeatureStore` to `out_path` (atomically).

    images        {image_id: path} or [(image_id, path), ...]
    encoder_path  an encoder ONNX file built by `minicap.encoders` (its metadata gives the preprocessing)
    spatial       also keep the (h, w, C) feature maps, stored as `spatial_dtype` (float16 halves the size;
                  EfficientNet-Lite0's ReLU6 maps lie in [0, 6], where float16 keeps ~3 significant digits)
    save_every    after this many newly extracted images, save them as a chunk in `<out_path>.parts/`
    workers/pool  decoding threads (default) or processes, overlapping ONNX Runtime's work on the last batch

    Resumable: ids already in `out_path` or in its `.parts/` chunks (from the same ONNX file, by sha256) are
    reused, not recomputed. Images that cannot be read (missing, empty, truncated, not an image) are skipped
    and listed in `manifest["skipped"]` as {"id", "path", "reason"}; they are retried on the next run.
    Returns the saved store (all ids it holds, sorted); `manifest["extraction"]` counts this run's work.
    """
    if batch_size < 1 or save_every < 1:
        raise ValueError(f"batch_size and save_every must be >= 1, got {batch_size} and {save_every}")
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_path = Path(out_path)
    items = _normalise_items(images)
    encoder = OnnxEncoder(encoder_path, intra_op_threads=intra_op_threads)
    if spatial and not encoder.has_spatial:
        raise FeatureStoreError(f"{encoder.path} has no 'spatial' output; build the encoder with spatial maps")
    base_manifest = encoder.manifest()
    previous, next_part = _load_previous(out_path, encoder, spatial)
    have = set() if previous is None else set(previous.ids.tolist())
    todo = [(i, p) for i, p in items if i not in have]
    parts_dir = _parts_dir(out_path)

    chunks: list[FeatureStore] = []  # saved chunks of this run (kept in memory for the final store)
    pending_ids: list[np.ndarray] = []
    pending_features: list[np.ndarray] = []
    pending_spatial: list[np.ndarray] = []
    failures: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal next_part
        if not pending_ids:
            return
        part = FeatureStore(
            ids=np.concatenate(pending_ids),
            features=np.concatenate(pending_features),
            manifest={**base_manifest, "skipped": []},
            spatial=np.concatenate(pending_spatial) if spatial else None,
        )
        part.save(parts_dir / f"part-{next_part:05d}.pkl")
        next_part += 1
        chunks.append(part)
        pending_ids.clear()
        pending_features.clear()
        pending_spatial.clear()

    with tqdm(total=len(todo), unit="img", desc="extract", disable=None if progress and todo else True) as bar:
        for batch in decode_batches(todo, encoder.spec, batch_size, workers, pool):
            failures.extend(batch.failures)
            if len(batch.ids):
                feats, maps = encoder.run(batch.images, spatial=spatial)
                pending_ids.append(batch.ids)
                pending_features.append(feats)
                if spatial:
                    pending_spatial.append(maps.astype(spatial_dtype))  # type: ignore[union-attr]
            bar.update(len(batch.ids) + len(batch.failures))
            if sum(len(i) for i in pending_ids) >= save_every:
                flush()
    flush()

    # The final store: everything reused + everything new, sorted by id; skipped = this run's failures plus
    # earlier failures of ids this run did not ask about.
    pieces = ([previous] if previous is not None else []) + chunks  # the chunks hold only ids `previous` lacked
    store = pieces[0].merge(*pieces[1:]) if pieces else None
    if store is None:
        s = encoder.spec
        shape = (0, *s.spatial_shape)
        store = FeatureStore(
            ids=np.zeros(0, np.int64),
            features=np.zeros((0, s.feature_size), np.float32),
            spatial=np.zeros(shape, spatial_dtype) if spatial else None,
        )
    requested = {i for i, _ in items}
    extracted = len(todo) - len(failures)
    old_skipped = [] if previous is None else previous.skipped
    skipped = [s for s in old_skipped if s["id"] not in requested and s["id"] not in store] + failures
    manifest = {
        **base_manifest,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "skipped": sorted(skipped, key=lambda s: s["id"]),
        "extraction": {
            "requested": len(items),
            "reused": len(items) - len(todo),
            "extracted": extracted,
            "skipped": len(failures),
            "seconds": round(time.perf_counter() - start, 3),
        },
    }
    store = dataclasses.replace(store.sorted_by_id(), manifest=manifest)
    store.save(out_path)
    if parts_dir.is_dir():
        shutil.rmtree(parts_dir)  # its chunks are all in out_path now
    return store


# ------------------------------------------------------------------------------------------------- COCO files


def coco_image_paths(captions: str | os.PathLike | Mapping[str, Any], images_dir: str | os.PathLike) -> dict[int, Path]:
    """{image_id: path} for the images of a COCO captions JSON that are present in `images_dir`.

    `captions` is the JSON file (or its already-loaded dict). Each image is looked for under its `file_name`
    (COCO 2017: `000000000139.jpg`) and under the COCO 2014 names `COCO_val2014_<12-digit id>.jpg` and
    `COCO_train2014_<12-digit id>.jpg`. Images absent from the directory are left out; if NONE is there, a
    `FileNotFoundError` says which names were expected.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image directory {images_dir} does not exist")
    source = "captions JSON"
    if not isinstance(captions, Mapping):
        source = str(captions)
        with open(captions, encoding="utf-8") as f:
            try:
                captions = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source} is not valid JSON: {e}") from None
    records = captions.get("images") if isinstance(captions, Mapping) else None
    if not isinstance(records, list):
        raise ValueError(f"{source} has no 'images' list: not a COCO captions file")
    present = {p.name for p in images_dir.iterdir()}
    paths: dict[int, Path] = {}
    for rec in records:
        try:
            image_id = int(rec["id"])
            names = [str(rec.get("file_name", ""))]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{source}: an 'images' entry lacks an integer 'id': {rec!r}") from None
        names += [f"COCO_val2014_{image_id:012d}.jpg", f"COCO_train2014_{image_id:012d}.jpg"]
        for name in names:
            if name in present:
                paths[image_id] = images_dir / name
                break
    if not paths:
        example = records[0].get("file_name", "?") if records else "?"
        raise FileNotFoundError(
            f"{images_dir} holds none of the {len(records)} images listed in {source} "
            f"(looked for names like {example!r} or 'COCO_val2014_<12-digit id>.jpg')"
        )
    return paths

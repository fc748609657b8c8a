"""Feature extraction: every photo through the ONNX encoder exactly once, into a `FeatureStore`.

    JPEG --(Pillow: decode, EXIF rotate, to RGB, resize, crop, normalise)--> (3, S, S) float32
         --(ONNX Runtime: the encoder graph)--> `features` (F,) [+ `spatial` (h, w, C), optional]
         --> FeatureStore (minicap.vision.store): ids (N,) int64, features (N, F) float32, manifest

Decoding (Pillow, which releases the GIL while it decodes and resizes) runs in a small worker pool while ONNX
Runtime works on the previous batch, so the two overlap instead of adding up.

Extraction is resumable: new features are saved every `save_every` images into `<out>.parts/` (each chunk
written atomically), and a re-run with the same ONNX file computes only the ids that are still missing. The
final store replaces `<out>` atomically, so a killed run never leaves a half-written file (and the next run deletes
the temporary file a killed one left behind).

Before any image is decoded, `<out>` is checked to be writable (a read-only folder or a directory named as the
output fails in a second, not after hours of work). A photo that cannot be used is skipped and listed with its reason
in the manifest: absent, not a regular file (a FIFO would block forever), not an image, truncated, or features that
are not finite numbers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import operator
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from minicap.dataset import non_finite_rows
from minicap.safe_io import WriteFailed, check_writable, remove_stale_temporaries, sha256_file
from minicap.version import __version__
from minicap.vision.encoders.spec import EncoderSpec, NotARegularFile, load_rgb, preprocess
from minicap.vision.store import FeatureStore, FeatureStoreError

__all__ = ["OnnxEncoder", "DecodedBatch", "load_image_tensor", "decode_batches", "extract_features"]

# ------------------------------------------------------------------------------------------- the ONNX encoder


class OnnxEncoder:
    """An encoder ONNX file opened in ONNX Runtime, with its `EncoderSpec` read from the file's metadata.

    Contract of the file (what `minicap.vision.encoders` builds): input `image` (N, 3, S, S) float32; outputs
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
                f"encoder {self.path} does not exist (build one with minicap.vision.encoders.build_encoder)"
            )
        self.sha256 = sha256_file(self.path)
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
                f"{self.path} has no 'minicap.encoder_spec' metadata: it was not built by minicap.vision.encoders, "
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
    if isinstance(e, NotARegularFile):
        return str(e)
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
    encoder_path  an encoder ONNX file built by `minicap.vision.encoders` (its metadata gives the preprocessing)
    spatial       also keep the (h, w, C) feature maps, stored as `spatial_dtype` (float16 halves the size;
                  EfficientNet-Lite0's ReLU6 maps lie in [0, 6], where float16 keeps ~3 significant digits)
    save_every    after this many newly extracted images, save them as a chunk in `<out_path>.parts/`
    workers/pool  decoding threads (default) or processes, overlapping ONNX Runtime's work on the last batch

    Resumable: ids already in `out_path` or in its `.parts/` chunks (from the same ONNX file, by sha256) are
    reused, not recomputed. Images that cannot be used (missing, not a regular file, empty, truncated, not an
    image, non-finite features) are skipped and listed in `manifest["skipped"]` as {"id", "path", "reason"}; they
    are retried on the next run. Returns the saved store (all ids it holds, sorted); `manifest["extraction"]` counts
    this run's work (and the temporary files of killed runs it removed).
    Raises `minicap.safe_io.WriteFailed` before any work if `out_path` cannot be written (and, if the disk fills up
    during the run, one that says which features are safe in `<out_path>.parts/`).
    """
    if batch_size < 1 or save_every < 1:
        raise ValueError(f"batch_size and save_every must be >= 1, got {batch_size} and {save_every}")
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_path = Path(out_path)
    items = _normalise_items(images)
    check_writable(out_path)  # a read-only folder or a directory named as output: fail now, not after the work
    removed_temporaries = remove_stale_temporaries(out_path)
    encoder = OnnxEncoder(encoder_path, intra_op_threads=intra_op_threads)
    if spatial and not encoder.has_spatial:
        raise FeatureStoreError(f"{encoder.path} has no 'spatial' output; build the encoder with spatial maps")
    base_manifest = encoder.manifest()
    previous, next_part = _load_previous(out_path, encoder, spatial)
    have = set() if previous is None else set(previous.ids.tolist())
    todo = [(i, p) for i, p in items if i not in have]
    where = dict(todo)
    parts_dir = _parts_dir(out_path)

    chunks: list[FeatureStore] = []  # saved chunks of this run (kept in memory for the final store)
    pending_ids: list[np.ndarray] = []
    pending_features: list[np.ndarray] = []
    pending_spatial: list[np.ndarray] = []
    failures: list[dict[str, Any]] = []

    def safe_so_far() -> str:
        done = sum(len(c) for c in chunks) + (0 if previous is None else len(previous))
        where = f"{parts_dir}/" if previous is None else f"{out_path} and {parts_dir}/"
        return (
            f"the features of {done} images saved so far ({where}); run the same command again once there is "
            "space: it reuses them"
        )

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
        try:
            part.save(parts_dir / f"part-{next_part:05d}.pkl")
        except WriteFailed as e:
            raise e.still_good(safe_so_far()) from e
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
                # Features must be finite (a FeatureStore refuses NaN/inf): skip such an image, with the reason.
                finite = np.ones(len(batch.ids), bool)
                finite[non_finite_rows(feats)] = False
                if spatial:
                    maps = maps.astype(spatial_dtype)  # type: ignore[union-attr]
                    finite[non_finite_rows(maps)] = False
                for image_id in batch.ids[~finite].tolist():
                    reason = "the encoder gave NaN or infinite features (is the encoder file damaged?)"
                    failures.append({"id": image_id, "path": str(where[image_id]), "reason": reason})
                pending_ids.append(batch.ids[finite])
                pending_features.append(feats[finite])
                if spatial:
                    pending_spatial.append(maps[finite])
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
            "removed_temporaries": len(removed_temporaries),
        },
    }
    store = dataclasses.replace(store.sorted_by_id(), manifest=manifest)
    try:
        store.save(out_path)
    except WriteFailed as e:
        raise e.still_good(safe_so_far()) from e
    if parts_dir.is_dir():
        shutil.rmtree(parts_dir)  # its chunks are all in out_path now
    return store

"""Small crafted inputs for the reliability tests (test_crash_safety, test_data_integrity, test_bad_input): a feature
store with its COCO captions file that a tiny captioner learns in a second, photos, and a file whose disk is full.

    captions, features = run_files(tmp_path)      tmp_path/captions.json + tmp_path/features.pkl (24 images)
    main(["train", *files_args(captions, features), "--out", ..., *TINY_TRAIN])
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

import minicap.safe_io as safe_io
from minicap.vision.store import FeatureStore

COLOURS = ["red", "green", "blue", "yellow"]
THINGS = ["dog", "cat", "car", "boat"]

# A captioner small enough to train in well under a second; the best epoch by validation LOSS (no CIDEr-D decoding),
# whose value falls every epoch on these data at this learning rate.
TINY_TRAIN = [
    "--hidden", "16", "--wordvec", "8", "--min-count", "1", "--batch-size", "16", "--test-images", "4",
    "--early-stopping", "loss", "--lr", "0.01", "--weight-decay", "0", "--no-progress",
]  # fmt: skip


def run_files(
    folder: Path, n_images: int = 24, per_image: int = 4, F: int = 8, seed: int = 0, first_id: int = 1
) -> tuple[Path, Path]:
    """folder/captions.json and folder/features.pkl: image i shows a colour and a thing, its features say which
    (one-hot blocks plus noise) and its captions name them ("a red dog on the grass"). Image ids run from `first_id`
    (folders made with other first ids share no image). Returns (captions, features)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(first_id, first_id + n_images, dtype=np.int64)
    features = 0.1 * rng.standard_normal((n_images, F)).astype(np.float32)
    images, annotations = [], []
    for row, image_id in enumerate(ids.tolist()):
        colour, thing = row % 4, (row // 4) % 4
        features[row, colour] += 1.0
        features[row, 4 + thing % (F - 4)] += 1.0
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg"})
        for k in range(per_image):
            where = ["on the grass", "in the street"][k % 2]
            annotations.append({"id": len(annotations), "image_id": image_id, "caption": f"a {COLOURS[colour]} "
                                f"{THINGS[thing]} {where}"})  # fmt: skip
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    store = FeatureStore(ids, features, {"architecture": "crafted", "onnx_sha256": "c" * 64})
    store.save(folder / "features.pkl")
    return folder / "captions.json", folder / "features.pkl"


def files_args(captions: Path, features: Path) -> list[str]:
    return ["--features", str(features), "--captions", str(captions)]


def photos(folder: Path, n: int = 6) -> tuple[Path, Path]:
    """folder/images/<12-digit id>.jpg (flat colours with noise) and folder/captions.json listing them."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in range(1, n + 1):
        base = np.array([(60 * k) % 256, (100 + 40 * k) % 256, (200 - 30 * k) % 256])
        pixels = np.clip(base + rng.integers(-20, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
        name = f"{k:012d}.jpg"
        Image.fromarray(pixels).save(folder / "images" / name)
        images.append({"id": k, "file_name": name})
        annotations.append({"id": k, "image_id": k, "caption": f"picture number {k}"})
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return folder / "images", folder / "captions.json"


class FullDisk:
    """A file on a full disk: every write raises OSError(ENOSPC), as a real one does; everything else is the real
    file's (so the temporary file exists, and atomic_write's clean-up is the real one)."""

    def __init__(self, f: IO[Any]) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def disk_full_for(name: str, on_write: int = 1):  # noqa: ANN201 (a context-manager function like atomic_write)
    """An `atomic_write` whose `on_write`-th write of a file called `name` finds the disk full (earlier and later
    writes, and other files, succeed). Monkeypatch it where a module imported atomic_write."""
    real = safe_io.atomic_write
    writes = {"count": 0}

    @contextlib.contextmanager
    def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
        with real(path, mode) as f:
            full = False
            if Path(path).name == name:
                writes["count"] += 1
                full = writes["count"] == on_write
            yield FullDisk(f) if full else f

    return atomic_write

"""Checkpoints: one `.npz` file that holds everything needed to use a trained model or to continue training it.

Any model of the contract (`minicap.models.base.SequenceModel`) fits. Layout (an ordinary NumPy `.npz`, i.e. a zip
of `.npy` arrays, read with `allow_pickle=False`):

    header                    0-d unicode array: a JSON object (below)
    param/<name>              the model's parameters, e.g. param/W_embed (V, W)
    constant/<name>           the model's constants, e.g. constant/feature_mean (F,) of the caption model
    optim/<key>               the optimiser's `state_dict()`: optim/lr, optim/t, optim/beta1, ..., optim/m/W_embed, ...
    history/steps/<column>    per-step training history as arrays (loss, grad_norm, lr, step, epoch)

The JSON header:

    format, version, minicap_version, created_utc
    model_class         the model's class name (CaptionModel, LSTMLanguageModel, SequenceRegressor, ...)
    model_config        model.config: enough to rebuild the model with <model_class>.from_config
    vocabulary          Vocabulary.to_dict(), or null for a model without words
    step, epoch         optimiser updates and completed epochs when the file was written
    metrics             the latest numbers, e.g. {"train_loss": .., "val_loss": .., "val_metric": ..}
    optimizer           {"class": "Adam", "hyperparameters": {...}} or null
    rng                 the shuffling generator's bit-generator state (JSON ints), or null
    encoder             which image encoder made the features: architecture, onnx_sha256, onnx_file, feature_size, ...
    train_config        the training loop's settings (minicap.train.TrainConfig), or null
    train_state         the trainer's position (epoch, batch, early-stopping counters, ...), or null
    history             everything of the training history except the per-step arrays (per-epoch records, ...)
    extra               free JSON the caller adds (the captioner records its configuration and data split here)

Why not pickle: loading a pickle can run any code named in the file. An `.npz` of plain numeric and unicode arrays,
loaded with `allow_pickle=False`, can only ever produce arrays. Why a temporary file and a rename: a run killed while
writing leaves the previous checkpoint untouched (`minicap.safe_io.atomic_write`).
"""

from __future__ import annotations

import datetime
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minicap.models import SequenceModel
from minicap.optim import Optimizer
from minicap.safe_io import atomic_write
from minicap.text import Vocabulary
from minicap.version import __version__

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "read_header"]

FORMAT = "minicap.checkpoint"
VERSION = 2  # 2: any model of the contract (model_class, constant/<name>); version 1 files (captioners) still load

# Bit generators a checkpoint may name (the header is data from a file: never getattr an arbitrary name).
_BIT_GENERATORS = {
    cls.__name__: cls
    for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64)
}


class CheckpointError(ValueError):
    """The file is not a minicap checkpoint, is truncated or corrupt, or does not fit what it is used with."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. `model` and `vocab` are ready to use; the rest is for resuming and for reports.

    model            the model rebuilt from the header's class and config, with its saved parameters and constants
    vocab            the Vocabulary the model was trained with (None for a model without words)
    optimizer_state  the optimiser's `state_dict()` (empty when none was saved); pass it to `load_state_dict`
    header           the whole JSON header (see the module docstring)
    history          the training history: header["history"] plus history["steps"] = {column: list}
    """

    path: Path
    model: SequenceModel
    vocab: Vocabulary | None
    optimizer_state: dict[str, Any]
    header: dict[str, Any]
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.header["step"])

    @property
    def epoch(self) -> int:
        return int(self.header["epoch"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.header.get("metrics") or {})

    @property
    def encoder(self) -> dict[str, Any]:
        return dict(self.header.get("encoder") or {})

    @property
    def train_config(self) -> dict[str, Any] | None:
        return self.header.get("train_config")

    @property
    def train_state(self) -> dict[str, Any] | None:
        return self.header.get("train_state")

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.header.get("extra") or {})

    def make_rng(self) -> np.random.Generator | None:
        """A Generator in exactly the saved state (None if the checkpoint holds no generator state)."""
        saved = self.header.get("rng")
        if saved is None:
            return None
        cls = _BIT_GENERATORS.get(saved.get("bit_generator"))
        if cls is None:
            raise CheckpointError(f"{self.path}: unknown bit generator {saved.get('bit_generator')!r} in the header")
        bit_generator = cls()
        bit_generator.state = saved["state"]
        return np.random.Generator(bit_generator)


def _json_safe(obj: Any, where: str) -> str:
    """json.dumps that refuses NaN/inf (JSON has no such numbers) with a message naming the header entry."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise CheckpointError(f"cannot write a checkpoint: {where} holds a NaN or infinite number ({e})") from None
    except TypeError as e:
        raise CheckpointError(f"cannot write a checkpoint: {where} is not JSON-able ({e})") from None


def save_checkpoint(
    path: str | os.PathLike,
    model: SequenceModel,
    vocab: Vocabulary | None = None,
    *,
    optimizer: Optimizer | None = None,
    step: int = 0,
    epoch: int = 0,
    metrics: dict[str, Any] | None = None,
    rng: np.random.Generator | None = None,
    encoder: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then `os.replace`). Returns the path.

    `history` may hold a "steps" dict of equal-length columns (lists or arrays of numbers); those are stored as
    float64/int64 arrays (compact, and exact), everything else in the JSON header.

    Refuses (CheckpointError, nothing written) a model whose parameters hold NaN or infinity: a checkpoint is
    only ever a usable model.
    """
    path = Path(path)
    if vocab is not None and getattr(model, "vocab_size", len(vocab)) != len(vocab):
        raise CheckpointError(f"the model has vocab_size {model.vocab_size} but the vocabulary {len(vocab)} tokens")
    bad = [name for name, p in model.params.items() if not np.all(np.isfinite(p))]
    if bad:
        raise CheckpointError(f"refusing to save a model with NaN or infinite parameters ({', '.join(bad)})")

    arrays: dict[str, np.ndarray] = {f"param/{name}": p for name, p in model.params.items()}
    arrays.update({f"constant/{name}": a for name, a in model.constants.items()})
    optimizer_header = None
    if optimizer is not None:
        optimizer_header = {"class": type(optimizer).__name__, "hyperparameters": optimizer.hyperparameters()}
        for key, value in optimizer.state_dict().items():
            arrays[f"optim/{key}"] = np.asarray(value)

    history = dict(history or {})
    steps = history.pop("steps", None) or {}
    for column, values in steps.items():
        values = np.asarray(values)
        kind = np.int64 if values.dtype.kind in "iub" else np.float64
        arrays[f"history/steps/{column}"] = values.astype(kind)

    header = {
        "format": FORMAT,
        "version": VERSION,
        "minicap_version": __version__,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model_class": type(model).__name__,
        "model_config": model.config,
        "vocabulary": None if vocab is None else vocab.to_dict(),
        "step": int(step),
        "epoch": int(epoch),
        "metrics": metrics or {},
        "optimizer": optimizer_header,
        "rng": None
        if rng is None
        else {"bit_generator": type(rng.bit_generator).__name__, "state": rng.bit_generator.state},
        "encoder": encoder,
        "train_config": train_config,
        "train_state": train_state,
        "history": history,
        "extra": extra or {},
    }
    for key, value in header.items():  # name the offending entry in the error, not just "the header"
        _json_safe(value, f"header[{key!r}]")
    arrays["header"] = np.array(json.dumps(header, ensure_ascii=False))  # a 0-d unicode array, no pickle needed

    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the `.npz` at `path`, read eagerly (an NpzFile reads lazily, and so fails lazily)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a minicap checkpoint: not an .npz (zip) file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {}
            for name in npz.files:
                try:
                    arrays[name] = npz[name]
                except ValueError as e:
                    if "allow_pickle" not in str(e):
                        raise
                    raise CheckpointError(
                        f"{path}: entry {name!r} is a pickled object array; minicap checkpoints hold only numeric "
                        "and text arrays, and pickles are never loaded (they can run code)"
                    ) from None
            return arrays
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        # A zip whose end (the central directory) is missing is the usual sign of a file cut short.
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read as a checkpoint ({type(e).__name__}: {e}); "
            "use an earlier checkpoint (e.g. best.npz / last.npz of the same run)"
        ) from None


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Only the JSON header of the checkpoint at `path` (epoch, step, metrics, train_state, ...): the model is not
    rebuilt, so this is cheap enough to report on the files of a run. CheckpointError if it cannot be read."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot read a checkpoint header ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is an .npz file but not a minicap checkpoint (header format is not {FORMAT!r})")
    return header


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` and rebuild its model and vocabulary.

    Raises FileNotFoundError, or CheckpointError naming the problem: not an .npz, truncated/corrupt, no minicap
    header, a newer format version, or parameters that do not fit the saved model config.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    raw = arrays.get("header")
    if raw is None or raw.dtype.kind != "U" or raw.shape != ():
        raise CheckpointError(f"{path} is an .npz file but not a minicap checkpoint (it has no JSON 'header' entry)")
    try:
        header = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the checkpoint header is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is an .npz file but not a minicap checkpoint (header format is not {FORMAT!r})")
    if header.get("version") not in (1, VERSION):
        raise CheckpointError(
            f"{path}: checkpoint version {header.get('version')!r}; "
            f"this minicap ({__version__}) reads versions 1 and {VERSION}"
        )
    for key in ("model_config", "vocabulary", "step", "epoch"):
        if key not in header:
            raise CheckpointError(f"{path}: the checkpoint header has no {key!r}")
    # Version 1 held only captioners, with their standardisation as feature/mean and feature/std.
    header.setdefault("model_class", "CaptionModel")
    legacy = {"feature/mean": "constant/feature_mean", "feature/std": "constant/feature_std"}
    arrays = {legacy.get(k, k): v for k, v in arrays.items()}
    model_class = SequenceModel.models.get(str(header["model_class"]))
    if model_class is None:
        raise CheckpointError(
            f"{path}: unknown model class {header['model_class']!r} (known: {sorted(SequenceModel.models)})"
        )

    params = {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
    constants = {k.removeprefix("constant/"): v for k, v in arrays.items() if k.startswith("constant/")}
    try:
        vocab = None if header["vocabulary"] is None else Vocabulary.from_dict(header["vocabulary"])
        model = model_class.from_config(header["model_config"], params, constants)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the saved model does not fit its own config: {e}") from None
    if vocab is not None and getattr(model, "vocab_size", len(vocab)) != len(vocab):
        raise CheckpointError(f"{path}: model vocab_size {model.vocab_size} but the vocabulary has {len(vocab)} tokens")

    optimizer_state: dict[str, Any] = {}
    for key, value in arrays.items():
        if key.startswith("optim/"):
            optimizer_state[key.removeprefix("optim/")] = value
    history = dict(header.get("history") or {})
    steps = {k.removeprefix("history/steps/"): v.tolist() for k, v in arrays.items() if k.startswith("history/steps/")}
    if steps:
        history["steps"] = steps
    return Checkpoint(
        path=path, model=model, vocab=vocab, optimizer_state=optimizer_state, header=header, history=history
    )

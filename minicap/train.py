"""Training a CaptionModel: the loop, and everything that makes a long run safe to leave alone.

One update (a "step") is the textbook recipe:

    batch      = the next minibatch of captions (sampled WITHOUT replacement, reshuffled every epoch)
    lr         = schedule(updates so far)              linear warm-up then a half cosine (or constant)
    loss, g    = model.loss(features, captions)        forward and backward, hand-written (minicap.nn)
    grad_norm  = clip_grad_norm(g, clip)               global-norm clipping; the norm is logged every step
    stop if loss or grad_norm is NaN/inf               before the update: the parameters stay the last good ones
    Adam.step(params, g)                               in place

and after every epoch: validation loss (and optionally a validation metric such as CIDEr), early stopping,
checkpoints (`last.npz` always, `best.npz` when the validation criterion improved), `history.json`.

Everything a run depends on is in its checkpoint — parameters, Adam's moments and step count (which is also the
schedule's position), the shuffling generator's state, the epoch and the position inside it, the early-stopping
counters and the history — so a run stopped after any epoch (or by a time budget, mid-epoch) and resumed with
`Trainer.from_checkpoint` ends with exactly the same parameters, bit for bit, as a run that was never stopped.

Files written into `out_dir` (each atomically: a killed run never leaves a half-written file):

    last.npz        the latest state (after every epoch, and when a time budget stops the run)
    best.npz        the state after the best epoch so far (lowest validation loss, or highest validation metric)
    history.json    per step: loss, grad_norm, lr; per epoch: train/val loss, metric, seconds, sequences/s
    training_curves.png   loss and gradient norm (drawn when `fit` returns, or when training diverges)

Letters: M captions, N batch, T+1 caption length (tokens), F feature size, V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from minicap.checkpoint import Checkpoint, CheckpointError, encoder_info, load_checkpoint, save_checkpoint
from minicap.data import CaptionDataset, MissingFeaturesError, Vocabulary, minibatches
from minicap.model import CaptionModel
from minicap.optim import Adam, Constant, CosineWithWarmup, Schedule, clip_grad_norm
from minicap.safe_io import atomic_write_json

__all__ = [
    "TrainConfig",
    "TrainState",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "train",
    "new_model",
    "make_schedule",
    "validation_loss",
    "missing_feature_ids",
    "check_features_available",
    "check_feature_size",
    "feature_statistics",
    "train_coco",
]

LAST, BEST, HISTORY, CURVES = "last.npz", "best.npz", "history.json", "training_curves.png"


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite. The checkpoints on disk are untouched."""

    def __init__(self, message: str, step: int, epoch: int, last_good_loss: float | None) -> None:
        super().__init__(message)
        self.step, self.epoch, self.last_good_loss = step, epoch, last_good_loss


# ================================================================================================ settings


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What a training run does. Saved in every checkpoint; a resumed run uses the saved one.

    epochs          passes over the training captions
    batch_size      captions per update (the last batch of an epoch may be smaller)
    lr              peak learning rate of Adam
    schedule        "cosine": linear warm-up over `warmup` of all updates, then a half cosine down to `min_lr`;
                    "constant": `lr` throughout
    warmup          fraction of all updates spent warming up (cosine only)
    min_lr          the cosine's final learning rate
    clip            global gradient-norm threshold (Pascanu et al. 2013); the norm before clipping is logged
    weight_decay    decoupled (AdamW) weight decay; 0 = plain Adam
    patience        stop after this many epochs without improvement of the validation criterion (None: never)
    seed            seeds the minibatch order (the model has its own initialisation seed)
    standardise_features  use (features − mean) / std with TRAINING-set statistics, saved with the model
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: float = 0.05
    min_lr: float = 0.0
    clip: float = 5.0
    weight_decay: float = 0.0
    patience: int | None = 5
    seed: int = 0
    standardise_features: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f'schedule must be "cosine" or "constant", got {self.schedule!r}')
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of all updates in [0, 1), got {self.warmup}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown training settings {sorted(unknown)} (known: {sorted(known)})")
        return cls(**d)


def make_schedule(config: TrainConfig, total_steps: int) -> Schedule:
    """The learning-rate schedule of a run of `total_steps` updates: step -> lr."""
    if config.schedule == "constant":
        return Constant(config.lr)
    warmup_steps = min(int(round(config.warmup * total_steps)), total_steps - 1)
    return CosineWithWarmup(config.lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=config.min_lr)


@dataclasses.dataclass
class TrainState:
    """Where a run is: saved in every checkpoint so that a resumed run continues exactly.

    step                updates done (= Adam's t = the schedule's position)
    epoch               epochs completed
    batch_in_epoch      minibatches done in the epoch in progress (0 at an epoch boundary)
    epoch_loss_sum, epoch_sequences, epoch_seconds   the epoch in progress so far (for its mean loss, speed)
    best_score          best validation criterion so far, as "higher is better" (−loss for a loss)
    best_epoch          the epoch (1-based) that reached it
    epochs_since_best   epochs without improvement (early stopping compares it with `patience`)
    last_good_loss      the last finite training loss (reported if training diverges)
    stopped             None while running; "completed" or "early stopping" once the run has ended
    criterion           "val_metric", "val_loss" or "train_loss" (without validation data)
    data                fingerprints of the training and validation captions (resuming on other data is refused)
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_sequences: int = 0
    epoch_seconds: float = 0.0
    best_score: float | None = None
    best_epoch: int | None = None
    epochs_since_best: int = 0
    last_good_loss: float | None = None
    stopped: str | None = None
    criterion: str = "val_loss"
    data: dict[str, str | None] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown training-state entries {sorted(unknown)}")
        return cls(**d)


@dataclasses.dataclass
class TrainResult:
    """What `Trainer.fit` / `train` return.

    model       the model after the last update (the Trainer's own object)
    best_model  a copy with the parameters of the best epoch (None if no epoch finished)
    stopped     "completed", "early stopping", "time budget" or "paused" (`until_epoch` reached)
    """

    model: CaptionModel
    best_model: CaptionModel | None
    history: dict[str, Any]
    stopped: str
    epochs: int
    steps: int
    best_epoch: int | None
    best_score: float | None
    criterion: str
    seconds: float
    last_path: Path | None
    best_path: Path | None

    def summary(self) -> str:
        lines = [f"stopped: {self.stopped} after {self.epochs} epochs, {self.steps} updates ({self.seconds:.1f} s)"]
        if self.history["epochs"]:
            last = self.history["epochs"][-1]
            lines.append("last epoch: " + _epoch_numbers(last))
        if self.best_epoch is not None:
            best = self.history["epochs"][self.best_epoch - 1]
            lines.append(f"best epoch {self.best_epoch} by {self.criterion}: " + _epoch_numbers(best))
        if self.last_path is not None:
            lines.append(f"checkpoints: {self.last_path}" + (f", {self.best_path}" if self.best_path else ""))
        return "\n".join(lines)


def _epoch_numbers(record: dict[str, Any]) -> str:
    parts = [f"train loss {record['train_loss']:.4f}"]
    if record.get("val_loss") is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    if record.get("val_metric") is not None:
        parts.append(f"val metric {record['val_metric']:.4f}")
    return ", ".join(parts)


# ================================================================================================ inputs


def new_model(
    vocab: Vocabulary,
    feature_size: int,
    hidden_size: int = 512,
    wordvec_size: int = 256,
    cell: str = "lstm",
    seed: int = 0,
    dtype: Any = np.float32,
) -> CaptionModel:
    """A fresh CaptionModel for `vocab`, its output bias started at the training captions' log word frequencies."""
    return CaptionModel(
        len(vocab),
        feature_size,
        wordvec_size,
        hidden_size,
        cell,
        dtype=dtype,
        seed=seed,
        word_counts=vocab.word_frequencies(),
    )


def _lookup_of(features: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A FeatureStore / FeatureTable (anything with `.lookup`) or a bare lookup function -> the function."""
    return features.lookup if hasattr(features, "lookup") else features


def missing_feature_ids(image_ids: np.ndarray, features: Any) -> list[int]:
    """The distinct ids in `image_ids` that `features` (a store, table or lookup function) has no vector for."""
    lookup = _lookup_of(features)
    unique = np.unique(np.asarray(image_ids, dtype=np.int64))
    try:
        lookup(unique)  # the usual case: everything is there, one call
        return []
    except MissingFeaturesError as error:  # a FeatureStore or FeatureTable names the missing ids
        return sorted(set(error.missing))
    except LookupError:  # a plain lookup function: find them below
        pass
    owner = getattr(lookup, "__self__", None)  # a bound FeatureStore.lookup: its store answers `in` quickly
    if owner is not None and hasattr(owner, "__contains__"):
        return [int(i) for i in unique if int(i) not in owner]
    missing = []
    for i in unique:  # a plain function: ask id by id (only on this error path)
        try:
            lookup(np.array([i]))
        except LookupError:
            missing.append(int(i))
    return missing


def check_features_available(image_ids: np.ndarray, features: Any, what: str = "training") -> None:
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


def check_feature_size(model: CaptionModel, image_ids: np.ndarray, features: Any, what: str = "model") -> None:
    """FeatureStoreError (a ValueError) unless the features have the model's size F."""
    from minicap.features import FeatureStoreError

    got = np.asarray(_lookup_of(features)(np.asarray(image_ids[:1], dtype=np.int64)))
    if got.ndim != 2 or got.shape[1] != model.feature_size:
        arch = getattr(features, "manifest", {}).get("architecture", "their encoder")
        raise FeatureStoreError(
            f"the {what} expects {model.feature_size}-d image features, but the features given are "
            f"{got.shape[-1]}-d (from {arch}); use features from the encoder the {what} was trained with"
        )


def feature_statistics(image_ids: np.ndarray, features: Any, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (F,) float64 over the DISTINCT images in `image_ids`.

    Each image counts once however many captions it has. Two passes over chunks (mean, then squared deviations):
    exact in float64 and never holds all features at once.
    """
    lookup = _lookup_of(features)
    unique = np.unique(np.asarray(image_ids, dtype=np.int64))
    if unique.size == 0:
        raise ValueError("no images to compute feature statistics from")
    total = None
    for start in range(0, unique.size, chunk):
        x = np.asarray(lookup(unique[start : start + chunk]), dtype=np.float64)
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
    mean = total / unique.size
    squares = np.zeros_like(mean)
    for start in range(0, unique.size, chunk):
        x = np.asarray(lookup(unique[start : start + chunk]), dtype=np.float64)
        squares += ((x - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(squares / unique.size)


def _fingerprint(data: CaptionDataset | None) -> str | None:
    """A short hash of a dataset's captions and image ids (the same data gives the same string)."""
    if data is None:
        return None
    h = hashlib.sha256()
    h.update(str(data.captions.shape).encode())
    h.update(np.ascontiguousarray(data.captions, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(data.image_ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def validation_loss(model: CaptionModel, data: CaptionDataset, batch_size: int = 256) -> float:
    """Mean loss per caption over `data`, in order, without updating anything (nats per caption)."""
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = data.batch(np.arange(start, min(start + batch_size, len(data))))
        loss, _ = model.loss(batch.features, batch.captions, backward=False)
        total += float(loss) * len(batch.captions)
        count += len(batch.captions)
    return total / count


# ================================================================================================ the trainer


class Trainer:
    """Trains `model` on `train_data`; see the module docstring for the loop and the files it writes.

    Parameters
    ----------
    model, vocab : the model to train (updated in place) and its vocabulary (saved in checkpoints).
    train_data, val_data : `minicap.data.CaptionDataset`s (encoded captions, their image ids, a feature lookup).
        Every image must have features (checked here, before anything runs). Without `val_data` the criterion for
        "best" is the training loss and early stopping watches it.
    config : TrainConfig.
    out_dir : where checkpoints, history.json and the figure go; None writes nothing.
    val_metric : optional `callable(model) -> float`, higher is better (e.g. validation CIDEr). When given, it is
        evaluated after every epoch and is the criterion for best.npz and early stopping instead of the val loss.
    encoder : what made the features (`minicap.checkpoint.encoder_info`), recorded in checkpoints.
    extra : JSON-able notes recorded in checkpoints (the CLI records its data split).
    progress : show a tqdm progress bar with the loss and sequences/s.
    log : where one line per epoch goes (None: nowhere).
    plot : draw training_curves.png when `fit` returns (about half a second; k-fold runs may skip it).
    """

    def __init__(
        self,
        model: CaptionModel,
        vocab: Vocabulary,
        train_data: CaptionDataset,
        val_data: CaptionDataset | None = None,
        config: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        val_metric: Callable[[CaptionModel], float] | None = None,
        encoder: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = print,
        plot: bool = True,
    ) -> None:
        self.config = config or TrainConfig()
        if model.vocab_size != len(vocab):
            raise ValueError(f"the model has vocab_size {model.vocab_size}, the vocabulary {len(vocab)} tokens")
        if len(train_data) == 0:
            raise ValueError("no training captions")
        if val_data is not None and len(val_data) == 0:
            val_data = None  # an empty validation split: as if there were none
        for name, data in (("training", train_data), ("validation", val_data)):
            if data is not None:
                check_features_available(data.image_ids, data.features, what=name)
                check_feature_size(model, data.image_ids, data.features)
        self.model, self.vocab, self.train_data, self.val_data = model, vocab, train_data, val_data
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.val_metric, self.encoder, self.extra = val_metric, encoder, dict(extra or {})
        self.progress, self.log, self.plot = progress, log or (lambda line: None), plot

        if self.config.standardise_features and model.feature_mean is None:
            # Statistics of the TRAINING images only: validation and test images must not leak into the model.
            mean, std = feature_statistics(train_data.image_ids, train_data.features)
            model.set_feature_standardisation(mean, std)

        self.batches_per_epoch = math.ceil(len(train_data) / self.config.batch_size)
        self.total_steps = self.config.epochs * self.batches_per_epoch
        self.schedule = make_schedule(self.config, self.total_steps)
        self.optimizer = Adam(lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.rng = np.random.default_rng(self.config.seed)  # the minibatch order, and nothing else
        self._epoch_start_rng_state = self.rng.bit_generator.state
        criterion = "val_metric" if val_metric else ("val_loss" if val_data is not None else "train_loss")
        data = {"train": _fingerprint(train_data), "val": _fingerprint(val_data)}
        self.state = TrainState(criterion=criterion, data=data)
        self.history: dict[str, Any] = {
            "criterion": criterion,
            "clip": self.config.clip,
            "steps": {"step": [], "epoch": [], "loss": [], "grad_norm": [], "lr": []},
            "epochs": [],
        }
        self.best_params: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------ resuming

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        train_data: CaptionDataset,
        val_data: CaptionDataset | None = None,
        *,
        out_dir: str | Path | None = None,
        val_metric: Callable[[CaptionModel], float] | None = None,
        encoder: dict[str, Any] | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = print,
        plot: bool = True,
    ) -> Trainer:
        """Continue the run saved in `checkpoint` (usually `last.npz`) on the SAME data.

        Restores the model, Adam's state, the generator state, the position in the epoch, the early-stopping
        counters and the history. Refuses (ValueError) data whose fingerprint differs from the saved one, a
        different validation criterion, and features of another size or (when `encoder` is given) another encoder.
        `out_dir` defaults to the checkpoint's folder.
        """
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        if ckpt.train_config is None or ckpt.train_state is None or ckpt.header.get("rng") is None:
            raise CheckpointError(f"{ckpt.path} holds a model but no training state: it cannot be resumed")
        saved_sha = ckpt.encoder.get("onnx_sha256")
        if encoder is not None and saved_sha and encoder.get("onnx_sha256") and encoder["onnx_sha256"] != saved_sha:
            raise ValueError(
                f"{ckpt.path} was trained on features from encoder {saved_sha[:12]}... "
                f"({ckpt.encoder.get('architecture')}), these come from {encoder['onnx_sha256'][:12]}... "
                f"({encoder.get('architecture')}): resume with the same features"
            )
        trainer = cls(
            ckpt.model,
            ckpt.vocab,
            train_data,
            val_data,
            TrainConfig.from_dict(ckpt.train_config),
            out_dir=ckpt.path.parent if out_dir is None else out_dir,
            val_metric=val_metric,
            encoder=encoder or ckpt.encoder or None,
            extra=ckpt.extra,
            progress=progress,
            log=log,
            plot=plot,
        )
        saved = TrainState.from_dict(ckpt.train_state)
        if saved.criterion != trainer.state.criterion:
            raise ValueError(
                f"{ckpt.path} chose its best epoch by {saved.criterion}, this resumed run would use "
                f"{trainer.state.criterion}: pass the same val_metric / validation data"
            )
        if saved.data != trainer.state.data:
            raise ValueError(
                f"the captions differ from those {ckpt.path} was trained on (fingerprints {saved.data} vs "
                f"{trainer.state.data}): resume with the same captions file, split seed, min count and max length"
            )
        trainer.optimizer.load_state_dict(ckpt.optimizer_state, params=trainer.model.params)
        trainer._epoch_start_rng_state = ckpt.make_rng().bit_generator.state
        trainer.state = saved
        trainer.history = ckpt.history
        trainer.best_params = trainer._load_best_params(ckpt)
        return trainer

    def _load_best_params(self, ckpt: Checkpoint) -> dict[str, np.ndarray] | None:
        """The best epoch's parameters: this checkpoint's own, or best.npz next to it if it is that epoch's."""
        best_epoch = self.state.best_epoch
        if best_epoch is None:
            return None
        if best_epoch == ckpt.epoch and self.state.batch_in_epoch == 0:
            return {k: v.copy() for k, v in self.model.params.items()}
        best_file = ckpt.path.parent / BEST
        if best_file.is_file():
            best = load_checkpoint(best_file)
            if best.epoch == best_epoch:
                return best.model.params
        return None

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self, *, until_epoch: int | None = None, max_seconds: float | None = None) -> TrainResult:
        """Train until `config.epochs` epochs are done, early stopping, a time budget, or `until_epoch`.

        until_epoch : stop (as "paused") once this many epochs are complete; resume later with `from_checkpoint`.
        max_seconds : a time budget for this call; when it runs out, the run stops after the current update,
            saving `last.npz` mid-epoch so that it can be resumed exactly.
        Raises TrainingDiverged if the loss or gradient norm stops being finite (checkpoints stay as they were).
        """
        started = time.perf_counter()
        st = self.state
        first_step = st.step
        while True:
            if st.stopped is not None:
                reason = st.stopped
            elif until_epoch is not None and st.epoch >= until_epoch:
                reason = "paused"
            elif max_seconds is not None and st.step > first_step and time.perf_counter() - started >= max_seconds:
                reason = "time budget"  # (every call makes at least one update, so repeated calls make progress)
            else:
                reason = self._run_epoch(started, max_seconds)
            if reason is not None:
                break
        self._write_history(reason)
        self._plot()
        best_model = None
        if self.best_params is not None:
            best_model = CaptionModel.from_config(
                self.model.config, self.best_params, self.model.feature_mean, self.model.feature_std
            )
        return TrainResult(
            model=self.model,
            best_model=best_model,
            history=self.history,
            stopped=reason,
            epochs=st.epoch,
            steps=st.step,
            best_epoch=st.best_epoch,
            best_score=st.best_score,
            criterion=st.criterion,
            seconds=time.perf_counter() - started,
            last_path=self._path(LAST) if self.out_dir and self._path(LAST).is_file() else None,
            best_path=self._path(BEST) if self.out_dir and self._path(BEST).is_file() else None,
        )

    def _run_epoch(self, started: float, max_seconds: float | None) -> str | None:
        """The rest of the current epoch. Returns "time budget" if it stopped early, else None."""
        from tqdm import tqdm

        st, cfg = self.state, self.config
        # This epoch's order: a fresh permutation drawn from the generator as it was when the epoch began, so a
        # run resumed mid-epoch draws the same order and skips the batches it has done.
        self.rng.bit_generator.state = self._epoch_start_rng_state
        batches = list(minibatches(len(self.train_data), cfg.batch_size, self.rng))
        bar = tqdm(
            total=len(batches),
            initial=st.batch_in_epoch,
            desc=f"epoch {st.epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=None if self.progress else True,  # None: no bar when output is not a terminal (logs, CI)
            dynamic_ncols=True,
        )
        clock = time.perf_counter()
        try:
            for indices in batches[st.batch_in_epoch :]:
                loss = self._step(indices)
                st.batch_in_epoch += 1
                st.epoch_loss_sum += loss * len(indices)
                st.epoch_sequences += len(indices)
                seconds = st.epoch_seconds + time.perf_counter() - clock
                bar.set_postfix(
                    loss=f"{st.epoch_loss_sum / st.epoch_sequences:.3f}",
                    seq_s=f"{st.epoch_sequences / max(seconds, 1e-9):.0f}",
                    refresh=False,
                )
                bar.update(1)
                out_of_time = max_seconds is not None and time.perf_counter() - started >= max_seconds
                if out_of_time and st.batch_in_epoch < len(batches):
                    st.epoch_seconds += time.perf_counter() - clock
                    self._save(LAST, metrics={"train_loss_so_far": st.epoch_loss_sum / st.epoch_sequences})
                    return "time budget"
        finally:
            bar.close()
        st.epoch_seconds += time.perf_counter() - clock
        self._end_epoch()
        return None

    def _step(self, indices: np.ndarray) -> float:
        """One update on the captions `indices`. Returns the batch loss."""
        st = self.state
        batch = self.train_data.batch(indices)
        self.optimizer.lr = self.schedule(self.optimizer.t)  # Adam's t counts updates: the schedule's position
        loss, grads = self.model.loss(batch.features, batch.captions)
        grad_norm = clip_grad_norm(grads, self.config.clip)  # the norm BEFORE clipping
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise self._diverged(f"loss = {float(loss)}, gradient norm = {grad_norm}")
        self.optimizer.step(self.model.params, grads)
        st.step += 1
        st.last_good_loss = float(loss)
        steps = self.history["steps"]
        steps["step"].append(st.step)
        steps["epoch"].append(st.epoch + 1)
        steps["loss"].append(float(loss))
        steps["grad_norm"].append(float(grad_norm))
        steps["lr"].append(self.optimizer.lr)
        return float(loss)

    def _end_epoch(self) -> None:
        """Validate, update early stopping, record the epoch, write the checkpoints and the history."""
        st, cfg = self.state, self.config
        bad = [name for name, p in self.model.params.items() if not np.all(np.isfinite(p))]
        if bad:
            raise self._diverged(f"parameters {', '.join(bad)} hold NaN or infinity", in_update=False)
        train_loss = st.epoch_loss_sum / st.epoch_sequences
        clock = time.perf_counter()
        val_loss = None
        if self.val_data is not None:
            val_loss = validation_loss(self.model, self.val_data, max(cfg.batch_size, 256))
            if not math.isfinite(val_loss):
                raise self._diverged(f"validation loss = {val_loss}", in_update=False)
        val_metric = None
        if self.val_metric is not None:
            val_metric = float(self.val_metric(self.model))
            if not math.isfinite(val_metric):
                raise ValueError(f"val_metric returned {val_metric} after epoch {st.epoch + 1}; it must be finite")
        val_seconds = time.perf_counter() - clock

        # Early stopping works on a score where higher is better: the metric, or minus a loss.
        score = {
            "val_metric": val_metric,
            "val_loss": None if val_loss is None else -val_loss,
            "train_loss": -train_loss,
        }[st.criterion]
        improved = st.best_score is None or score > st.best_score
        if improved:
            st.best_score, st.best_epoch, st.epochs_since_best = score, st.epoch + 1, 0
            self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        else:
            st.epochs_since_best += 1
        record = {
            "epoch": st.epoch + 1,
            "step": st.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_metric": val_metric,
            "lr": self.optimizer.lr,
            "seconds": st.epoch_seconds,
            "val_seconds": val_seconds,
            "sequences_per_second": st.epoch_sequences / max(st.epoch_seconds, 1e-9),
            "best": improved,
        }
        self.history["epochs"].append(record)

        # The epoch is complete: move the state to the next epoch boundary, THEN save it.
        st.epoch += 1
        st.batch_in_epoch, st.epoch_loss_sum, st.epoch_sequences, st.epoch_seconds = 0, 0.0, 0, 0.0
        self._epoch_start_rng_state = self.rng.bit_generator.state
        if st.epoch >= cfg.epochs:
            st.stopped = "completed"
        elif cfg.patience is not None and st.epochs_since_best >= cfg.patience:
            st.stopped = "early stopping"
        metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_metric": val_metric}
        self._save(LAST, metrics)
        if improved:
            self._save(BEST, metrics)
        self._write_history(st.stopped)
        self.log(
            f"epoch {record['epoch']}/{cfg.epochs}: {_epoch_numbers(record)}, lr {record['lr']:.2e}, "
            f"{record['sequences_per_second']:.0f} seq/s ({record['seconds']:.1f} s)" + (" *best*" if improved else "")
        )

    # ------------------------------------------------------------------------------------------ files

    def _path(self, name: str) -> Path:
        assert self.out_dir is not None
        return self.out_dir / name

    def _save(self, name: str, metrics: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        rng = np.random.default_rng()
        rng.bit_generator.state = self._epoch_start_rng_state  # the order of the epoch in progress (or next)
        save_checkpoint(
            self._path(name),
            self.model,
            self.vocab,
            optimizer=self.optimizer,
            step=self.state.step,
            epoch=self.state.epoch,
            metrics=metrics,
            rng=rng,
            encoder=self.encoder,
            train_config=self.config.to_dict(),
            train_state=self.state.to_dict(),
            history=self.history,
            extra=self.extra,
        )

    def _write_history(self, stopped: str | None) -> None:
        if self.out_dir is None:
            return
        atomic_write_json(self._path(HISTORY), {**self.history, "stopped": stopped, "config": self.config.to_dict()})

    def _plot(self) -> None:
        if not self.plot or self.out_dir is None or not self.history["steps"]["step"]:
            return
        from minicap.plots import plot_training_curves

        plot_training_curves(self.history, self._path(CURVES))

    def _diverged(self, what: str, in_update: bool = True) -> TrainingDiverged:
        """The exception for a non-finite loss; writes the history (not a checkpoint) so the blow-up can be seen.

        in_update: found before an update (the parameters are still the last good ones), or else at the end of
        an epoch (validation loss, or parameters after the epoch's last update; that model is not saved).
        """
        st = self.state
        kept = f"{self._path(LAST)} (epoch {st.epoch})" if self.out_dir and self._path(LAST).is_file() else None
        last = "none yet" if st.last_good_loss is None else f"{st.last_good_loss:.4f} at step {st.step}"
        if in_update:
            where = f"at step {st.step + 1} (epoch {st.epoch + 1}, batch {st.batch_in_epoch + 1})"
            consequence = "The parameters were not updated with this step"
        else:
            where = f"after step {st.step} (end of epoch {st.epoch + 1})"
            consequence = "This epoch's model was not saved"
        message = (
            f"training diverged {where}: {what}. Last good training loss: {last}. {consequence}"
            + (f"; the last good checkpoint is {kept}" if kept else "")
            + ". Try a lower learning rate (--lr) or a smaller clipping threshold (--clip)."
        )
        self._write_history(f"diverged: {what}")
        self._plot()
        step = st.step + 1 if in_update else st.step
        return TrainingDiverged(message, step=step, epoch=st.epoch + 1, last_good_loss=st.last_good_loss)


# ================================================================================================ one call


def train(
    captions: np.ndarray,
    image_ids: np.ndarray,
    features: Any,
    vocab: Vocabulary,
    *,
    val_captions: np.ndarray | None = None,
    val_image_ids: np.ndarray | None = None,
    model: CaptionModel | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: str | Path | Checkpoint | None = None,
    val_metric: Callable[[CaptionModel], float] | None = None,
    until_epoch: int | None = None,
    max_seconds: float | None = None,
    encoder: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    plot: bool = True,
) -> TrainResult:
    """Train a captioner on encoded captions: the whole of `Trainer` in one call.

    captions : (M, T+1) int, from `minicap.data.encode_captions`; image_ids : (M,) their images.
    features : a FeatureStore (or FeatureTable, or a lookup function ids (N,) -> (N, F)). Captions whose images
        have no features raise ONE MissingFeaturesError with the count and the first ids, before training.
    val_captions, val_image_ids : the validation split, same form (optional).
    model : the model to train; default `new_model(vocab, F)`. Ignored when resuming.
    resume : a checkpoint to continue (its model, settings and state are used; `config` is ignored).
    The other arguments are `Trainer`'s and `Trainer.fit`'s.
    """
    lookup = _lookup_of(features)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    check_features_available(image_ids, lookup, what="training")
    train_data = CaptionDataset(captions, image_ids, lookup, check=False)
    val_data = None
    if val_captions is not None:
        if val_image_ids is None:
            raise ValueError("val_captions needs val_image_ids")
        check_features_available(val_image_ids, lookup, what="validation")
        val_data = CaptionDataset(val_captions, val_image_ids, lookup, check=False)
    if encoder is None and hasattr(features, "manifest") and hasattr(features, "feature_size"):
        encoder = encoder_info(features)
    common = dict(out_dir=out_dir, val_metric=val_metric, encoder=encoder, progress=progress, log=log, plot=plot)
    if resume is not None:
        trainer = Trainer.from_checkpoint(resume, train_data, val_data, **common)
    else:
        if model is None:
            model = new_model(vocab, int(np.asarray(lookup(image_ids[:1])).shape[1]))
        trainer = Trainer(model, vocab, train_data, val_data, config, extra=extra, **common)
    return trainer.fit(until_epoch=until_epoch, max_seconds=max_seconds)


# ================================================================================================ from files (CLI)

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test, by image
DATA_DEFAULTS = {"split_seed": 0, "max_length": 16, "min_count": 5}
MODEL_DEFAULTS = {"hidden_size": 512, "wordvec_size": 256, "cell": "lstm"}


def train_coco(
    features: str | Path,
    captions: str | Path,
    out_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    split_seed: int | None = None,
    max_length: int | None = None,
    min_count: int | None = None,
    hidden_size: int | None = None,
    wordvec_size: int | None = None,
    cell: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    schedule: str | None = None,
    clip: float | None = None,
    patience: int | None = None,
    seed: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """`minicap train`: a feature store and a COCO captions JSON in, a trained captioner in `out_dir`.

    1. Load the features (FeatureStore) and the captions (empty/whitespace captions are dropped and counted).
    2. Split the images 80/10/10 into train/val/test with `split_seed`; the val and test image ids are recorded
       in the checkpoints (header extra["data"]), so evaluation uses exactly the held-out images.
    3. Build the vocabulary from the TRAINING captions only (words seen >= `min_count` times), encode the
       captions (at most `max_length` words; longer ones are truncated and counted).
    4. Train (`Trainer`), writing last.npz, best.npz, history.json and training_curves.png into `out_dir`.

    Options left as None take their defaults (DATA_DEFAULTS, MODEL_DEFAULTS, TrainConfig) — or, with `resume`,
    the checkpoint's values; an option given explicitly that differs from the checkpoint's is an error (a
    resumed run continues the same run). `patience=0` turns early stopping off. `out_dir` defaults to
    "runs/train", or the checkpoint's folder when resuming.
    """
    from minicap.data import encode_captions, load_coco_captions, split_by_image
    from minicap.features import FeatureStore

    log = log or (lambda line: None)
    store = FeatureStore.load(features)
    coco = load_coco_captions(captions)
    log(f"captions: {coco.summary()}")
    log(f"features: {len(store)} images x {store.feature_size} ({store.manifest.get('architecture', 'unknown')})")

    data_opts = {"split_seed": split_seed, "max_length": max_length, "min_count": min_count}
    model_opts = {"hidden_size": hidden_size, "wordvec_size": wordvec_size, "cell": cell}
    train_opts = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "schedule": schedule,
        "clip": clip,
        "patience": patience,
        "seed": seed,
    }
    given = {k: v for k, v in {**data_opts, **model_opts, **train_opts}.items() if v is not None}
    if patience == 0:
        given["patience"] = None  # 0 on the command line: no early stopping
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        store.check_feature_size(ckpt.model.feature_size, what=f"checkpoint {resume}")
        saved = {**ckpt.extra.get("data", {}), **ckpt.model.config, **(ckpt.train_config or {})}
        conflicts = [f"{k}={v!r} (checkpoint: {saved[k]!r})" for k, v in given.items() if k in saved and saved[k] != v]
        if conflicts:
            raise ValueError(
                f"resuming {resume} continues that run with its own settings; these options differ: "
                + "; ".join(conflicts)
            )
        given = {k: saved[k] for k in DATA_DEFAULTS if k in saved}
    data_opts = {k: given.get(k, default) for k, default in DATA_DEFAULTS.items()}
    model_opts = {k: given.get(k, default) for k, default in MODEL_DEFAULTS.items()}

    split = split_by_image(coco.image_ids(), SPLIT_FRACTIONS, seed=data_opts["split_seed"])
    part_of = {int(i): name for name, ids in split.items() for i in ids}
    parts: dict[str, list[tuple[int, str]]] = {name: [] for name in split}
    for image_id, text in coco.captions:
        parts[part_of[image_id]].append((image_id, text))
    vocab = ckpt.vocab if ckpt else Vocabulary.from_captions((t for _, t in parts["train"]), data_opts["min_count"])
    encoded = {name: encode_captions(parts[name], vocab, data_opts["max_length"]) for name in ("train", "val")}
    log(
        f"split (seed {data_opts['split_seed']}): {len(split['train'])} / {len(split['val'])} / "
        f"{len(split['test'])} images for train / val / test"
    )
    log(f"vocabulary: {len(vocab)} tokens (words seen >= {vocab.min_count} times in the training captions)")
    for name, enc in encoded.items():
        log(f"{name}: {enc.summary()}")

    extra = {
        "data": {
            **data_opts,
            "captions_file": str(captions),
            "features_file": str(features),
            "split_fractions": list(SPLIT_FRACTIONS),
            "num_images": {name: len(ids) for name, ids in split.items()},
            "val_image_ids": split["val"].tolist(),
            "test_image_ids": split["test"].tolist(),
            "empty_captions_dropped": coco.num_dropped_empty,
            "truncated": {name: enc.num_truncated for name, enc in encoded.items()},
        }
    }
    model = config = None
    if ckpt is None:
        config = TrainConfig(**{k: v for k, v in given.items() if k in train_opts})
        model = new_model(vocab, store.feature_size, seed=config.seed, **model_opts)
        log(f"model: {model.cell.upper()}, {model.num_params():,} parameters ({model.config})")
    out_dir = Path(out_dir if out_dir is not None else (Path(resume).parent if resume is not None else "runs/train"))
    if ckpt is None and (out_dir / LAST).exists():
        raise ValueError(
            f"{out_dir} already holds a run ({out_dir / LAST}); continue it with --resume {out_dir / LAST}, "
            "or choose another --out"
        )
    val = encoded["val"]
    return train(
        encoded["train"].captions,
        encoded["train"].image_ids,
        store,
        vocab,
        val_captions=val.captions if len(val.captions) else None,
        val_image_ids=val.image_ids if len(val.captions) else None,
        model=model,
        config=config,
        out_dir=out_dir,
        resume=ckpt,
        max_seconds=max_seconds,
        encoder=encoder_info(store, features),
        extra=extra,
        progress=progress,
        log=log,
    )

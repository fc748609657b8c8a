"""`Trainer`, the loop itself (the package docstring, minicap.train, describes the loop and its files): a run, its
updates and epochs, resuming it from a checkpoint, and the files it writes (LAST, BEST, HISTORY, CURVES). Beside it:
`validation_loss`, the type of a `loss_fn` (`LossFn`), and what a run raises or warns (`TrainingDiverged`,
`TrainingWarning`)."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from minicap.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_header, save_checkpoint
from minicap.dataset import Dataset
from minicap.models.base import SequenceModel
from minicap.optim import OPTIMIZERS, Optimizer, clip_grad_norm, global_norm
from minicap.safe_io import WriteFailed, atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from minicap.text import Vocabulary
from minicap.train.config import TrainConfig, make_schedule
from minicap.train.state import TrainResult, TrainState, _epoch_numbers

LAST, BEST, HISTORY, CURVES = "last.npz", "best.npz", "history.json", "training_curves.png"

LossFn = Callable[[SequenceModel, Any], tuple[np.floating, dict[str, np.ndarray]]]


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite. The checkpoints on disk are untouched."""

    def __init__(self, message: str, step: int, epoch: int, last_good_loss: float | None) -> None:
        super().__init__(message)
        self.step, self.epoch, self.last_good_loss = step, epoch, last_good_loss


class TrainingWarning(UserWarning):
    """Training finished, but its result deserves a word: e.g. the model ended worse than it started."""


# What the entries of TrainState.data fingerprint, for messages.
_DATA_NAMES = {
    "train": "training captions",
    "val": "validation captions",
    "train_features": "features of the training images",
    "val_features": "features of the validation images",
}


def validation_loss(model: SequenceModel, data: Dataset, batch_size: int = 256) -> float:
    """Mean loss per example over `data`, in order, without updating anything (forward only)."""
    total, count = 0.0, 0
    for indices in data.in_order(batch_size):
        loss, _ = model.loss(*data.batch(indices), backward=False)
        total += float(loss) * len(indices)
        count += len(indices)
    return total / count


class Trainer:
    """Trains `model` (updated in place) on `train_data`; see the package docstring for the loop and its files.

    Parameters
    ----------
    model : any model of the contract (`minicap.models.base.SequenceModel`).
    train_data, val_data : `minicap.dataset.Dataset`s. Without `val_data` the criterion for "best" is the training
        loss and early stopping watches it.
    config : TrainConfig.
    optimizer : an optimiser object to use instead of the one `config.optimizer` names (lessons compare them); its
        learning rate is the run's peak rate and its class and weight decay are recorded in the run's config.
    out_dir : where checkpoints, history.json and the figure go; None writes nothing.
    val_metric : optional `callable(model) -> float`, higher is better (e.g. validation CIDEr). When given, it is
        evaluated after every epoch and is the criterion for best.npz and early stopping instead of the val loss.
    loss_fn : `callable(model, batch) -> (loss, grads)`; default `model.loss(*batch)`.
    stop_when : `callable(history) -> str | None`, asked after every epoch: a string stops the run with that reason.
    on_epoch : `callable(record)`, told after every epoch (its history record: epoch, seconds, losses, ...) once
        its files are written; progress reports of long runs (`minicap.experiments.RunProgress`) listen here.
    on_divergence : "raise" (TrainingDiverged, the default) or "stop" (the run ends with stopped = "diverged").
    vocab, encoder, extra : recorded in checkpoints (the vocabulary, what made the features, free JSON).
    progress : show a tqdm progress bar (only on a terminal). log : where one line per epoch goes (None: nowhere).
    plot : draw training_curves.png when `fit` returns.
    """

    def __init__(
        self,
        model: SequenceModel,
        train_data: Dataset,
        config: TrainConfig | None = None,
        *,
        val_data: Dataset | None = None,
        optimizer: Optimizer | None = None,
        out_dir: str | Path | None = None,
        val_metric: Callable[[SequenceModel], float] | None = None,
        loss_fn: LossFn | None = None,
        stop_when: Callable[[dict[str, Any]], str | None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_divergence: str = "raise",
        vocab: Vocabulary | None = None,
        encoder: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = print,
        plot: bool = True,
    ) -> None:
        config = config or TrainConfig()
        if optimizer is not None:  # an optimiser object given: its class and peak rate are the run's, recorded as such
            hyper = optimizer.hyperparameters()
            config = dataclasses.replace(
                config,
                lr=optimizer.lr,
                optimizer=next((c.__name__ for c in type(optimizer).__mro__ if c.__name__ in OPTIMIZERS), "?"),
                weight_decay=float(hyper.get("weight_decay", 0.0)),
            )
        self.config = config
        if len(train_data) == 0:
            raise ValueError("no training data")
        if val_data is not None and len(val_data) == 0:
            val_data = None  # an empty validation split: as if there were none
        if on_divergence not in ("raise", "stop"):
            raise ValueError(f'on_divergence must be "raise" or "stop", got {on_divergence!r}')
        wanted = getattr(model, "feature_size", None)  # a model that reads image features: F must fit, before any step
        for name, data in (("training", train_data), ("validation", val_data)):
            got = getattr(data, "feature_size", None)
            if wanted is not None and got is not None and got != wanted:
                raise ValueError(
                    f"the model expects {wanted}-d image features, but the {name} features given are {got}-d: "
                    "were they extracted with another encoder?"
                )
        self.model, self.train_data, self.val_data = model, train_data, val_data
        self.vocab, self.encoder, self.extra = vocab, encoder, dict(extra or {})
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None:
            for name in (LAST, BEST, HISTORY, CURVES):  # what a killed writer of these files left behind
                remove_stale_temporaries(self._path(name))
        self.val_metric, self.stop_when, self.on_divergence = val_metric, stop_when, on_divergence
        self.on_epoch = on_epoch
        self.loss_fn = loss_fn or self._model_loss
        self.progress, self.log, self.plot = progress, log or (lambda line: None), plot

        self.batches_per_epoch = train_data.batches_per_epoch(self.config.batch_size)
        self.total_steps = self.config.epochs * self.batches_per_epoch
        self.schedule = make_schedule(self.config, self.total_steps)
        self.optimizer = optimizer if optimizer is not None else self.config.make_optimizer()
        self.rng = np.random.default_rng(self.config.seed)  # the minibatch order, and nothing else
        self._epoch_start_rng_state = self.rng.bit_generator.state
        criterion = "val_metric" if val_metric else ("val_loss" if val_data is not None else "train_loss")
        data = {"train": train_data.fingerprint(), "val": None if val_data is None else val_data.fingerprint()}
        for name, dataset in (("train", train_data), ("val", val_data)):
            if dataset is not None and (features := dataset.features_fingerprint()) is not None:
                data[f"{name}_features"] = features
        self.state = TrainState(criterion=criterion, data=data)
        self.history: dict[str, Any] = {
            "criterion": criterion,
            "clip": self.config.clip,
            "steps": {"step": [], "epoch": [], "loss": [], "grad_norm": [], "lr": []},
            "epochs": [],
            "initial": None,
        }
        self.best_params: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------ resuming

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        train_data: Dataset,
        *,
        allow_other_features: bool = False,
        **kwargs: Any,
    ) -> Trainer:
        """Continue the run saved in `checkpoint` (usually `last.npz`) on the SAME data.

        Restores the model, the optimiser's state, the generator state, the position in the epoch, the
        early-stopping counters and the history, and repairs `best.npz` if a kill left it behind (`_repair_best`).
        Refuses (ValueError, saying what differs) data whose fingerprint differs from the saved one, a different
        validation criterion, and (when `encoder` is given) features from another encoder. Image features that
        differ from the saved run's (another feature store) are refused too unless `allow_other_features`: the run
        then continues on them, knowingly, and is no longer exactly the run it would have been.
        `out_dir` defaults to the checkpoint's folder. Other keyword arguments are the constructor's.
        """
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        if ckpt.train_config is None or ckpt.train_state is None or ckpt.header.get("rng") is None:
            raise CheckpointError(f"{ckpt.path} holds a model but no training state: it cannot be resumed")
        encoder = kwargs.get("encoder")
        saved_sha = ckpt.encoder.get("onnx_sha256")
        if encoder is not None and saved_sha and encoder.get("onnx_sha256") and encoder["onnx_sha256"] != saved_sha:
            raise ValueError(
                f"{ckpt.path} was trained on features from encoder {saved_sha[:12]}... "
                f"({ckpt.encoder.get('architecture')}), these come from {encoder['onnx_sha256'][:12]}... "
                f"({encoder.get('architecture')}): resume with the same features"
            )
        config = TrainConfig.from_dict(ckpt.train_config)
        saved_optimizer = ckpt.header.get("optimizer") or {"class": config.optimizer, "hyperparameters": {}}
        optimizer = OPTIMIZERS[saved_optimizer["class"]](config.lr, **saved_optimizer["hyperparameters"])
        kwargs = {
            "out_dir": ckpt.path.parent,
            "vocab": ckpt.vocab,
            "extra": ckpt.extra,
            **kwargs,
            "encoder": encoder or ckpt.encoder or None,
            "optimizer": optimizer,
        }
        trainer = cls(ckpt.model, train_data, config, **kwargs)
        saved = TrainState.from_dict(ckpt.train_state)
        if saved.criterion != trainer.state.criterion:
            raise ValueError(
                f"{ckpt.path} chose its best epoch by {saved.criterion}, this resumed run would use "
                f"{trainer.state.criterion}: pass the same val_metric / validation data"
            )
        now = trainer.state.data
        differ = [k for k in saved.data if k in now and saved.data[k] != now[k]]  # older checkpoints have fewer keys
        if captions := [k for k in differ if not k.endswith("_features")]:
            what = " and ".join(_DATA_NAMES.get(k, k) for k in captions)
            raise ValueError(
                f"the data differ from those {ckpt.path} was trained on: the {what} (fingerprints "
                f"{[saved.data[k] for k in captions]} vs {[now[k] for k in captions]}): resume with the same captions "
                "file, split seed, min count and max length"
            )
        if features := [k for k in differ if k.endswith("_features")]:
            what = " and the ".join(_DATA_NAMES.get(k, k) for k in features)
            if not allow_other_features:
                raise ValueError(
                    f"the {what} differ from those {ckpt.path} was trained on (fingerprints "
                    f"{[saved.data[k] for k in features]} vs {[now[k] for k in features]}): is this another feature "
                    "store (re-extracted, other photos, a damaged copy)? Resume with the features the run was trained "
                    "on, or allow other features explicitly (minicap train --allow-other-features) to continue on "
                    "these, knowing that the run is then no longer exact"
                )
            trainer.log(f"note: resuming on other features, as asked: the {what} differ from the checkpoint's")
        trainer.optimizer.load_state_dict(ckpt.optimizer_state, params=trainer.model.params)
        rng = ckpt.make_rng()
        assert rng is not None
        trainer._epoch_start_rng_state = rng.bit_generator.state
        trainer.state = dataclasses.replace(saved, data={**saved.data, **now})
        trainer.history = {"initial": None, **ckpt.history}
        trainer.best_params = trainer._load_best_params(ckpt)
        trainer._repair_best(ckpt)
        return trainer

    def _load_best_params(self, ckpt: Checkpoint) -> dict[str, np.ndarray] | None:
        """The best epoch's parameters: this checkpoint's own, or best.npz next to it if it is that epoch's."""
        best_epoch = self.state.best_epoch
        if best_epoch is None:
            return None
        if best_epoch == ckpt.epoch and self.state.batch_in_epoch == 0:
            return {k: v.copy() for k, v in self.model.params.items()}
        best_file = ckpt.path.parent / BEST
        if self._holds_best_epoch(best_file):
            return load_checkpoint(best_file).model.params
        return None

    def _holds_best_epoch(self, path: Path) -> bool:
        """Is `path` a checkpoint of this run's best epoch (its epoch, and the step that epoch ended at)?"""
        best_epoch = self.state.best_epoch
        if best_epoch is None or not path.is_file():
            return False
        try:
            header = read_header(path)
        except CheckpointError:
            return False
        epochs = self.history.get("epochs") or []
        step = epochs[best_epoch - 1]["step"] if len(epochs) >= best_epoch else None
        return header.get("epoch") == best_epoch and (step is None or header.get("step") == step)

    def _repair_best(self, ckpt: Checkpoint) -> None:
        """Make `out_dir/best.npz` hold exactly the epoch this run calls best, as an uninterrupted run would have.

        `_end_epoch` writes last.npz, then best.npz. A run killed between the two (or whose disk filled up there)
        leaves a last.npz whose state says "best epoch N" beside a best.npz of an older epoch, or none. That last.npz
        IS the state after epoch N, so the repair is a copy of it. (A resume into another `out_dir` copies the
        original folder's best.npz the same way.)
        """
        if self.out_dir is None or self.state.best_epoch is None:
            return
        best_file = self._path(BEST)
        if self._holds_best_epoch(best_file):
            return
        at_best_epoch = self.state.best_epoch == ckpt.epoch and self.state.batch_in_epoch == 0
        candidates = ([ckpt.path] if at_best_epoch else []) + [ckpt.path.parent / BEST]
        source = next((c for c in candidates if self._holds_best_epoch(c)), None)
        if source is None:
            warnings.warn(
                f"{best_file} does not hold the best epoch ({self.state.best_epoch}) and no checkpoint of that epoch "
                "is left to repair it from; it will be written again when the validation criterion next improves",
                TrainingWarning,
                stacklevel=3,
            )
            return
        self._write(BEST, lambda: atomic_write_bytes(best_file, source.read_bytes()))
        self.log(
            f"repaired {best_file}: it now holds epoch {self.state.best_epoch}, the best epoch (the run had stopped "
            f"before best.npz was written; copied from {source})"
        )

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self, *, until_epoch: int | None = None, max_seconds: float | None = None) -> TrainResult:
        """Train until `config.epochs` epochs are done, early stopping, a time budget, or `until_epoch`.

        until_epoch : stop (as "paused") once this many epochs are complete; resume later with `from_checkpoint`.
        max_seconds : a time budget for this call; when it runs out, the run stops after the current update,
            saving `last.npz` mid-epoch so that it can be resumed exactly.
        Raises TrainingDiverged if the loss or gradient norm stops being finite (checkpoints stay as they were),
        unless on_divergence="stop".
        """
        started = time.perf_counter()
        st = self.state
        first_step = st.step
        if st.step == 0 and self.history.get("initial") is None:
            val_loss, val_metric = self._validate()
            self.history["initial"] = {"val_loss": val_loss, "val_metric": val_metric}
        while True:
            if st.stopped is not None:
                reason = st.stopped
            elif until_epoch is not None and st.epoch >= until_epoch:
                reason = "paused"
            elif max_seconds is not None and st.step > first_step and time.perf_counter() - started >= max_seconds:
                reason = "time budget"  # (every call makes at least one update, so repeated calls make progress)
            else:
                try:
                    reason = self._run_epoch(started, max_seconds)
                except TrainingDiverged:
                    if self.on_divergence == "raise":
                        raise
                    st.stopped = reason = "diverged"
            if reason is not None:
                break
        self._warn_if_worse()
        self._write_history(reason)
        self._plot()
        best_model = None
        if self.best_params is not None:
            best_model = self.model.copy()
            for name, value in self.best_params.items():
                best_model.params[name][...] = value
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
        st, cfg = self.state, self.config
        # This epoch's batches: drawn from the generator as it was when the epoch began, so a run resumed
        # mid-epoch draws the same order and skips the batches it has done.
        self.rng.bit_generator.state = self._epoch_start_rng_state
        batches = self.train_data.epoch(self.rng, cfg.batch_size)
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
            for key in batches[st.batch_in_epoch :]:
                loss, examples = self._step(key)
                st.batch_in_epoch += 1
                st.epoch_loss_sum += loss * examples
                st.epoch_examples += examples
                seconds = st.epoch_seconds + time.perf_counter() - clock
                bar.set_postfix(
                    loss=f"{st.epoch_loss_sum / st.epoch_examples:.3f}",
                    per_s=f"{st.epoch_examples / max(seconds, 1e-9):.0f}",
                    refresh=False,
                )
                bar.update(1)
                out_of_time = max_seconds is not None and time.perf_counter() - started >= max_seconds
                if out_of_time and st.batch_in_epoch < len(batches):
                    st.epoch_seconds += time.perf_counter() - clock
                    self._save(LAST, metrics={"train_loss_so_far": st.epoch_loss_sum / st.epoch_examples})
                    return "time budget"
        finally:
            bar.close()
        st.epoch_seconds += time.perf_counter() - clock
        self._end_epoch()
        return None

    def _step(self, key: Any) -> tuple[float, int]:
        """One update on the batch `key` names. Returns the batch loss and its number of examples."""
        st = self.state
        batch = self.train_data.batch(key)
        self.optimizer.lr = self.schedule(self.optimizer.t)  # the optimiser's t counts updates: the schedule's position
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below, not warned about
            loss, grads = self.loss_fn(self.model, batch)
            clip = self.config.clip
            grad_norm = global_norm(grads) if clip is None else clip_grad_norm(grads, clip)  # the norm BEFORE clipping
        steps = self.history["steps"]
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.history["divergence"] = {"loss": repr(float(loss)), "grad_norm": repr(float(grad_norm))}
            raise self._diverged(f"loss = {float(loss)}, gradient norm = {grad_norm}")
        self.optimizer.step(self.model.params, grads)
        st.step += 1
        st.last_good_loss = float(loss)
        steps["step"].append(st.step)
        steps["epoch"].append(st.epoch + 1)
        steps["loss"].append(float(loss))
        steps["grad_norm"].append(float(grad_norm))
        steps["lr"].append(self.optimizer.lr)
        return float(loss), len(batch[0])  # every loss takes a batch of examples first (features, words, x)

    def _model_loss(self, model: SequenceModel, batch: Any) -> tuple[np.floating, dict[str, np.ndarray]]:
        """The default loss: model.loss(*batch). A model with dropout (`model.dropout` > 0) also gets this update's
        generator for its masks, default_rng((seed, step)): the masks depend only on the seed and the update, so a
        run resumed from any checkpoint draws the same masks as a run never stopped, bit for bit."""
        if getattr(model, "dropout", 0.0) > 0:
            return model.loss(*batch, rng=np.random.default_rng((self.config.seed, self.state.step)))
        return model.loss(*batch)

    def _validate(self) -> tuple[float | None, float | None]:
        """(validation loss, validation metric), each None when not configured."""
        val_loss = None
        if self.val_data is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                val_loss = validation_loss(self.model, self.val_data, max(self.config.batch_size, 256))
        val_metric = None if self.val_metric is None else float(self.val_metric(self.model))
        return val_loss, val_metric

    def _end_epoch(self) -> None:
        """Validate, update early stopping, record the epoch, write the checkpoints and the history."""
        st, cfg = self.state, self.config
        bad = [name for name, p in self.model.params.items() if not np.all(np.isfinite(p))]
        if bad:
            raise self._diverged(f"parameters {', '.join(bad)} hold NaN or infinity", in_update=False)
        train_loss = st.epoch_loss_sum / st.epoch_examples
        clock = time.perf_counter()
        val_loss, val_metric = self._validate()
        if val_loss is not None and not math.isfinite(val_loss):
            raise self._diverged(f"validation loss = {val_loss}", in_update=False)
        if val_metric is not None and not math.isfinite(val_metric):
            raise ValueError(f"val_metric returned {val_metric} after epoch {st.epoch + 1}; it must be finite")
        val_seconds = time.perf_counter() - clock

        # Early stopping works on a score where higher is better: the metric, or minus a loss.
        score = {
            "val_metric": val_metric,
            "val_loss": None if val_loss is None else -val_loss,
            "train_loss": -train_loss,
        }[st.criterion]
        assert score is not None
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
            "examples_per_second": st.epoch_examples / max(st.epoch_seconds, 1e-9),
            "best": improved,
        }
        self.history["epochs"].append(record)

        # The epoch is complete: move the state to the next epoch boundary, THEN save it.
        st.epoch += 1
        st.batch_in_epoch, st.epoch_loss_sum, st.epoch_examples, st.epoch_seconds = 0, 0.0, 0, 0.0
        self._epoch_start_rng_state = self.rng.bit_generator.state
        if st.epoch >= cfg.epochs:
            st.stopped = "completed"
        elif cfg.patience is not None and st.epochs_since_best >= cfg.patience:
            st.stopped = "early stopping"
        elif self.stop_when is not None and (reason := self.stop_when(self.history)):
            st.stopped = reason
        metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_metric": val_metric}
        # This order keeps best.npz and history.json in agreement at every moment: a kill after last.npz leaves both
        # at the previous epoch, and the next resume repairs best.npz from last.npz (`_repair_best`).
        self._save(LAST, metrics)
        if improved:
            self._save(BEST, metrics)
        self._write_history(st.stopped)
        self.log(
            f"epoch {record['epoch']}/{cfg.epochs}: {_epoch_numbers(record)}, lr {record['lr']:.2e}, "
            f"{record['examples_per_second']:.0f} examples/s ({record['seconds']:.1f} s)"
            + (" *best*" if improved else "")
        )
        if self.on_epoch is not None:
            self.on_epoch(record)

    # ------------------------------------------------------------------------------------------ files

    def _path(self, name: str) -> Path:
        assert self.out_dir is not None
        return self.out_dir / name

    def _save(self, name: str, metrics: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        rng = np.random.default_rng()
        rng.bit_generator.state = self._epoch_start_rng_state  # the order of the epoch in progress (or next)
        self._write(
            name,
            lambda: save_checkpoint(
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
            ),
        )

    def _write_history(self, stopped: str | None) -> None:
        if self.out_dir is None:
            return
        record = {**self.history, "stopped": stopped, "config": self.config.to_dict()}
        self._write(HISTORY, lambda: atomic_write_json(self._path(HISTORY), record))

    def _write(self, name: str, write: Callable[[], Any]) -> None:
        """Run `write` (which writes the file `name`); if the disk refuses it, say which files are still good."""
        try:
            write()
        except WriteFailed as e:
            raise e.still_good(self._files_still_good()) from e

    def _files_still_good(self) -> str:
        """What a user can continue from after a failed write: the checkpoints on disk and their epochs."""
        good = []
        for name in (LAST, BEST):
            path = self._path(name)
            try:
                header = read_header(path) if path.is_file() else None
            except CheckpointError:
                header = None
            if header is not None:
                good.append(f"{path} (epoch {header['epoch']}, step {header['step']})")
        if not good:
            return "no checkpoint of this run has been written yet; free some space and start again"
        return (
            ", ".join(good) + f". Free some space, then continue from {self._path(LAST)} (minicap train --resume "
            f"{self._path(LAST)}; a resume also repairs best.npz)"
        )

    def _warn_if_worse(self) -> None:
        """Warn (a TrainingWarning, and history["warnings"]) when the best or the last epoch left the model with a
        HIGHER validation loss than it had before the first update.

        Nothing else would say so: a learning rate far too high can make the loss thousands of times worse without
        ever producing a NaN, and the run would end as "completed" with exit code 0.
        """
        initial = (self.history.get("initial") or {}).get("val_loss")
        epochs, best_epoch = self.history["epochs"], self.state.best_epoch
        if initial is None or not epochs:
            return
        worse = []
        if best_epoch is not None and (best := epochs[best_epoch - 1]["val_loss"]) is not None and best > initial:
            worse.append(f"the best epoch's ({best_epoch}) {best:.6g}")
        if best_epoch != len(epochs) and (last := epochs[-1]["val_loss"]) is not None and last > initial:
            worse.append(f"the last epoch's ({len(epochs)}) {last:.6g}")
        if not worse:
            self.history.pop("warnings", None)
            return
        message = (
            f"training made the model worse: the validation loss was {initial:.6g} before the first update, "
            f"{' and '.join(worse)} after it. Nothing it learnt carries over to the validation data; a learning rate "
            f"far too high does this (it is {self.config.lr:g}: try a lower one, --lr), and so does too little "
            "training data"
        )
        self.history["warnings"] = [message]
        warnings.warn(message, TrainingWarning, stacklevel=3)

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
        self.history["diverged_at"] = st.step if in_update else st.step - 1
        self._write_history(f"diverged: {what}")
        self._plot()
        step = st.step + 1 if in_update else st.step
        return TrainingDiverged(message, step=step, epoch=st.epoch + 1, last_good_loss=st.last_good_loss)

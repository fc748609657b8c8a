"""What a training run carries and returns: `TrainState`, where a run is (saved in every checkpoint, so that a
resumed run continues exactly), and `TrainResult`, what `Trainer.fit` returns; `_epoch_numbers` formats an epoch's
losses for its summary and the Trainer's log."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from minicap.models.base import SequenceModel


@dataclasses.dataclass
class TrainState:
    """Where a run is: saved in every checkpoint so that a resumed run continues exactly.

    step                updates done (= the optimiser's t = the schedule's position)
    epoch               epochs completed
    batch_in_epoch      minibatches done in the epoch in progress (0 at an epoch boundary)
    epoch_loss_sum, epoch_examples, epoch_seconds   the epoch in progress so far (for its mean loss, speed)
    best_score          best validation criterion so far, as "higher is better" (−loss for a loss)
    best_epoch          the epoch (1-based) that reached it
    epochs_since_best   epochs without improvement (early stopping compares it with `patience`)
    last_good_loss      the last finite training loss (reported if training diverges)
    stopped             None while running; "completed", "early stopping", a `stop_when` reason, or "diverged"
    criterion           "val_metric", "val_loss" or "train_loss" (without validation data)
    data                fingerprints of the training and validation data: "train" and "val" (e.g. the captions),
                        "train_features" and "val_features" (what they are looked up in, when fingerprinted apart);
                        resuming on other data is refused, naming what differs
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_examples: int = 0
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
        d = dict(d)
        if "epoch_sequences" in d:  # the name in checkpoints written before the loop served every model
            d["epoch_examples"] = d.pop("epoch_sequences")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown training-state entries {sorted(unknown)}")
        return cls(**d)


@dataclasses.dataclass
class TrainResult:
    """What `Trainer.fit` returns.

    model       the model after the last update (the Trainer's own object)
    best_model  a copy with the parameters of the best epoch (None if no epoch finished)
    stopped     "completed", "early stopping", "time budget", "paused" (`until_epoch` reached), "diverged"
                (only with on_divergence="stop"), or the reason a `stop_when` rule gave
    history     {"steps": {"step", "epoch", "loss", "grad_norm", "lr": lists}, "epochs": [per-epoch records],
                 "initial": {"val_loss", "val_metric"} before the first update, "criterion", "clip", "warnings" (texts,
                 e.g. that the model ended worse than it started; also issued as TrainingWarning); after a
                 divergence "diverged_at" (the 0-based step that failed) and "divergence" (its loss and gradient norm
                 as text, e.g. "inf": JSON has no infinity)}
    """

    model: SequenceModel
    best_model: SequenceModel | None
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

    @property
    def losses(self) -> list[float]:
        """The training loss of every update, in order."""
        return list(self.history["steps"]["loss"])

    @property
    def grad_norms(self) -> list[float]:
        """The global gradient norm of every update, before clipping."""
        return list(self.history["steps"]["grad_norm"])

    def summary(self) -> str:
        lines = [f"stopped: {self.stopped} after {self.epochs} epochs, {self.steps} updates ({self.seconds:.1f} s)"]
        if self.history["epochs"]:
            lines.append("last epoch: " + _epoch_numbers(self.history["epochs"][-1]))
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

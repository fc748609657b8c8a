"""The settings of a training run, `TrainConfig` (saved in every checkpoint; a resumed run uses the saved ones),
and the learning-rate schedule they make for a run of a given length, `make_schedule`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from minicap.optim import OPTIMIZERS, Adam, Constant, CosineWithWarmup, Optimizer, Schedule


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What the loop does, for any model. Saved in every checkpoint; a resumed run uses the saved one.

    epochs          passes over the training data
    batch_size      examples per update (the last batch of an epoch may be smaller)
    lr              peak learning rate
    schedule        "cosine": linear warm-up over `warmup` of all updates, then a half cosine down to `min_lr`;
                    "constant": `lr` throughout
    warmup          fraction of all updates spent warming up (cosine only)
    min_lr          the cosine's final learning rate
    clip            global gradient-norm threshold (Pascanu et al. 2013); None measures the norm without clipping
    optimizer       "Adam", "SGD" or "Momentum" (minicap.optim), unless an optimiser object is passed in
    weight_decay    decoupled (AdamW) weight decay; 0 = plain Adam
    patience        stop after this many epochs without improvement of the validation criterion (None: never)
    seed            seeds the minibatch order (the model has its own initialisation seed)

    The captioner's values come from `minicap.config.CaptionerConfig`, the one configuration of the captioner.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: float = 0.05
    min_lr: float = 0.0
    clip: float | None = 5.0
    optimizer: str = "Adam"
    weight_decay: float = 0.0
    patience: int | None = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f'schedule must be "cosine" or "constant", got {self.schedule!r}')
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of all updates in [0, 1), got {self.warmup}")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0 or None, got {self.clip}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.weight_decay and self.optimizer != "Adam":
            raise ValueError("weight_decay is decoupled weight decay (AdamW): it needs optimizer='Adam'")
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

    def make_optimizer(self) -> Optimizer:
        """The optimiser these settings name, at the peak learning rate."""
        if self.optimizer == "Adam":
            return Adam(lr=self.lr, weight_decay=self.weight_decay)
        return OPTIMIZERS[self.optimizer](self.lr)


def make_schedule(config: TrainConfig, total_steps: int) -> Schedule:
    """The learning-rate schedule of a run of `total_steps` updates: step -> lr."""
    if config.schedule == "constant" or total_steps < 2:
        return Constant(config.lr)
    warmup_steps = min(int(round(config.warmup * total_steps)), total_steps - 1)
    return CosineWithWarmup(config.lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=config.min_lr)

"""Learning-rate schedules: small callables step -> lr (`Schedule`), `Constant` and `CosineWithWarmup`."""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable

Schedule = Callable[[int], float]
"""A learning-rate schedule: ``lr = schedule(step)`` with ``step`` an int >= 0. Typical use, before each
update: ``opt.lr = schedule(opt.t)`` (``opt.t`` = updates done so far: the first update uses ``schedule(0)``)."""


def _check_step(step: int) -> int:
    step = operator.index(step)  # ints and NumPy ints; a float step is a mistake, not something to round
    if step < 0:
        raise ValueError(f"schedule step must be >= 0, got {step}")
    return step


def _check_lr(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclasses.dataclass(frozen=True)
class Constant:
    """``lr(step) = base_lr`` for every step."""

    base_lr: float

    def __post_init__(self) -> None:
        _check_lr("base_lr", self.base_lr)

    def __call__(self, step: int) -> float:
        _check_step(step)
        return float(self.base_lr)


@dataclasses.dataclass(frozen=True)
class CosineWithWarmup:
    r"""Linear warm-up, then a half cosine down to `min_lr`, then constant `min_lr`.

    With :math:`W` = `warmup_steps` and :math:`T` = `total_steps` (warm-up included), for update
    :math:`s = 0, 1, \dots`:

    .. math::

        \eta(s) = \begin{cases}
            \eta_0\, (s + 1) / W                                                   & s < W \\
            \eta_\min + \tfrac12 (\eta_0 - \eta_\min)(1 + \cos(\pi (s - W) / (T - W)))  & W \le s < T \\
            \eta_\min                                                              & s \ge T
        \end{cases}

    Key values: :math:`\eta(0) = \eta_0 / W` (small but not 0: an update with rate 0 would be wasted),
    :math:`\eta(W - 1) = \eta(W) = \eta_0`, halfway through the cosine :math:`(\eta_0 + \eta_\min)/2`,
    :math:`\eta(T) = \eta_\min`. Warm-up lets Adam's second-moment estimates settle before full-size steps.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        _check_lr("base_lr", self.base_lr)
        _check_lr("min_lr", self.min_lr)
        if self.min_lr > self.base_lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed base_lr ({self.base_lr})")
        if not 0 <= operator.index(self.warmup_steps) < operator.index(self.total_steps):
            raise ValueError(
                f"need 0 <= warmup_steps < total_steps, got warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps}"
            )

    def __call__(self, step: int) -> float:
        s = _check_step(step)
        W, T = self.warmup_steps, self.total_steps
        if s < W:
            return float(self.base_lr * (s + 1) / W)
        if s >= T:
            return float(self.min_lr)
        progress = (s - W) / (T - W)  # 0 at the end of warm-up, -> 1 at total_steps
        return float(self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress)))

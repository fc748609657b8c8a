"""A small, explicit training loop for `minicap.sequence_tasks.SequenceRegressor`, used by lessons 03 and 04.

One step is the loop every lesson talks about, with nothing hidden:

    loss, grads = model.loss(x, y)
    norm = clip_grad_norm(grads, max_norm)     # the global norm BEFORE clipping; only measured if max_norm is None
    optimizer.step(model.params, grads)

and the history keeps, for every step, the loss, the gradient norm and whether clipping changed the gradient.

Divergence is detected, not hidden: when the loss or the gradient norm stops being a finite number, training
stops at that step and `TrainingHistory.diverged_at` says where. (An update with an infinite or NaN gradient
would turn every parameter into NaN; there is nothing left to learn after that.) NumPy's overflow warnings are
silenced inside the loop for the same reason — the history reports the overflow explicitly.

Letters: N batch, T time steps, D input size.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from minicap.optim import Optimizer, clip_grad_norm
from minicap.sequence_tasks import SequenceRegressor, adding_problem

__all__ = ["TrainingHistory", "adding_batches", "global_norm", "train_regressor"]

# clip_grad_norm needs a finite bound; no float64 norm exceeds this one, so with it the call only measures.
_MEASURE_ONLY = sys.float_info.max


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """√(Σ_k ‖a_k‖²) over every array: the norm `clip_grad_norm` clips, measured without changing anything
    (e.g. of a gradient dict, or of the change Δθ one optimiser step made to the parameters)."""
    return clip_grad_norm(arrays, _MEASURE_ONLY)


@dataclasses.dataclass
class TrainingHistory:
    """What happened at every training step (lists indexed by step, 0-based).

    loss[s]       training loss of step s's batch, computed BEFORE step s's update
    grad_norm[s]  global L2 norm of all gradients at step s, before any clipping
    clipped[s]    True when clipping rescaled step s's gradients
    val_step, val_mse   validation MSE measured after `val_step[j]` updates (when a validation set is given)
    diverged_at   the first step whose loss or gradient norm was not finite; training stopped there (its update
                  was not applied). None when every step was finite.
    seconds       wall time of the whole run
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    grad_norm: list[float] = dataclasses.field(default_factory=list)
    clipped: list[bool] = dataclasses.field(default_factory=list)
    val_step: list[int] = dataclasses.field(default_factory=list)
    val_mse: list[float] = dataclasses.field(default_factory=list)
    diverged_at: int | None = None
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        """Number of steps recorded (fewer than asked for when training diverged)."""
        return len(self.loss)

    @property
    def updates(self) -> int:
        """Number of optimiser updates applied (a diverged step is recorded but not applied)."""
        return self.steps if self.diverged_at is None else self.diverged_at

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def final_loss(self, last: int = 50) -> float:
        """Mean training loss over the last `last` steps (inf after a divergence): less noisy than one batch."""
        if self.diverged:
            return math.inf
        if not self.loss:
            raise ValueError("no steps were recorded")
        return float(np.mean(self.loss[-last:]))

    def to_dict(self) -> dict:
        """JSON-able (non-finite numbers become None so the file stays strict JSON)."""

        def clean(values: list[float]) -> list[float | None]:
            return [v if isinstance(v, bool) or math.isfinite(v) else None for v in values]

        return {
            "loss": clean(self.loss),
            "grad_norm": clean(self.grad_norm),
            "clipped": self.clipped,
            "val_step": self.val_step,
            "val_mse": clean(self.val_mse),
            "diverged_at": self.diverged_at,
            "seconds": self.seconds,
        }


def adding_batches(steps: int, batch_size: int, T: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`steps` fresh batches of the adding problem, x (N, T, 2) float32 and y (N,), from one seeded generator:
    the same seed gives the same batches, so two optimisers can be compared on identical data."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield adding_problem(batch_size, T, rng)


def train_regressor(
    model: SequenceRegressor,
    optimizer: Optimizer,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    max_norm: float | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    eval_every: int = 0,
) -> TrainingHistory:
    """Train `model` in place on `batches` (one optimiser step per batch) and return the history.

    max_norm : clip the global gradient norm to this value (Pascanu et al. 2013); None measures the norm only.
    validation : (x (N, T, D), y (N,)) to measure MSE on, after every `eval_every` updates and at the end.
    """
    if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0 or None, got {max_norm}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be ≥ 0, got {eval_every}")
    history = TrainingHistory()
    start = time.perf_counter()

    def evaluate(step: int) -> None:
        if validation is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                history.val_step.append(step)
                history.val_mse.append(model.mse(*validation))

    evaluate(0)
    for step, (x, y) in enumerate(batches):
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below, not warned about
            loss, grads = model.loss(x, y)
            norm = global_norm(grads) if max_norm is None else clip_grad_norm(grads, max_norm)
        history.loss.append(float(loss))
        history.grad_norm.append(norm)
        history.clipped.append(max_norm is not None and norm > max_norm)
        if not (math.isfinite(float(loss)) and math.isfinite(norm)):
            history.diverged_at = step
            break
        with np.errstate(over="ignore", invalid="ignore"):
            optimizer.step(model.params, grads)
        if eval_every and (step + 1) % eval_every == 0:
            evaluate(step + 1)
    if validation is not None and history.val_step[-1] != history.updates:
        evaluate(history.updates)
    history.seconds = time.perf_counter() - start
    return history

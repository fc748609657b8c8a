"""The ONE training loop of minicap: every model of the contract (`minicap.models.base`) is trained by `Trainer`.

One update (a "step") is the textbook recipe:

    batch      = the next minibatch (sampled WITHOUT replacement, reshuffled every epoch)
    lr         = schedule(updates so far)              linear warm-up then a half cosine (or constant)
    loss, g    = model.loss(*batch)                    forward and backward, hand-written (minicap.nn)
    grad_norm  = clip_grad_norm(g, clip)               global-norm clipping; the norm is logged every step
    stop if loss or grad_norm is NaN/inf               before the update: the parameters stay the last good ones
    optimizer.step(params, g)                          in place (Adam by default)

and after every epoch: validation loss (and optionally a validation metric such as CIDEr), early stopping,
checkpoints (`last.npz` always, `best.npz` when the validation criterion improved), `history.json`.

What differs from model to model is passed in, never copied into a second loop:

    train_data, val_data   `minicap.dataset.Dataset`s: len, batch(indices) -> the arguments of model.loss, and
                           epoch(rng, batch_size) -> this epoch's batches (fresh data for the adding problem)
    val_metric             callable(model) -> float, higher is better (the captioner's validation CIDEr-D)
    loss_fn                callable(model, batch) -> (loss, grads); default model.loss(*batch) (a model with
                           dropout also gets the update's generator, `Trainer._model_loss`). Truncated BPTT
                           passes one that carries the recurrent state from one chunk to the next
                           (`minicap.models.language.CarriedState`, reading a `StreamDataset`).
    stop_when              callable(history) -> a reason to stop, or None (lesson 01 stops once a task is solved)
    optimizer              any `minicap.optim.Optimizer` (default: the config's)
    vocab, encoder, extra  what the checkpoints record beside the model

Everything a run depends on is in its checkpoint — parameters, the optimiser's moments and step count (which is also
the schedule's position), the shuffling generator's state, the epoch and the position inside it, the early-stopping
counters and the history — so a run stopped after any epoch (or by a time budget, mid-epoch) and resumed with
`Trainer.from_checkpoint` ends with exactly the same parameters, bit for bit, as a run that was never stopped.

Files written into `out_dir` (each atomically: a killed run never leaves a half-written file):

    last.npz              the latest state (after every epoch, and when a time budget stops the run)
    best.npz              the state after the best epoch so far (lowest validation loss, or highest metric)
    history.json          per step: loss, grad_norm, lr; per epoch: train/val loss, metric, seconds, examples/s;
                          "warnings" when training left the model worse than it started
    training_curves.png   loss and gradient norm (drawn when `fit` returns, or when training diverges)

After an epoch the files are written in that order: last.npz, best.npz, history.json. A run killed between the first
two leaves a last.npz that holds the new best epoch beside an older best.npz; resuming repairs best.npz from it, so
that after any kill and resume best.npz holds exactly the epoch the run (and history.json) calls best. A write that
fails (disk full) stops the run with a message naming the file and the checkpoints that are still good.

The package, cut by concern:

    config.py    TrainConfig, the settings of a run (saved in every checkpoint); make_schedule, the schedule they make
    state.py     TrainState, where a run is (saved in every checkpoint, so that a resume continues exactly);
                 TrainResult, what `Trainer.fit` returns
    trainer.py   Trainer: the loop, resuming, the files it writes (LAST, BEST, HISTORY, CURVES); validation_loss,
                 LossFn, TrainingDiverged, TrainingWarning
"""

from __future__ import annotations

from minicap.train.config import TrainConfig, make_schedule
from minicap.train.state import TrainResult, TrainState
from minicap.train.trainer import (
    BEST,
    CURVES,
    HISTORY,
    LAST,
    LossFn,
    Trainer,
    TrainingDiverged,
    TrainingWarning,
    validation_loss,
)

__all__ = [
    "TrainConfig",
    "TrainState",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "TrainingWarning",
    "LossFn",
    "make_schedule",
    "validation_loss",
    "LAST",
    "BEST",
    "HISTORY",
    "CURVES",
]

"""Optimisers, learning-rate schedules and global-norm gradient clipping, in NumPy.

    optimizers.py  the Optimizer base and its flat state; SGD, Momentum (heavy ball, Nesterov), Adam/AdamW;
                   OPTIMIZERS, every optimiser by class name (a checkpoint rebuilds its optimiser from it)
    schedules.py   learning-rate schedules, callables step -> lr: Constant, CosineWithWarmup
    clipping.py    global_norm and clip_grad_norm (global-norm clipping)

A model's parameters are a flat ``dict[str, np.ndarray]`` and its gradients a dict with the same keys,
shapes and dtypes. One training step is::

    loss, grads = model.loss(features, captions)
    norm = clip_grad_norm(grads, max_norm=5.0)   # log `norm`; skip the step if it is not finite
    opt.lr = schedule(opt.t)                     # optional: a schedule sets the learning rate
    opt.step(params, grads)                      # params change IN PLACE

Three rules hold for every optimiser here:

* **In place.** ``step`` writes into the parameter arrays; it never rebinds a dict entry or reallocates an
  array, so anything holding a reference (the model, a cache, a plot) sees the new values.
* **dtype follows the parameters.** Optimiser state is created lazily, on the first step, with each
  parameter's dtype: float32 parameters get float32 state, and no step upcasts (the learning rate is kept as
  a Python float, which NumPy treats as "weak" and never widens an array with).
* **Clear errors.** Parameters and gradients must have the same keys, shapes and dtypes; saved state must
  match the optimiser it is loaded into. A failed check raises before anything is modified.

State is flat and ``.npz``-friendly: ``state_dict()`` gives ``{"lr": float, "t": int, <hyperparameters>,
"<buffer>/<param name>": array}`` (e.g. ``"m/W_embed"`` for Adam), which a checkpoint can store next to the
parameters, and ``load_state_dict`` restores it.
"""

from __future__ import annotations

from minicap.optim.clipping import clip_grad_norm, global_norm
from minicap.optim.optimizers import OPTIMIZERS, SGD, Adam, Momentum, Optimizer, StateDict
from minicap.optim.schedules import Constant, CosineWithWarmup, Schedule

__all__ = [
    "Optimizer",
    "SGD",
    "Momentum",
    "Adam",
    "Schedule",
    "Constant",
    "CosineWithWarmup",
    "global_norm",
    "clip_grad_norm",
    "OPTIMIZERS",
    "StateDict",
]

"""Gradient clipping: `global_norm`, the L2 norm over every array of a dict, and `clip_grad_norm`, which rescales
all gradients together so that their global norm is at most `max_norm` (Pascanu et al. 2013)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    r"""The global L2 norm :math:`\sqrt{\sum_k \lVert a_k \rVert_2^2}` over every array of a dict (a gradient dict,
    or the change one update made to the parameters), in float64.

    Each array's squared norm is one BLAS dot product of its flattened view with itself (no array of squares is
    built; non-contiguous arrays are copied by ``ravel``), computed in the array's dtype; the per-array sums are
    added as Python floats. A float32 array with entries beyond ~1e19 overflows to an infinite norm. Measured
    2.4-3x faster than ``np.sum(g * g)`` on 10M float32 values (bench_optim.py).
    """
    total = 0.0
    for key, a in arrays.items():
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"array {key!r} must be a floating-point NumPy array, got {type(a).__name__}")
        flat = a.ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


_CLIP_EPS = 1e-6  # keeps the rescale factor finite and the clipped norm strictly below max_norm


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    r"""Rescale all gradients together so that their global L2 norm is at most `max_norm`.

    Global-norm clipping (Pascanu et al. 2013):

    .. math::

        n = \sqrt{\textstyle\sum_k \lVert g_k \rVert_2^2}, \qquad
        g_k \leftarrow g_k \cdot \frac{\text{max\_norm}}{n + 10^{-6}}
        \quad \text{for every } k \text{, if } n > \text{max\_norm}

    One factor for all gradients keeps the direction of the full update; clipping each array separately
    (as some libraries do) would bend it. Exploding gradients in an RNN are rare, huge steps in a good direction, and
    clipping turns them into steps of bounded length.

    Parameters
    ----------
    grads : mapping of str to np.ndarray
        Gradients, modified IN PLACE when clipped.
    max_norm : float
        Largest allowed global norm, > 0.

    Returns
    -------
    float
        The global norm BEFORE clipping (for logging and plots). If it is NaN or infinite, nothing is rescaled
        and the value is returned as is: rescaling cannot repair a NaN, so the caller (the trainer) decides
        whether to skip the step or stop.

    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm}")
    norm = global_norm(grads)
    if norm > max_norm and math.isfinite(norm):
        scale = max_norm / (norm + _CLIP_EPS)
        for g in grads.values():
            g *= scale
    return norm

"""Which rows run at each step: the bookkeeping of variable-length batches for the fast paths.

A batch of N captions sorted longest first, padded to T steps: at step t only the first n_t = #{n : lengths[n] > t}
captions are still running (`active_counts`). The fast loops of `fast.py` and `fast_attention.py` work on those
rows only; the caption model's packed path (`fast_packed.py`) goes further and stores only the K = Σ_t n_t
positions that run, time-major, as PyTorch's PackedSequence does (`Packing`, `pack`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["active_counts", "Packing", "pack"]


def active_counts(lengths: np.ndarray | None, N: int, T: int) -> np.ndarray:
    """(T,) how many of N sequences, sorted longest first, are still running at step t: #{n : lengths[n] > t}.

    Without lengths every sequence runs for all T steps. Used by `pack` and by the fast loops of `fast.py` and
    `fast_attention.py`.
    """
    if lengths is None:
        return np.full(T, N, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (N,) or np.any(lengths < 0) or np.any(lengths > T):
        raise ValueError(f"lengths must be (N,) = ({N},) integers in [0, {T}], got {lengths!r}")
    if np.any(np.diff(lengths) > 0):
        raise ValueError("lengths must be sorted longest first (sort the batch by length before the recurrence)")
    return (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)


class Packing(NamedTuple):
    """The packed layout of a batch sorted longest first (see `pack`).

    batch_sizes: (T,) n_t, sequences still running at step t (non-increasing)
    offsets: (T+1,) step t's rows are offsets[t] … offsets[t+1]−1; offsets[T] = K, all positions that run
    index: (K,) for every packed row, its flat position n·T + t in an (N, T) array (to gather words, targets)
    """

    batch_sizes: np.ndarray
    offsets: np.ndarray
    index: np.ndarray


def pack(lengths: np.ndarray, T: int) -> Packing:
    """The packed layout of N sequences of `lengths` (sorted longest first, each in [0, T])."""
    lengths = np.asarray(lengths)
    N = lengths.shape[0]
    batch_sizes = active_counts(lengths, N, T)
    offsets = np.concatenate([[0], np.cumsum(batch_sizes)])
    t_idx, n_idx = np.nonzero(lengths[None, :] > np.arange(T)[:, None])  # row-major over (T, N): time-major
    return Packing(batch_sizes, offsets, n_idx * T + t_idx)

"""The four special tokens, and the rules of which tokens a model reads, predicts and may write — defined once.

Every caption is encoded as

    <START> w1 w2 … wk <END> <NULL> <NULL> …
       1    ·  ·      ·   2     0      0

    <NULL>=0   padding after <END>; never read as a word, never predicted, masked out of every loss
    <START>=1  the first input of every caption; always given, so never predicted
    <END>=2    the last target of every caption: the model learns when to stop
    <UNK>=3    a word seen too rarely in training to have a vector of its own

A model reads captions[:, :-1] and predicts captions[:, 1:] (the same row shifted by one). Which of those target
positions count (`target_mask`), which tokens have a probability at all (`predictable_tokens`) and which a decoder
may write into a caption (`decodable_tokens`) are the three rules below; every model, loss and decoder uses them.

This module imports nothing: it is the bottom of the package.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SPECIAL_TOKENS",
    "NULL",
    "START",
    "END",
    "UNK",
    "target_mask",
    "predictable_tokens",
    "decodable_tokens",
]

SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")
NULL, START, END, UNK = 0, 1, 2, 3


def target_mask(targets: np.ndarray) -> np.ndarray:
    """Which target positions count in a loss: (N, T) int -> (N, T) bool.

    A position counts when its target is a real word or the caption's first <END>. Everything after the first
    <END> — <NULL> padding or any other token — is masked, so what follows a caption's end can never change the
    loss or the gradients.
    """
    targets = np.asarray(targets)
    is_end = targets == END
    ended_before = (np.cumsum(is_end, axis=-1) - is_end) > 0  # an <END> occurred strictly earlier in the row
    return (targets != NULL) & ~ended_before


def predictable_tokens(vocab_size: int) -> np.ndarray:
    """(V,) bool: the tokens that have a probability. Every token except <NULL> (padding) and <START> (given)."""
    if vocab_size < len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must count the {len(SPECIAL_TOKENS)} special tokens at least, got {vocab_size}")
    allowed = np.ones(vocab_size, dtype=bool)
    allowed[[NULL, START]] = False
    return allowed


def decodable_tokens(vocab_size: int, allow_unk: bool = False) -> np.ndarray:
    """(V,) bool: the tokens a decoder may write. The predictable ones, without <UNK> unless `allow_unk`
    ("a <UNK> on a <UNK>" is no caption)."""
    allowed = predictable_tokens(vocab_size)
    if not allow_unk:
        allowed[UNK] = False
    return allowed

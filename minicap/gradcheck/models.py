"""Gradient checks of whole models: every model's loss (caption models with both cells and with dropout, the
language model, the attention captioner with and without its regulariser, the regressors) against centred
differences on both paths, and the fast path equal to the readable one, output by output."""

from __future__ import annotations

import numpy as np

from minicap import nn
from minicap.gradcheck.layers import sequence_inputs
from minicap.gradcheck.numerical import (
    FORWARD_EQUAL,
    GRADIENT_EQUAL,
    REFERENCE_DTYPE,
    SEQUENCE_MAX_REL,
    CheckResult,
    EqualityResult,
    compare,
    equal,
    numerical_gradient,
)
from minicap.models import AttentionCaptionModel, CaptionModel, LSTMLanguageModel, SequenceModel, SequenceRegressor
from minicap.tokens import END, START


def small_caption_batch(
    seed: int = 0, V: int = 11, F: int = 7, N: int = 3, T: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (features (N, F), captions (N, T+1)) with <START>, <END> and <NULL> padding in place."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N, F))
    captions = np.zeros((N, T + 1), dtype=np.int64)
    for n, length in enumerate(rng.integers(1, T, size=N)):  # caption lengths 1..T−1 words
        captions[n, 0] = START
        captions[n, 1 : length + 1] = rng.integers(4, V, size=length)
        captions[n, length + 1] = END  # then <NULL> = 0 padding
    return features, captions


def _model_batches(seed: int = 0) -> list[tuple[str, SequenceModel, tuple[np.ndarray, ...]]]:
    """Every model of the contract, small, in float64, with one deterministic batch each."""
    features, captions = small_caption_batch(seed)
    rng = np.random.default_rng(seed + 1)
    words = captions[:, :-1]
    targets = captions[:, 1:]
    x = rng.standard_normal((3, 6, 2))
    y = rng.standard_normal(3)
    out: list[tuple[str, SequenceModel, tuple[np.ndarray, ...]]] = []
    for cell in ("lstm", "rnn"):
        model = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, cell=cell, dtype=np.float64)
        out.append((f"CaptionModel({cell})", model, (features, captions)))
    lm = LSTMLanguageModel(11, wordvec_size=4, hidden_size=5, dtype=np.float64)
    state = rng.standard_normal((2, 3, 5))
    out.append(("LSTMLanguageModel", lm, (words, targets, targets != 0, state[0], state[1])))
    annotations = rng.standard_normal((3, 4, 7))  # N = 3 photos, L = 4 locations, F = 7
    for reg in (0.0, 1.5):  # without and with the doubly stochastic regulariser
        attention = AttentionCaptionModel(
            11, 7, wordvec_size=4, hidden_size=5, attention_size=3, reg=reg, dtype=np.float64
        )
        out.append((f"AttentionCaptionModel(λ={reg:g})", attention, (annotations, captions)))
    deep = AttentionCaptionModel(
        11, 7, wordvec_size=4, hidden_size=5, attention_size=3, reg=1.5, dtype=np.float64, deep_output=True
    )
    out.append(("AttentionCaptionModel(λ=1.5, deep output)", deep, (annotations, captions)))
    for cell in ("lstm", "gru", "rnn"):
        regressor = SequenceRegressor(2, 5, cell=cell, init="xavier", dtype=np.float64)
        out.append((f"SequenceRegressor({cell})", regressor, (x, y)))
    return out


def _has_fast_path(model: SequenceModel) -> bool:
    """Every model runs `minicap.nn.fast` when `model.fast` is set, except the GRU regressor: there is no fast GRU."""
    return not (isinstance(model, SequenceRegressor) and model.cell == "gru")


def check_models(fast: bool = False, seed: int = 0) -> list[CheckResult]:
    """The whole loss of every model against centred differences, on the readable or the fast path (models
    without a fast path are checked once, on the readable one)."""
    results = []
    for label, model, batch in _model_batches(seed):
        if fast and not _has_fast_path(model):
            continue
        model.fast = fast
        _, grads = model.loss(*batch)
        reference = model.astype(REFERENCE_DTYPE)
        batch_ref = tuple(a.astype(REFERENCE_DTYPE) if a.dtype.kind == "f" else a for a in batch)

        def loss(reference: SequenceModel = reference, batch: tuple = batch_ref) -> np.floating:
            return reference.loss(*batch, backward=False)[0]

        for name in sorted(model.params):
            numeric = numerical_gradient(loss, reference.params[name])
            function = f"{label}{' [fast]' if fast else ''}"
            results.append(compare(function, name, grads[name], numeric, SEQUENCE_MAX_REL))
    return results


def check_fast_equals_reference(seed: int = 0) -> list[EqualityResult]:
    """`minicap.nn.fast` against the readable loops: every output and gradient, with and without lengths, from a
    carried state (random h0, c0) and with gradients arriving at the final state (the LSTM's dh_last, dc_last);
    then the vocabulary loss and every whole model."""
    rng = np.random.default_rng(seed)
    results: list[EqualityResult] = []
    for cell in ("rnn", "lstm"):
        for lengths in (None, np.array([6, 6, 4, 4, 1, 0])):
            inputs = sequence_inputs(cell, rng, N=6)
            name = f"{cell}_forward/backward" + ("" if lengths is None else " (lengths)")
            forward = {"rnn": (nn.rnn_forward, nn.fast.rnn_forward), "lstm": (nn.lstm_forward, nn.fast.lstm_forward)}
            backward = {
                "rnn": (nn.rnn_backward, nn.fast.rnn_backward),
                "lstm": (nn.lstm_backward, nn.fast.lstm_backward),
            }
            (h_ref, cache_ref), (h_fast, cache_fast) = (f(**inputs, lengths=lengths) for f in forward[cell])
            results.append(equal(name, "h", h_fast, h_ref, FORWARD_EQUAL))
            results.append(equal(name, "h_last", cache_fast.h_last, cache_ref.h_last, FORWARD_EQUAL))
            dh = rng.standard_normal(h_ref.shape)
            extra = (
                ()
                if cell == "rnn"
                else (rng.standard_normal(h_ref[:, 0].shape), rng.standard_normal(h_ref[:, 0].shape))
            )
            if cell == "lstm":
                results.append(equal(name, "c_last", cache_fast.c_last, cache_ref.c_last, FORWARD_EQUAL))
            g_ref = backward[cell][0](dh, cache_ref, *extra)
            g_fast = backward[cell][1](dh, cache_fast, *extra)
            for field in g_ref._fields:
                results.append(equal(name, field, getattr(g_fast, field), getattr(g_ref, field), GRADIENT_EQUAL))
    h = rng.standard_normal((4, 5, 6))
    targets = rng.integers(0, 9, size=(4, 5))
    mask = rng.random((4, 5)) > 0.3
    W, b = rng.standard_normal((6, 9)), rng.standard_normal(9)
    loss_ref, g_ref = nn.words_loss(h, targets, mask, W, b, 0.25)
    loss_fast, g_fast = nn.fast.words_loss(h, targets, mask, W, b, 0.25)
    assert g_ref is not None and g_fast is not None
    results.append(equal("words_loss", "loss", loss_fast, loss_ref, FORWARD_EQUAL))
    for field, a, r in zip(("h", "W_vocab", "b_vocab"), g_fast, g_ref, strict=True):
        results.append(equal("words_loss", field, a, r, GRADIENT_EQUAL))
    for label, model, batch in _model_batches(seed):
        if not _has_fast_path(model):
            continue
        model.fast = False
        loss_ref, grads_ref = model.loss(*batch)
        model.fast = True
        loss_fast, grads_fast = model.loss(*batch)
        results.append(equal(label, "loss", loss_fast, loss_ref, FORWARD_EQUAL))
        for name in sorted(grads_ref):
            results.append(equal(label, name, grads_fast[name], grads_ref[name], GRADIENT_EQUAL))
    for which in DROPOUT_MODELS:  # with dropout: the same generator state gives both paths the same masks
        label, model, (inputs, captions) = _dropout_models(which)
        model.fast = False
        loss_ref, grads_ref = model.loss(inputs, captions, rng=np.random.default_rng(DROPOUT_SEED))
        model.fast = True
        loss_fast, grads_fast = model.loss(inputs, captions, rng=np.random.default_rng(DROPOUT_SEED))
        results.append(equal(label, "loss", loss_fast, loss_ref, FORWARD_EQUAL))
        for name in sorted(grads_ref):
            results.append(equal(label, name, grads_fast[name], grads_ref[name], GRADIENT_EQUAL))
    return results


DROPOUT_SEED = 7  # the generator seed that fixes the caption model's dropout masks in the checks below


def _dropout_models(which: str) -> tuple[str, SequenceModel, tuple[np.ndarray, np.ndarray]]:
    """A small float64 captioner with dropout 0.3 and its batch: CaptionModel(cell `which`), or the attention one
    (which "attention", or "attention-deep" with the deep output layer)."""
    features, captions = small_caption_batch()
    if which.startswith("attention"):
        annotations = np.random.default_rng(1).standard_normal((3, 4, 7))  # N = 3, L = 4, F = 7
        deep = which == "attention-deep"
        model = AttentionCaptionModel(
            11, 7, wordvec_size=4, hidden_size=5, attention_size=3, reg=1.5, dtype=np.float64, dropout=0.3,
            deep_output=deep,
        )  # fmt: skip
        return f"AttentionCaptionModel(λ=1.5{', deep output' if deep else ''}) dropout", model, (annotations, captions)
    model = CaptionModel(11, 7, wordvec_size=4, hidden_size=5, cell=which, dtype=np.float64, dropout=0.3)
    return f"CaptionModel({which}) dropout", model, (features, captions)


# the captioners with dropout: both mean-pooled cells, attention without and with the deep output layer
DROPOUT_MODELS = ("lstm", "rnn", "attention", "attention-deep")


def check_caption_dropout(fast: bool = False) -> list[CheckResult]:
    """The captioners' TRAINING loss with dropout (rate 0.3 on the word vectors and the decoder's outputs), the
    masks fixed by giving every evaluation a fresh generator with the same seed (`dropout_mask` draws in float32,
    so the float64 model and its extended-precision copy get the very same masks)."""
    results = []
    for which in DROPOUT_MODELS:
        label, model, (inputs, captions) = _dropout_models(which)
        model.fast = fast
        _, grads = model.loss(inputs, captions, rng=np.random.default_rng(DROPOUT_SEED))
        reference = model.astype(REFERENCE_DTYPE)
        inputs_ref = inputs.astype(REFERENCE_DTYPE)

        def loss(
            reference: SequenceModel = reference, inputs: np.ndarray = inputs_ref, captions: np.ndarray = captions
        ) -> np.floating:
            return reference.loss(inputs, captions, backward=False, rng=np.random.default_rng(DROPOUT_SEED))[0]

        for name in sorted(model.params):
            numeric = numerical_gradient(loss, reference.params[name])
            results.append(compare(f"{label}{' [fast]' if fast else ''}", name, grads[name], numeric, SEQUENCE_MAX_REL))
    return results

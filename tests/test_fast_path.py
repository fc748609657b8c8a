"""The fast path (`minicap.nn.fast`) computes the same numbers as the readable loops (`minicap.nn`).

In float64, on random inputs: every forward output (h, h_last, c_last) within FORWARD_EQUAL = 1e-12 and every
gradient (dx, dh0, dc0, dWx, dWh, db) within GRADIENT_EQUAL = 1e-10, max absolute difference — with and without
lengths (packed: sorted longest first, a sequence of length 0 included), from a carried state (random h0, c0), with
gradients arriving at the final state (the LSTM's dh_last, dc_last), over truncated-BPTT chunks, for the vocabulary
loss and for every model (`model.fast` True against False). Only rounding may differ: the same maths in another
order. A negative control shows the comparison can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from minicap import gradcheck, nn
from minicap.gradcheck import FORWARD_EQUAL, GRADIENT_EQUAL, small_caption_batch
from minicap.models import CaptionModel, LSTMLanguageModel, SequenceModel, SequenceRegressor
from minicap.tokens import END, START

N, T, D, H = 7, 9, 5, 6
LENGTHS = np.array([9, 9, 7, 4, 4, 1, 0])  # packed: longest first, one sequence that never starts


def max_abs_diff(fast, reference) -> float:
    fast, reference = np.asarray(fast), np.asarray(reference)
    assert fast.shape == reference.shape, (fast.shape, reference.shape)
    return float(np.max(np.abs(fast.astype(np.float64) - reference.astype(np.float64)), initial=0.0))


def assert_equal_within(differences: dict[str, tuple[float, float]]) -> None:
    """differences: output name -> (max |fast − reference|, threshold)."""
    assert differences
    too_far = {name: diff for name, (diff, tol) in differences.items() if not diff <= tol}
    assert not too_far, f"fast != reference: {too_far}"


def sequence_inputs(cell: str, seed: int, dtype=np.float64) -> dict[str, np.ndarray]:
    """Random inputs with a carried state: h0 (and c0) are not zeros."""
    rng = np.random.default_rng(seed)
    G = 4 * H if cell == "lstm" else H
    inputs = {
        "x": rng.standard_normal((N, T, D)),
        "h0": rng.standard_normal((N, H)),
        "Wx": rng.standard_normal((D, G)) * 0.5,
        "Wh": rng.standard_normal((H, G)) * 0.5,
        "b": rng.standard_normal(G) * 0.5,
    }
    if cell == "lstm":
        inputs["c0"] = rng.standard_normal((N, H))
    return {k: v.astype(dtype) for k, v in inputs.items()}


def sequence_differences(
    cell: str, lengths: np.ndarray | None, seed: int = 0, into_final_state: bool = False
) -> dict[str, tuple[float, float]]:
    """Run both paths forward and backward on the same inputs; the max |difference| of every output and gradient.

    into_final_state: the LSTM also gets gradients dh_last, dc_last arriving at its final state (as from a next
    chunk that is not truncated)."""
    inputs = sequence_inputs(cell, seed)
    rng = np.random.default_rng(seed + 100)
    paths = {}
    for name, seq in (("reference", nn), ("fast", nn.fast)):
        forward = seq.lstm_forward if cell == "lstm" else seq.rnn_forward
        paths[name] = forward(**inputs, lengths=lengths)
    (h_ref, cache_ref), (h_fast, cache_fast) = paths["reference"], paths["fast"]
    differences = {
        "h": (max_abs_diff(h_fast, h_ref), FORWARD_EQUAL),
        "h_last": (max_abs_diff(cache_fast.h_last, cache_ref.h_last), FORWARD_EQUAL),
    }
    np.testing.assert_array_equal(h_ref[:, -1], cache_ref.h_last)  # (the last output IS the final state)
    dh = rng.standard_normal(h_ref.shape)  # also after a sequence's end: its carried state reaches the loss
    if cell == "lstm":
        differences["c_last"] = (max_abs_diff(cache_fast.c_last, cache_ref.c_last), FORWARD_EQUAL)
        final = (rng.standard_normal((N, H)), rng.standard_normal((N, H))) if into_final_state else (None, None)
        g_ref = nn.lstm_backward(dh, cache_ref, *final)
        g_fast = nn.fast.lstm_backward(dh, cache_fast, *final)
    else:
        g_ref = nn.rnn_backward(dh, cache_ref)
        g_fast = nn.fast.rnn_backward(dh, cache_fast)
    assert type(g_fast) is type(g_ref)  # the same named gradients: RNNGrads / LSTMGrads
    for field in g_ref._fields:
        differences[field] = (max_abs_diff(getattr(g_fast, field), getattr(g_ref, field)), GRADIENT_EQUAL)
    return differences


# ---------------------------------------------------------------------------------------- sequence functions


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["unpacked", "packed"])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sequence_functions_are_equal(cell, lengths, seed):
    differences = sequence_differences(cell, lengths, seed)
    expected = {"h", "h_last", "dx", "dh0", "dWx", "dWh", "db"} | ({"c_last", "dc0"} if cell == "lstm" else set())
    assert set(differences) == expected
    assert_equal_within(differences)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["unpacked", "packed"])
def test_lstm_with_gradients_arriving_at_the_final_state(lengths):
    differences = sequence_differences("lstm", lengths, seed=3, into_final_state=True)
    assert_equal_within(differences)
    # Those gradients really arrive: without them dh0 and dc0 differ.
    inputs = sequence_inputs("lstm", 3)
    _, cache = nn.fast.lstm_forward(**inputs, lengths=lengths)
    zero = np.zeros((N, T, H))
    with_final = nn.fast.lstm_backward(zero, cache, np.ones((N, H)), np.ones((N, H)))
    assert np.abs(with_final.dh0).max() > 1e-3 and np.abs(with_final.dc0).max() > 1e-3
    assert np.all(nn.fast.lstm_backward(zero, cache).dh0 == 0.0)
    if lengths is not None:  # a sequence of length 0 passes its final-state gradient straight to its start
        np.testing.assert_array_equal(with_final.dh0[-1], np.ones(H))
        np.testing.assert_array_equal(with_final.dc0[-1], np.ones(H))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_zero_initial_cell_and_all_lengths_full(cell):
    """c0 = None (the captioner's zero cell) and lengths that are all T: the same as no lengths, on both paths."""
    inputs = sequence_inputs(cell, 4)
    inputs.pop("c0", None)
    full = np.full(N, T)
    for seq in (nn, nn.fast):
        forward = seq.lstm_forward if cell == "lstm" else seq.rnn_forward
        h_none, _ = forward(**inputs)
        h_full, _ = forward(**inputs, lengths=full)
        np.testing.assert_array_equal(h_full, h_none)
    assert_equal_within(sequence_differences(cell, full, seed=4))


def _truncated(seq, inputs: dict[str, np.ndarray], dh: np.ndarray, chunk: int, cell: str):
    """Truncated BPTT written with `seq`'s sequence functions: forward chunks carrying the state as values,
    backward each chunk on its own; the parameter gradients summed over the chunks."""
    h, c = inputs["h0"], inputs.get("c0")
    outputs, grads = [], []
    for start in range(0, T, chunk):
        sl = slice(start, start + chunk)
        if cell == "lstm":
            out, cache = seq.lstm_forward(inputs["x"][:, sl], h, inputs["Wx"], inputs["Wh"], inputs["b"], c0=c)
            grads.append(seq.lstm_backward(dh[:, sl], cache))
            h, c = cache.h_last.copy(), cache.c_last.copy()
        else:
            out, cache = seq.rnn_forward(inputs["x"][:, sl], h, inputs["Wx"], inputs["Wh"], inputs["b"])
            grads.append(seq.rnn_backward(dh[:, sl], cache))
            h = cache.h_last.copy()
        outputs.append(out)
    summed = {k: sum(getattr(g, k) for g in grads) for k in ("dWx", "dWh", "db")}
    return np.concatenate(outputs, axis=1), (h, c), np.concatenate([g.dx for g in grads], axis=1), summed, grads[0]


@pytest.mark.parametrize("chunk", [1, 4, 9])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_truncated_bptt_over_chunks_carrying_the_state(cell, chunk):
    inputs = sequence_inputs(cell, 5)
    dh = np.random.default_rng(6).standard_normal((N, T, H))
    h_ref, state_ref, dx_ref, summed_ref, first_ref = _truncated(nn, inputs, dh, chunk, cell)
    h_fast, state_fast, dx_fast, summed_fast, first_fast = _truncated(nn.fast, inputs, dh, chunk, cell)
    differences = {
        "h": (max_abs_diff(h_fast, h_ref), FORWARD_EQUAL),
        "h_last": (max_abs_diff(state_fast[0], state_ref[0]), FORWARD_EQUAL),
        "dx": (max_abs_diff(dx_fast, dx_ref), GRADIENT_EQUAL),
        "dh0": (max_abs_diff(first_fast.dh0, first_ref.dh0), GRADIENT_EQUAL),
        **{k: (max_abs_diff(summed_fast[k], summed_ref[k]), GRADIENT_EQUAL) for k in summed_ref},
    }
    if cell == "lstm":
        differences["c_last"] = (max_abs_diff(state_fast[1], state_ref[1]), FORWARD_EQUAL)
        differences["dc0"] = (max_abs_diff(first_fast.dc0, first_ref.dc0), GRADIENT_EQUAL)
        # ... and the library's own truncated BPTT (the readable path) is the same computation.
        h_lib, caches = nn.lstm_forward_truncated(
            inputs["x"], inputs["h0"], inputs["c0"], inputs["Wx"], inputs["Wh"], inputs["b"], chunk
        )
        lib = nn.lstm_backward_truncated(dh, caches)
        differences["library h"] = (max_abs_diff(h_fast, h_lib), FORWARD_EQUAL)
        for k in ("dWx", "dWh", "db"):
            differences[f"library {k}"] = (max_abs_diff(summed_fast[k], getattr(lib, k)), GRADIENT_EQUAL)
    assert_equal_within(differences)
    # Carrying the state makes the chunked forward the whole-sequence forward.
    forward = nn.fast.lstm_forward if cell == "lstm" else nn.fast.rnn_forward
    np.testing.assert_allclose(h_fast, forward(**inputs)[0], rtol=0, atol=FORWARD_EQUAL)


# ------------------------------------------------------------------------------------- the vocabulary loss


@pytest.mark.parametrize("weight", ["per caption", "per token"])
@pytest.mark.parametrize("masking", ["holes", "a row with none", "none counted", "all counted"])
def test_words_loss_is_equal(masking, weight):
    rng = np.random.default_rng(7)
    V = 13
    h = rng.standard_normal((N, T, H))
    targets = rng.integers(0, V, size=(N, T))
    W, b = rng.standard_normal((H, V)), rng.standard_normal(V)
    mask = {
        "holes": rng.random((N, T)) > 0.3,
        "a row with none": np.arange(N)[:, None] != np.full((N, T), 2),
        "none counted": np.zeros((N, T), bool),
        "all counted": np.ones((N, T), bool),
    }[masking]
    w = 1.0 / N if weight == "per caption" else 1.0 / max(int(mask.sum()), 1)
    loss_ref, g_ref = nn.words_loss(h, targets, mask, W, b, w)
    loss_fast, g_fast = nn.fast.words_loss(h, targets, mask, W, b, w)
    differences = {"loss": (max_abs_diff(loss_fast, loss_ref), FORWARD_EQUAL)}
    for name, fast, ref in zip(("dh", "dW_vocab", "db_vocab"), g_fast, g_ref, strict=True):
        differences[name] = (max_abs_diff(fast, ref), GRADIENT_EQUAL)
    assert_equal_within(differences)
    assert np.all(g_fast[0][~mask] == 0.0) and np.all(g_ref[0][~mask] == 0.0)  # exactly 0 where nothing counts
    for words_loss in (nn.words_loss, nn.fast.words_loss):
        loss_only, nothing = words_loss(h, targets, mask, W, b, w, backward=False)
        assert nothing is None and loss_only == pytest.approx(float(loss_ref), rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------- the caption model's packed path


def _pools() -> list:
    """No pool, and pools of 2 and 3 threads that split even these few rows (min_rows=1)."""
    return [None, nn.fast.RowPool(2, min_rows=1), nn.fast.RowPool(3, min_rows=1)]


def test_pack_lays_out_running_positions_time_major():
    packing = nn.fast.pack(LENGTHS, T)
    np.testing.assert_array_equal(packing.batch_sizes, [6, 5, 5, 5, 3, 3, 3, 2, 2])
    np.testing.assert_array_equal(packing.offsets, np.concatenate([[0], np.cumsum(packing.batch_sizes)]))
    assert packing.index.size == LENGTHS.sum()
    np.testing.assert_array_equal(packing.index[:7], [0 * T + 0, 1 * T + 0, 2 * T, 3 * T, 4 * T, 5 * T, 0 * T + 1])
    with pytest.raises(ValueError, match="longest first"):
        nn.fast.pack(LENGTHS[::-1].copy(), T)


@pytest.mark.parametrize("pool", _pools(), ids=["no pool", "2 threads", "3 threads"])
@pytest.mark.parametrize("seed", [0, 1])
def test_packed_lstm_equals_the_reference_loop(seed, pool):
    """lstm_forward/backward_packed against nn.lstm_forward/backward with lengths (carried c0 included): h at
    every packed position, and every gradient when the loss reads only packed positions."""
    inputs = sequence_inputs("lstm", seed)
    h_ref, cache_ref = nn.lstm_forward(**inputs, lengths=LENGTHS)
    packing = nn.fast.pack(LENGTHS, T)
    x_packed = inputs["x"].reshape(N * T, D)[packing.index]
    workspace = nn.fast.Workspace()
    h, cache = nn.fast.lstm_forward_packed(
        x_packed, inputs["h0"], inputs["Wx"], inputs["Wh"], inputs["b"], packing, c0=inputs["c0"],
        workspace=workspace, pool=pool,
    )  # fmt: skip
    differences = {"h": (max_abs_diff(h, h_ref.reshape(N * T, H)[packing.index]), FORWARD_EQUAL)}
    dh_packed = np.random.default_rng(seed + 100).standard_normal(h.shape)
    dh = np.zeros((N * T, H))
    dh[packing.index] = dh_packed  # the reference sees the same gradient, 0 after each sequence's end
    g_ref = nn.lstm_backward(dh.reshape(N, T, H), cache_ref)
    dx, dh0, dc0, dWx, dWh, db = nn.fast.lstm_backward_packed(dh_packed.copy(), cache, workspace, pool)
    differences["dx"] = (max_abs_diff(dx, g_ref.dx.reshape(N * T, D)[packing.index]), GRADIENT_EQUAL)
    for name, fast in (("dh0", dh0), ("dc0", dc0), ("dWx", dWx), ("dWh", dWh), ("db", db)):
        differences[name] = (max_abs_diff(fast, getattr(g_ref, name)), GRADIENT_EQUAL)
    assert_equal_within(differences)
    # dx is exactly 0 at padded positions on the reference path: nothing is lost by not computing them
    assert np.all(np.delete(g_ref.dx.reshape(N * T, D), packing.index, axis=0) == 0.0)


@pytest.mark.parametrize("pool", _pools(), ids=["no pool", "2 threads", "3 threads"])
@pytest.mark.parametrize("block_rows", [1, 4, None])
def test_packed_words_loss_equals_the_reference(block_rows, pool):
    """words_loss_packed in blocks of 1, 4 or the default rows, over pools, against nn.words_loss on the same
    rows (weights 0 where a position does not count, a hole included)."""
    rng = np.random.default_rng(8)
    K, V = 23, 17
    h = rng.standard_normal((K, H))
    targets = rng.integers(0, V, size=K)
    counted = rng.random(K) > 0.2
    W, b = rng.standard_normal((H, V)), rng.standard_normal(V)
    weights = np.where(counted, 1.0 / 5, 0.0)
    loss_ref, g_ref = nn.words_loss(h[None], targets[None], counted[None], W, b, 1.0 / 5)
    loss, g = nn.fast.words_loss_packed(h, targets, weights, W, b, block_rows=block_rows, pool=pool)
    differences = {"loss": (max_abs_diff(loss, loss_ref), FORWARD_EQUAL)}
    for name, fast, ref in zip(("dh", "dW_vocab", "db_vocab"), g, (g_ref[0][0], *g_ref[1:]), strict=True):
        differences[name] = (max_abs_diff(fast, ref), GRADIENT_EQUAL)
    assert_equal_within(differences)
    loss_only, nothing = nn.fast.words_loss_packed(h, targets, weights, W, b, backward=False, block_rows=block_rows)
    assert nothing is None and float(loss_only) == pytest.approx(float(loss_ref), rel=1e-12)


def test_caption_model_packed_with_a_thread_pool_and_a_reused_workspace(monkeypatch):
    """CaptionModel's packed fast path with a 2-thread pool splitting every step equals the readable path;
    its workspace, reused by the next batch (other lengths, other N), never leaks into returned gradients."""
    monkeypatch.setattr(nn.fast_packed, "_shared", [nn.fast_packed.RowPool(2, min_rows=1)])
    fast = CaptionModel(vocab_size=11, feature_size=7, wordvec_size=5, hidden_size=4, dtype=np.float64, seed=0)
    readable = fast.copy()
    readable.fast = False
    batches = [_caption_batch(0), _caption_batch(1)]
    batches[0][1][1, 3] = 0  # a hole: a <NULL> target inside a caption, masked but inside the packed positions
    batches.append((batches[1][0][:4], batches[1][1][:4]))  # fewer captions: smaller packed arrays
    empty = np.zeros_like(batches[0][1][:3])
    empty[:, 0] = START
    batches.append((batches[0][0][:3], empty))  # nothing to predict at all: K = 0 packed positions
    first_loss, first_grads = fast.loss(*batches[0])
    kept = {k: v.copy() for k, v in first_grads.items()}
    for features, captions in batches:
        loss_f, grads_f = fast.loss(features, captions)
        loss_r, grads_r = readable.loss(features, captions)
        differences = {"loss": (max_abs_diff(loss_f, loss_r), FORWARD_EQUAL)}
        differences |= {k: (max_abs_diff(grads_f[k], grads_r[k]), GRADIENT_EQUAL) for k in grads_r}
        assert_equal_within(differences)
    for k, v in kept.items():  # the first call's gradients are untouched by the later calls
        np.testing.assert_array_equal(first_grads[k], v)
    assert fast._workspace.nbytes() > 0


# ---------------------------------------------------------------------------------------------- the models


def _caption_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Captions of every length, in no order, including a row whose first target is <END>, a row that ends
    at the last position (no padding) and a row with no target that counts (length 0 on the packed path)."""
    features, captions = small_caption_batch(seed, N=6, T=7)
    captions[0, 1:] = 0
    captions[0, 1] = END  # "<START> <END>": one counted target
    captions[1, 0] = START
    captions[1, 1:-1] = np.arange(4, 10)
    captions[1, -1] = END  # the full length
    captions[2, 1:] = 0  # "<START>" and padding only: nothing to predict
    return features, captions


def _models_and_batches(seed: int) -> list[tuple[str, SequenceModel, tuple]]:
    rng = np.random.default_rng(seed + 10)
    features, captions = _caption_batch(seed)
    out: list[tuple[str, SequenceModel, tuple]] = []
    for cell in ("lstm", "rnn"):
        model = CaptionModel(11, features.shape[1], wordvec_size=4, hidden_size=H, cell=cell, dtype=np.float64)
        model.params["b"] += rng.standard_normal(model.params["b"].shape) * 0.3
        out.append((f"CaptionModel({cell})", model, (features, captions)))
    lm = LSTMLanguageModel(11, wordvec_size=4, hidden_size=H, dtype=np.float64, seed=seed)
    words_in = rng.integers(1, 11, size=(5, 8))
    targets = rng.integers(2, 11, size=(5, 8))
    mask = rng.random((5, 8)) > 0.2
    h0, c0 = rng.standard_normal((2, 5, H))  # a carried state, as in truncated BPTT
    out.append(("LSTMLanguageModel", lm, (words_in, targets, mask, h0, c0)))
    x, y = rng.random((5, 8, 2)), rng.random(5) * 2
    for cell in ("lstm", "rnn"):
        regressor = SequenceRegressor(2, H, cell=cell, init="xavier", dtype=np.float64, seed=seed)
        out.append((f"SequenceRegressor({cell})", regressor, (x, y)))
    return out


def model_differences(model: SequenceModel, batch: tuple) -> dict[str, tuple[float, float]]:
    model.fast = False
    loss_ref, grads_ref = model.loss(*batch)
    model.fast = True
    loss_fast, grads_fast = model.loss(*batch)
    assert set(grads_fast) == set(grads_ref) == set(model.params)
    differences = {"loss": (max_abs_diff(loss_fast, loss_ref), FORWARD_EQUAL)}
    for name in grads_ref:
        differences[name] = (max_abs_diff(grads_fast[name], grads_ref[name]), GRADIENT_EQUAL)
    return differences


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "label",
    [
        "CaptionModel(lstm)",
        "CaptionModel(rnn)",
        "LSTMLanguageModel",
        "SequenceRegressor(lstm)",
        "SequenceRegressor(rnn)",
    ],
)
def test_every_model_loss_and_gradients_are_equal(label, seed):
    model, batch = next((m, b) for name, m, b in _models_and_batches(seed) if name == label)
    assert model.fast is True  # the default: training runs the fast path
    assert_equal_within(model_differences(model, batch))
    model.fast = False
    assert model.sequence is nn
    model.fast = True
    assert model.sequence is nn.fast


def test_the_language_model_state_is_equal_on_both_paths():
    _, lm, batch = _models_and_batches(0)[2]
    lm.fast = False
    _, _, state_ref = lm.loss_and_state(*batch)
    score_ref, _ = lm.log_likelihood(*batch)
    lm.fast = True
    _, _, state_fast = lm.loss_and_state(*batch)
    score_fast, _ = lm.log_likelihood(*batch)
    assert max_abs_diff(state_fast.h, state_ref.h) <= FORWARD_EQUAL
    assert max_abs_diff(state_fast.c, state_ref.c) <= FORWARD_EQUAL
    assert score_fast.num_tokens == score_ref.num_tokens
    assert score_fast.log_prob == pytest.approx(score_ref.log_prob, rel=0, abs=FORWARD_EQUAL * 100)


# ------------------------------------------------------------------------------------------------ float32


def _float_arrays(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f":
            yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _float_arrays(item)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["unpacked", "packed"])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_the_fast_path_stays_float32(cell, lengths):
    """No silent upcast: float32 in, float32 buffers, caches, outputs and gradients out — and close to the
    float64 reference."""
    inputs = sequence_inputs(cell, 8, dtype=np.float32)
    forward, backward = (
        (nn.fast.lstm_forward, nn.fast.lstm_backward) if cell == "lstm" else (nn.fast.rnn_forward, nn.fast.rnn_backward)
    )
    h, cache = forward(**inputs, lengths=lengths)
    assert h.dtype == np.float32 and cache.h_last.dtype == np.float32
    arrays = list(_float_arrays(cache))
    assert len(arrays) >= 4 and all(a.dtype == np.float32 for a in arrays)
    dh = np.ones_like(h)
    extra = (np.ones((N, H), np.float32), np.ones((N, H), np.float32)) if cell == "lstm" else ()
    grads = backward(dh, cache, *extra)
    assert all(g.dtype == np.float32 for g in grads)
    reference_forward = nn.lstm_forward if cell == "lstm" else nn.rnn_forward
    h64, _ = reference_forward(**{k: v.astype(np.float64) for k, v in inputs.items()}, lengths=lengths)
    np.testing.assert_allclose(h, h64, rtol=0, atol=1e-5)
    loss, vocab_grads = nn.fast.words_loss(
        h, np.zeros((N, T), int), np.ones((N, T), bool), np.ones((H, 3), np.float32), np.zeros(3, np.float32), 0.5
    )
    assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in vocab_grads)


@pytest.mark.parametrize("label", ["CaptionModel(lstm)", "CaptionModel(rnn)", "LSTMLanguageModel"])
def test_float32_models_on_the_fast_path(label):
    model, batch = next((m, b) for name, m, b in _models_and_batches(0) if name == label)
    single = model.astype(np.float32)
    assert single.fast is True
    loss, grads = single.loss(*batch)
    assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    assert float(loss) == pytest.approx(float(model.loss(*batch)[0]), rel=1e-5)


# ------------------------------------------------------------------------------- the library's own report


def test_gradcheck_proves_fast_equals_reference():
    results = gradcheck.check_fast_equals_reference()
    # + CaptionModel with dropout (both cells), the attention captioner (λ = 0, 1.5), the attention one with dropout,
    # and the attention one with its deep output layer (without and with dropout)
    assert len(results) == 73 + 18 + 34 + 17 + 20 + 20
    assert all(isinstance(r, gradcheck.EqualityResult) for r in results)
    failed = [r.line() for r in results if not r.passed]
    assert not failed, failed
    functions = {r.function for r in results}
    assert {
        "rnn_forward/backward",
        "rnn_forward/backward (lengths)",
        "lstm_forward/backward",
        "lstm_forward/backward (lengths)",
        "words_loss",
        "CaptionModel(lstm)",
        "CaptionModel(rnn)",
        "CaptionModel(lstm) dropout",
        "CaptionModel(rnn) dropout",
        "LSTMLanguageModel",
        "SequenceRegressor(lstm)",
        "SequenceRegressor(rnn)",
        "AttentionCaptionModel(λ=0)",
        "AttentionCaptionModel(λ=1.5)",
        "AttentionCaptionModel(λ=1.5) dropout",
        "AttentionCaptionModel(λ=1.5, deep output)",
        "AttentionCaptionModel(λ=1.5, deep output) dropout",
    } == functions
    for r in results:
        # (words_loss names its gradients after its inputs: its "h" is dh)
        forward_output = r.output in ("h_last", "c_last", "loss") or (r.output == "h" and r.function != "words_loss")
        assert r.threshold == (FORWARD_EQUAL if forward_output else GRADIENT_EQUAL), r.line()


# ----------------------------------------------------------------------------------------- negative control


def test_a_slightly_wrong_fast_path_is_caught(monkeypatch):
    """The comparison can fail: a fast LSTM backward whose dWh is 0.1% off is reported, here and by gradcheck."""
    assert_equal_within(sequence_differences("lstm", LENGTHS))
    original = nn.fast.lstm_backward

    def off(dh, cache, dh_last=None, dc_last=None):
        g = original(dh, cache, dh_last, dc_last)
        return g._replace(dWh=g.dWh * 1.001)

    monkeypatch.setattr(nn.fast, "lstm_backward", off)
    original_packed = nn.fast_packed.lstm_backward_packed  # the caption model's packed LSTM: the same slip

    def off_packed(dh, cache, *args, **kwargs):
        dx, dh0, dc0, dWx, dWh, db = original_packed(dh, cache, *args, **kwargs)
        return dx, dh0, dc0, dWx, dWh * 1.001, db

    monkeypatch.setattr(nn.fast_packed, "lstm_backward_packed", off_packed)
    differences = sequence_differences("lstm", LENGTHS)
    assert differences["dWh"][0] > GRADIENT_EQUAL
    with pytest.raises(AssertionError, match="dWh"):
        assert_equal_within(differences)
    assert_equal_within(sequence_differences("rnn", LENGTHS))  # the untouched RNN still passes

    with pytest.raises(AssertionError, match="Wh"):  # every LSTM model sees it through model.fast
        assert_equal_within(model_differences(*_models_and_batches(0)[0][1:]))
    failed = {(r.function, r.output) for r in gradcheck.check_fast_equals_reference() if not r.passed}
    assert ("lstm_forward/backward", "dWh") in failed and ("lstm_forward/backward (lengths)", "dWh") in failed
    assert ("CaptionModel(lstm)", "Wh") in failed and ("LSTMLanguageModel", "Wh") in failed
    assert not any(function.startswith(("rnn", "CaptionModel(rnn)")) for function, _ in failed)

"""Synthetic sequence tasks that test memory over long time lags, and a small recurrent regressor to learn them.

The adding problem (Hochreiter & Schmidhuber 1997, experiment 4; in the form of Le et al. 2015 and Arjovsky et
al. 2016): each input step carries two numbers,

    channel 0   a value drawn uniformly from [0, 1]
    channel 1   a marker: 1 at exactly two positions (one in each half of the sequence), 0 everywhere else

and the target is the sum of the two marked values. The answer depends on inputs up to T steps before the only
output, so the gradient that teaches the network to keep the first marked value must travel back that far.
Predicting the mean, 1.0, for every sequence scores MSE = Var(u₁ + u₂) = 2 · 1/12 = 1/6 ≈ 0.167: a model near
0.167 has learned nothing about the markers.

`SequenceRegressor` reads a sequence with an LSTM, a GRU or a vanilla tanh RNN and predicts one number from the
LAST hidden state. Like `CaptionModel` it is composed only of `minicap.nn` functions and keeps its parameters in a
flat dict (names below), gradients in a dict with the same keys:

    Wx (D, G), Wh (H, G), b (G,)     recurrent cell, G = 4H for the LSTM (gate order i, f, o, g), 3H for the GRU
                                     (r, z, n), H for the RNN
    b_hn (H,)                        the GRU only: the candidate's hidden-side bias (see minicap.nn.gru)
    W_out (H, 1), b_out (1,)         last hidden state -> prediction

It also measures what lesson 01 is about: how much gradient reaches each step back in time, what each step
contributes to the recurrent weights' gradient, how much each input moves the prediction, and the quantities that
predict the decay (the recurrent matrix's spectrum and tanh′ for the RNN, the gates for the LSTM and the GRU).

Letters: N batch, T time steps, D input size (2 for the adding problem), H hidden size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from minicap import nn
from minicap.dataset import Dataset
from minicap.models.base import SequenceModel, State

__all__ = [
    "adding_problem",
    "AddingProblem",
    "ADDING_BASELINE_MSE",
    "INITS",
    "CELLS",
    "SequenceRegressor",
    "StateGradientNorms",
    "Trajectory",
    "fit_decay_factor",
]

ADDING_BASELINE_MSE = 1.0 / 6.0  # MSE of always predicting 1.0 = Var(u1 + u2) for u1, u2 ~ U[0, 1]

INITS = ("uniform", "xavier", "orthogonal")
CELLS = ("lstm", "gru", "rnn")
GATE_BLOCKS = {"lstm": 4, "gru": 3, "rnn": 1}  # blocks of H columns in Wx, Wh and b


# ----------------------------------------------------------------------------------------- the adding problem


def adding_problem(
    n: int, T: int, rng: np.random.Generator, dtype: npt.DTypeLike = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """n sequences of the adding problem, each T steps long.

    Returns x: (n, T, 2) — channel 0 values ~ U[0, 1], channel 1 the marker (exactly one 1 in steps [0, T//2)
    and one in [T//2, T)) — and y: (n,), the sum of the two marked values. Both of the given dtype.
    """
    if n < 1:
        raise ValueError(f"adding_problem: n must be ≥ 1, got {n}")
    if T < 2:
        raise ValueError(f"adding_problem: T must be ≥ 2 (one marker in each half), got {T}")
    values = rng.random((n, T))
    first = rng.integers(0, T // 2, size=n)  # one marked position in the first half ...
    second = rng.integers(T // 2, T, size=n)  # ... and one in the second half
    x = np.zeros((n, T, 2), dtype=dtype)
    x[:, :, 0] = values
    rows = np.arange(n)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = (values[rows, first] + values[rows, second]).astype(dtype)
    return x, y


class AddingProblem(Dataset):
    """The adding problem as training data for `minicap.train.Trainer`: fresh sequences for every update.

    One "epoch" is `batches_per_epoch` updates, each on `batch_size` new sequences of length T, drawn from seeds
    that the Trainer's generator picks, so the same TrainConfig.seed gives the same batches (two optimisers can be
    compared on identical data) and a resumed run continues with the same ones. Validation, early stopping and
    `stop_when` happen after every epoch: choose `batches_per_epoch` as "evaluate every k updates".
    """

    def __init__(self, T: int, batches_per_epoch: int) -> None:
        if T < 2 or batches_per_epoch < 1:
            raise ValueError(
                f"need T >= 2 and batches_per_epoch >= 1, got T={T}, batches_per_epoch={batches_per_epoch}"
            )
        self.T, self.steps = int(T), int(batches_per_epoch)
        self._batch_size = 1

    def __len__(self) -> int:
        return self.steps * self._batch_size

    def batches_per_epoch(self, batch_size: int) -> int:
        return self.steps

    def epoch(self, rng: np.random.Generator, batch_size: int) -> list[tuple[int, int]]:
        self._batch_size = batch_size
        return [(int(seed), batch_size) for seed in rng.integers(0, 2**63, size=self.steps)]

    def batch(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        seed, size = key
        return adding_problem(size, self.T, np.random.default_rng(seed))


# ---------------------------------------------------------------------------------------------- the regressor


class StateGradientNorms(NamedTuple):
    """Per-sequence norms of the state gradients, indexed by the distance k = T − t back from the last step.

    h[k, n] = ‖∂L_n/∂h_{T−k}‖ for sequence n, with L_n = (prediction_n − y_n)² its own squared error;
    c[k, n] = ‖∂L_n/∂c_{T−k}‖ for the LSTM's cell (None for the RNN). Both (T+1, N).
    """

    h: np.ndarray
    c: np.ndarray | None


class Trajectory(NamedTuple):
    """What the network computed along a batch of sequences, batch-major (all (N, T, H), step t at index t).

    h      hidden states after each step
    c      the LSTM's cells (None for the GRU and the RNN)
    keep   what the memory path multiplies the old memory by: the LSTM's forget gate f_t, the GRU's 1 − z_t
    write  how much new content enters the memory: the LSTM's input gate i_t, the GRU's update gate z_t
    (keep and write are None for the RNN, which has no gates.)
    """

    h: np.ndarray
    c: np.ndarray | None
    keep: np.ndarray | None
    write: np.ndarray | None


class SequenceRegressor(SequenceModel):
    """An LSTM or tanh RNN over a sequence, an affine readout of its last hidden state, and the MSE loss.

    Parameters
    ----------
    input_size : D (2 for the adding problem).
    hidden_size : H.
    cell : "lstm", "gru" or "rnn". (The GRU always runs the readable loops of `minicap.nn.gru`: there is no fast
        GRU, so `fast` changes nothing for it.)
    init : how the weights start (biases start at 0, except the LSTM's forget gate):
        "uniform"     every weight ~ U[−1/√H, 1/√H] (PyTorch's default for nn.RNN / nn.LSTM / nn.Linear).
                      For the RNN, Wh's entries then have variance 1/(3H), so its spectral radius is ≈ 1/√3.
        "xavier"      Glorot & Bengio (2010) uniform, ±√(6 / (fan_in + fan_out)), for each gate's (D, H) and
                      (H, H) block separately (each gate is its own layer): Wh's entries have variance 1/H, so
                      its spectral radius is ≈ 1.
        "orthogonal"  each gate's (H, H) block of Wh a random orthogonal matrix (Saxe et al. 2014): every
                      singular value exactly 1; Wx and W_out as for "xavier".
    forget_bias : initial bias of the LSTM's forget gate (1 by default: f = σ(1) ≈ 0.73 at the start; Gers et
        al. 2000, Jozefowicz et al. 2015). For the GRU the update gate's bias starts at −forget_bias, so that its
        keep factor 1 − z = σ(forget_bias) starts where the LSTM's f does. Ignored for the RNN.
    dtype : float32 to train (default), float64 (or longdouble) for gradient checks.
    seed : initialisation seed; the same seed gives the same parameters bit for bit.
    """

    def __init__(
        self,
        input_size: int = 2,
        hidden_size: int = 64,
        cell: str = "lstm",
        init: str = "uniform",
        forget_bias: float = 1.0,
        dtype: npt.DTypeLike = np.float32,
        seed: int = 0,
    ) -> None:
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be ≥ 1, got {input_size} and {hidden_size}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.cell = cell
        self.init = init
        self.forget_bias = float(forget_bias)
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        self.params = self._init_params()

    # ------------------------------------------------------------------------------------------- parameters

    def _init_params(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        D, H = self.input_size, self.hidden_size
        gates = GATE_BLOCKS[self.cell]

        def uniform(shape: tuple[int, ...], limit: float) -> np.ndarray:
            return rng.uniform(-limit, limit, size=shape)

        def xavier(fan_in: int, fan_out: int) -> np.ndarray:
            return uniform((fan_in, fan_out), np.sqrt(6.0 / (fan_in + fan_out)))

        def orthogonal(n: int) -> np.ndarray:
            # QR of a Gaussian matrix; multiplying Q's columns by sign(diag R) makes Q uniformly (Haar) distributed.
            q, r = np.linalg.qr(rng.standard_normal((n, n)))
            return q * np.sign(np.diag(r))

        if self.init == "uniform":
            k = 1.0 / np.sqrt(H)
            Wx, Wh, W_out = uniform((D, gates * H), k), uniform((H, gates * H), k), uniform((H, 1), k)
        else:
            Wx = np.concatenate([xavier(D, H) for _ in range(gates)], axis=1)
            block = (lambda: orthogonal(H)) if self.init == "orthogonal" else (lambda: xavier(H, H))
            Wh = np.concatenate([block() for _ in range(gates)], axis=1)
            W_out = xavier(H, 1)
        b = np.zeros(gates * H)
        if self.cell == "lstm":
            b[H : 2 * H] = self.forget_bias  # gate order i, f, o, g
        if self.cell == "gru":
            b[H : 2 * H] = -self.forget_bias  # gate order r, z, n: 1 − z = σ(forget_bias)
        params = {"Wx": Wx, "Wh": Wh, "b": b, "W_out": W_out, "b_out": np.zeros(1)}
        if self.cell == "gru":
            params["b_hn"] = np.zeros(H)
        return {k: v.astype(self.dtype) for k, v in params.items()}

    @property
    def config(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "cell": self.cell,
            "init": self.init,
            "forget_bias": self.forget_bias,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    # --------------------------------------------------------------------------------------------- forward

    def _check_inputs(self, x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[2] != self.input_size or x.shape[1] < 1:
            raise ValueError(f"x must have shape (N, T, {self.input_size}) with T ≥ 1, got {x.shape}")
        x = x.astype(self.dtype, copy=False)
        if y is not None:
            y = np.asarray(y)
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},) to match x {x.shape}, got {y.shape}")
            y = y.astype(self.dtype, copy=False)
        return x, y

    def _recurrence(self, x: np.ndarray, readable: bool = False) -> tuple[np.ndarray, Any]:
        """Run the cell over x (N, T, D) from h0 = 0 (and c0 = 0): h (N, T, H) and the cache.

        readable: use the loops of `minicap.nn` whatever `self.fast` says (their caches keep every step's own
        cache, which the gradient-through-time measurements read). The GRU always runs them."""
        p = self.params
        seq = nn if readable else self.sequence
        h0 = self.initial_state(x.shape[0])
        if self.cell == "gru":
            return nn.gru_forward(x, h0.h, p["Wx"], p["Wh"], p["b"], p["b_hn"])
        if self.cell == "lstm":
            return seq.lstm_forward(x, h0.h, p["Wx"], p["Wh"], p["b"], c0=h0.c)
        return seq.rnn_forward(x, h0.h, p["Wx"], p["Wh"], p["b"])

    def initial_state(self, N: int) -> State:
        """Zeros (N, H): the state before the first step."""
        zeros = np.zeros((N, self.hidden_size), dtype=self.dtype)
        return State(zeros, zeros.copy() if self.cell == "lstm" else None)

    def step(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Read one input step x (N, D): the prediction (N,) the readout would make now, and the new state."""
        p = self.params
        x = np.asarray(x).astype(self.dtype, copy=False)
        if self.cell == "lstm":
            assert state.c is not None
            h, c, _ = nn.lstm_step_forward(x, state.h, state.c, p["Wx"], p["Wh"], p["b"])
        elif self.cell == "gru":
            (h, _), c = nn.gru_step_forward(x, state.h, p["Wx"], p["Wh"], p["b"], p["b_hn"]), None
        else:
            (h, _), c = nn.rnn_step_forward(x, state.h, p["Wx"], p["Wh"], p["b"]), None
        return (h @ p["W_out"] + p["b_out"])[:, 0], State(h, c)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x: (N, T, D) -> predictions (N,) from the last hidden state."""
        x, _ = self._check_inputs(x)
        h_last = self._recurrence(x)[1].h_last
        return (h_last @ self.params["W_out"] + self.params["b_out"])[:, 0]

    def mse(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
        """Mean squared error on (x, y), evaluated in batches (forward only, no gradients kept)."""
        x, y = self._check_inputs(x, y)
        assert y is not None
        total = 0.0
        for start in range(0, len(x), batch_size):
            err = self.predict(x[start : start + batch_size]) - y[start : start + batch_size]
            total += float(np.dot(err, err))
        return total / len(x)

    # ------------------------------------------------------------------------------------- loss and grads

    def loss(self, x: np.ndarray, y: np.ndarray, backward: bool = True) -> tuple[np.floating, dict[str, np.ndarray]]:
        """MSE of the predictions and the gradient of every parameter.

        x: (N, T, D), y: (N,). Returns (loss, grads): loss a NumPy scalar of the model's dtype, grads with the
        keys of `self.params`.

        Only the last hidden state reaches the loss, so the upstream gradient of the hidden states is zero at
        every step but the last: all the gradient that reaches earlier steps arrives through time.
        """
        x, y = self._check_inputs(x, y)
        assert y is not None
        p = self.params
        _, cache = self._recurrence(x)
        pred, out_cache = nn.affine_forward(cache.h_last, p["W_out"], p["b_out"])  # (N, 1)
        loss, dpred = nn.mse_loss(pred[:, 0], y)
        if not backward:
            return loss, {}

        grads: dict[str, np.ndarray] = {}
        dh_last, grads["W_out"], grads["b_out"] = nn.affine_backward(dpred[:, None], out_cache)
        dh = np.zeros((x.shape[0], x.shape[1], self.hidden_size), dtype=self.dtype)
        dh[:, -1] = dh_last
        if self.cell == "lstm":
            g = self.sequence.lstm_backward(dh, cache)
        elif self.cell == "gru":
            g = nn.gru_backward(dh, cache)
            grads["b_hn"] = g.db_hn
        else:
            g = self.sequence.rnn_backward(dh, cache)
        grads["Wx"], grads["Wh"], grads["b"] = g.dWx, g.dWh, g.db
        return loss, grads

    # ------------------------------------------------------------------------------ gradients through time

    def _readable_backward(self, x: np.ndarray, dh_last: np.ndarray) -> tuple[Any, Any]:
        """The readable forward pass over x (N, T, D) and the full backward pass for an upstream gradient dh_last
        (N, H) at the last hidden state: (forward cache, the cell's Grads)."""
        _, cache = self._recurrence(x, readable=True)
        dh = np.zeros((x.shape[0], x.shape[1], self.hidden_size), dtype=self.dtype)
        dh[:, -1] = dh_last
        backward = {"lstm": nn.lstm_backward, "gru": nn.gru_backward, "rnn": nn.rnn_backward}[self.cell]
        return cache, backward(dh, cache)

    def _loss_gradient_at_last_state(self, x: np.ndarray, y: np.ndarray, cache: Any) -> np.ndarray:
        """∂L_n/∂h_T (N, H) for every sequence's own squared error L_n = (prediction_n − y_n)²."""
        pred = (cache.h_last @ self.params["W_out"] + self.params["b_out"])[:, 0]
        return (2.0 * (pred - y))[:, None] * self.params["W_out"][:, 0]

    def state_gradient_norms(
        self, x: np.ndarray, y: np.ndarray, dtype: npt.DTypeLike = np.float64
    ) -> StateGradientNorms:
        """How much gradient reaches each step back in time: ‖∂L_n/∂h_{T−k}‖ for k = 0 … T and every sequence.

        L_n = (prediction_n − y_n)² is sequence n's own loss, so the numbers do not depend on the batch size.
        Computed in `dtype` (float64 by default: a vanilla RNN's gradient 100 steps back can be 1e-30 or less,
        far below float32's smallest normal number 1.2e-38, so float32 would flush the tail of the curve to 0).
        Returns StateGradientNorms(h (T+1, N), c (T+1, N) or None), row k = distance from the last step.
        """
        model = self if np.dtype(dtype) == self.dtype else self.astype(dtype)
        x, y = model._check_inputs(x, y)
        assert y is not None
        _, cache = model._recurrence(x, readable=True)
        dh = np.zeros((x.shape[0], x.shape[1], model.hidden_size), dtype=model.dtype)
        dh[:, -1] = model._loss_gradient_at_last_state(x, y, cache)
        c_norms = None
        if model.cell == "lstm":
            dh_states, dc_states = nn.lstm_state_gradients(dh, cache)
            c_norms = np.linalg.norm(dc_states, axis=2)[::-1].copy()
        elif model.cell == "gru":
            dh_states = nn.gru_state_gradients(dh, cache)
        else:
            dh_states = nn.rnn_state_gradients(dh, cache)
        h_norms = np.linalg.norm(dh_states, axis=2)[::-1]  # index t -> index k = T − t
        return StateGradientNorms(np.ascontiguousarray(h_norms), c_norms)

    def recurrent_gradient_by_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """What each step contributes to ∂L/∂Wh, indexed by its distance k back from the last step (float64).

        Wh is used at every step, so its gradient is a SUM over the steps: ∂L/∂Wh = Σ_t h_{t−1}ᵀ da_t, where da_t
        is the gradient of step t's pre-activations (the `dWh` each `*_step_backward` returns). Row k is the term
        of step T − k for the batch's mean loss (what an optimiser receives): (T, H, G), and the rows add up to
        `loss(x, y)[1]["Wh"]`. A term far back can only be as large as the gradient that reaches its step, so
        when the state gradient vanishes, the update of Wh is made of the last few steps' terms alone.

        BPTT is the loop below: one step backward at a time, from the last step to the first.
        """
        model = self if self.dtype == np.float64 else self.astype(np.float64)
        x, y = model._check_inputs(x, y)
        assert y is not None
        _, cache = model._recurrence(x, readable=True)
        dh = model._loss_gradient_at_last_state(x, y, cache) / len(x)  # the batch mean: 1/N of each sequence's
        dc = np.zeros_like(dh)
        terms = []
        for t in reversed(range(x.shape[1])):  # k = 0, 1, … : step T − 1 − k here, which writes h_{T−k}
            step = cache.steps[t]
            if model.cell == "lstm":
                _, dh, dc, _, dWh, _ = nn.lstm_step_backward(dh, dc, step)
            elif model.cell == "gru":
                _, dh, _, dWh, _, _ = nn.gru_step_backward(dh, step)
            else:
                _, dh, _, dWh, _ = nn.rnn_step_backward(dh, step)
            terms.append(dWh)
        return np.stack(terms)

    def input_sensitivity(self, x: np.ndarray) -> np.ndarray:
        """∂prediction_n/∂x_{n,t} for every sequence, step and input channel: (N, T, D), float64.

        How much each input moves the answer. A network that has solved the adding problem shows ≈ 1 for the
        value channel at the two marked steps and ≈ 0 at every other step: it wrote the marked values into its
        memory and shut out everything else. One backward pass with upstream gradient W_out at the last state.
        """
        model = self if self.dtype == np.float64 else self.astype(np.float64)
        x, _ = model._check_inputs(x)
        dh_last = np.broadcast_to(model.params["W_out"][:, 0], (len(x), model.hidden_size))
        return model._readable_backward(x, dh_last)[1].dx

    # ---------------------------------------------------------------- what predicts the decay of the gradient

    def _require(self, cells: tuple[str, ...], what: str) -> None:
        if self.cell not in cells:
            names = " and ".join(c.upper() for c in cells)
            raise ValueError(f"{what} is defined for the {names} only; this model's cell is {self.cell!r}")

    def spectral_radius(self) -> float:
        """RNN: ρ(Wh) = max |eigenvalue| of the recurrent matrix — the per-step growth rate of Whᵏ for large k."""
        self._require(("rnn",), "spectral_radius")
        return float(np.max(np.abs(np.linalg.eigvals(self.params["Wh"].astype(np.float64)))))

    def largest_singular_value(self) -> float:
        """RNN: σ_max(Wh) = ‖Wh‖₂, the most any single step can stretch a vector: an upper bound on the decay
        factor (together with max tanh′ ≤ 1), not an estimate of it."""
        self._require(("rnn",), "largest_singular_value")
        return float(np.linalg.norm(self.params["Wh"].astype(np.float64), 2))

    def trajectory(self, x: np.ndarray) -> Trajectory:
        """The hidden states (and the gates: `Trajectory`) at every step of x (N, T, D)."""
        x, _ = self._check_inputs(x)
        h, cache = self._recurrence(x, readable=True)
        if self.cell == "rnn":
            return Trajectory(h, None, None, None)
        if self.cell == "gru":
            z = np.stack([step.z for step in cache.steps], axis=1)
            return Trajectory(h, None, 1.0 - z, z)
        # The cell after step t is the cell step t+1 starts from; after the last step, the cache's c_last.
        c = np.stack([step.prev_c for step in cache.steps[1:]] + [cache.c_last], axis=1)
        f = np.stack([step.f for step in cache.steps], axis=1)
        i = np.stack([step.i for step in cache.steps], axis=1)
        return Trajectory(h, c, f, i)

    def _tanh_derivative(self, x: np.ndarray) -> np.ndarray:
        self._require(("rnn",), "the tanh derivative")
        h = self.trajectory(x).h.astype(np.float64)
        return 1.0 - h**2

    def mean_tanh_derivative(self, x: np.ndarray) -> float:
        """RNN: the mean of tanh′(a_t) = 1 − h_t² over every sequence, step and unit of x (N, T, D)."""
        return float(np.mean(self._tanh_derivative(x)))

    def rms_tanh_derivative(self, x: np.ndarray) -> float:
        """RNN: the root mean square of tanh′(a_t) over every sequence, step and unit of x (N, T, D).

        One step back multiplies the gradient by diag(tanh′) and then by Whᵀ. A vector whose entries are spread
        over the units independently of which units are saturated has ‖diag(d) v‖ ≈ RMS(d)·‖v‖, not mean(d)·‖v‖:
        the mean of a product is not the product of the means. RMS ≥ mean, with equality only when tanh′ is the
        same everywhere; the two differ most when the units are partly saturated (tanh′ near 0 and near 1)."""
        return float(np.sqrt(np.mean(self._tanh_derivative(x) ** 2)))

    def mean_keep_gate(self, x: np.ndarray, per_unit: bool = False) -> float | np.ndarray:
        """LSTM and GRU: the factor the memory path carries back one step — the LSTM's forget gate f, the GRU's
        1 − z — averaged over every sequence and step of x (N, T, D) and over the units (a float), or per unit
        (an (H,) array) when `per_unit`. Along that path ∂c_t/∂c_{t−1} = f (LSTM), ∂h_t/∂h_{t−1} ∋ 1 − z (GRU)."""
        self._require(("lstm", "gru"), "mean_keep_gate")
        keep = self.trajectory(x).keep
        assert keep is not None
        keep = keep.astype(np.float64)
        return keep.mean(axis=(0, 1)) if per_unit else float(keep.mean())


def fit_decay_factor(norms: np.ndarray, k_min: int = 5, k_max: int | None = None, floor: float = 1e-250) -> float:
    """The per-step factor λ of a geometric decay norms[k] ≈ C·λᵏ, fitted by least squares on log norms[k].

    norms: (K,) positive numbers indexed by the distance k back in time (e.g. the batch mean of
    `StateGradientNorms.h`). The fit uses k_min ≤ k ≤ k_max (default: the last index) and stops before the
    first value that is not above `floor`, so a curve that has reached the bottom of the float range (or 0)
    does not bend the line. k_min skips the first few steps, where the curve has not settled on its
    asymptotic slope yet. Returns λ = exp(slope): below 1 the gradient vanishes, above 1 it explodes.
    """
    norms = np.asarray(norms, dtype=np.float64)
    k_max = len(norms) - 1 if k_max is None else min(k_max, len(norms) - 1)
    ks = np.arange(k_min, k_max + 1)
    below = np.flatnonzero(~(norms[ks] > floor))  # also catches NaN
    if below.size:
        ks = ks[: below[0]]
    if ks.size < 2:
        raise ValueError(f"fit_decay_factor: fewer than 2 usable points in k = {k_min}…{k_max} above {floor:g}")
    slope = np.polyfit(ks, np.log(norms[ks]), 1)[0]
    return float(np.exp(slope))

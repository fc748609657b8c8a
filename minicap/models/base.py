"""The model contract: what every model of minicap offers, so that ONE training loop, ONE checkpoint format and ONE
set of decoders serve them all.

    params                       dict[str, np.ndarray]: every trained array, by name; optimisers update it in place
    config                       dict of builtins: enough to rebuild the model (the params travel separately)
    from_config(config, params, constants)     the model back, every parameter name and shape checked
    constants                    dict[str, np.ndarray]: arrays that belong to the model but are not trained
                                 (the caption model's feature standardisation); empty by default
    loss(*batch, backward=True)  -> (loss, grads): a NumPy scalar and a dict with the keys of params
    initial_state(...)           -> State, the state before the first step
    step(inputs, state)          -> (outputs, State): one time step, for decoding and sampling
    fast                         True: the sequence functions of `minicap.nn.fast`; False: the readable loops of
                                 `minicap.nn`. The numbers are the same (the tests prove it); only the speed differs.

Every model is composed only from `minicap.nn`: its backward pass is its forward pass read from the bottom up.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt

from minicap import nn

__all__ = ["State", "SequenceModel", "StandardisedFeatures", "load_params", "log_frequency_bias", "normal_init"]


class State(NamedTuple):
    """The recurrent state carried from one step to the next (decoding, sampling, truncated BPTT)."""

    h: np.ndarray  # (N, H)
    c: np.ndarray | None  # (N, H) for an LSTM, None for a vanilla RNN


def load_params(into: dict[str, np.ndarray], params: dict[str, np.ndarray], dtype: np.dtype) -> None:
    """Copy `params` (e.g. from a checkpoint) into a freshly built model's parameter dict `into`, as `dtype`.

    Every name must be there and nothing else, and every shape must match: a clear error names what does not fit,
    before anything is copied.
    """
    missing = sorted(set(into) - set(params))
    unexpected = sorted(set(params) - set(into))
    if missing or unexpected:
        raise ValueError(f"parameters do not fit the model: missing {missing}, unexpected {unexpected}")
    for name, value in params.items():
        if np.shape(value) != into[name].shape:
            raise ValueError(f"parameter {name}: shape {np.shape(value)}, model expects {into[name].shape}")
    for name, value in params.items():
        into[name] = np.array(value, dtype=dtype)


def log_frequency_bias(word_counts: np.ndarray) -> np.ndarray:
    """b_vocab[v] = log p(v) − max_v log p(v), with p from counts (+1 smoothing so unseen words stay finite).

    An output bias started here makes the untrained model predict the unigram distribution instead of a uniform
    one over V words (neuraltalk's trick): the first updates need not learn word frequencies, and the initial loss
    drops from about T·log V to the unigram entropy.
    """
    counts = np.asarray(word_counts, dtype=np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return log_p - log_p.max()


def normal_init(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """Weights ~ N(0, 1/fan_in): activations keep unit scale from layer to layer (LeCun initialisation)."""
    return rng.standard_normal(shape) / np.sqrt(fan_in)


class SequenceModel:
    """The shared base of every model (see the module docstring for the contract).

    A subclass sets `self.params`, `self.dtype` and `self.seed` in its constructor, names its constructor's
    arguments in `config`, and implements `loss`, `initial_state` and `step`.
    """

    params: dict[str, np.ndarray]
    dtype: np.dtype
    fast: bool = True  # the fast sequence path of minicap.nn.fast; set False for the readable loops
    models: ClassVar[dict[str, type[SequenceModel]]] = {}  # every model class by name, for checkpoints

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SequenceModel.models[cls.__name__] = cls

    # ----------------------------------------------------------------------------------------- description

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (JSON-able); the parameters travel separately."""
        raise NotImplementedError

    @property
    def constants(self) -> dict[str, np.ndarray]:
        """Arrays that belong to the model but are not trained (saved in checkpoints beside the parameters)."""
        return {}

    def set_constants(self, constants: dict[str, np.ndarray]) -> None:
        """Restore what `constants` returned; a model without constants accepts only an empty dict."""
        if constants:
            raise ValueError(f"{type(self).__name__} has no constants, got {sorted(constants)}")

    @classmethod
    def from_config(
        cls, config: dict[str, Any], params: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None
    ) -> SequenceModel:
        """Rebuild a model from `config` and a parameter dict (e.g. from a checkpoint), checking every name and
        shape before anything is copied."""
        model = cls(**config)
        load_params(model.params, params, model.dtype)
        model.set_constants(dict(constants or {}))
        return model

    def astype(self, dtype: npt.DTypeLike) -> SequenceModel:
        """A copy of this model (same parameter values, same constants) computing in another dtype."""
        copy = type(self).from_config({**self.config, "dtype": np.dtype(dtype).name}, self.params, self.constants)
        copy.fast = self.fast
        return copy

    def copy(self) -> SequenceModel:
        """An independent copy: training one does not change the other."""
        return self.astype(self.dtype)

    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    @property
    def sequence(self) -> ModuleType:
        """The module whose sequence functions this model runs: `minicap.nn.fast` or the readable `minicap.nn`.
        Both offer rnn_forward/rnn_backward, lstm_forward/lstm_backward and words_loss with the same signatures."""
        return nn.fast if self.fast else nn

    # ----------------------------------------------------------------------------------------- the contract

    def loss(self, *batch: Any, backward: bool = True) -> tuple[np.floating, dict[str, np.ndarray]]:
        """(loss, grads) of one batch; grads has the keys of `params` (empty when backward is False)."""
        raise NotImplementedError

    def initial_state(self, *inputs: Any) -> State:
        """The state before the first step."""
        raise NotImplementedError

    def step(self, inputs: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One time step: (outputs, next state)."""
        raise NotImplementedError


class StandardisedFeatures:
    """What the two captioners share about their image input: (x − mean) / std per channel, with the TRAINING
    images' mean and std (F,), saved in checkpoints as the model's `constants`. The class using it sets
    `feature_size`, `dtype`, and `feature_mean = feature_std = None` (no standardisation) in its __init__."""

    feature_size: int
    dtype: np.dtype
    feature_mean: np.ndarray | None
    feature_std: np.ndarray | None

    @property
    def constants(self) -> dict[str, np.ndarray]:
        if self.feature_mean is None or self.feature_std is None:
            return {}
        return {"feature_mean": self.feature_mean, "feature_std": self.feature_std}

    def set_constants(self, constants: dict[str, np.ndarray]) -> None:
        if unknown := set(constants) - {"feature_mean", "feature_std"}:
            raise ValueError(f"unknown {type(self).__name__} constants {sorted(unknown)}")
        if constants:
            self.set_feature_standardisation(constants["feature_mean"], constants["feature_std"])

    def set_feature_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise every image input (per channel) from now on. mean, std: (F,)"""
        mean, std = np.asarray(mean), np.asarray(std)
        if mean.shape != (self.feature_size,) or std.shape != (self.feature_size,):
            raise ValueError(f"mean and std must have shape ({self.feature_size},), got {mean.shape}, {std.shape}")
        self.feature_mean = mean.astype(self.dtype)
        self.feature_std = np.maximum(std, 1e-6).astype(self.dtype)

"""Small tools the encoder builders share: BatchNorm folding, weight bookkeeping, and an ONNX graph builder.

Why fold BatchNorm? At inference a BatchNorm layer is a fixed per-channel affine map,
    y = gamma * (z - mu) / sqrt(var + eps) + beta,   with z = W * x (a convolution without bias).
Writing s = gamma / sqrt(var + eps), this is y = (s * W) * x + (beta - mu * s): the same convolution with
weights W' = s * W (each output channel's filter scaled) and bias b' = beta - mu * s. One Conv node instead of
Conv + BatchNormalization, the same numbers (up to float rounding), and a graph that reads like the network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSET", "WeightsMismatchError", "StateDictReader", "fold_batchnorm", "GraphBuilder"]

OPSET = 17  # ONNX operator set; every op used here is unchanged since opset 13 or earlier


class WeightsMismatchError(ValueError):
    """The state dict does not fit the architecture: keys missing, unexpected, or of the wrong shape."""


def fold_batchnorm(
    weight: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm into the bias-free convolution before it.

    weight: (C_out, C_in / groups, kh, kw); gamma, beta, mean, var: (C_out,).
    Returns (W', b'), float32, with W' = W * s[:, None, None, None], b' = beta - mean * s,
    s = gamma / sqrt(var + eps). Computed in float64, rounded once at the end.
    """
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    w = weight.astype(np.float64) * s.reshape(-1, *([1] * (weight.ndim - 1)))
    b = beta.astype(np.float64) - mean.astype(np.float64) * s
    return w.astype(np.float32), b.astype(np.float32)


class StateDictReader:
    """Hands out state-dict entries by name and remembers which were used, so that at the end every problem
    — missing keys, wrong shapes, keys nothing used — is reported at once in one clear error."""

    def __init__(self, tensors: Mapping[str, np.ndarray], ignore_prefixes: Sequence[str] = ()) -> None:
        self._tensors = tensors
        self._ignore_prefixes = tuple(ignore_prefixes)
        self._used: set[str] = set()
        self._missing: list[str] = []
        self._wrong_shape: list[str] = []

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The entry `key`, checked to have `shape`. A missing or misshapen entry is recorded and replaced by
        zeros so the build can go on and collect every problem before `finish` raises."""
        self._used.add(key)
        if key not in self._tensors:
            self._missing.append(f"{key} {shape}")
            return np.zeros(shape, np.float32)
        value = np.asarray(self._tensors[key])
        if value.shape != shape:
            self._wrong_shape.append(f"{key}: expected {shape}, got {value.shape}")
            return np.zeros(shape, np.float32)
        return value

    def take_batchnorm(self, prefix: str, channels: int) -> tuple[np.ndarray, ...]:
        """(gamma, beta, running_mean, running_var) of the BatchNorm `prefix`; its `num_batches_tracked`
        counter (a training statistic, absent from files older than PyTorch 0.4.1) is accepted and unused."""
        self._used.add(f"{prefix}.num_batches_tracked")
        return tuple(
            self.take(f"{prefix}.{name}", (channels,)) for name in ("weight", "bias", "running_mean", "running_var")
        )

    def finish(self, what: str) -> None:
        """Raise `WeightsMismatchError` listing every missing, misshapen and unexpected key, if any."""
        unexpected = [k for k in self._tensors if k not in self._used and not k.startswith(self._ignore_prefixes)]
        problems = []
        for title, keys in (
            ("missing keys", self._missing),
            ("keys with the wrong shape", self._wrong_shape),
            ("unexpected keys", unexpected),
        ):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                problems.append(f"{len(keys)} {title}: {shown}")
        if problems:
            raise WeightsMismatchError(f"the weights do not fit {what}: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """A convolution's geometry. `pads` are (top, left, bottom, right) or None for TF-style "same"."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int = 1
    pads: tuple[int, int, int, int] | None = (0, 0, 0, 0)
    groups: int = 1


class GraphBuilder:
    """Accumulates ONNX nodes and weights (initializers); each method adds one layer and returns the name of
    its output. Node and output names follow the PyTorch module names, so a graph viewer shows the network as
    its source describes it."""

    def __init__(self, weights: StateDictReader) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name {name!r} in the graph")
        self._names.add(name)
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        """A weight tensor stored in the graph (an initializer), as float32 unless it is an integer array."""
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(value, self._unique(name)))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        """One node with one output named `name`."""
        self.nodes.append(helper.make_node(op, list(inputs), [self._unique(name)], name=name, **attrs))
        return name

    # -------------------------------------------------------------------------------- layers

    def conv_bn(
        self,
        x: str,
        name: str,
        conv_key: str,
        bn_key: str,
        spec: ConvSpec,
        eps: float,
        activation: str | None,
    ) -> str:
        """Conv (bias-free in PyTorch) + eval-mode BatchNorm, folded into one Conv, then the activation
        ("relu", "relu6" or None). Input (N, C_in, H, W) -> output (N, C_out, H', W')."""
        kh, kw = spec.kernel
        w = self.weights.take(f"{conv_key}.weight", (spec.out_channels, spec.in_channels // spec.groups, kh, kw))
        gamma, beta, mean, var = self.weights.take_batchnorm(bn_key, spec.out_channels)
        w_folded, b_folded = fold_batchnorm(w, gamma, beta, mean, var, eps)
        attrs: dict[str, object] = {"kernel_shape": [kh, kw], "strides": [spec.stride, spec.stride]}
        if spec.pads is None:
            # TF "same": total pad max((ceil(i/s) - 1) * s + k - i, 0), the larger half after = SAME_UPPER.
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            top, left, bottom, right = spec.pads
            attrs["pads"] = [top, left, bottom, right]  # ONNX order: begins of H, W, then ends
        if spec.groups != 1:
            attrs["group"] = spec.groups
        conv_name = name if activation is None else f"{name}.conv"
        y = self.node(
            "Conv",
            [x, self.constant(f"{name}.weight", w_folded), self.constant(f"{name}.bias", b_folded)],
            conv_name,
            **attrs,
        )
        if activation == "relu":
            return self.node("Relu", [y], name)
        if activation == "relu6":
            return self.relu6(y, name)
        if activation is not None:
            raise ValueError(f"unknown activation {activation!r}")
        return y

    def relu6(self, x: str, name: str) -> str:
        """min(max(x, 0), 6), as ONNX Clip with its bounds given as (shared) scalar inputs."""
        if "relu6.min" not in self._names:
            self.constant("relu6.min", np.array(0.0, np.float32))
            self.constant("relu6.max", np.array(6.0, np.float32))
        return self.node("Clip", [x, "relu6.min", "relu6.max"], name)

    def max_pool(self, x: str, name: str, kernel: int, stride: int) -> str:
        """Max pooling without padding, output size floor((H - k) / s) + 1 (PyTorch's default)."""
        return self.node("MaxPool", [x], name, kernel_shape=[kernel, kernel], strides=[stride, stride])

    def avg_pool_same(self, x: str, name: str) -> str:
        """3x3 stride-1 average pooling with 1 pixel of zero padding that *counts* in the average
        (PyTorch's `count_include_pad=True` default), so border outputs are sums / 9."""
        return self.node(
            "AveragePool",
            [x],
            name,
            kernel_shape=[3, 3],
            strides=[1, 1],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        )

    def concat(self, xs: Iterable[str], name: str) -> str:
        """Stack feature maps along channels (axis 1), in the order given."""
        return self.node("Concat", list(xs), name, axis=1)

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name)

    def global_avg_pool(self, x: str, name: str) -> str:
        """(N, C, H, W) -> mean over H, W -> (N, C)."""
        pooled = self.node("GlobalAveragePool", [x], f"{name}.pool")
        return self.node("Flatten", [pooled], name, axis=1)

    def linear(self, x: str, name: str, key: str, in_features: int, out_features: int) -> str:
        """(N, in) -> x @ W.T + b -> (N, out), W stored as PyTorch keeps it: (out, in)."""
        w = self.weights.take(f"{key}.weight", (out_features, in_features))
        b = self.weights.take(f"{key}.bias", (out_features,))
        return self.node(
            "Gemm",
            [x, self.constant(f"{key}.weight", w), self.constant(f"{key}.bias", b)],
            name,
            transB=1,
        )

    def to_nhwc(self, x: str, name: str) -> str:
        """(N, C, H, W) -> (N, H, W, C): one feature vector per spatial position, as attention models want."""
        return self.node("Transpose", [x], name, perm=[0, 2, 3, 1])

    # -------------------------------------------------------------------------------- the model

    def model(
        self,
        graph_name: str,
        input_name: str,
        input_shape: tuple[str | int, ...],
        outputs: Sequence[tuple[str, tuple[str | int, ...]]],
        doc: str,
    ) -> onnx.ModelProto:
        """Wrap nodes and weights into a checked `ModelProto`: one float32 input, float32 outputs.

        Dimensions given as strings (e.g. "N") are symbolic: any batch size runs.
        """
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
            initializer=self.initializers,
            doc_string=doc,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="minicap", doc_string=doc
        )
        model.ir_version = 8  # the IR version of opset 17; keeps the file loadable by older runtimes
        onnx.checker.check_model(model)
        return model

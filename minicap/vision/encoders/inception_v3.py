"""Inception v3 as an ONNX graph, from a state dict with torchvision's key names (`inception_v3` model).

Inception v3 (Szegedy et al. 2016) runs several convolution *branches* side by side on the same input —
1x1, a factorised 5x5 or 7x7 (as 1x7 then 7x1: far fewer weights than 7x7), double 3x3, pooling — and stacks
their outputs along channels. Every conv is a `BasicConv2d`: bias-free conv + BatchNorm (eps 1e-3) + ReLU;
here each becomes one Conv (BatchNorm folded in) + Relu.

    image (N, 3, 299, 299)                       [(x - 127.5) / 127.5: torchvision's transform_input undone]
      Conv2d_1a_3x3 /2, Conv2d_2a_3x3, Conv2d_2b_3x3 (pad 1), max-pool 3/2     -> (N, 64, 73, 73)
      Conv2d_3b_1x1, Conv2d_4a_3x3, max-pool 3/2                                -> (N, 192, 35, 35)
      Mixed_5b, Mixed_5c, Mixed_5d  (InceptionA)                                -> (N, 288, 35, 35)
      Mixed_6a                      (InceptionB, grid reduction)                -> (N, 768, 17, 17)
      Mixed_6b ... Mixed_6e         (InceptionC, 7x7 factorised)                -> (N, 768, 17, 17)
      Mixed_7a                      (InceptionD, grid reduction)                -> (N, 1280, 8, 8)
      Mixed_7b, Mixed_7c            (InceptionE, expanded 3x3 branches)         -> (N, 2048, 8, 8)  [spatial]
      global average pool                                                       -> (N, 2048)  features
      fc 2048->1000                                                             -> (N, 1000)  logits

Branch order, kernel sizes, paddings and the concatenation order follow torchvision's `Inception3` (module
names are kept as node names). The auxiliary classifier `AuxLogits.*` only matters in training: its keys
are ignored by name; every other key must be used, or the build fails listing the problems.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from minicap.vision.encoders.onnx_ops import ConvSpec, GraphBuilder, StateDictReader

__all__ = ["build_inception_v3"]

BN_EPS = 1e-3
INPUT_SIZE = 299
FEATURE_SIZE = 2048
NUM_CLASSES = 1000
IGNORED_PREFIXES = ("AuxLogits.",)


def _basic_conv(
    g: GraphBuilder,
    x: str,
    name: str,
    c_in: int,
    c_out: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
) -> str:
    """torchvision's BasicConv2d `name`: conv (symmetric `padding` (ph, pw)) + BatchNorm + ReLU."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    spec = ConvSpec(c_in, c_out, (kh, kw), stride, pads=(ph, pw, ph, pw))
    return g.conv_bn(x, name, f"{name}.conv", f"{name}.bn", spec, BN_EPS, "relu")


def _inception_a(g: GraphBuilder, x: str, name: str, c_in: int, pool_features: int) -> str:
    """35x35 block: branches 1x1 (64) | 1x1 -> 5x5 (64) | 1x1 -> 3x3 -> 3x3 (96) | avg-pool -> 1x1.
    (N, c_in, 35, 35) -> (N, 224 + pool_features, 35, 35)."""
    b1 = _basic_conv(g, x, f"{name}.branch1x1", c_in, 64, 1)
    b5 = _basic_conv(g, x, f"{name}.branch5x5_1", c_in, 48, 1)
    b5 = _basic_conv(g, b5, f"{name}.branch5x5_2", 48, 64, 5, padding=2)
    b3 = _basic_conv(g, x, f"{name}.branch3x3dbl_1", c_in, 64, 1)
    b3 = _basic_conv(g, b3, f"{name}.branch3x3dbl_2", 64, 96, 3, padding=1)
    b3 = _basic_conv(g, b3, f"{name}.branch3x3dbl_3", 96, 96, 3, padding=1)
    bp = g.avg_pool_same(x, f"{name}.avg_pool")
    bp = _basic_conv(g, bp, f"{name}.branch_pool", c_in, pool_features, 1)
    return g.concat([b1, b5, b3, bp], name)


def _inception_b(g: GraphBuilder, x: str, name: str, c_in: int) -> str:
    """Grid reduction 35 -> 17: 3x3/2 (384) | 1x1 -> 3x3 -> 3x3/2 (96) | max-pool 3/2 (c_in).
    (N, c_in, 35, 35) -> (N, 480 + c_in, 17, 17)."""
    b3 = _basic_conv(g, x, f"{name}.branch3x3", c_in, 384, 3, stride=2)
    bd = _basic_conv(g, x, f"{name}.branch3x3dbl_1", c_in, 64, 1)
    bd = _basic_conv(g, bd, f"{name}.branch3x3dbl_2", 64, 96, 3, padding=1)
    bd = _basic_conv(g, bd, f"{name}.branch3x3dbl_3", 96, 96, 3, stride=2)
    bp = g.max_pool(x, f"{name}.max_pool", 3, 2)
    return g.concat([b3, bd, bp], name)


def _inception_c(g: GraphBuilder, x: str, name: str, c_in: int, c7: int) -> str:
    """17x17 block with 7x7 convolutions factorised into 1x7 and 7x1 (c7 channels inside).
    Branches 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg-pool -> 1x1, 192 channels each.
    (N, c_in, 17, 17) -> (N, 768, 17, 17)."""
    b1 = _basic_conv(g, x, f"{name}.branch1x1", c_in, 192, 1)
    b7 = _basic_conv(g, x, f"{name}.branch7x7_1", c_in, c7, 1)
    b7 = _basic_conv(g, b7, f"{name}.branch7x7_2", c7, c7, (1, 7), padding=(0, 3))
    b7 = _basic_conv(g, b7, f"{name}.branch7x7_3", c7, 192, (7, 1), padding=(3, 0))
    bd = _basic_conv(g, x, f"{name}.branch7x7dbl_1", c_in, c7, 1)
    bd = _basic_conv(g, bd, f"{name}.branch7x7dbl_2", c7, c7, (7, 1), padding=(3, 0))
    bd = _basic_conv(g, bd, f"{name}.branch7x7dbl_3", c7, c7, (1, 7), padding=(0, 3))
    bd = _basic_conv(g, bd, f"{name}.branch7x7dbl_4", c7, c7, (7, 1), padding=(3, 0))
    bd = _basic_conv(g, bd, f"{name}.branch7x7dbl_5", c7, 192, (1, 7), padding=(0, 3))
    bp = g.avg_pool_same(x, f"{name}.avg_pool")
    bp = _basic_conv(g, bp, f"{name}.branch_pool", c_in, 192, 1)
    return g.concat([b1, b7, bd, bp], name)


def _inception_d(g: GraphBuilder, x: str, name: str, c_in: int) -> str:
    """Grid reduction 17 -> 8: 1x1 -> 3x3/2 (320) | 1x1 -> 1x7 -> 7x1 -> 3x3/2 (192) | max-pool 3/2 (c_in).
    (N, c_in, 17, 17) -> (N, 512 + c_in, 8, 8)."""
    b3 = _basic_conv(g, x, f"{name}.branch3x3_1", c_in, 192, 1)
    b3 = _basic_conv(g, b3, f"{name}.branch3x3_2", 192, 320, 3, stride=2)
    b7 = _basic_conv(g, x, f"{name}.branch7x7x3_1", c_in, 192, 1)
    b7 = _basic_conv(g, b7, f"{name}.branch7x7x3_2", 192, 192, (1, 7), padding=(0, 3))
    b7 = _basic_conv(g, b7, f"{name}.branch7x7x3_3", 192, 192, (7, 1), padding=(3, 0))
    b7 = _basic_conv(g, b7, f"{name}.branch7x7x3_4", 192, 192, 3, stride=2)
    bp = g.max_pool(x, f"{name}.max_pool", 3, 2)
    return g.concat([b3, b7, bp], name)


def _inception_e(g: GraphBuilder, x: str, name: str, c_in: int) -> str:
    """8x8 block whose 3x3 branches split into parallel 1x3 and 3x1 convs, both kept.
    Concatenation order: 1x1 (320) | 1x3, 3x1 (384 + 384) | dbl 1x3, 3x1 (384 + 384) | avg-pool -> 1x1 (192).
    (N, c_in, 8, 8) -> (N, 2048, 8, 8)."""
    b1 = _basic_conv(g, x, f"{name}.branch1x1", c_in, 320, 1)
    b3 = _basic_conv(g, x, f"{name}.branch3x3_1", c_in, 384, 1)
    b3a = _basic_conv(g, b3, f"{name}.branch3x3_2a", 384, 384, (1, 3), padding=(0, 1))
    b3b = _basic_conv(g, b3, f"{name}.branch3x3_2b", 384, 384, (3, 1), padding=(1, 0))
    bd = _basic_conv(g, x, f"{name}.branch3x3dbl_1", c_in, 448, 1)
    bd = _basic_conv(g, bd, f"{name}.branch3x3dbl_2", 448, 384, 3, padding=1)
    bda = _basic_conv(g, bd, f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), padding=(0, 1))
    bdb = _basic_conv(g, bd, f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), padding=(1, 0))
    bp = g.avg_pool_same(x, f"{name}.avg_pool")
    bp = _basic_conv(g, bp, f"{name}.branch_pool", c_in, 192, 1)
    # torchvision concatenates [2a, 2b] and [3a, 3b] first; one flat concat gives the same channel order.
    return g.concat([b1, b3a, b3b, bda, bdb, bp], name)


def build_inception_v3(state_dict: Mapping[str, np.ndarray], spatial: bool = False) -> onnx.ModelProto:
    """The Inception v3 graph from a torchvision-layout state dict (e.g. `inception_v3_google-0cc3c7bd.pth`).

    Input `image` (N, 3, 299, 299) float32 scaled to [-1, 1] ((x - 127.5) / 127.5; no transform_input).
    Outputs `features` (N, 2048), `logits` (N, 1000), and with `spatial=True` also `spatial` (N, 8, 8, 2048).
    `AuxLogits.*` keys are ignored; any other missing, misshapen or unexpected key raises
    `WeightsMismatchError` listing them all.
    """
    weights = StateDictReader(state_dict, ignore_prefixes=IGNORED_PREFIXES)
    g = GraphBuilder(weights)

    x = _basic_conv(g, "image", "Conv2d_1a_3x3", 3, 32, 3, stride=2)  # (N, 32, 149, 149)
    x = _basic_conv(g, x, "Conv2d_2a_3x3", 32, 32, 3)  # (N, 32, 147, 147)
    x = _basic_conv(g, x, "Conv2d_2b_3x3", 32, 64, 3, padding=1)  # (N, 64, 147, 147)
    x = g.max_pool(x, "maxpool1", 3, 2)  # (N, 64, 73, 73)
    x = _basic_conv(g, x, "Conv2d_3b_1x1", 64, 80, 1)  # (N, 80, 73, 73)
    x = _basic_conv(g, x, "Conv2d_4a_3x3", 80, 192, 3)  # (N, 192, 71, 71)
    x = g.max_pool(x, "maxpool2", 3, 2)  # (N, 192, 35, 35)
    x = _inception_a(g, x, "Mixed_5b", 192, pool_features=32)  # (N, 256, 35, 35)
    x = _inception_a(g, x, "Mixed_5c", 256, pool_features=64)  # (N, 288, 35, 35)
    x = _inception_a(g, x, "Mixed_5d", 288, pool_features=64)  # (N, 288, 35, 35)
    x = _inception_b(g, x, "Mixed_6a", 288)  # (N, 768, 17, 17)
    x = _inception_c(g, x, "Mixed_6b", 768, c7=128)
    x = _inception_c(g, x, "Mixed_6c", 768, c7=160)
    x = _inception_c(g, x, "Mixed_6d", 768, c7=160)
    x = _inception_c(g, x, "Mixed_6e", 768, c7=192)  # (N, 768, 17, 17)
    x = _inception_d(g, x, "Mixed_7a", 768)  # (N, 1280, 8, 8)
    x = _inception_e(g, x, "Mixed_7b", 1280)  # (N, 2048, 8, 8)
    x = _inception_e(g, x, "Mixed_7c", 2048)  # (N, 2048, 8, 8)

    features = g.global_avg_pool(x, "features")
    g.linear(features, "logits", "fc", FEATURE_SIZE, NUM_CLASSES)  # dropout is the identity at inference
    outputs = [("features", ("N", FEATURE_SIZE)), ("logits", ("N", NUM_CLASSES))]
    if spatial:
        g.to_nhwc(x, "spatial")
        outputs.append(("spatial", ("N", 8, 8, FEATURE_SIZE)))
    weights.finish("Inception v3 (torchvision layout)")
    return g.model(
        "inception_v3",
        "image",
        ("N", 3, INPUT_SIZE, INPUT_SIZE),
        outputs,
        doc="Inception v3 (BatchNorm folded into the convolutions), built by minicap from torchvision weights",
    )

"""Image encoders: pretrained CNN weights read without torch, turned into ONNX graphs."""

from minicap.encoders.spec import SPECS, EncoderSpec, get_spec, load_rgb, preprocess

__all__ = ["SPECS", "EncoderSpec", "get_spec", "load_rgb", "preprocess"]

"""Image encoders: pretrained CNN weights read without torch, turned into ONNX graphs.

spec.py               EncoderSpec (input size, resize/crop, normalisation) + Pillow preprocessing
pth.py                PyTorch .pth files (zip and legacy formats) -> {name: np.ndarray}, safely
onnx_ops.py           BatchNorm folding, weight bookkeeping, the small ONNX graph builder
efficientnet_lite.py  EfficientNet-Lite0 graph (1280-d features at 224x224)
inception_v3.py       Inception v3 graph, torchvision key names (2048-d features at 299x299)
onnx_build.py         build_encoder / save_encoder / read_encoder_metadata: the encoder file contract
"""

from minicap.vision.encoders.onnx_build import (
    INCEPTION_V3_WEIGHTS_NAME,
    build_encoder,
    build_encoder_from_state_dict,
    default_weights_path,
    read_encoder_metadata,
    save_encoder,
)
from minicap.vision.encoders.onnx_ops import WeightsMismatchError
from minicap.vision.encoders.pth import PthFormatError, load_pth, load_state_dict
from minicap.vision.encoders.spec import SPECS, EncoderSpec, get_spec, load_rgb, preprocess

__all__ = [
    "SPECS",
    "EncoderSpec",
    "get_spec",
    "load_rgb",
    "preprocess",
    "INCEPTION_V3_WEIGHTS_NAME",
    "PthFormatError",
    "WeightsMismatchError",
    "build_encoder",
    "build_encoder_from_state_dict",
    "default_weights_path",
    "load_pth",
    "load_state_dict",
    "read_encoder_metadata",
    "save_encoder",
]

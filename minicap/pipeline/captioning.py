"""`minicap caption`: image files captioned with a trained checkpoint (`caption_files`). The checkpoint's
captioner and configuration (`load_captioner`), the encoder its features came from, found and verified by sha256
(`resolve_encoder`), and for an attention captioner one figure per image of each word's attention map."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minicap.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from minicap.config import CaptionerConfig
from minicap.decode import generate_captions
from minicap.models import AttentionCaptionModel, CaptionModel
from minicap.safe_io import sha256_file
from minicap.text import Vocabulary


class EncoderNotFound(FileNotFoundError):
    """The encoder a checkpoint was trained with cannot be found, or the file given is another encoder."""


def load_captioner(
    checkpoint: str | os.PathLike,
) -> tuple[Checkpoint, CaptionModel | AttentionCaptionModel, Vocabulary, CaptionerConfig]:
    """A trained captioner from its checkpoint: (checkpoint, model, vocabulary, the configuration it was trained
    with — CaptionerConfig() for a checkpoint that records none). CheckpointError for anything else."""
    ckpt = load_checkpoint(checkpoint)
    if not isinstance(ckpt.model, (CaptionModel, AttentionCaptionModel)) or ckpt.vocab is None:
        raise CheckpointError(f"{checkpoint} holds a {type(ckpt.model).__name__}, not a captioner")
    config = CaptionerConfig.from_dict(ckpt.extra["config"]) if "config" in ckpt.extra else CaptionerConfig()
    return ckpt, ckpt.model, ckpt.vocab, config


def resolve_encoder(checkpoint: Checkpoint, encoder: str | os.PathLike | None = None) -> Path:
    """The ONNX file whose features `checkpoint` (a loaded Checkpoint) was trained on, verified by sha256.

    `encoder` given: that file, which must have the recorded sha256 (if the checkpoint recorded one).
    Otherwise the checkpoint header's encoder entry is followed: its absolute `onnx_path`, then `onnx_file` next to
    the checkpoint, in its parent folder, and next to the recorded features file. EncoderNotFound says what was
    looked for and how to fix it.
    """
    info = checkpoint.encoder
    want = info.get("onnx_sha256")
    arch = info.get("architecture") or "efficientnet_lite0"
    if encoder is not None:
        path = Path(encoder)
        if not path.is_file():
            raise EncoderNotFound(f"encoder {path} does not exist")
        got = sha256_file(path) if want else None
        if want and got != want:
            raise EncoderNotFound(
                f"{path} is not the encoder {checkpoint.path} was trained with (sha256 {got[:12]}..., the "
                f"checkpoint expects {want[:12]}... from {arch}); features of another encoder would give "
                "meaningless captions"
            )
        return path
    if not info:
        raise EncoderNotFound(
            f"{checkpoint.path} does not record which encoder made its features: pass --encoder FILE.onnx"
        )
    candidates: list[Path] = []
    if info.get("onnx_path"):
        candidates.append(Path(info["onnx_path"]))
    if info.get("onnx_file"):
        name = Path(info["onnx_file"]).name
        candidates += [checkpoint.path.parent / name, checkpoint.path.parent.parent / name]
        if info.get("features_file"):
            candidates.append(Path(info["features_file"]).parent / name)
    mismatched = []
    for path in dict.fromkeys(candidates):  # in order, without repeats
        if path.is_file():
            if not want or sha256_file(path) == want:
                return path
            mismatched.append(str(path))
    looked = ", ".join(str(p) for p in dict.fromkeys(candidates)) or "(no path recorded)"
    extra = f"; these exist but are other encoders (sha256 differs): {', '.join(mismatched)}" if mismatched else ""
    raise EncoderNotFound(
        f"the encoder {checkpoint.path} was trained with ({arch}, sha256 {(want or '?')[:12]}...) was not found; "
        f"looked at {looked}{extra}. Pass --encoder FILE.onnx (the same file the features were extracted with; "
        f"rebuild it with `minicap encoder build --arch {arch} --out FILE.onnx`)"
    )


@dataclasses.dataclass
class CaptionRun:
    """captions: [(image path, caption)] in the order given; failures: [(image path, reason)]; figures: the
    attention figures written (image path, figure path), when asked for."""

    captions: list[tuple[Path, str]]
    failures: list[tuple[Path, str]]
    encoder: Path
    figures: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)


def caption_files(
    images: Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    *,
    beam_size: int = 1,
    encoder: str | os.PathLike | None = None,
    batch_size: int = 16,
    attention_dir: str | os.PathLike | None = None,
) -> CaptionRun:
    """Caption image files with a trained checkpoint: JPEG -> ONNX encoder -> standardise -> decode -> text.

    The encoder is the one the checkpoint names (see `resolve_encoder`), preprocessing comes from its EncoderSpec,
    and the model standardises the features with its saved training statistics; decoding follows the configuration
    the checkpoint was trained with. Unreadable images are skipped and listed in `failures`; a feature size that
    does not fit the model raises ValueError.

    An attention captioner reads the encoder's spatial maps (the encoder must have been built with --spatial, as
    the one it was trained with was). attention_dir: write `<image stem>_attention.png` there for every image, the
    caption word by word beside the photo with each word's attention map (`minicap.plots.plot_attention`); only
    for an attention captioner.
    """
    from PIL import Image

    from minicap.vision.encoders.spec import NotARegularFile
    from minicap.vision.extract import OnnxEncoder, load_image_tensor

    ckpt, model, vocab, config = load_captioner(checkpoint)
    path = resolve_encoder(ckpt, encoder)
    onnx = OnnxEncoder(path)
    if onnx.spec.feature_size != model.feature_size:
        raise ValueError(
            f"{path} gives {onnx.spec.feature_size}-d features ({onnx.arch}) but {checkpoint} expects "
            f"{model.feature_size}-d ones: use the encoder the checkpoint was trained with"
        )
    loaded: list[tuple[Path, np.ndarray]] = []
    failures: list[tuple[Path, str]] = []
    for image in images:
        p = Path(image)
        try:
            loaded.append((p, load_image_tensor(p, onnx.spec)))
        except FileNotFoundError:
            failures.append((p, "file not found"))
        except NotARegularFile as e:  # a FIFO, device, directory: never opened
            failures.append((p, str(e)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # Pillow: UnidentifiedImageError (an OSError) for non-images, OSError for truncated files.
            failures.append((p, f"not a readable image ({type(e).__name__}: {e})"))
    attends = isinstance(model, AttentionCaptionModel)
    if attention_dir is not None and not attends:
        raise ValueError(f"{checkpoint} holds a mean-pooled captioner: it has no attention maps to draw")
    captions: list[tuple[Path, str]] = []
    figures: list[tuple[Path, Path]] = []
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        images = np.stack([x for _, x in chunk])
        features, maps = onnx.run(images, spatial=attends)
        if attends:
            assert maps is not None
            grid = maps.shape[1:3]
            features = maps.reshape(maps.shape[0], -1, maps.shape[-1])  # (n, L, F) annotation vectors
        if attention_dir is None:
            texts = generate_captions(
                model, vocab, features, beam_size, config.decode_max_length, config.allow_unk, config.length_penalty
            )
        else:
            texts, new = _attention_figures(model, vocab, config, chunk, features, grid, beam_size, onnx.spec,
                                            Path(attention_dir))  # fmt: skip
            figures += new
        captions.extend((p, t) for (p, _), t in zip(chunk, texts, strict=True))
    return CaptionRun(captions, failures, path, figures)


def _attention_figures(
    model: AttentionCaptionModel,
    vocab: Vocabulary,
    config: CaptionerConfig,
    chunk: Sequence[tuple[Path, np.ndarray]],
    annotations: np.ndarray,
    grid: tuple[int, int],
    beam_size: int,
    spec: Any,
    out_dir: Path,
) -> tuple[list[str], list[tuple[Path, Path]]]:
    """Decode with the attention maps kept and draw one figure per image; (captions, [(image, figure)])."""
    from minicap.decode import beam_search, greedy
    from minicap.plots import encoder_crop, plot_attention
    from minicap.tokens import END, NULL

    if beam_size == 1:
        ids, maps = greedy(model, annotations, config.decode_max_length, config.allow_unk, return_attention=True)
    else:
        ids, maps = beam_search(
            model, annotations, beam_size, config.decode_max_length, config.length_penalty, config.allow_unk,
            return_attention=True,
        )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    texts, figures = [], []
    for (image, tensor), row, row_maps in zip(chunk, ids, maps, strict=True):
        n = int(np.sum(row != NULL))
        words = [vocab.idx_to_word[int(w)] if int(w) != END else "<end>" for w in row[:n]]
        text = vocab.decode(row)
        figure = out_dir / f"{image.stem}_attention.png"
        plot_attention(encoder_crop(tensor, spec.mean, spec.std), words, row_maps[:n], grid, figure, title=text)
        texts.append(text)
        figures.append((image, figure))
    return texts, figures

"""`minicap train`: a feature store and a captions file in, a trained captioner out (`train_from_files`), with
the best epoch chosen on a split of the images or on a second folder. The configuration's split by image
(`config_split`) and what a checkpoint records about it (`split_record`) are shared with the demo."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minicap.captioner import TrainedCaptioner, train_captioner
from minicap.checkpoint import load_checkpoint
from minicap.coco import CocoCaptions, join_captions, load_coco_captions, split_images
from minicap.config import CaptionerConfig
from minicap.dataset import FeatureLookup, JoinedFeatures
from minicap.pipeline.features import Log
from minicap.vision.store import FeatureStore


def split_record(
    captions_file: str | os.PathLike, features_file: str | os.PathLike, split: dict[str, np.ndarray]
) -> dict[str, Any]:
    """What a checkpoint records about its data (header extra["data"]): the files and the split by image, so that
    `minicap evaluate --checkpoint` later scores exactly the held-out test images."""
    return {
        "captions_file": str(Path(captions_file).resolve()),
        "features_file": str(Path(features_file).resolve()),
        "num_images": {k: len(v) for k, v in split.items()},
        "val_image_ids": split["val"].tolist(),
        "test_image_ids": split["test"].tolist(),
    }


# The fields of the one configuration that only say how ONE folder is split (meaningless with a validation folder).
_SPLIT_FIELDS = ("test_fraction", "min_test_images", "val_fraction", "split_seed")


def config_split(coco: CocoCaptions, config: CaptionerConfig) -> dict[str, np.ndarray]:
    """The configuration's train / val / test split of the captioned images (`minicap.coco.split_images`)."""
    return split_images(
        coco.image_ids(), config.test_fraction, config.min_test_images, config.val_fraction, config.split_seed
    )


def train_from_files(
    features: str | os.PathLike,
    captions: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    val_features: str | os.PathLike | None = None,
    val_captions: str | os.PathLike | None = None,
    config: CaptionerConfig = CaptionerConfig(),
    given: Sequence[str] = (),
    resume: str | os.PathLike | None = None,
    allow_other_features: bool = False,
    max_seconds: float | None = None,
    progress: bool = True,
    log: Log | None = print,
) -> TrainedCaptioner:
    """`minicap train`: a feature store and a COCO captions JSON in, a trained captioner in `out_dir`.

    The same recipe as the demo (`train_captioner` with the one `CaptionerConfig`): split the images by
    `config` (`split_images`), build the vocabulary from the TRAINING captions, train with the best epoch chosen by
    validation CIDEr-D, and write last.npz, best.npz, history.json and training_curves.png into `out_dir` (default
    runs/train, or the checkpoint's folder when resuming). The split's val and test image ids are recorded in the
    checkpoints, so `minicap evaluate --checkpoint` scores exactly the held-out images.

    val_features, val_captions: a second folder (both or neither) that picks the best epoch instead of a split:
    every image of `captions` then trains, every image of `val_captions` validates, and no test image is recorded
    (score a third folder with `evaluate_checkpoint`). The two stores must come from the same encoder and the two
    folders must not share an image (ValueError / FeatureStoreError naming what differs); the feature
    standardisation still uses the training images only. Their files and image ids are recorded in the checkpoints.

    given: the names of the fields of `config` the user set explicitly. With `resume`, the run continues with the
    checkpoint's own configuration; a field given explicitly with another value is an error (a resumed run
    continues the same run), and so are features that differ from those the run was trained on, unless
    `allow_other_features`; a run trained with a validation folder resumes only with one (and its captions
    unchanged), a run trained on a split only without.
    """
    log = log or (lambda line: None)
    two_folders = val_features is not None or val_captions is not None
    if two_folders and (val_features is None or val_captions is None):
        raise ValueError("a validation folder needs its features and its captions (--val-features, --val-captions)")
    if two_folders and (split_options := [k for k in given if k in _SPLIT_FIELDS]):
        raise ValueError(
            f"with a validation folder nothing is split, so these options do not apply: {', '.join(split_options)}"
        )
    store = FeatureStore.load(features)
    coco = load_coco_captions(captions)
    log(f"captions: {coco.summary()}")
    log(f"features: {len(store)} images x {store.feature_size} ({store.manifest.get('architecture', 'unknown')})")
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if "config" not in ckpt.extra:
            raise ValueError(f"{resume} records no captioner configuration: it was not written by `minicap train`")
        saved = CaptionerConfig.from_dict(ckpt.extra["config"])
        conflicts = [
            f"{k}={getattr(config, k)!r} (checkpoint: {getattr(saved, k)!r})"
            for k in given
            if getattr(config, k) != getattr(saved, k)
        ]
        if conflicts:
            raise ValueError(
                f"resuming {resume} continues that run with its own settings; these options differ: "
                + "; ".join(conflicts)
            )
        recorded_val = ckpt.extra.get("data", {}).get("val_captions_file")
        if two_folders and recorded_val is None:
            raise ValueError(
                f"{resume} chose its best epoch on a split of its training images, not on a validation folder: "
                "resume it without --val-features and --val-captions"
            )
        if not two_folders and recorded_val is not None:
            raise ValueError(
                f"{resume} chose its best epoch on the validation folder {recorded_val}: resume it with the same "
                "--val-features and --val-captions"
            )
        config = saved
        store.check_feature_size(ckpt.model.config["feature_size"], what=f"checkpoint {resume}")
    out = Path(out_dir if out_dir is not None else (Path(resume).parent if resume is not None else "runs/train"))
    if resume is None and (out / "last.npz").exists():
        raise ValueError(
            f"{out} already holds a run ({out / 'last.npz'}); continue it with --resume {out / 'last.npz'}, "
            "or choose another --out"
        )
    lookup: FeatureLookup = store
    if two_folders:
        assert val_features is not None and val_captions is not None
        val_store = FeatureStore.load(val_features)
        store.check_same_encoder(val_store, what=f"the validation features {val_features}")
        val_coco = load_coco_captions(val_captions)
        log(f"validation captions: {val_coco.summary()}")
        split = {"train": coco.image_ids(), "val": val_coco.image_ids(), "test": np.zeros(0, dtype=np.int64)}
        coco = join_captions(coco, val_coco)  # ValueError naming the shared images, if any
        lookup = JoinedFeatures((split["train"], store), (split["val"], val_store))
        record = {
            **split_record(captions, features, split),
            "val_captions_file": str(Path(val_captions).resolve()),
            "val_features_file": str(Path(val_features).resolve()),
            "train_image_ids": split["train"].tolist(),  # `evaluate_checkpoint` tells a held-out folder by them
        }
        log(
            f"{len(split['train'])} training images ({captions}), {len(split['val'])} validation images "
            f"({val_captions}); no test images: score a third folder with `minicap evaluate --checkpoint`"
        )
    else:
        split = config_split(coco, config)
        record = split_record(captions, features, split)
        log(
            f"split (seed {config.split_seed}): {len(split['train'])} / {len(split['val'])} / {len(split['test'])} "
            "images for train / val / test"
        )
    log(
        f"model: {config.cell.upper()} H={config.hidden_size} W={config.wordvec_size}; up to {config.epochs} epochs, "
        f"best epoch by validation {'CIDEr-D' if config.early_stopping == 'cider' else 'loss'}"
    )
    return train_captioner(
        coco,
        lookup,
        split["train"],
        split["val"],
        config,
        out_dir=out,
        resume=resume,
        max_seconds=max_seconds,
        allow_other_features=allow_other_features,
        encoder=store.encoder_info(features),
        extra={"data": record},
        progress=progress,
        log=log,
    )

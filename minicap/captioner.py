"""A captioner from COCO captions and image features: the ONE recipe behind `minicap train`, `minicap demo`,
`minicap evaluate`, lesson 06 and the benchmarks.

    CocoCaptions + split ──encode_splits──▶ vocabulary (training captions only) + encoded captions
    features (a FeatureLookup) ──────────▶ CaptionDataset for training and for validation
    CaptionerConfig ──new_captioner───────▶ CaptionModel (or AttentionCaptionModel): output bias at log word
                                            frequencies, features standardised
    Trainer (minicap.train) + ValidationCider ──▶ the best epoch by validation CIDEr-D of greedy captions

Everything here is configured by one `CaptionerConfig`; nothing holds a default of its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minicap.coco import CocoCaptions, encode_splits
from minicap.config import CaptionerConfig
from minicap.dataset import AnnotationLookup, CaptionDataset, FeatureLookup, feature_statistics
from minicap.decode import greedy
from minicap.metrics import CiderD
from minicap.models import AttentionCaptionModel, CaptionModel
from minicap.text import Vocabulary, tokenize
from minicap.train import Trainer, TrainResult

__all__ = [
    "CAPTIONERS",
    "model_inputs",
    "new_captioner",
    "ValidationCider",
    "CaptionerData",
    "captioner_data",
    "TrainedCaptioner",
    "train_captioner",
]


# The captioners of the model contract, by the configuration's `model` field.
CAPTIONERS = {"meanpool": CaptionModel, "attention": AttentionCaptionModel}


def model_inputs(features: FeatureLookup, config: CaptionerConfig) -> FeatureLookup:
    """What the configured captioner reads for each image: the pooled feature vectors (N, F) of `features`, or for
    the attention captioner its spatial maps as annotation vectors (N, L, F) (`AnnotationLookup`). The baselines
    always read the pooled vectors."""
    return AnnotationLookup(features) if config.model == "attention" else features


def new_captioner(
    config: CaptionerConfig, vocab: Vocabulary, train_data: CaptionDataset
) -> CaptionModel | AttentionCaptionModel:
    """A fresh captioner (`config.model`) for `vocab` as `config` describes it: the output bias started at the
    training captions' log word frequencies, and (with `standardise_features`) the features standardised with
    statistics of the TRAINING images only (validation and test images must not leak into the model)."""
    model = CAPTIONERS[config.model](
        len(vocab), train_data.feature_size, word_counts=vocab.word_frequencies(), **config.model_options
    )
    if config.standardise_features:
        chunk = 256 if config.model == "attention" else 4096  # annotations are L = 49 times larger per image
        model.set_feature_standardisation(*feature_statistics(train_data.image_ids, train_data.features, chunk))
    return model


class ValidationCider:
    """`callable(model) -> float`: mean CIDEr-D of the model's greedy captions on validation images.

    Plugged into the Trainer as `val_metric`, it picks the best epoch and drives early stopping by what the
    captions are judged on, not by the loss (the two disagree late in training: the loss keeps rewarding
    confident word probabilities after the decoded captions have stopped improving, or got worse).

    vocab: the model's Vocabulary; image_ids (N,); references: image id -> raw captions; features (N, F).
    corpus_ids: the images whose references give CIDEr-D's document frequencies (default: the validation images).
        Pass the training images too: on a small validation set the IDF weights are noisy, and on ONE image every
        n-gram has IDF log(1/1) = 0, so CIDEr-D would be 0 for every caption and pick nothing.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        image_ids: Sequence[int] | np.ndarray,
        references: Mapping[int, Sequence[str]],
        features: np.ndarray,
        max_length: int = 17,
        allow_unk: bool = False,
        corpus_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.vocab, self.features = vocab, np.asarray(features)
        self.image_ids = [int(i) for i in image_ids]
        if len(self.image_ids) != len(self.features):
            raise ValueError(f"{len(self.image_ids)} validation ids but {len(self.features)} feature rows")
        self.references = [[tokenize(c) for c in references[i]] for i in self.image_ids]
        corpus = self.image_ids if corpus_ids is None else sorted({int(i) for i in corpus_ids} | set(self.image_ids))
        self.cider = CiderD([tokenize(c) for c in references[i]] for i in corpus)
        self.max_length, self.allow_unk = max_length, allow_unk

    def __call__(self, model: CaptionModel | AttentionCaptionModel) -> float:
        ids = greedy(model, self.features, max_length=self.max_length, allow_unk=self.allow_unk)
        scores = [
            self.cider.score(self.vocab.decode_tokens(row), refs)
            for row, refs in zip(ids, self.references, strict=True)
        ]
        return float(np.mean(scores))


@dataclasses.dataclass
class CaptionerData:
    """One split ready for training: the vocabulary (training captions only), the training and validation datasets
    (val None when there is no validation image), and the validation metric (a ValidationCider, or None when early
    stopping watches the loss)."""

    vocab: Vocabulary
    train: CaptionDataset
    val: CaptionDataset | None
    val_metric: ValidationCider | None
    num_truncated: int = 0  # training captions longer than config.max_length words, cut to their first words


def captioner_data(
    coco: CocoCaptions,
    features: FeatureLookup,
    train_ids: Sequence[int] | np.ndarray,
    val_ids: Sequence[int] | np.ndarray,
    config: CaptionerConfig,
    vocab: Vocabulary | None = None,
) -> CaptionerData:
    """Vocabulary, datasets and validation metric of a split (shared with benchmarks/peer_torch.py, so that both
    frameworks train on exactly the same arrays). `vocab`: use this vocabulary (a resumed run keeps its own).
    Missing features: one MissingFeaturesError naming the count and the first ids, before any model exists.
    `features` are the stored (pooled) ones; the datasets read `model_inputs(features, config)`."""
    features = model_inputs(features, config)
    encoded = encode_splits(coco, {"train": train_ids, "val": val_ids}, config.min_count, config.max_length, vocab)
    enc_train, enc_val = encoded["train"], encoded["val"]
    assert enc_train is not None
    val = None if enc_val is None else CaptionDataset(enc_val.captions, enc_val.image_ids, features, "validation")
    train = CaptionDataset(enc_train.captions, enc_train.image_ids, features, "training")
    val_metric = None
    if config.early_stopping == "cider" and val is not None:
        ids = np.unique(val.image_ids)
        val_metric = ValidationCider(
            encoded.vocab,
            ids,
            coco.references(),
            features.lookup(ids),
            config.decode_max_length,
            config.allow_unk,
            corpus_ids=np.unique(train.image_ids),  # document frequencies from all training + validation references
        )
    return CaptionerData(encoded.vocab, train, val, val_metric, enc_train.num_truncated)


@dataclasses.dataclass
class TrainedCaptioner:
    """A captioner trained on one split: the best epoch's model, its vocabulary and the training record."""

    model: CaptionModel | AttentionCaptionModel
    vocab: Vocabulary
    result: TrainResult
    seconds: float


def train_captioner(
    coco: CocoCaptions,
    features: FeatureLookup,
    train_ids: Sequence[int] | np.ndarray,
    val_ids: Sequence[int] | np.ndarray,
    config: CaptionerConfig = CaptionerConfig(),
    *,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    max_seconds: float | None = None,
    allow_other_features: bool = False,
    encoder: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainedCaptioner:
    """Train a captioner on the captions of `train_ids`, choosing its best epoch on `val_ids`.

    The model is `new_captioner(config, ...)`, trained by the one `Trainer` with `config.train_config()`. With
    `out_dir`, checkpoints/history/curves are written there (`best.npz` is the returned model). `resume`: continue
    the run saved in that checkpoint, with its own vocabulary, model and settings; features that differ from those
    the run was trained on are refused unless `allow_other_features` (`Trainer.from_checkpoint`). `max_seconds`: a
    time budget for this call (the run stops resumably when it runs out). `on_epoch`: told each epoch's record
    (`Trainer`; progress reports).
    """
    t0 = time.perf_counter()
    common: dict[str, Any] = {
        "encoder": encoder, "progress": progress, "log": log, "plot": out_dir is not None, "on_epoch": on_epoch,
    }  # fmt: skip
    if resume is not None:
        from minicap.checkpoint import load_checkpoint

        ckpt = load_checkpoint(resume)
        if not isinstance(ckpt.model, tuple(CAPTIONERS.values())) or ckpt.vocab is None:
            raise ValueError(f"{resume} does not hold a captioner (it holds a {type(ckpt.model).__name__})")
        data = captioner_data(coco, features, train_ids, val_ids, config, vocab=ckpt.vocab)
        out = out_dir if out_dir is not None else Path(resume).parent
        trainer = Trainer.from_checkpoint(
            ckpt,
            data.train,
            val_data=data.val,
            val_metric=data.val_metric,
            out_dir=out,
            allow_other_features=allow_other_features,
            **common,
        )
    else:
        data = captioner_data(coco, features, train_ids, val_ids, config)
        trainer = Trainer(
            new_captioner(config, data.vocab, data.train),
            data.train,
            config.train_config(),
            val_data=data.val,
            val_metric=data.val_metric,
            out_dir=out_dir,
            vocab=data.vocab,
            extra={"config": config.to_dict(), **(extra or {})},
            **common,
        )
    if log is not None:
        log(
            f"vocabulary: {len(data.vocab)} words (min count {config.min_count} in the training captions); "
            f"{len(data.train)} training captions, {data.num_truncated} of them cut to {config.max_length} words"
        )
    result = trainer.fit(max_seconds=max_seconds)
    best = result.best_model if result.best_model is not None else result.model
    assert isinstance(best, tuple(CAPTIONERS.values()))
    return TrainedCaptioner(best, data.vocab, result, time.perf_counter() - t0)

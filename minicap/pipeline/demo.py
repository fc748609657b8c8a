"""`minicap demo` (and lessons 06 and 07): a COCO folder in; the features once, the split by image, the one
captioner trained and compared with the two baselines on held-out photos; results files, metrics and figures out
(`run_demo`, which returns a DemoResult)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from minicap.baselines import NEAREST_NEIGHBOUR
from minicap.coco import coco_photo_path, find_coco, load_coco_captions
from minicap.config import CaptionerConfig
from minicap.experiments import HoldoutResult, holdout_evaluation, model_beam
from minicap.metrics import CaptionScorer, write_coco_results
from minicap.pipeline.features import Log, captions_with_features, ensure_encoder, ensure_features, make_scorer
from minicap.pipeline.training import config_split, split_record
from minicap.safe_io import atomic_write_json
from minicap.vision.store import FeatureStore

# The demo trains the one configuration with a time budget, so that the whole demo stays within ~3 minutes on
# 2 cores (the budget only bites on a slow or busy machine; the run stops resumably when it does).
DEMO_TIME_BUDGET = 100.0


@dataclasses.dataclass
class DemoResult:
    """What `run_demo` made. scores: system -> metric -> value; hypotheses: system -> image id -> caption."""

    out_dir: Path
    table: str
    scores: dict[str, dict[str, float]]
    hypotheses: dict[str, dict[int, str]]
    references: dict[int, list[str]]
    split: dict[str, list[int]]
    checkpoint: Path | None
    results_files: dict[str, Path]
    figure: Path
    metrics_file: Path
    encoder: Path
    features: Path
    seconds: dict[str, float]
    holdout: HoldoutResult = dataclasses.field(repr=False)

    def summary(self) -> str:
        files = [f"checkpoint {self.checkpoint}", f"figure {self.figure}", f"metrics {self.metrics_file}"]
        files.append("results " + ", ".join(str(p) for p in self.results_files.values()))
        timing = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        return "\n".join([self.table, "", *files, f"time: {timing}"])


def _slug(system: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in system).strip("_").replace("__", "_")


def run_demo(
    coco_dir: str | os.PathLike,
    out_dir: str | os.PathLike = "runs/demo",
    *,
    config: CaptionerConfig = CaptionerConfig(),
    max_train_seconds: float | None = DEMO_TIME_BUDGET,
    photos: int = 6,
    max_images: int | None = None,
    encoder: str | os.PathLike | None = None,
    arch: str = "efficientnet_lite0",
    scorer: CaptionScorer | None | str = "auto",
    progress: bool = True,
    log: Log | None = print,
) -> DemoResult:
    """Caption COCO photos end to end and compare the captioner with two baselines on held-out photos.

    coco_dir : DIR with images/*.jpg and captions.json (CocoDataMissing, with how to get data, if not).
    out_dir : work folder; the encoder and the features cached there are reused by the next run.
    config : the captioner (model, split, training, decoding); the one configuration of every command.
    max_train_seconds : a time budget for training (DEMO_TIME_BUDGET; None: none).
    photos : how many held-out photos the figure shows.
    max_images : use only the first N captioned images by id (lesson 06's --quick); None: all of them.
    encoder : use this encoder ONNX file instead of building `arch`'s (tests use a tiny one).
    scorer : a CaptionScorer to use (and leave open), None for CIDEr-D only, "auto" to start one (or fall back).
    Returns a DemoResult; `result.table` is the one table of metrics.
    """
    from minicap.plots import plot_captioned_photos

    log = log or (lambda line: None)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    folder = find_coco(coco_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    coco = load_coco_captions(folder.captions)
    if max_images is not None:
        coco = coco.subset(coco.image_ids()[:max_images])
    spatial = config.model == "attention"  # the attention captioner reads the spatial maps
    if encoder is not None:
        encoder_path = Path(encoder)
    else:  # the spatial encoder only when asked: the mean-pooled captioner's call is unchanged
        encoder_path = ensure_encoder(out, arch, log, spatial=True) if spatial else ensure_encoder(out, arch, log)
    features_path = out / ("features_spatial.pkl" if spatial else "features.pkl")
    store = ensure_features(folder, encoder_path, features_path, progress, log, coco, spatial)
    seconds["features"] = time.perf_counter() - t0

    coco = captions_with_features(coco, store, log)
    split = config_split(coco, config)
    log(
        f"data: {coco.num_captions} captions of {len(coco.image_ids())} images from {folder.root}; split by image "
        f"(seed {config.split_seed}): {len(split['train'])} train / {len(split['val'])} validation / "
        f"{len(split['test'])} test"
    )

    own_scorer = scorer == "auto"
    t0 = time.perf_counter()
    active_scorer = make_scorer(log) if own_scorer else scorer
    seconds["metrics start"] = time.perf_counter() - t0
    try:
        log(
            f"training: {config.cell.upper()} H={config.hidden_size} W={config.wordvec_size}, up to "
            f"{config.epochs} epochs, best epoch by validation "
            f"{'CIDEr-D' if config.early_stopping == 'cider' else 'loss'}"
            + (f", time budget {max_train_seconds:.0f} s" if max_train_seconds else "")
        )
        info = {**store.encoder_info(features_path), "onnx_path": str(encoder_path.resolve())}
        extra = {"data": split_record(folder.captions, features_path, split)}
        result = holdout_evaluation(
            coco, store, split["train"], split["val"], split["test"], config, active_scorer,
            out_dir=out / "model", max_seconds=max_train_seconds, encoder=info, extra=extra, progress=progress,
            log=log,
        )  # fmt: skip
    finally:
        if own_scorer and active_scorer is not None:
            active_scorer.close()
    for stage in ("train", "decode", "baselines", "score"):
        seconds[stage] = result.seconds[stage]
    train = result.captioner.result
    log(
        f"training stopped: {train.stopped} after {train.epochs} epochs ({train.seconds:.0f} s); best epoch "
        f"{train.best_epoch} (validation CIDEr-D {train.best_score:.3f})"
        if train.criterion == "val_metric" and train.best_score is not None
        else f"training stopped: {train.stopped} after {train.epochs} epochs; best epoch {train.best_epoch}"
    )

    t0 = time.perf_counter()
    results_files = {}
    for system, hyps in result.hypotheses.items():
        path = out / "results" / f"{_slug(system)}.json"
        write_coco_results(hyps, path)
        results_files[system] = path
    refs = coco.references()
    test_ids = [int(i) for i in result.test_ids]
    shown = test_ids[: max(0, photos)]
    beam = model_beam(config.beam_size)
    figure = plot_captioned_photos(
        [coco_photo_path(folder, coco, i) for i in shown],
        [{beam: result.hypotheses[beam][i], NEAREST_NEIGHBOUR: result.hypotheses[NEAREST_NEIGHBOUR][i]} for i in shown],
        out / "captioned_photos.png",
        references=[refs[i] for i in shown],
        titles=[f"image {i} (held out)" for i in shown],
    )
    if config.model == "attention" and shown:  # the paper's figure for the first held-out photo
        _demo_attention_figure(result, store, coco_photo_path(folder, coco, shown[0]), shown[0], config, out)
    seconds["files"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started

    metric_note = "pycocoevalcap" if active_scorer is not None else "CIDEr-D only"
    n_refs = np.mean([len(refs[i]) for i in test_ids])
    table = result.table(
        f"{len(test_ids)} held-out test photos ({n_refs:.3g} human captions each; metrics: {metric_note}); "
        f"model trained on {len(split['train'])} photos, best epoch chosen on {len(split['val'])}"
    )
    metrics_file = out / "metrics.json"
    atomic_write_json(
        metrics_file,
        {
            "scores": result.scores,
            "metrics_from": metric_note,
            "config": config.to_dict(),
            "split": {k: v.tolist() for k, v in split.items()},
            "training": {
                "stopped": train.stopped,
                "epochs": train.epochs,
                "best_epoch": train.best_epoch,
                "criterion": train.criterion,
                "best_score": train.best_score,
                "vocabulary": len(result.captioner.vocab),
            },
            "seconds": seconds,
        },
    )
    return DemoResult(
        out_dir=out,
        table=table,
        scores=result.scores,
        hypotheses=result.hypotheses,
        references={i: refs[i] for i in test_ids},
        split={k: v.tolist() for k, v in split.items()},
        checkpoint=train.best_path,
        results_files=results_files,
        figure=figure,
        metrics_file=metrics_file,
        encoder=encoder_path,
        features=features_path,
        seconds=seconds,
        holdout=result,
    )


def _demo_attention_figure(
    result: HoldoutResult, store: FeatureStore, photo: Path, image_id: int, config: CaptionerConfig, out: Path
) -> Path:
    """out/attention_maps.png: one held-out photo's greedy caption, each word with its attention map."""
    from minicap.dataset import AnnotationLookup
    from minicap.decode import greedy
    from minicap.plots import encoder_crop, plot_attention
    from minicap.tokens import END, NULL
    from minicap.vision.encoders.spec import load_rgb, preprocess

    model, vocab = result.captioner.model, result.captioner.vocab
    lookup = AnnotationLookup(store)
    ids, maps = greedy(model, lookup.lookup([image_id]), config.decode_max_length, config.allow_unk, True)
    n = int(np.sum(ids[0] != NULL))
    words = [vocab.idx_to_word[int(w)] if int(w) != END else "<end>" for w in ids[0, :n]]
    spec = store.spec
    if spec is None:
        raise ValueError("the feature store records no EncoderSpec: the photo's crop cannot be drawn")
    crop = encoder_crop(preprocess(load_rgb(photo), spec), spec.mean, spec.std)
    return plot_attention(
        crop, words, maps[0, :n], lookup.grid, out / "attention_maps.png", f"image {image_id} (held out)"
    )

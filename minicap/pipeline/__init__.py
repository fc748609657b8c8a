"""minicap's main job end to end: a COCO folder (or a features file and a captions file) in; a trained captioner,
captions, metrics and a figure out.

Only this module and the CLI tie the pieces together; it holds no maths of its own, and nothing below imports it.
Every command runs the same stages, configured by the one `CaptionerConfig`:

    DIR/images/*.jpg + DIR/captions.json                           (minicap.coco.find_coco: a clear message if absent)
      │ minicap.vision.encoders : EfficientNet-Lite0 .pth ──▶ ONNX graph   (ensure_encoder: built once, cached)
      │ minicap.vision.extract  : JPEG ──▶ ONNX Runtime ──▶ FeatureStore    (ensure_features: once, resumable)
      │ minicap.coco            : split BY IMAGE: train / val / test       (split_images, deterministic seed)
      │ minicap.captioner       : vocabulary, model, the one Trainer (best epoch by validation CIDEr-D)
      │ minicap.experiments     : the test images captioned greedily and by beam search, the two baselines,
      │                           BLEU / METEOR / ROUGE-L / CIDEr
      ▼ minicap.plots           : held-out photos beside their generated and reference captions

Files of a demo run (`out_dir`, default runs/demo; the encoder and the features are reused by later runs):

    efficientnet_lite0.onnx   the encoder            features.pkl           one feature vector per image
    model/best.npz            the captioner          model/history.json, model/training_curves.png
    results/<system>.json     COCO results format    metrics.json           the table's numbers, settings, split
    captioned_photos.png      the figure

Threads: one training step of this small model (N=64, T=13, H=256, V=653) on the shared 2-core machine this was
written on took, median: idle machine, 75 ms with 1 OpenBLAS thread and 46 ms with 2; one core busy with another
process, 60-74 ms with 1 thread and 128-165 ms with 2; under heavier load 0.12 s against 1.39 s. Two threads wait
for each other, and a thread that has lost its core stalls both. The CLI therefore sets OPENBLAS_NUM_THREADS=1
(unless set) before NumPy loads; on a machine of your own, OPENBLAS_NUM_THREADS=2 trains about 1.6× faster.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minicap.baselines import NEAREST_NEIGHBOUR, baseline_captions
from minicap.captioner import TrainedCaptioner, model_inputs, train_captioner
from minicap.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from minicap.coco import (
    CocoCaptions,
    CocoFolder,
    coco_photo_path,
    find_coco,
    join_captions,
    load_coco_captions,
    locate_photos,
    split_images,
)
from minicap.config import CaptionerConfig
from minicap.dataset import FeatureLookup, JoinedFeatures
from minicap.decode import generate_captions
from minicap.experiments import MODEL_GREEDY, HoldoutResult, holdout_evaluation, model_beam
from minicap.metrics import (
    CaptionScorer,
    EvaluationUnavailable,
    check_eval_dependencies,
    format_metrics_table,
    score_systems,
    write_coco_results,
)
from minicap.models import AttentionCaptionModel, CaptionModel
from minicap.safe_io import atomic_write_json, sha256_file
from minicap.text import Vocabulary
from minicap.vision.store import FeatureStore, FeatureStoreError

__all__ = [
    "DEMO_TIME_BUDGET",
    "ensure_encoder",
    "ensure_features",
    "captions_with_features",
    "make_scorer",
    "DemoResult",
    "run_demo",
    "split_record",
    "config_split",
    "train_from_files",
    "load_captioner",
    "EncoderNotFound",
    "resolve_encoder",
    "CaptionRun",
    "caption_files",
    "evaluate_checkpoint",
]

Log = Callable[[str], None]

# The demo trains the one configuration with a time budget, so that the whole demo stays within ~3 minutes on
# 2 cores (the budget only bites on a slow or busy machine; the run stops resumably when it does).
DEMO_TIME_BUDGET = 100.0

# ============================================================================================ encoder, features


def ensure_encoder(
    work_dir: str | os.PathLike, arch: str = "efficientnet_lite0", log: Log | None = None, spatial: bool = False
) -> Path:
    """`work_dir/<arch>.onnx` (`<arch>_spatial.onnx` with `spatial`: it also outputs the last feature map, for the
    attention captioner), built from the installed pretrained weights unless a valid one is already there."""
    import onnx

    from minicap.vision.encoders import build_encoder, read_encoder_metadata, save_encoder

    log = log or (lambda line: None)
    path = Path(work_dir) / f"{arch}{'_spatial' if spatial else ''}.onnx"
    if path.is_file():
        try:
            outputs = (
                {o.name for o in onnx.load(str(path), load_external_data=False).graph.output} if spatial else set()
            )
            if read_encoder_metadata(path)["arch"] == arch and (not spatial or "spatial" in outputs):
                log(f"encoder: reusing {path}")
                return path
        except ValueError:
            pass  # not a minicap encoder (or damaged): rebuild it below
        log(f"encoder: {path} is not a usable {arch} encoder; rebuilding it")
    t0 = time.perf_counter()
    save_encoder(build_encoder(arch, spatial=spatial), path)
    log(f"encoder: built {arch} from its pretrained weights (no torch) -> {path} ({time.perf_counter() - t0:.1f} s)")
    return path


def ensure_features(
    folder: CocoFolder,
    encoder_path: str | os.PathLike,
    features_path: str | os.PathLike,
    progress: bool = True,
    log: Log | None = None,
    coco: CocoCaptions | None = None,
    spatial: bool = False,
) -> FeatureStore:
    """The FeatureStore of every photo of `folder` (or only of `coco`'s images) at `features_path`: extracted
    once, then reused.

    `extract_features` is resumable and keyed by the ONNX file's sha256: images already in the store are reused,
    only new ones go through ONNX Runtime, and a store from another encoder is refused (never mixed). Photos listed
    in the captions but absent from the folder are listed as skipped ("file not found"), like unreadable ones.
    """
    from minicap.vision.extract import extract_features

    log = log or (lambda line: None)
    paths = locate_photos(coco if coco is not None else folder.captions, folder.images).everything()
    if coco is not None:
        paths = {i: p for i, p in paths.items() if i in coco.images}
    store = extract_features(paths, encoder_path, features_path, progress=progress, spatial=spatial)
    run = store.manifest["extraction"]
    log(
        f"features: {run['extracted']} extracted, {run['reused']} reused, {run['skipped']} unreadable "
        f"({run['seconds']:.1f} s) -> {features_path}: {len(store)} images x {store.feature_size}"
        + (f", spatial maps {store.spatial_shape}" if store.spatial is not None else "")
    )
    for s in store.skipped[:5]:
        log(f"  skipped image {s['id']} ({s['path']}): {s['reason']}")
    return store


def captions_with_features(coco: CocoCaptions, store: FeatureStore, log: Log | None = None) -> CocoCaptions:
    """The captions of the images that have features (photos missing from the folder, or unreadable, drop out)."""
    log = log or (lambda line: None)
    have = [int(i) for i in coco.image_ids() if int(i) in store]
    dropped = len(coco.image_ids()) - len(have)
    if dropped:
        log(f"{dropped} captioned images have no photo/features and are left out; {len(have)} remain")
    if not have:
        raise ValueError("none of the captioned images has features: nothing to train on")
    return coco.subset(have)


def make_scorer(log: Log | None = None) -> CaptionScorer | None:
    """A CaptionScorer with METEOR started, or None (with a note) when pycocoevalcap or Java is missing: then only
    CIDEr-D (pure Python) is reported."""
    log = log or (lambda line: None)
    try:
        check_eval_dependencies()
    except EvaluationUnavailable as e:
        log(f"note: {e}\n      -> reporting CIDEr-D only (pure Python) instead of all COCO metrics")
        return None
    scorer = CaptionScorer()
    log("metrics: starting METEOR (a Java process that loads a 62 MB paraphrase table) ...")
    log(f"metrics: METEOR ready ({scorer.warm_up():.1f} s)")
    return scorer


# ============================================================================================ the demo


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


# ============================================================================================ training from files


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


# ============================================================================================ captioning JPEGs


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


# ============================================================================================ evaluating a checkpoint


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    features: str | os.PathLike,
    captions: str | os.PathLike,
    scorer: CaptionScorer | None = None,
    *,
    beam_size: int | None = None,
    log: Log | None = None,
) -> tuple[str, dict[str, dict[str, float]], dict[str, dict[int, str]]]:
    """Score a trained checkpoint on the held-out images its header records (`extra.data.test_image_ids`).

    The baselines use the images of `captions` that are neither validation nor test images as their training
    set (the split the checkpoint records). Without recorded test ids, every captioned image is scored and no
    baseline is computed: for a run trained on one folder and validated on another (it records both folders' ids)
    that is a held-out score when `captions` shares no image with them (a warning names the shared ones
    otherwise); for any other run the model may have seen those images, and the numbers are not a held-out score.
    Captions whose images have no features: one MissingFeaturesError (count, first ids). Features of another
    size than the model's, or from another encoder file than it records: FeatureStoreError. Decoding follows the
    checkpoint's configuration (beam_size overrides its beam width). Returns (table, scores, hypotheses).
    """
    log = log or (lambda line: None)
    ckpt, model, vocab, config = load_captioner(checkpoint)
    beam_size = config.beam_size if beam_size is None else beam_size
    store = FeatureStore.load(features)
    store.check_feature_size(model.feature_size, what=f"checkpoint {checkpoint}")
    want, got = ckpt.encoder.get("onnx_sha256"), store.manifest.get("onnx_sha256")
    if want and got and want != got:  # e.g. a test folder extracted with another encoder file of the same size
        raise FeatureStoreError(
            f"{features} was extracted with encoder {got[:12]}..., {checkpoint} was trained on features of "
            f"{want[:12]}... ({ckpt.encoder.get('architecture')}): extract them with the same encoder file"
        )
    coco = load_coco_captions(captions)
    data = ckpt.extra.get("data", {})
    test_ids = np.asarray(data.get("test_image_ids") or coco.image_ids(), dtype=np.int64)
    unknown = sorted(set(test_ids.tolist()) - set(coco.images))
    if unknown:
        raise ValueError(
            f"{len(unknown)} test images recorded in {checkpoint} are not in {captions} (first: {unknown[:5]}): "
            "evaluate with the captions file the checkpoint was trained on"
        )
    test_features = model_inputs(store, config).lookup(test_ids)  # MissingFeaturesError if any lacks features
    hypotheses = {}
    for beam, name in ((1, MODEL_GREEDY), (beam_size, model_beam(beam_size))):
        texts = generate_captions(
            model, vocab, test_features, beam, config.decode_max_length, config.allow_unk, config.length_penalty
        )
        hypotheses[name] = {int(i): t for i, t in zip(test_ids, texts, strict=True)}
    if data.get("test_image_ids"):
        held = set(test_ids.tolist()) | {int(i) for i in data.get("val_image_ids", [])}
        train_ids = [int(i) for i in coco.image_ids() if int(i) not in held and int(i) in store]
        hypotheses.update(baseline_captions(coco, store, train_ids, test_ids, config.nn_k))
        what = f"{len(test_ids)} held-out test images recorded in the checkpoint"
    elif "train_image_ids" in data:  # trained on one folder, validated on another: is `captions` a third?
        seen = {int(i) for i in data["train_image_ids"]} | {int(i) for i in data.get("val_image_ids", [])}
        if overlap := sorted(seen.intersection(test_ids.tolist())):
            log(
                f"warning: {len(overlap)} of the {len(test_ids)} images of {captions} were training or validation "
                f"images of {checkpoint} (first: {overlap[:5]}): this is NOT a held-out score"
            )
            seen_note = f"{len(overlap)} seen in training or validation: NOT held out"
            what = f"all {len(test_ids)} images of {captions} ({seen_note})"
        else:
            log(
                f"note: {checkpoint} records no test images; scoring all {len(test_ids)} images of {captions}, "
                "none of which it trained or validated on (a held-out score)"
            )
            what = f"all {len(test_ids)} images of {captions} (held out: none seen in training or validation)"
    else:
        log(f"note: {checkpoint} records no test images; scoring all {len(test_ids)} images (not a held-out score)")
        what = f"all {len(test_ids)} images of {captions} (NOT held out)"
    scores = score_systems(coco.references(), hypotheses, scorer)
    rows = {s: {m: (v, None) for m, v in row.items()} for s, row in scores.items()}
    return format_metrics_table(rows, f"{checkpoint} on {what}"), scores, hypotheses

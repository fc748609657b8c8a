"""The encoder and the features, each made once, and the caption scorer: what `minicap demo` and `minicap evaluate`
start with.

`ensure_encoder` builds the ONNX encoder from the installed pretrained weights (or reuses a valid one),
`ensure_features` extracts every photo's features into a FeatureStore (resumable, keyed by the encoder),
`captions_with_features` keeps the captions of the images that have features, and `make_scorer` starts METEOR
(or falls back to CIDEr-D only). `Log` is the type of every `log` argument of the package.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from minicap.coco import CocoCaptions, CocoFolder, locate_photos
from minicap.metrics import CaptionScorer, EvaluationUnavailable, check_eval_dependencies
from minicap.vision.store import FeatureStore

Log = Callable[[str], None]


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

"""`minicap evaluate --checkpoint`: a trained checkpoint scored on the held-out images its header records,
beside the two baselines (`evaluate_checkpoint`)."""

from __future__ import annotations

import os

import numpy as np

from minicap.baselines import baseline_captions
from minicap.captioner import model_inputs
from minicap.coco import load_coco_captions
from minicap.decode import generate_captions
from minicap.experiments import MODEL_GREEDY, model_beam
from minicap.metrics import CaptionScorer, format_metrics_table, score_systems
from minicap.pipeline.captioning import load_captioner
from minicap.pipeline.features import Log
from minicap.vision.store import FeatureStore, FeatureStoreError


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

"""minicap's main job end to end: a COCO folder (or a features file and a captions file) in; a trained captioner,
captions, metrics and a figure out.

Only this package and the CLI tie the pieces together; it holds no maths of its own, and nothing below imports it.
One module per command, and the first stage they share:

    features.py    the encoder and the features, each made once (ensure_encoder, ensure_features); the scorer
    demo.py        `minicap demo`, lessons 06 and 07: run_demo, a COCO folder end to end
    training.py    `minicap train`: train_from_files; the split by image and what a checkpoint records of it
    captioning.py  `minicap caption`: caption_files, load_captioner, resolve_encoder (the checkpoint's encoder)
    evaluation.py  `minicap evaluate --checkpoint`: evaluate_checkpoint on the held-out images it records

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

from minicap.pipeline.captioning import CaptionRun, EncoderNotFound, caption_files, load_captioner, resolve_encoder
from minicap.pipeline.demo import DEMO_TIME_BUDGET, DemoResult, run_demo
from minicap.pipeline.evaluation import evaluate_checkpoint
from minicap.pipeline.features import Log, captions_with_features, ensure_encoder, ensure_features, make_scorer
from minicap.pipeline.training import config_split, split_record, train_from_files

__all__ = [
    "Log", "ensure_encoder", "ensure_features", "captions_with_features", "make_scorer",
    "DEMO_TIME_BUDGET", "DemoResult", "run_demo",
    "split_record", "config_split", "train_from_files",
    "load_captioner", "EncoderNotFound", "resolve_encoder", "CaptionRun", "caption_files",
    "evaluate_checkpoint",
]  # fmt: skip

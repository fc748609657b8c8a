"""minicap: image captioning from scratch in NumPy.

The teaching core, in the order a student reads it:

    nn/          the maths: forward/backward pairs, the RNN and LSTM as loops over their steps (nn/fast.py: the
                 same sequence functions made fast, proven equal)
    gradcheck    the proof that every backward pass is right
    optim        SGD, momentum, Adam, schedules, global-norm clipping
    models/      the model contract and the models on it: CaptionModel, LSTMLanguageModel, SequenceRegressor
    train        the ONE training loop, for every model
    decode       greedy, sampling, beam search

Around it, the data and the image side:

    tokens, text, coco, dataset     special tokens; tokenize/vocabulary; COCO files and splits; batches
    vision/                         encoders (.pth -> ONNX without torch), feature extraction, the feature store
    config, captioner               the ONE captioner configuration, and the one recipe that trains it
    metrics, baselines, experiments caption metrics, the baselines, hold-out and k-fold runs
    pipeline, cli                   the commands (nothing imports them)

The main entry points are importable from here: `from minicap import CaptionModel, CaptionerConfig, Trainer`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from minicap.version import __version__

# Where each entry point lives. They are imported on first use (PEP 562), not here: `import minicap.cli` must not
# load NumPy, because the command line asks OpenBLAS for one thread (cli.captioning.one_blas_thread), which only works
# before NumPy is first imported.
_ENTRY_POINTS = {
    "CaptionModel": "minicap.models",
    "LSTMLanguageModel": "minicap.models",
    "SequenceRegressor": "minicap.models",
    "CaptionerConfig": "minicap.config",
    "TrainConfig": "minicap.train",
    "Trainer": "minicap.train",
    "train_captioner": "minicap.captioner",
}

__all__ = [
    "__version__",
    "CaptionModel",
    "LSTMLanguageModel",
    "SequenceRegressor",
    "CaptionerConfig",
    "TrainConfig",
    "Trainer",
    "train_captioner",
]

if TYPE_CHECKING:
    from minicap.captioner import train_captioner
    from minicap.config import CaptionerConfig
    from minicap.models import CaptionModel, LSTMLanguageModel, SequenceRegressor
    from minicap.train import TrainConfig, Trainer


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'minicap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ENTRY_POINTS])

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

from minicap.captioner import train_captioner
from minicap.config import CaptionerConfig
from minicap.models import CaptionModel, LSTMLanguageModel, SequenceRegressor
from minicap.train import TrainConfig, Trainer
from minicap.version import __version__

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

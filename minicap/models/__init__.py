"""The models: each one a flat dict of parameters with a hand-written loss and gradients, built only from
`minicap.nn`, and each one keeping the same contract (`minicap.models.base`), so that one training loop, one
checkpoint format and one set of decoders serve them all.

    base.py        the contract: params, config/from_config, constants, loss, initial_state/step, State, fast
    caption.py     CaptionModel: image features -> h0 -> LSTM/RNN -> words (Show and Tell)
    attention.py   AttentionCaptionModel: L annotation vectors, soft attention at every word (Show, Attend and Tell)
    language.py    LSTMLanguageModel: the captioner without the image; perplexity; streams for truncated BPTT
    ngram.py       unigram and bigram models, the baselines of the language model
    regressor.py   SequenceRegressor: one number from the last hidden state; the adding problem (lessons 01-04)
"""

from minicap.models.attention import AttentionCaptionModel, AttentionState
from minicap.models.base import SequenceModel, State, load_params
from minicap.models.caption import CaptionModel
from minicap.models.language import LSTMLanguageModel
from minicap.models.regressor import SequenceRegressor

__all__ = [
    "SequenceModel",
    "State",
    "load_params",
    "CaptionModel",
    "AttentionCaptionModel",
    "AttentionState",
    "LSTMLanguageModel",
    "SequenceRegressor",
]

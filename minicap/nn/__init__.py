"""The maths of minicap: every differentiable piece as a pure forward/backward pair, in NumPy.

    layers.py  affine, word embedding, temporal affine, masked temporal softmax loss, MSE loss, stable sigmoid
    rnn.py     vanilla tanh RNN: one step and a whole sequence (BPTT)
    lstm.py    LSTM: one step, a whole sequence (BPTT), truncated BPTT

This package imports nothing else from minicap.
"""

from minicap.nn.layers import (
    AffineCache,
    EmbeddingCache,
    TemporalAffineCache,
    affine_backward,
    affine_forward,
    log_softmax,
    mse_loss,
    sigmoid,
    softmax_loss,
    temporal_affine_backward,
    temporal_affine_forward,
    temporal_softmax_loss,
    word_embedding_backward,
    word_embedding_forward,
)
from minicap.nn.lstm import (
    LSTMCache,
    LSTMGrads,
    LSTMStepCache,
    lstm_backward,
    lstm_backward_truncated,
    lstm_forward,
    lstm_forward_truncated,
    lstm_state_gradients,
    lstm_step_backward,
    lstm_step_forward,
    lstm_weights_from_torch_order,
)
from minicap.nn.rnn import (
    RNNCache,
    RNNGrads,
    RNNStepCache,
    rnn_backward,
    rnn_forward,
    rnn_state_gradients,
    rnn_step_backward,
    rnn_step_forward,
)

__all__ = [
    "AffineCache",
    "EmbeddingCache",
    "TemporalAffineCache",
    "affine_backward",
    "affine_forward",
    "log_softmax",
    "mse_loss",
    "sigmoid",
    "softmax_loss",
    "temporal_affine_backward",
    "temporal_affine_forward",
    "temporal_softmax_loss",
    "word_embedding_backward",
    "word_embedding_forward",
    "LSTMCache",
    "LSTMGrads",
    "LSTMStepCache",
    "lstm_backward",
    "lstm_backward_truncated",
    "lstm_forward",
    "lstm_forward_truncated",
    "lstm_state_gradients",
    "lstm_step_backward",
    "lstm_step_forward",
    "lstm_weights_from_torch_order",
    "RNNCache",
    "RNNGrads",
    "RNNStepCache",
    "rnn_backward",
    "rnn_forward",
    "rnn_state_gradients",
    "rnn_step_backward",
    "rnn_step_forward",
]

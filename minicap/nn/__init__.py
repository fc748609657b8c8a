"""The maths of minicap: every differentiable piece as a pure forward/backward pair, in NumPy.

Read in this order:

    layers.py  affine, word embedding, inverted dropout, temporal affine, masked softmax loss, MSE loss, stable sigmoid
    rnn.py     vanilla tanh RNN: one step forward/backward; a whole sequence as a loop over the step (BPTT)
    lstm.py    LSTM: one step forward/backward; a whole sequence as a loop over the step (BPTT); truncated BPTT
    gru.py     GRU: one step forward/backward; a whole sequence as a loop over the step (BPTT)
    attention.py  soft attention (Show, Attend and Tell): additive scores, the gate β, the attention-LSTM step
               and its sequence loop, h0/c0 from the mean annotation, the doubly stochastic regulariser
    packing.py which rows run at each step of a batch sorted longest first (`active_counts`, `pack`): the
               bookkeeping the fast paths share
    fast.py    the same sequence functions made fast (one GEMM for all inputs, buffers, packed lengths);
               `from minicap.nn import fast` then `fast.lstm_forward(...)` — proven equal to the loops above
    fast_packed.py  the caption model's LSTM step packed end to end (only the positions that run, arrays
               reused from step to step); its names are re-exported by fast.py
    fast_attention.py  the attention decoder's loop made fast (re-exported by fast.py)

The plain names (`nn.lstm_forward`, `nn.rnn_backward`, ...) are the readable reference path.
This package imports nothing else from minicap.
"""

from minicap.nn import attention, fast, fast_packed, packing
from minicap.nn.gru import (
    GRUCache,
    GRUGrads,
    GRUStepCache,
    gru_backward,
    gru_forward,
    gru_state_gradients,
    gru_step_backward,
    gru_step_forward,
    gru_weights_from_torch_order,
)
from minicap.nn.layers import (
    AffineCache,
    DropoutCache,
    EmbeddingCache,
    TemporalAffineCache,
    affine_backward,
    affine_forward,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    log_softmax,
    mse_loss,
    sigmoid,
    softmax_loss,
    temporal_affine_backward,
    temporal_affine_forward,
    temporal_softmax_loss,
    word_embedding_backward,
    word_embedding_forward,
    words_loss,
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
    running_mask,
)

__all__ = [
    "attention",
    "fast",
    "fast_packed",
    "packing",
    "AffineCache",
    "DropoutCache",
    "EmbeddingCache",
    "TemporalAffineCache",
    "affine_backward",
    "affine_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "log_softmax",
    "mse_loss",
    "sigmoid",
    "softmax_loss",
    "temporal_affine_backward",
    "temporal_affine_forward",
    "temporal_softmax_loss",
    "word_embedding_backward",
    "word_embedding_forward",
    "words_loss",
    "GRUCache",
    "GRUGrads",
    "GRUStepCache",
    "gru_backward",
    "gru_forward",
    "gru_state_gradients",
    "gru_step_backward",
    "gru_step_forward",
    "gru_weights_from_torch_order",
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
    "running_mask",
]

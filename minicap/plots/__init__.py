"""Figures. Every function draws on its own `matplotlib.figure.Figure` (no pyplot: no global state, no window, no GUI
backend — the PNG is rendered by Agg) and writes the file atomically (`save_figure`).

    save.py       save_figure: render to PNG in memory, write atomically
    training.py   training curves, learning-rate sweeps, optimisers, truncated BPTT, decoding (lessons 04–06, runs)
    photos.py     captioned photos (the demo, lesson 06, `minicap caption --figures`)
    gradients.py  lessons 01–03: vanishing and exploding gradients, the LSTM cell
    attention.py  attention maps over a photo, Σ_t α_ti (lesson 07)
"""

from __future__ import annotations

from minicap.plots.attention import encoder_crop, plot_attention, plot_attention_sums, upsample_attention
from minicap.plots.gradients import (
    plot_adding_curves,
    plot_clipping_runs,
    plot_gradient_panels,
    plot_lstm_cell_diagram,
    plot_lstm_step,
    plot_trained_memory,
    plot_unrolled_rnn,
    plot_why_rnn_fails,
)
from minicap.plots.photos import photo_array, plot_captioned_photos
from minicap.plots.save import save_figure
from minicap.plots.training import (
    plot_adam_bias_correction,
    plot_carry_vs_reset,
    plot_context_use,
    plot_decoding,
    plot_learning_rate_sweep,
    plot_optimiser_curves,
    plot_training_curves,
)

__all__ = [
    "save_figure", "photo_array", "plot_captioned_photos",
    "plot_training_curves", "plot_learning_rate_sweep", "plot_optimiser_curves", "plot_adam_bias_correction",
    "plot_carry_vs_reset", "plot_context_use", "plot_decoding",
    "plot_unrolled_rnn", "plot_gradient_panels", "plot_adding_curves", "plot_trained_memory", "plot_why_rnn_fails",
    "plot_clipping_runs", "plot_lstm_cell_diagram", "plot_lstm_step",
    "upsample_attention", "plot_attention", "encoder_crop", "plot_attention_sums",
]  # fmt: skip

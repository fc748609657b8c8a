"""The caption model of minicap written in PyTorch, two ways, for the speed benchmarks (bench_train_step.py,
bench_decode.py). Imported only by benchmarks: torch is never imported in minicap/.

Both take minicap's parameters (`copy_from`), so on the same batch they compute minicap's loss:
- "packed" — what a PyTorch user who cares about speed writes (and the well-known captioning tutorials do): the
  batch packed by caption length (`pack_padded_sequence`, sorting inside), `nn.LSTM` on the packed sequence, the
  vocabulary projection and cross-entropy only on the packed (real) positions, summed / N;
- "padded" — the plain recipe: `nn.LSTM` over the whole padded batch, every position scored, the loss masked
  afterwards.
"""

from __future__ import annotations

import numpy as np
import torch

from minicap.models import CaptionModel

# minicap's LSTM gate blocks are (i, f, o, g); torch's are (i, f, g, o). The permutation is its own inverse.
TORCH_FROM_MINICAP = [0, 1, 3, 2]


def reorder_gates(a: np.ndarray, axis: int) -> np.ndarray:
    blocks = np.split(a, 4, axis=axis)
    return np.concatenate([blocks[k] for k in TORCH_FROM_MINICAP], axis=axis)


class TorchCaptioner(torch.nn.Module):
    """features -> Linear -> h0; Embedding; one-layer LSTM (c0 = 0); Linear to the vocabulary."""

    def __init__(self, V: int, F: int, W: int, H: int, recipe: str = "packed") -> None:
        super().__init__()
        if recipe not in ("packed", "padded"):
            raise ValueError(f"recipe must be 'packed' or 'padded', got {recipe!r}")
        self.recipe = recipe
        self.proj = torch.nn.Linear(F, H)
        self.embed = torch.nn.Embedding(V, W)
        self.lstm = torch.nn.LSTM(W, H, batch_first=True)
        self.vocab = torch.nn.Linear(H, V)

    def copy_from(self, model: CaptionModel) -> TorchCaptioner:
        """Load minicap's parameters (torch's second LSTM bias bias_hh is set to 0: b = bias_ih + bias_hh)."""
        p = model.params
        with torch.no_grad():
            self.proj.weight.copy_(torch.from_numpy(p["W_proj"].T.copy()))
            self.proj.bias.copy_(torch.from_numpy(p["b_proj"]))
            self.embed.weight.copy_(torch.from_numpy(p["W_embed"]))
            self.lstm.weight_ih_l0.copy_(torch.from_numpy(reorder_gates(p["Wx"].T, 0).copy()))
            self.lstm.weight_hh_l0.copy_(torch.from_numpy(reorder_gates(p["Wh"].T, 0).copy()))
            self.lstm.bias_ih_l0.copy_(torch.from_numpy(reorder_gates(p["b"], 0).copy()))
            self.lstm.bias_hh_l0.zero_()
            self.vocab.weight.copy_(torch.from_numpy(p["W_vocab"].T.copy()))
            self.vocab.bias.copy_(torch.from_numpy(p["b_vocab"]))
        return self

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy / N. captions (N, T+1) <START> w … <END> <NULL>…; lengths (N,) int64 on the CPU:
        positions per caption (words + <END>), the steps the LSTM must run."""
        h0 = self.proj(features).unsqueeze(0)
        state = (h0, torch.zeros_like(h0))
        words_in, targets = captions[:, :-1], captions[:, 1:]
        if self.recipe == "packed":
            pack = torch.nn.utils.rnn.pack_padded_sequence
            x = pack(self.embed(words_in), lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(x, state)  # a PackedSequence: only the real positions
            scores = self.vocab(out.data)  # (K, V)
            packed_targets = pack(targets, lengths, batch_first=True, enforce_sorted=False).data
            return torch.nn.functional.cross_entropy(scores, packed_targets, reduction="sum") / captions.shape[0]
        out, _ = self.lstm(self.embed(words_in), state)
        V = self.vocab.out_features
        scores = self.vocab(out)
        mask = (targets != 0).float()
        nll = torch.nn.functional.cross_entropy(scores.reshape(-1, V), targets.reshape(-1), reduction="none")
        return (nll * mask.reshape(-1)).sum() / captions.shape[0]

    @torch.no_grad()
    def initial_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h0 = self.proj(features).unsqueeze(0)
        return h0, torch.zeros_like(h0)

    @torch.no_grad()
    def step(self, words: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One decoding step: words (B,) -> logits (B, V), new state ((1, B, H), (1, B, H))."""
        out, state = self.lstm(self.embed(words).unsqueeze(1), state)
        return self.vocab(out[:, 0]), state

"""Lesson 07 — soft attention (Show, Attend and Tell): where the captioner looks for each word.

THE ONE-VECTOR BOTTLENECK. Lesson 06's captioner sees a photo once, as ONE vector: EfficientNet-Lite0's last feature
map, 7 × 7 positions of 1280 channels, averaged into 1280 numbers that set h0. Every word is then written from
whatever survived that average in the LSTM's state. Xu et al. (2015) keep the 49 vectors a_1 … a_49 ("annotations",
one per cell of the grid) and let the decoder take a different weighted mean of them for every word:

    e_ti = w_attᵀ tanh(a_i U + h_{t−1} W_att + b_att)     minicap.nn.attention.attention_forward (a_i U: once per photo)
    α_t  = softmax_i(e_t)                                  where to look: 49 weights that sum to 1
    z_t  = Σ_i α_ti a_i,   β_t = σ(h_{t−1} · w_β + b_β)     gate_forward: how much of the picture this word needs
    h_t, c_t = LSTM([x_t, β_t z_t], h_{t−1}, c_{t−1})     lstm_step_forward, unchanged, on [word, context]
    loss = −Σ_t log p(w_t) + λ Σ_i (1 − Σ_t α_ti)²        doubly_stochastic_loss: every cell looked at ~once

Every backward pass of those functions is written by hand and gradient-checked (`minicap gradcheck`).

WHAT THE LESSON DOES, on the photos of assets/coco (600 real COCO photos committed with minicap):
  1. the bottleneck measured: the pooled vector IS the mean of the 49 annotation vectors, and the 49 differ (how
     far each is from the mean);
  2. one decoding step done by hand with the functions of minicap.nn.attention, equal to the model's `step`;
  3. two attention captioners trained by the library's pipeline (`minicap.pipeline.run_demo` with
     model="attention"), λ = 1 (the paper's) and λ = 0, on the same split; their held-out CIDEr-D beside the
     mean-pooled captioner's;
  4. what the regulariser does to the maps: per held-out photo and cell, Σ_t α_ti over the caption's words; with
     λ = 0 a few cells take most of the attention, with λ > 0 it spreads (the spread of Σ_t α_ti over cells,
     and the share of cells hardly ever looked at, Σ_t α_ti < 0.1);
  5. where attention looks for content words (nouns, verbs, adjectives) against function words ("a", "of", "the"):
     the entropy of α (ln 49 = 3.89 nats is uniform) and its peak, averaged per class;
  6. the paper's figure for held-out photos (attention_maps.png: each word beside the photo with its map).

Run:  python lessons/07_attention.py [--coco DIR] [--out DIR] [--quick]
Writes into DIR (default lessons/out/07_attention): attention_maps_0.png, attention_maps_1.png, attention_sums.png,
summary.json and the
pipeline's files. --quick: the first 120 photos, 20 held out, 10 epochs (for tests).
"""

# %% Setup
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from minicap.coco import CocoDataMissing, choose_coco_dir, coco_photo_path, find_coco, load_coco_captions
from minicap.config import CaptionerConfig
from minicap.dataset import AnnotationLookup
from minicap.decode import greedy
from minicap.experiments import MODEL_GREEDY, model_beam
from minicap.nn import attention as att
from minicap.nn.lstm import lstm_step_forward
from minicap.pipeline import run_demo
from minicap.plots import encoder_crop, plot_attention, plot_attention_sums
from minicap.safe_io import atomic_write_json
from minicap.tokens import END, NULL, START
from minicap.vision.encoders.spec import load_rgb, preprocess
from minicap.vision.store import FeatureStore

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
parser = argparse.ArgumentParser(description="Lesson 07: soft attention")
parser.add_argument("--coco", type=Path, default=None, help="COCO folder (default: $MINICAP_COCO, else assets/coco)")
parser.add_argument("--out", type=Path, default=HERE / "out" / "07_attention")
parser.add_argument("--quick", action="store_true", help="120 photos, 20 held out, 10 epochs")
args, _ = parser.parse_known_args()
started = time.perf_counter()
print(f"load average at the start: {os.getloadavg()[0]:.1f} (2 cores; other jobs slow every time below)")
coco_dir, source = choose_coco_dir(args.coco)
try:
    folder = find_coco(coco_dir)
except CocoDataMissing as e:
    print(f"This lesson needs COCO photos and captions.\n{e}", file=sys.stderr)
    sys.exit(2)
print(f"COCO photos from {coco_dir} ({source}).")
base = CaptionerConfig(min_test_images=20, epochs=10) if args.quick else CaptionerConfig()
max_images = 120 if args.quick else None

# %% 3 (first, because everything below reads its results). Two attention captioners and the mean-pooled one
# The library's pipeline: spatial features extracted once (features_spatial.pkl), the split by image, the one
# Trainer, the held-out photos captioned (CIDEr-D only). The same split and settings for all three.
runs = {}
for name, config in (
    ("attention λ=1", base.replace(model="attention", attention_reg=1.0)),
    ("attention λ=0", base.replace(model="attention", attention_reg=0.0)),
    ("mean-pooled", base),
):
    print(f"\n--- {name}: training ---")
    out = args.out / name.replace(" ", "_").replace("λ=", "reg")
    runs[name] = run_demo(coco_dir, out, config=config, max_train_seconds=None, max_images=max_images, scorer=None,
                          progress=False, log=None)  # fmt: skip
    train = runs[name].holdout.captioner.result
    print(
        f"{name}: best epoch {train.best_epoch} of {train.epochs} ({train.seconds:.0f} s); held-out CIDEr-D greedy "
        f"{runs[name].scores[MODEL_GREEDY]['CIDEr']:.3f}, beam {base.beam_size} "
        f"{runs[name].scores[model_beam(base.beam_size)]['CIDEr']:.3f}"
    )
reg1 = runs["attention λ=1"]
model, vocab = reg1.holdout.captioner.model, reg1.holdout.captioner.vocab
test_ids = reg1.holdout.test_ids
store = FeatureStore.load(reg1.features)
lookup = AnnotationLookup(store)
grid = lookup.grid
annotations = lookup.lookup(test_ids)  # (n, L, F), as stored (the model standardises them itself)

# %% 1. The bottleneck: the pooled vector is the mean of the 49 annotation vectors
pooled = store.lookup(test_ids)
gap = np.abs(annotations.mean(axis=1) - pooled).max()
cosine = np.einsum("nlf,nf->nl", annotations, pooled) / (
    np.linalg.norm(annotations, axis=2) * np.linalg.norm(pooled, axis=1)[:, None] + 1e-12
)
print(
    f"\n1. The mean-pooled captioner's input is the mean of the {grid[0]}×{grid[1]} = {annotations.shape[1]} "
    f"annotation vectors (largest difference {gap:.1e}, float16 storage). The cells are not alike: the cosine "
    f"between a cell's vector and the photo's mean vector is {cosine.mean():.2f} on average (10th–90th percentile "
    f"{np.percentile(cosine, 10):.2f}–{np.percentile(cosine, 90):.2f}), and {np.mean(annotations == 0):.0%} of the "
    "entries are exactly 0 (ReLU6): each cell sees its own part of the photo, and the average blurs them together."
)

# %% 2. One step by hand = the model's step
# The model standardises the annotations and projects them once; the first word is <START>.
state = model.initial_state(annotations[:1])  # h0, c0 = tanh(ā W + b); proj = a U_att + b_att
p = model.params
x = p["W_embed"][[START]]  # the word vector of <START>
z, alpha, _ = att.attention_forward(state.annotations, state.proj, state.h, p["W_att"], p["w_att"])  # α, z
zhat, gate = att.gate_forward(z, state.h, p["w_beta"], p["b_beta"])  # ẑ = β z
h, c, _ = lstm_step_forward(np.concatenate([x, zhat], axis=1), state.h, state.c, p["Wx"], p["Wh"], p["b"])
logits = h @ p["W_vocab"] + p["b_vocab"]
logits_model, state_model = model.step(np.array([START]), state)
by_hand = float(np.abs(logits - logits_model).max())
print(
    f"\n2. One step by hand (attention_forward, gate_forward, lstm_step_forward on [x, ẑ]) against model.step: largest "
    f"difference {by_hand:.1e}. First word: {vocab.idx_to_word[int(logits.argmax())]!r}, looked for with α peaking at "
    f"{alpha.max():.2f} (uniform would be {1 / alpha.shape[1]:.3f}) and gate β = {gate.beta[0, 0]:.2f}."
)

# %% 4. What the regulariser does: Σ_t α_ti per photo and cell


def maps_of(run: object) -> tuple[np.ndarray, np.ndarray]:
    """Greedy captions of the held-out photos and their maps: ids (n, T), maps (n, T, L) (0 after <END>)."""
    m = run.holdout.captioner.model  # type: ignore[attr-defined]
    return greedy(m, annotations, base.decode_max_length, return_attention=True)  # type: ignore[return-value]


sums = {}
for name in ("attention λ=0", "attention λ=1"):
    _ids, maps = maps_of(runs[name])
    sums[name] = maps.sum(axis=1)  # (n, L): Σ over the caption's tokens (<END> included) of α_ti
print("\n4. Σ_t α_ti over a held-out caption's words, per cell (1 = looked at once in total; mean over cells =")
print("   tokens / 49): its spread over the 49 cells, the share of cells hardly looked at (< 0.1) and the largest:")
spread = {}
for name, s in sums.items():
    spread[name] = {
        "mean": float(s.mean()),
        "sd_over_cells": float(s.std(axis=1).mean()),
        "share_below_0.1": float(np.mean(s < 0.1)),
        "max": float(s.max(axis=1).mean()),
    }
    r = spread[name]
    print(
        f"   {name}: mean {r['mean']:.2f}, sd over cells {r['sd_over_cells']:.2f}, cells < 0.1: "
        f"{r['share_below_0.1']:.0%}, largest per photo {r['max']:.2f}"
    )
plot_attention_sums(sums, args.out / "attention_sums.png")
evener = spread["attention λ=1"]["sd_over_cells"] < spread["attention λ=0"]["sd_over_cells"]
print(
    f"   The regulariser {'spreads' if evener else 'does NOT spread'} the attention over the photo: the spread of "
    f"Σ_t α over cells is {spread['attention λ=1']['sd_over_cells']:.2f} with λ = 1 against "
    f"{spread['attention λ=0']['sd_over_cells']:.2f} with λ = 0."
)

# %% 5. Content words and function words: how peaked is α?
FUNCTION_WORDS = set(
    "a an the of on in with and is are to at its his her their some for by from near next that while it there".split()
)
ids, maps = maps_of(reg1)
entropy = -(maps * np.log(np.clip(maps, 1e-12, None))).sum(axis=2)  # (n, T) nats; ln 49 = uniform
by_class: dict[str, list[tuple[float, float]]] = {"function": [], "content": []}
for n in range(len(ids)):
    for t in range(ids.shape[1]):
        w = int(ids[n, t])
        if w in (NULL, END):
            continue
        word = vocab.idx_to_word[w]
        by_class["function" if word in FUNCTION_WORDS else "content"].append((entropy[n, t], maps[n, t].max()))
print(f"\n5. Entropy of α per word (nats; ln {maps.shape[2]} = {np.log(maps.shape[2]):.2f} is uniform) and its peak:")
entropy_summary = {}
for cls, values in by_class.items():
    v = np.array(values) if values else np.zeros((0, 2))
    entropy_summary[cls] = {
        "words": len(v),
        "entropy": float(v[:, 0].mean()) if len(v) else None,
        "peak": float(v[:, 1].mean()) if len(v) else None,
    }
    if len(v):
        print(f"   {cls} words ({len(v)}): entropy {v[:, 0].mean():.2f} nats, peak α {v[:, 1].mean():.3f}")

# %% 6. The paper's figure: held-out photos, word by word
shown = [int(i) for i in test_ids[:2]]
coco = load_coco_captions(folder.captions)
figure_rows = []
for k, image_id in enumerate(shown):
    path = coco_photo_path(folder, coco, image_id)
    crop = encoder_crop(preprocess(load_rgb(path), store.spec), store.spec.mean, store.spec.std)  # what it saw
    n_tok = int(np.sum(ids[k] != NULL))
    words = [vocab.idx_to_word[int(w)] if int(w) != END else "<end>" for w in ids[k, :n_tok]]
    figure_rows.append(args.out / f"attention_maps_{k}.png")
    plot_attention(crop, words, maps[k, :n_tok], grid, figure_rows[-1], title=f"image {image_id} (held out)")
print(f"\n6. Attention figures: {', '.join(p.name for p in figure_rows)}")

# %% Summary
headline = {
    "claim": (
        f"with λ = 1 the attention spreads over the photo: the spread over cells of Σ_t α_ti is "
        f"{spread['attention λ=1']['sd_over_cells']:.2f} against {spread['attention λ=0']['sd_over_cells']:.2f} "
        f"with λ = 0"
    ),
    "regulariser_spreads_attention": bool(evener),
    "step_by_hand_equals_model": by_hand,
    "pooled_is_mean_of_annotations": float(gap),
}
summary = {
    "lesson": "07_attention",
    "quick": args.quick,
    "coco": str(coco_dir),
    "split": {k: len(v) for k, v in reg1.split.items()},
    "config": base.to_dict(),
    "scores": {name: r.scores for name, r in runs.items()},
    "training": {
        name: {
            "best_epoch": r.holdout.captioner.result.best_epoch,
            "epochs": r.holdout.captioner.result.epochs,
            "seconds": r.holdout.captioner.result.seconds,
        }
        for name, r in runs.items()
    },  # fmt: skip
    "cosine_cell_to_mean": {
        "mean": float(cosine.mean()),
        "p10": float(np.percentile(cosine, 10)),
        "p90": float(np.percentile(cosine, 90)),
    },  # fmt: skip
    "attention_sums": spread,
    "entropy": entropy_summary,
    "headline": headline,
    "figures": ["attention_sums.png", *(p.name for p in figure_rows)],
    "load_average": os.getloadavg()[0],
    "seconds": round(time.perf_counter() - started, 1),
}
atomic_write_json(args.out / "summary.json", summary)
print(f"\nHeadline: {headline['claim']}.")
print(f"Wrote the figures and summary.json to {args.out} in {summary['seconds']:.0f} s.")

"""minicap against the same captioner in PyTorch: cross-validated CIDEr and training wall time, from ONE run.

    python benchmarks/peer_torch.py [--coco ../shared/coco] [--work runs/demo] [--folds 5] [--threads 2] [--epochs E]

Both sides get exactly the same everything except the framework that does the arithmetic:
- the same settings: the one captioner configuration, `minicap.config.CaptionerConfig()` (`--epochs` may
  shorten it for a quick check), read by both sides;
- the same features (the demo's cached EfficientNet-Lite0 store; built on first use), folds by image and
  validation slices (`minicap.coco.fold_splits` with the config's val_fraction, as `minicap evaluate --folds`),
  vocabulary, encoded captions and datasets (`minicap.captioner.captioner_data`), and the starting model
  (`minicap.captioner.new_captioner`: output bias at log word frequencies, feature standardisation with the
  training images' mean / std);
- the same architecture: image features -> nn.Linear -> h0, nn.Embedding, one-layer nn.LSTM, nn.Linear to the
  vocabulary; the same INITIAL PARAMETERS (minicap's seeded initialisation copied into the torch modules, gates
  reordered from minicap's i, f, o, g to torch's i, f, g, o; torch's second LSTM bias `bias_hh` is held at 0,
  because two biases with identical gradients would take two Adam steps where minicap takes one);
- the same recipe: masked cross-entropy summed over counted positions / N, global-norm clipping
  (clip_grad_norm_), AdamW with minicap's warm-up + cosine schedule set before every update, the same minibatches
  in the same order (the same NumPy generator, `CaptionDataset.epoch` and `.batch`, as `minicap.train.Trainer`),
  validation loss and validation CIDEr-D before the first update and after every epoch, best epoch and early
  stopping by validation CIDEr-D with the same patience;
- the same decoding and scoring: the torch parameters are copied back into a `CaptionModel` and decoded by
  minicap's greedy / beam search; CIDEr (and BLEU-4, ROUGE-L) by pycocoevalcap on each fold's test images
  (pure-Python CIDEr-D if Java is missing).

Threads: torch gets `--threads` (default 2) and so does minicap's NumPy (OpenBLAS), unless `--blas-threads`
says otherwise: the same cores for both is the fair race. (`--blas-threads 1` is what the `minicap` command line
uses by default, because one thread is the robust choice on a shared machine: see minicap/pipeline/__init__.py.)
Training wall time = the whole `fit` of each fold, validation included (the same validation code on both sides),
and separately the update steps alone.
The machine may be shared: run-to-run noise is large, so both frameworks are timed fold by fold in the same run.
Without torch installed the script prints a skip message (and a JSON line saying so) and exits 0.
The last line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", default=str(REPO.parent / "shared" / "coco"), help="COCO folder (images/ + captions.json)")
    p.add_argument("--work", default=str(REPO / "runs" / "demo"), help="where the encoder and features are cached")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the folds")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--blas-threads", type=int, default=None, help="OpenBLAS threads for minicap (default: --threads)")
    p.add_argument("--epochs", type=int, default=None, help="override CaptionerConfig.epochs (a quick check)")
    args = p.parse_args()
    if args.blas_threads is None:
        args.blas_threads = args.threads
    return args


ARGS = parse_args()
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before NumPy loads
    os.environ[_var] = str(ARGS.blas_threads)

try:
    import torch
except ImportError:
    torch = None

import numpy as np  # noqa: E402

from minicap.captioner import (  # noqa: E402
    CaptionerData,
    TrainedCaptioner,
    captioner_data,
    new_captioner,
    train_captioner,
)
from minicap.coco import find_coco, fold_splits, load_coco_captions  # noqa: E402
from minicap.config import CaptionerConfig  # noqa: E402
from minicap.experiments import MODEL_GREEDY, model_beam, model_hypotheses  # noqa: E402
from minicap.metrics import CaptionScorer, EvaluationUnavailable, check_eval_dependencies, score_systems  # noqa: E402
from minicap.models import CaptionModel  # noqa: E402
from minicap.pipeline import captions_with_features, ensure_encoder, ensure_features  # noqa: E402
from minicap.tokens import target_mask  # noqa: E402
from minicap.train import make_schedule  # noqa: E402

# minicap's LSTM gate blocks are (i, f, o, g); torch's are (i, f, g, o).
_TORCH_FROM_MINICAP = [0, 1, 3, 2]  # torch block k holds minicap block _TORCH_FROM_MINICAP[k]
_MINICAP_FROM_TORCH = [0, 1, 3, 2]  # the same permutation is its own inverse


def _reorder_gates(a: np.ndarray, order: list[int], axis: int) -> np.ndarray:
    blocks = np.split(a, 4, axis=axis)
    return np.concatenate([blocks[k] for k in order], axis=axis)


def make_torch_model(model: CaptionModel):
    """A torch module with the architecture of `model` and exactly its parameters."""
    nn = torch.nn

    class TorchCaptioner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            V, F, W, H = model.vocab_size, model.feature_size, model.wordvec_size, model.hidden_size
            self.proj = nn.Linear(F, H)
            self.embed = nn.Embedding(V, W)
            self.lstm = nn.LSTM(W, H, batch_first=True)
            self.vocab = nn.Linear(H, V)

        def loss(self, features, captions):
            """Summed masked cross-entropy / N, vocabulary scores only at counted positions (as minicap)."""
            words_in, targets = captions[:, :-1], captions[:, 1:]
            mask = torch.from_numpy(target_mask(targets.numpy()))
            h0 = self.proj(features).unsqueeze(0)
            h, _ = self.lstm(self.embed(words_in), (h0, torch.zeros_like(h0)))
            scores = self.vocab(h[mask])
            return torch.nn.functional.cross_entropy(scores, targets[mask], reduction="sum") / captions.shape[0]

    net = TorchCaptioner()
    p = model.params
    with torch.no_grad():
        net.proj.weight.copy_(torch.from_numpy(p["W_proj"].T.copy()))
        net.proj.bias.copy_(torch.from_numpy(p["b_proj"]))
        net.embed.weight.copy_(torch.from_numpy(p["W_embed"]))
        net.lstm.weight_ih_l0.copy_(torch.from_numpy(_reorder_gates(p["Wx"].T, _TORCH_FROM_MINICAP, 0).copy()))
        net.lstm.weight_hh_l0.copy_(torch.from_numpy(_reorder_gates(p["Wh"].T, _TORCH_FROM_MINICAP, 0).copy()))
        net.lstm.bias_ih_l0.copy_(torch.from_numpy(_reorder_gates(p["b"], _TORCH_FROM_MINICAP, 0).copy()))
        net.lstm.bias_hh_l0.zero_()
        net.vocab.weight.copy_(torch.from_numpy(p["W_vocab"].T.copy()))
        net.vocab.bias.copy_(torch.from_numpy(p["b_vocab"]))
    net.lstm.bias_hh_l0.requires_grad_(False)
    return net


def to_caption_model(net, like: CaptionModel) -> CaptionModel:
    """The torch parameters as a minicap CaptionModel (same config and standardisation), for minicap's decoders."""
    t = {name: v.detach().numpy() for name, v in net.named_parameters()}
    t["lstm.bias_hh_l0"] = net.lstm.bias_hh_l0.detach().numpy()
    params = {
        "W_proj": t["proj.weight"].T,
        "b_proj": t["proj.bias"],
        "W_embed": t["embed.weight"],
        "Wx": _reorder_gates(t["lstm.weight_ih_l0"], _MINICAP_FROM_TORCH, 0).T,
        "Wh": _reorder_gates(t["lstm.weight_hh_l0"], _MINICAP_FROM_TORCH, 0).T,
        "b": _reorder_gates(t["lstm.bias_ih_l0"] + t["lstm.bias_hh_l0"], _MINICAP_FROM_TORCH, 0),
        "W_vocab": t["vocab.weight"].T,
        "b_vocab": t["vocab.bias"],
    }
    model = CaptionModel.from_config(like.config, params, like.constants)
    assert isinstance(model, CaptionModel)
    return model


def train_torch(coco, store, split, config: CaptionerConfig) -> tuple[TrainedCaptioner, float]:
    """`minicap.train.Trainer`'s loop in torch, on `captioner_data`'s datasets, from `new_captioner`'s start.
    Returns (the best epoch as a minicap model, with no TrainResult; the update steps' seconds)."""
    started = time.perf_counter()
    data: CaptionerData = captioner_data(coco, store, split.train, split.val, config)
    train_config = config.train_config()
    start = new_captioner(config, data.vocab, data.train)
    net = make_torch_model(start)

    def standardised(features: np.ndarray):
        """What CaptionModel does to its input features: cast to float32, then (x − mean) / std if configured."""
        x = np.asarray(features).astype(start.dtype, copy=False)
        if start.feature_mean is not None and start.feature_std is not None:
            x = (x - start.feature_mean) / start.feature_std
        return torch.from_numpy(np.ascontiguousarray(x))

    def as_batch(batch):
        features, captions = batch
        return standardised(features), torch.from_numpy(captions.astype(np.int64))

    def validate() -> float:
        """The Trainer's criterion, higher is better: validation CIDEr-D, or minus the validation loss (computed
        every epoch either way, as the Trainer does: `minicap.train.validation_loss` batch for batch)."""
        assert data.val is not None
        total, count = 0.0, 0
        with torch.no_grad():
            for indices in data.val.in_order(max(train_config.batch_size, 256)):
                total += float(net.loss(*as_batch(data.val.batch(indices)))) * len(indices)
                count += len(indices)
        if data.val_metric is None:
            return -total / count
        return data.val_metric(to_caption_model(net, start))

    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train_config.lr, weight_decay=train_config.weight_decay, eps=1e-8)
    schedule = make_schedule(train_config, train_config.epochs * data.train.batches_per_epoch(train_config.batch_size))
    rng = np.random.default_rng(train_config.seed)
    validate()  # the Trainer validates once before the first update (its "initial" record)
    step, best, best_state, since_best, update_seconds = 0, None, None, 0, 0.0
    for _epoch in range(train_config.epochs):
        clock = time.perf_counter()
        net.train()
        for key in data.train.epoch(rng, train_config.batch_size):
            features, captions = as_batch(data.train.batch(key))
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            optimizer.zero_grad(set_to_none=True)
            loss = net.loss(features, captions)
            loss.backward()
            if train_config.clip is not None:
                torch.nn.utils.clip_grad_norm_(params, train_config.clip)
            optimizer.step()
            step += 1
        update_seconds += time.perf_counter() - clock
        score = validate()
        if best is None or score > best:
            best, since_best = score, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since_best += 1
            if train_config.patience is not None and since_best >= train_config.patience:
                break
    net.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    # No TrainResult: `model_hypotheses` reads only the model and the vocabulary.
    return TrainedCaptioner(to_caption_model(net, start), data.vocab, None, seconds), update_seconds  # type: ignore


def mean_sd(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def main() -> int:
    if torch is None:
        print("peer_torch: torch is not installed; skipping the PyTorch comparison (pip install torch to run it)")
        print(json.dumps({"benchmark": "peer_torch", "skipped": "torch not installed"}))
        return 0
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    config = CaptionerConfig() if ARGS.epochs is None else CaptionerConfig().replace(epochs=ARGS.epochs)
    folder = find_coco(ARGS.coco)
    store = ensure_features(
        folder, ensure_encoder(ARGS.work, log=print), Path(ARGS.work) / "features.pkl", False, print
    )
    coco = captions_with_features(load_coco_captions(folder.captions), store, print)
    try:
        check_eval_dependencies()
        scorer = CaptionScorer(("BLEU", "ROUGE_L", "CIDEr"))
        metric_source = "pycocoevalcap"
    except EvaluationUnavailable as e:
        print(f"note: {e}; CIDEr-D only (pure Python)")
        scorer, metric_source = None, "CIDEr-D (pure Python)"
    refs = coco.references()
    print(
        f"{len(coco.image_ids())} images, {ARGS.folds} folds (seed {ARGS.seed}); torch {torch.__version__} with "
        f"{ARGS.threads} threads, minicap with {ARGS.blas_threads} OpenBLAS thread(s); config {config.to_dict()}"
    )
    B = config.beam_size  # the model is reported greedy and with beam search of this width (3)
    rows = []
    for split in fold_splits(coco.image_ids(), ARGS.folds, ARGS.seed, config.val_fraction):
        row = {"fold": split.fold}
        test_features = store.lookup(split.test)
        for name in ("minicap", "torch"):
            if name == "minicap":
                captioner = train_captioner(coco, store, split.train, split.val, config)
                updates = sum(e["seconds"] for e in captioner.result.history["epochs"])
                epochs = captioner.result.epochs
            else:
                captioner, updates = train_torch(coco, store, split, config)
                epochs = None
            hyps = model_hypotheses(captioner, test_features, split.test, config)
            scores = score_systems(refs, hyps, scorer)
            row[name] = {
                "train_seconds": captioner.seconds,
                "update_seconds": updates,
                "epochs": epochs,
                **{f"{m} {d}": scores[s][m] for s, d in ((MODEL_GREEDY, "greedy"), (model_beam(B), f"beam{B}"))
                   for m in scores[s]},
            }  # fmt: skip
        rows.append(row)
        m, t = row["minicap"], row["torch"]
        print(
            f"fold {split.fold}: CIDEr beam {B} minicap {m[f'CIDEr beam{B}']:.3f} torch {t[f'CIDEr beam{B}']:.3f}; "
            f"train {m['train_seconds']:.1f} s vs {t['train_seconds']:.1f} s "
            f"(updates {m['update_seconds']:.1f} s vs {t['update_seconds']:.1f} s)",
            flush=True,
        )
    if scorer is not None:
        scorer.close()

    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for name in ("minicap", "torch"):
        keys = [k for k in rows[0][name] if k != "epochs"]
        summary[name] = {k: mean_sd([r[name][k] for r in rows]) for k in keys}
    print(f"\n{ARGS.folds}-fold cross-validation, mean ± sd over folds ({metric_source}):")
    keys = [k for k in summary["minicap"] if k.startswith(("CIDEr", "BLEU-4", "ROUGE_L"))]
    keys += ["train_seconds", "update_seconds"]
    print(f"{'':22}" + "".join(f"{k:>20}" for k in keys))
    for name in ("minicap", "torch"):
        cells = "".join(f"{summary[name][k][0]:>11.3f} ± {summary[name][k][1]:<6.3f}" for k in keys)
        print(f"{name:22}" + cells)
    cider_m, cider_t = summary["minicap"][f"CIDEr beam{B}"], summary["torch"][f"CIDEr beam{B}"]
    within = abs(cider_m[0] - cider_t[0]) <= cider_t[1]
    time_ratio = summary["minicap"]["train_seconds"][0] / summary["torch"]["train_seconds"][0]
    update_ratio = summary["minicap"]["update_seconds"][0] / summary["torch"]["update_seconds"][0]
    print(
        f"\nCIDEr (beam {B}): minicap {cider_m[0]:.3f} ± {cider_m[1]:.3f}, torch {cider_t[0]:.3f} ± {cider_t[1]:.3f}: "
        f"difference {cider_m[0] - cider_t[0]:+.3f}, {'within' if within else 'NOT within'} one fold-sd of torch's"
    )
    print(f"training wall time minicap / torch: {time_ratio:.2f} (update steps alone: {update_ratio:.2f})")
    print(
        json.dumps(
            {
                "benchmark": "peer_torch",
                "folds": ARGS.folds,
                "images": len(coco.image_ids()),
                "metrics_from": metric_source,
                "torch_version": torch.__version__,
                "torch_threads": ARGS.threads,
                "minicap_blas_threads": ARGS.blas_threads,
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "config": config.to_dict(),
                "summary": {n: {k: {"mean": v[0], "sd": v[1]} for k, v in s.items()} for n, s in summary.items()},
                f"cider_beam{B}_within_one_sd": within,
                "train_time_ratio_minicap_over_torch": time_ratio,
                "update_time_ratio_minicap_over_torch": update_ratio,
                "per_fold": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

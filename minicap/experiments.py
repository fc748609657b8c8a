"""Experiments with captioners: a hold-out run and k-fold cross-validation, each comparing the model with the
baselines on the same test images, and the tables that report them.

    train images ──train_captioner (minicap.captioner)──▶ the best epoch by validation CIDEr-D
    test images  ──greedy / beam search──▶ captions ─┐
    most frequent training caption ──────────────────┼─▶ metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr)
    nearest training image by cosine, consensus ─────┘

Used by `minicap demo` (one train/val/test split), `minicap evaluate --folds K` and benchmarks/peer_torch.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from minicap.baselines import NEAREST_NEIGHBOUR, baseline_captions
from minicap.captioner import TrainedCaptioner, model_inputs, train_captioner
from minicap.coco import CocoCaptions, FoldSplit, fold_splits
from minicap.config import CaptionerConfig
from minicap.dataset import FeatureLookup, check_features_available
from minicap.decode import generate_captions
from minicap.metrics import TABLE_METRICS, CaptionScorer, format_metrics_table, score_systems

__all__ = [
    "MODEL_GREEDY",
    "model_beam",
    "model_hypotheses",
    "HoldoutResult",
    "holdout_evaluation",
    "choose_on_validation",
    "CrossValidation",
    "RunProgress",
    "format_duration",
    "cross_validate",
]

MODEL_GREEDY = "model, greedy"


def model_beam(beam_size: int) -> str:
    """The table's name for the model decoded with beam search of width `beam_size`."""
    return f"model, beam {beam_size}"


@dataclass
class HoldoutResult:
    """One train/val/test experiment: every system's captions of the test images and their scores.

    hypotheses: system -> image id -> caption; scores: system -> metric -> corpus value (TABLE_METRICS),
    or CIDEr-D only (key "CIDEr") when no CaptionScorer was given.
    """

    train_ids: np.ndarray
    val_ids: np.ndarray
    test_ids: np.ndarray
    captioner: TrainedCaptioner
    hypotheses: dict[str, dict[int, str]]
    scores: dict[str, dict[str, float]]
    seconds: dict[str, float]
    choices: list[dict[str, Any]] = field(default_factory=list)  # `choose_on_validation`'s records, if it ran

    def table(self, title: str = "") -> str:
        rows = {system: {m: (v, None) for m, v in row.items()} for system, row in self.scores.items()}
        return format_metrics_table(rows, title)


def holdout_evaluation(
    coco: CocoCaptions,
    features: FeatureLookup,
    train_ids: Sequence[int] | np.ndarray,
    val_ids: Sequence[int] | np.ndarray,
    test_ids: Sequence[int] | np.ndarray,
    config: CaptionerConfig = CaptionerConfig(),
    scorer: CaptionScorer | None = None,
    *,
    out_dir: str | Path | None = None,
    max_seconds: float | None = None,
    encoder: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    choices: Sequence[CaptionerConfig] = (),
) -> HoldoutResult:
    """Train on `train_ids` (best epoch by `val_ids`), caption `test_ids` with the model (greedy and beam) and
    both baselines, and score all four against the test references.

    choices: other settings to try beside `config`. Each is trained on `train_ids` too, and the one whose best
    epoch scored best on `val_ids` captions the test images (`choose_on_validation`; the test images choose
    nothing). The result's `choices` records every candidate's validation score.

    With a `CaptionScorer` every metric of TABLE_METRICS is computed by pycocoevalcap; without one, only
    CIDEr-D (the pure-Python `CiderD`, document frequencies from the test references) — enough for quick
    comparisons and for machines without Java.
    """
    test_ids = np.asarray(sorted(int(i) for i in test_ids), dtype=np.int64)
    overlap = np.intersect1d(test_ids, np.union1d(np.asarray(train_ids), np.asarray(val_ids)))
    if overlap.size:
        raise ValueError(f"{overlap.size} test images are also training/validation images: {overlap[:5].tolist()}")
    check_features_available(test_ids, features, "test")  # before training, not after it
    seconds: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    if choices:
        if any(c.beam_size != config.beam_size for c in choices):
            raise ValueError("the settings to choose from must share beam_size (it names the table's rows)")
        candidates = [config, *choices]
        captioner, records = choose_on_validation(
            coco, features, train_ids, val_ids, candidates, out_dir=out_dir, max_seconds=max_seconds,
            encoder=encoder, extra=extra, progress=progress, log=log, on_epoch=on_epoch,
        )  # fmt: skip
        config = next(c for c, r in zip(candidates, records, strict=True) if r["chosen"])  # it decodes the test
        seconds["train"] = sum(r["train_seconds"] for r in records)
    else:
        captioner = train_captioner(
            coco, features, train_ids, val_ids, config, out_dir=out_dir, max_seconds=max_seconds, encoder=encoder,
            extra=extra, progress=progress, log=log, on_epoch=on_epoch,
        )  # fmt: skip
        seconds["train"] = captioner.seconds
    t0 = time.perf_counter()
    hypotheses = model_hypotheses(captioner, model_inputs(features, config).lookup(test_ids), test_ids, config)
    seconds["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hypotheses.update(baseline_captions(coco, features, train_ids, test_ids, config.nn_k))
    seconds["baselines"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = score_systems(coco.references(), hypotheses, scorer)
    seconds["score"] = time.perf_counter() - t0
    return HoldoutResult(
        train_ids=np.asarray(sorted(int(i) for i in train_ids), dtype=np.int64),
        val_ids=np.asarray(sorted(int(i) for i in val_ids), dtype=np.int64),
        test_ids=test_ids,
        captioner=captioner,
        hypotheses=hypotheses,
        scores=scores,
        seconds=seconds,
        choices=records,
    )


def choose_on_validation(
    coco: CocoCaptions,
    features: FeatureLookup,
    train_ids: Sequence[int] | np.ndarray,
    val_ids: Sequence[int] | np.ndarray,
    configs: Sequence[CaptionerConfig],
    *,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **train_options: Any,
) -> tuple[TrainedCaptioner, list[dict[str, Any]]]:
    """Settings chosen on validation images: train one captioner per config on `train_ids`; the winner is the one
    whose best epoch has the highest validation score (the early-stopping criterion, higher is better: CIDEr-D of
    greedy captions of `val_ids` by default); a tie goes to the earlier config.

    out_dir: each candidate's run goes to out_dir/choice-1, choice-2, ... `log` and `train_options` (max_seconds,
    encoder, extra, progress, on_epoch) are passed to every `train_captioner` call.

    Returns (the winner, one record per config: "config" (its settings), "differs" (the settings that differ from
    the first config's), "best_epoch", "best_val", "criterion", "train_seconds", "chosen").
    """
    if not configs:
        raise ValueError("choose_on_validation needs at least one config")
    first = configs[0].to_dict()
    trained, records = [], []
    for i, config in enumerate(configs, 1):
        differs = {k: v for k, v in config.to_dict().items() if first[k] != v}
        run_dir = None if out_dir is None else Path(out_dir) / f"choice-{i}"
        captioner = train_captioner(
            coco, features, train_ids, val_ids, config, out_dir=run_dir, log=log, **train_options
        )
        result = captioner.result
        if result.best_score is None:
            raise ValueError(f"the captioner with {differs or 'the first settings'} finished no epoch to compare")
        trained.append(captioner)
        records.append({
            "config": config.to_dict(), "differs": differs, "best_epoch": result.best_epoch,
            "best_val": float(result.best_score), "criterion": result.criterion,
            "train_seconds": captioner.seconds, "chosen": False,
        })  # fmt: skip
    winner = int(np.argmax([r["best_val"] for r in records]))  # the first of equal scores
    records[winner]["chosen"] = True
    if log is not None:
        log(
            "chosen on validation: "
            + "; ".join(
                f"{_settings_text(r['differs'])} {r['best_val']:.4f}{' *' if r['chosen'] else ''}" for r in records
            )
        )
    return trained[winner], records


def _settings_text(differs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in differs.items()) or "as configured"


def model_hypotheses(
    captioner: TrainedCaptioner, test_features: np.ndarray, test_ids: np.ndarray, config: CaptionerConfig
) -> dict[str, dict[int, str]]:
    """{MODEL_GREEDY: {id: caption}, model_beam(B): {...}} for test images with features (N, F) (or annotations
    (N, L, F) for the attention captioner)."""
    out = {}
    for beam, name in ((1, MODEL_GREEDY), (config.beam_size, model_beam(config.beam_size))):
        texts = generate_captions(
            captioner.model,
            captioner.vocab,
            test_features,
            beam,
            config.decode_max_length,
            config.allow_unk,
            config.length_penalty if beam > 1 else 0.0,
        )
        out[name] = {int(i): t for i, t in zip(test_ids, texts, strict=True)}
    return out


# ============================================================================================ k-fold cross-validation


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


@dataclass
class CrossValidation:
    """Per-fold scores of every system, and their summaries.

    folds: one dict per fold: {"fold", "n_train", "n_val", "n_test", "scores": system -> metric -> value,
    "best_epoch", "epochs", "train_seconds", "seconds"}. `reference` is the system wins are counted against.
    """

    folds: list[dict[str, Any]]
    config: CaptionerConfig
    k: int
    seed: int
    seconds: float
    reference: str = NEAREST_NEIGHBOUR

    @property
    def systems(self) -> list[str]:
        return list(self.folds[0]["scores"])

    @property
    def metrics(self) -> list[str]:
        first = self.folds[0]["scores"][self.systems[0]]
        return [m for m in TABLE_METRICS if m in first]

    def values(self, system: str, metric: str) -> np.ndarray:
        """(K,) the metric of `system` in each fold."""
        return np.array([f["scores"][system][metric] for f in self.folds])

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """system -> metric -> (mean, sd over folds)."""
        return {s: {m: _mean_sd(self.values(s, m)) for m in self.metrics} for s in self.systems}

    def paired(self, system: str) -> dict[str, dict[str, Any]]:
        """Per metric, `system` minus the reference fold by fold: mean ± sd of the difference and the wins."""
        out = {}
        for m in self.metrics:
            diff = self.values(system, m) - self.values(self.reference, m)
            mean, sd = _mean_sd(diff)
            out[m] = {"mean": mean, "sd": sd, "wins": int((diff > 0).sum()), "folds": len(diff)}
        return out

    def table(self) -> str:
        """The cross-validated table (mean ± sd over folds) and, for the model, the per-fold comparison."""
        ran = [f["fold"] for f in self.folds]
        which = "" if len(ran) == self.k else f", fold{'s' if len(ran) > 1 else ''} {', '.join(map(str, ran))} only"
        title = f"{self.k}-fold cross-validation by image (seed {self.seed}{which}): mean ± sd over folds"
        lines = [format_metrics_table(self.summary(), title, self.metrics)]
        lines.append("")
        lines.append(f"paired by fold, against the {self.reference} baseline: mean difference ± sd (wins / folds)")
        models = [s for s in self.systems if s.startswith("model")]
        name_width = max(len(s) for s in models)
        lines.append(f"{'system':<{name_width}}  " + "  ".join(f"{m:>20}" for m in self.metrics))
        for s in models:
            cells = [f"{p['mean']:+.3f} ± {p['sd']:.3f} ({p['wins']}/{p['folds']})" for p in self.paired(s).values()]
            lines.append(f"{s:<{name_width}}  " + "  ".join(f"{c:>20}" for c in cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "seed": self.seed,
            "seconds": self.seconds,
            "settings": self.config.to_dict(),
            "summary": {
                system: {m: {"mean": mean, "sd": sd} for m, (mean, sd) in row.items()}
                for system, row in self.summary().items()
            },
            "paired_vs": self.reference,
            "paired": {s: self.paired(s) for s in self.systems if s != self.reference},
            "folds": self.folds,
        }


def format_duration(seconds: float) -> str:
    """A duration for people: 42s, 1m02s, 24m, 1h05m."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class RunProgress:
    """Fold and epoch progress of a k-fold run, with an estimate of the time left.

    On a terminal: one tqdm bar over all folds × epochs (tqdm's own ETA). Otherwise (a log file, CI): one plain line
    per epoch, e.g. "fold 1/5, epoch 2/25: 12.3 s/epoch, elapsed 1m02s, ETA 24m".

    ETA = (elapsed / epochs done) × epochs left, where the elapsed time includes everything done so far (validation,
    decoding and scoring of finished folds), and a fold's epochs left are all of its `epochs` until it ends: the
    estimate assumes no later fold stops early, so early stopping only makes the run end sooner. When a fold stops
    early its unused epochs leave the count.

    Use: `start_fold(f)`, then `epoch(record)` after each epoch (the Trainer's `on_epoch`), `end_fold()`, `close()`.
    """

    def __init__(
        self,
        folds: int,
        epochs: int,
        *,
        stream: TextIO | None = None,
        bar: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.folds, self.epochs, self.clock = folds, epochs, clock
        self.stream = stream if stream is not None else sys.stderr
        self.use_bar = self.stream.isatty() if bar is None else bar
        self.started = clock()
        self.fold = 0
        self.done = 0  # epochs finished over all folds
        self.fold_epochs = 0  # epochs finished in the current fold
        self.total = folds * epochs  # shrinks when a fold stops early
        self.bar = (
            tqdm(total=self.total, unit="epoch", file=self.stream, dynamic_ncols=True, desc="cross-validation")
            if self.use_bar
            else None
        )

    def start_fold(self, fold: int) -> None:
        self.fold, self.fold_epochs = fold, 0

    def eta(self) -> float | None:
        """Seconds left, or None before the first epoch."""
        if self.done == 0:
            return None
        return (self.clock() - self.started) / self.done * (self.total - self.done)

    def epoch(self, record: dict[str, Any]) -> None:
        """An epoch of the current fold has ended (`record`: the Trainer's epoch record, with "seconds")."""
        self.done += 1
        self.fold_epochs += 1
        seconds = float(record.get("seconds", 0.0)) + float(record.get("val_seconds") or 0.0)
        elapsed = self.clock() - self.started
        eta = self.eta()
        if self.bar is not None:
            self.bar.set_description(f"fold {self.fold}/{self.folds}, epoch {self.fold_epochs}/{self.epochs}")
            self.bar.set_postfix_str(f"{seconds:.1f} s/epoch", refresh=False)
            self.bar.update(1)
        else:
            print(
                f"fold {self.fold}/{self.folds}, epoch {self.fold_epochs}/{self.epochs}: {seconds:.1f} s/epoch, "
                f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta or 0.0)}",
                file=self.stream,
                flush=True,
            )

    def end_fold(self) -> None:
        """The current fold has ended; the epochs it did not run (early stopping) leave the total."""
        self.total -= self.epochs - self.fold_epochs
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cross_validate(
    coco: CocoCaptions,
    features: FeatureLookup,
    k: int = 5,
    config: CaptionerConfig = CaptionerConfig(),
    scorer: CaptionScorer | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    log: Callable[[str], None] | None = None,
    progress: RunProgress | bool = False,
    choices: Sequence[CaptionerConfig] = (),
    only_folds: Sequence[int] | None = None,
) -> CrossValidation:
    """K-fold cross-validation by image of the captioner and both baselines.

    Every image is a test image exactly once. In each fold a fresh captioner is trained on the fold's training
    part minus a validation slice (`val_fraction`, default the config's), which picks its best epoch and stops it
    early; then the model (greedy and beam), the most-frequent-caption and the nearest-neighbour baselines caption
    the test images and are scored. Folds pair the systems: the same test images, the same training images.

    choices: other settings to try beside `config`, chosen in each fold on that fold's validation slice
    (`choose_on_validation`): the fold's test images never choose anything.
    coco: CocoCaptions whose every image has features in `features` (a FeatureStore or a FeatureTable).
    progress: a RunProgress, or True for one on stderr (a bar on a terminal, a line per epoch otherwise).
    only_folds: run only these folds (numbered 1..k) of the same k folds, e.g. one fold per process on a machine
    with more cores than one training uses; the summary then covers the folds that ran.
    Returns a CrossValidation (per-fold scores, `summary()`, `paired()`, `table()`).
    """
    log = log or (lambda line: None)
    image_ids = coco.image_ids()
    check_features_available(image_ids, features, "cross-validation")
    splits = fold_splits(image_ids, k, seed, config.val_fraction if val_fraction is None else val_fraction)
    if only_folds is not None:
        wanted = sorted(set(only_folds))
        if not wanted or not all(1 <= f <= k for f in wanted):
            raise ValueError(f"only_folds must name folds among 1..{k}, got {list(only_folds)}")
        splits = [s for s in splits if s.fold in wanted]
    t0 = time.perf_counter()
    folds = []
    epochs = sum(c.epochs for c in (config, *choices))  # per fold: every candidate trains
    report = RunProgress(len(splits), epochs) if progress is True else (progress or None)
    try:
        for split in splits:
            if report is not None:
                report.start_fold(split.fold)
            result = holdout_evaluation(
                coco, features, split.train, split.val, split.test, config, scorer,
                on_epoch=None if report is None else report.epoch, choices=choices, log=log if choices else None,
            )  # fmt: skip
            if report is not None:
                report.end_fold()
            folds.append(_fold_record(split, result))
            log(_fold_line(split, k, result, config))
    finally:
        if report is not None:
            report.close()
    return CrossValidation(folds, config, k, seed, time.perf_counter() - t0)


def _fold_record(split: FoldSplit, result: HoldoutResult) -> dict[str, Any]:
    train = result.captioner.result
    return {
        "fold": split.fold,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "scores": result.scores,
        "best_epoch": train.best_epoch,
        "epochs": train.epochs,
        "stopped": train.stopped,
        "train_seconds": result.seconds["train"],
        "epoch_seconds": [e["seconds"] for e in train.history["epochs"]],  # training only
        "val_seconds": [e["val_seconds"] for e in train.history["epochs"]],  # validation loss and CIDEr-D
        "seconds": float(sum(result.seconds.values())),
        **({"choices": result.choices} if result.choices else {}),
    }


def _fold_line(split: FoldSplit, k: int, result: HoldoutResult, config: CaptionerConfig) -> str:
    train = result.captioner.result
    beam = result.scores[model_beam(config.beam_size)]
    nn_row = result.scores[NEAREST_NEIGHBOUR]
    chosen = [_settings_text(c["differs"]) for c in result.choices if c["chosen"]]
    return (
        f"fold {split.fold}/{k}: {len(split.train)}/{len(split.val)}/{len(split.test)} images, "
        + (f"chosen {chosen[0]}, " if chosen else "")
        + "best epoch "
        f"{train.best_epoch}/{train.epochs} ({train.stopped}, {result.seconds['train']:.0f} s); "
        + ", ".join(f"{m} {beam[m]:.3f} vs NN {nn_row[m]:.3f}" for m in ("BLEU-4", "CIDEr") if m in beam)
    )

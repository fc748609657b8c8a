"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr), COCO results files, and the baselines a model must beat.

Metrics come from `pycocoevalcap`, the code behind the COCO captioning leaderboard (optional extra
`pip install 'minicap[eval]'`). Its PTB tokenizer and METEOR are Java programs, so Java must be installed.
Each hypothesis is scored against ALL references of its image, after both are tokenized by the same PTB
tokenizer, exactly as the COCO evaluation server does.

Read the numbers with care:
- corpus BLEU pools n-gram counts over all images; it is not the mean of the per-image BLEU values;
- CIDEr weights n-grams by their inverse document frequency over the references of the images being scored,
  so a CIDEr on 30 images is not comparable with one on the 5,000 of COCO val;
- METEOR's Java process loads a 62 MB paraphrase table at start-up: ~10 s wall (8-12 s) on the shared
  2-core machine this was written on, while all metrics for 300 images then take ~2 s in total
  (`benchmarks/bench_metrics.py`). `CaptionScorer` keeps the process between calls; `warm_up()` starts it.

Baselines: `most_frequent_caption_baseline` (one caption for every image) and `nearest_neighbour_baseline`
(the caption of the most similar training image, re-ranked by consensus; Devlin et al. 2015) need only
NumPy: their CIDEr-D is the small pure-Python `CiderD` below, checked against pycocoevalcap in the tests.

Captioners end to end (the second half of this file, used by `minicap demo`, `minicap evaluate` and lesson 06):
`train_captioner` (best epoch by validation CIDEr-D), `holdout_evaluation` (one train/val/test split: the model
greedy and with beam search, both baselines, all metrics), `cross_validate` (k folds by image, mean ± sd, paired
differences and wins against the nearest neighbour), `format_metrics_table`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from minicap.data import tokenize
from minicap.safe_io import atomic_write_json

__all__ = [
    "METRICS",
    "EvaluationUnavailable",
    "CaptionScores",
    "CaptionScorer",
    "check_eval_dependencies",
    "ptb_tokenize",
    "score_captions",
    "evaluate_captions",
    "write_coco_results",
    "load_coco_results",
    "CiderD",
    "most_frequent_caption_baseline",
    "nearest_neighbour_baseline",
    "MODEL_GREEDY",
    "MOST_FREQUENT",
    "NEAREST_NEIGHBOUR",
    "TABLE_METRICS",
    "model_beam",
    "CaptionerSettings",
    "generate_captions",
    "ValidationCider",
    "TrainedCaptioner",
    "TrainingData",
    "prepare_training_data",
    "train_captioner",
    "baseline_captions",
    "model_hypotheses",
    "score_systems",
    "HoldoutResult",
    "holdout_evaluation",
    "format_metrics_table",
    "FoldSplit",
    "fold_splits",
    "CrossValidation",
    "cross_validate",
]

METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
# The keys each metric name produces in the result (BLEU gives four: cumulative 1- to 4-gram BLEU).
_METRIC_KEYS = {
    "BLEU": ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"),
    "METEOR": ("METEOR",),
    "ROUGE_L": ("ROUGE_L",),
    "CIDEr": ("CIDEr",),
}

# ============================================================================================ dependencies


class EvaluationUnavailable(RuntimeError):
    """pycocoevalcap or Java is missing, or one of its Java programs failed."""


def check_eval_dependencies() -> None:
    """Raise `EvaluationUnavailable` with an install hint unless pycocoevalcap and `java` are available."""
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        raise EvaluationUnavailable(
            "caption metrics need pycocoevalcap, an optional extra: pip install 'minicap[eval]' "
            "(or pip install pycocoevalcap)"
        ) from None
    if shutil.which("java") is None:
        raise EvaluationUnavailable(
            "caption metrics need Java on the PATH: pycocoevalcap's PTB tokenizer and METEOR are Java programs "
            "(install a JRE, e.g. `apt-get install default-jre-headless`)"
        )


# ============================================================================================ tokenization


def ptb_tokenize(texts: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """Tokenize captions with pycocoevalcap's PTBTokenizer (Stanford CoreNLP, lowercased, punctuation removed).

    texts: key -> list of captions; returns key -> list of tokenized captions (tokens joined by spaces),
    same keys, same counts. All captions go through ONE Java process (starting Java is the slow part).
    """
    check_eval_dependencies()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The tokenizer writes one caption per line and reads one line back per caption; any other line break
    # inside a caption (\r, \u2028, ...) would shift every later caption onto the wrong image. Collapse all
    # whitespace to single spaces first, then check that every key got back as many captions as it gave.
    clean = {k: [{"caption": " ".join(str(c).split())} for c in caps] for k, caps in texts.items()}
    nonempty = {k: v for k, v in clean.items() if v}
    try:
        out = PTBTokenizer().tokenize(nonempty) if nonempty else {}
    except OSError as e:  # e.g. the package directory (where it writes a temp file) is read-only
        raise EvaluationUnavailable(f"pycocoevalcap's PTB tokenizer failed: {e}") from e
    result: dict[Hashable, list[str]] = {}
    for k, caps in clean.items():
        got = out.get(k, []) if caps else []
        if len(got) != len(caps):
            raise EvaluationUnavailable(
                f"the PTB tokenizer returned {len(got)} captions for key {k!r} instead of {len(caps)} "
                "(did the Java tokenizer crash? run `java -version`)"
            )
        result[k] = got
    return result


# ============================================================================================ scoring


@dataclass
class CaptionScores:
    """Metric values for one set of hypotheses.

    corpus:    metric -> corpus-level score (what papers report), keys from "BLEU-1".."BLEU-4", "METEOR",
               "ROUGE_L", "CIDEr"
    per_image: metric -> image id -> that image's score (for BLEU, the sentence-level BLEU)
    seconds:   wall time per stage ("tokenize", "BLEU", "METEOR", ...) for this call
    """

    corpus: dict[str, float]
    per_image: dict[str, dict[int, float]] = field(repr=False)
    num_images: int
    seconds: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        """One line, e.g. 'BLEU-1 0.612  BLEU-4 0.213  METEOR 0.204  ROUGE_L 0.455  CIDEr 0.652  (30 images)'."""
        return "  ".join(f"{k} {v:.3f}" for k, v in self.corpus.items()) + f"  ({self.num_images} images)"


class CaptionScorer:
    """Scores hypotheses against references with pycocoevalcap; keeps METEOR's Java process between calls.

        with CaptionScorer() as scorer:
            for fold in folds:
                scores = scorer.score(references, hypotheses)   # METEOR start-up paid once

    metrics: any of "BLEU", "METEOR", "ROUGE_L", "CIDEr".
    """

    def __init__(self, metrics: Sequence[str] = METRICS) -> None:
        unknown = [m for m in metrics if m not in _METRIC_KEYS]
        if unknown or not metrics:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(_METRIC_KEYS)}")
        check_eval_dependencies()
        self.metrics = tuple(metrics)
        self._meteor: Any = None  # started on first use: its start-up is the slowest step of an evaluation

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warm_up(self) -> float:
        """Start METEOR now (if asked for) and wait until it answers; returns the seconds that took.

        Its Java process loads a 62 MB paraphrase table first (~10 s here); a caller can do this while
        telling the user why, instead of the first `score` call stalling silently.
        """
        if "METEOR" not in self.metrics:
            return 0.0
        t0 = time.perf_counter()
        self._meteor_score({0: ["a dog"]}, {0: ["a dog"]})
        return time.perf_counter() - t0

    def close(self) -> None:
        """Stop METEOR's Java process (pycocoevalcap's Meteor only stops it in `__del__`)."""
        if self._meteor is not None:
            proc, self._meteor = self._meteor.meteor_p, None
            proc.stdin.close()
            proc.kill()
            proc.wait()

    def score(self, references: Mapping[int, Sequence[str]], hypotheses: Mapping[int, str]) -> CaptionScores:
        """Score `hypotheses` (image id -> one caption) against `references` (image id -> its captions).

        The images scored are those in `hypotheses`; each needs at least one reference (extra references
        are ignored). Raw text is fine: both sides are PTB-tokenized here.
        """
        if not hypotheses:
            raise ValueError("no hypotheses to score")
        ids = sorted(int(i) for i in hypotheses)
        missing = [i for i in ids if not references.get(i)]
        if missing:
            raise ValueError(f"{len(missing)} hypothesis image ids have no references (first: {missing[:5]})")
        for i in ids:
            if not isinstance(hypotheses[i], str):
                raise TypeError(f"hypothesis for image {i} is a {type(hypotheses[i]).__name__}, not a str")

        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        # One Java run for both sides: keys ("ref", id) and ("hyp", id) keep them apart.
        tokenized = ptb_tokenize(
            {**{("ref", i): list(references[i]) for i in ids}, **{("hyp", i): [hypotheses[i]] for i in ids}}
        )
        gts = {i: tokenized[("ref", i)] for i in ids}
        res = {i: tokenized[("hyp", i)] for i in ids}
        seconds["tokenize"] = time.perf_counter() - t0

        corpus: dict[str, float] = {}
        per_image: dict[str, dict[int, float]] = {}
        for metric in self.metrics:
            t0 = time.perf_counter()
            total, each = self._compute(metric, gts, res)
            seconds[metric] = time.perf_counter() - t0
            for key, value, values in zip(_METRIC_KEYS[metric], total, each, strict=True):
                corpus[key] = float(value)
                per_image[key] = {i: float(v) for i, v in zip(ids, values, strict=True)}
        return CaptionScores(corpus=corpus, per_image=per_image, num_images=len(ids), seconds=seconds)

    def _compute(
        self, metric: str, gts: dict[int, list[str]], res: dict[int, list[str]]
    ) -> tuple[list[float], list[Sequence[float]]]:
        """One pycocoevalcap scorer -> ([corpus value per key], [per-image values per key])."""
        if metric == "BLEU":
            from pycocoevalcap.bleu.bleu import Bleu

            total, each = Bleu(4).compute_score(gts, res, verbose=0)
            return list(total), list(each)
        if metric == "ROUGE_L":
            from pycocoevalcap.rouge.rouge import Rouge

            total, each = Rouge().compute_score(gts, res)
            return [total], [each]
        if metric == "CIDEr":
            from pycocoevalcap.cider.cider import Cider

            total, each = Cider().compute_score(gts, res)
            return [total], [each]
        if metric == "METEOR":
            return self._meteor_score(gts, res)
        raise AssertionError(metric)

    def _meteor_score(
        self, gts: dict[int, list[str]], res: dict[int, list[str]]
    ) -> tuple[list[float], list[Sequence[float]]]:
        from pycocoevalcap.meteor.meteor import Meteor

        if self._meteor is None:
            self._meteor = Meteor()
        try:
            total, each = self._meteor.compute_score(gts, res)
        except (ValueError, BrokenPipeError, OSError) as e:
            # The wrapper reads one number per line from Java's stdout; a dead process gives '' -> ValueError.
            proc = self._meteor.meteor_p
            self.close()
            err = proc.stderr.read().decode("utf-8", "replace")[-800:] if proc.stderr else ""
            raise EvaluationUnavailable(f"METEOR's Java process failed ({e}); its stderr ends with:\n{err}") from e
        return [total], [each]


def evaluate_captions(
    references: Mapping[int, Sequence[str]], hypotheses: Mapping[int, str], metrics: Sequence[str] = METRICS
) -> CaptionScores:
    """Corpus and per-image scores (see `CaptionScorer.score`), starting and stopping METEOR for this call."""
    with CaptionScorer(metrics) as scorer:
        return scorer.score(references, hypotheses)


def score_captions(
    references: Mapping[int, Sequence[str]], hypotheses: Mapping[int, str], metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """Corpus-level scores: {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"} (those asked)."""
    return evaluate_captions(references, hypotheses, metrics).corpus


# ============================================================================================ results files


def write_coco_results(hypotheses: Mapping[int, str], path: str | Path) -> None:
    """Write `[{"image_id": int, "caption": str}, ...]` (the COCO results format), sorted by id, atomically."""
    records = []
    for image_id in sorted(hypotheses):
        caption = hypotheses[image_id]
        if not isinstance(caption, str):
            raise TypeError(f"caption for image {image_id} is a {type(caption).__name__}, not a str")
        records.append({"image_id": int(image_id), "caption": caption})
    atomic_write_json(path, records)


def load_coco_results(path: str | Path) -> dict[int, str]:
    """Read a COCO results file back into image id -> caption; ValueError names a malformed entry."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: a COCO results file is a JSON list of {{image_id, caption}}")
    out: dict[int, str] = {}
    for k, rec in enumerate(data):
        if not isinstance(rec, dict) or not isinstance(rec.get("image_id"), int) or "caption" not in rec:
            raise ValueError(f"{path}: entry {k} is not {{'image_id': int, 'caption': str}}: {str(rec)[:120]}")
        if rec["image_id"] in out:
            raise ValueError(f"{path}: image {rec['image_id']} has more than one caption")
        out[rec["image_id"]] = str(rec["caption"])
    return out


# ============================================================================================ CIDEr-D


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


class CiderD:
    """CIDEr-D (Vedantam et al. 2015) with document frequencies from a fixed reference corpus.

    Each sentence becomes, for every n = 1..4, a TF-IDF vector over its n-grams:
        g_k(s) = tf_k(s) * log(D / max(1, df_k))          D = number of images in the corpus
    where df_k counts the images whose references contain n-gram k. The score of candidate c against
    references R is
        CIDEr-D(c, R) = 10/4 * sum_n 1/|R| * sum_r  exp(-(l_c - l_r)^2 / (2 sigma^2)) *
                        sum_k min(g_k(c), g_k(r)) g_k(r) / (|g(c)| |g(r)|)
    ("-D": the clipping `min` and the length penalty stop gaming by repetition or length). This follows
    pycocoevalcap's CiderScorer line by line, including its length l = number of BIGRAMS (its code counts
    n-grams with index 1; only the difference of lengths is used, so this differs from word counts only for
    an empty sentence); the tests check equality. pycocoevalcap takes df from the images being scored;
    here the corpus is given once (e.g. all training references), so single captions can be scored cheaply.
    """

    def __init__(self, corpus: Iterable[Sequence[Sequence[str]]], n: int = 4, sigma: float = 6.0) -> None:
        """corpus: per image, its reference captions as token lists."""
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter[tuple[str, ...]] = Counter()
        num_docs = 0
        for refs in corpus:
            num_docs += 1
            self.document_frequency.update({g for ref in refs for g in _ngram_counts(ref, n)})
        if num_docs == 0:
            raise ValueError("CIDEr-D needs a non-empty reference corpus for its document frequencies")
        self.log_num_docs = math.log(num_docs)

    def _vector(self, tokens: Sequence[str]) -> tuple[list[dict], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in _ngram_counts(tokens, self.n).items():
            k = len(gram) - 1
            w = tf * (self.log_num_docs - math.log(max(1.0, self.document_frequency[gram])))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, candidate: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """CIDEr-D of one tokenized candidate against tokenized references (mean over references)."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference")
        vc, nc, lc = self._vector(candidate)
        total = np.zeros(self.n)
        for ref in references:
            vr, nr, lr = self._vector(ref)
            penalty = math.exp(-((lc - lr) ** 2) / (2 * self.sigma**2))
            for k in range(self.n):
                dot = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vc[k].items())
                if nc[k] != 0 and nr[k] != 0:
                    dot /= nc[k] * nr[k]
                total[k] += dot * penalty
        return float(total.mean() / len(references) * 10.0)


# ============================================================================================ baselines


def most_frequent_caption_baseline(train_captions: Iterable[str]) -> str:
    """The most frequent training caption after `tokenize` (tokens joined by spaces), for every test image.

    The floor any captioner must clear: it knows the language of captions but looks at no image.
    Ties go to the alphabetically first caption, so the result never depends on the input order.
    """
    counts = Counter(" ".join(tokens) for tokens in map(tokenize, train_captions) if tokens)
    if not counts:
        raise ValueError("no non-empty training captions")
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def nearest_neighbour_baseline(
    train_features: np.ndarray,
    train_ids: Sequence[int] | np.ndarray,
    train_refs: Mapping[int, Sequence[str]],
    test_features: np.ndarray,
    test_ids: Sequence[int] | np.ndarray,
    k: int = 1,
) -> dict[int, str]:
    """For each test image, a caption borrowed from its most similar training image(s) (Devlin et al. 2015).

    train_features (N_train, F), train_ids (N_train,); train_refs: training image id -> its captions;
    test_features (N_test, F), test_ids (N_test,). Returns test id -> caption.

    1. Similarity = cosine of feature vectors; the k most similar training images are the neighbours
       (ties -> smaller image id).
    2. Of the neighbours' captions, return the one with the highest CIDEr-D against the OTHER captions of
       the pool ("consensus re-ranking": the caption most of the neighbours' annotators would agree with,
       rather than an idiosyncratic one). CIDEr-D's document frequencies come from all training references.
    Ties between captions go to the alphabetically first one.
    """
    train_features = np.asarray(train_features)
    test_features = np.asarray(test_features)
    train_ids = np.asarray(train_ids, dtype=np.int64)
    test_ids = np.asarray(test_ids, dtype=np.int64)
    if train_features.ndim != 2 or train_features.shape[0] != train_ids.shape[0]:
        raise ValueError(f"train_features {train_features.shape} do not match {train_ids.shape[0]} train ids")
    if test_features.ndim != 2 or test_features.shape[0] != test_ids.shape[0]:
        raise ValueError(f"test_features {test_features.shape} do not match {test_ids.shape[0]} test ids")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"feature sizes differ: train F={train_features.shape[1]}, test F={test_features.shape[1]}")
    if not 1 <= k <= len(train_ids):
        raise ValueError(f"k must be between 1 and the number of training images ({len(train_ids)}), got {k}")
    leaked = np.intersect1d(train_ids, test_ids)
    if leaked.size:
        raise ValueError(f"{leaked.size} test images are also training images (first: {leaked[:5].tolist()})")
    no_refs = [int(i) for i in train_ids if not train_refs.get(int(i))]
    if no_refs:
        raise ValueError(f"{len(no_refs)} training images have no captions in train_refs (first: {no_refs[:5]})")

    # Sort the training set by id so that argmax's first-index tie rule means "smaller id".
    order = np.argsort(train_ids, kind="stable")
    train_ids, train_features = train_ids[order], train_features[order]
    unit_train = _unit_rows(train_features)
    unit_test = _unit_rows(test_features)

    train_tokens = {int(i): [tokenize(c) for c in train_refs[int(i)]] for i in train_ids}
    cider = CiderD(train_tokens.values())

    out: dict[int, str] = {}
    chunk = 256  # test rows per similarity block: bounds memory at chunk * N_train floats
    for start in range(0, len(test_ids), chunk):
        sims = unit_test[start : start + chunk] @ unit_train.T  # (chunk, N_train) cosine similarities
        for row, test_id in zip(sims, test_ids[start : start + chunk], strict=True):
            if k == 1:
                neighbours = [int(np.argmax(row))]
            else:
                neighbours = np.argsort(-row, kind="stable")[:k].tolist()
            pool = [
                (" ".join(text.split()), tokens)
                for j in neighbours
                for text, tokens in zip(train_refs[int(train_ids[j])], train_tokens[int(train_ids[j])], strict=True)
            ]
            out[int(test_id)] = _consensus_caption(pool, cider)
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), in float64 so ties are exact."""
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _consensus_caption(pool: list[tuple[str, list[str]]], cider: CiderD) -> str:
    """The caption of `pool` (text, tokens) with the highest CIDEr-D against all the others."""
    if len(pool) == 1:
        return pool[0][0]
    scored = []
    for c, (text, tokens) in enumerate(pool):
        others = [toks for o, (_, toks) in enumerate(pool) if o != c]
        scored.append((-cider.score(tokens, others), text))
    return min(scored)[1]


# ============================================================================================ captioners, end to end
#
# Everything below trains and judges a captioner on a split BY IMAGE, and is shared by `minicap demo` (one
# train/val/test split), `minicap evaluate --folds K` (k-fold cross-validation) and benchmarks/peer_torch.py:
#
#   train images ──vocabulary, encode──▶ Trainer (best epoch by validation CIDEr-D, early stopping)
#   test images  ──greedy / beam search──▶ captions ─┐
#   most frequent training caption ──────────────────┼─▶ CaptionScorer (BLEU-1..4, METEOR, ROUGE-L, CIDEr)
#   nearest training image by cosine, consensus ─────┘
#
# Validation CIDEr-D uses the pure-Python `CiderD` (no Java), with document frequencies from the training and
# validation references (stable IDF weights; see `ValidationCider`).

MODEL_GREEDY = "model, greedy"
MOST_FREQUENT = "most frequent caption"
NEAREST_NEIGHBOUR = "nearest neighbour"
TABLE_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr")


def model_beam(beam_size: int) -> str:
    """The table's name for the model decoded with beam search of width `beam_size`."""
    return f"model, beam {beam_size}"


@dataclass(frozen=True)
class CaptionerSettings:
    """How a captioner is trained and decoded in the end-to-end experiments (demo, k-fold, peer comparison).

    Model:     hidden_size H, wordvec_size W, cell ("lstm" | "rnn")
    Text:      min_count (a word needs this many training occurrences, else <UNK>), max_length (words per
               training caption; longer ones are truncated)
    Training:  epochs, batch_size, lr (peak of Adam's cosine schedule with warm-up), clip (global norm),
               weight_decay (AdamW), patience (epochs without improvement before stopping; None: never), seed,
               standardise_features ((x − mean) / std with TRAINING-image statistics), early_stopping
               ("cider": best epoch = highest validation CIDEr-D of greedy captions; "loss": lowest validation
               loss), max_train_seconds (a time budget per training run; None: none)
    Decoding:  beam_size (the model is reported greedy AND with this beam), decode_max_length (tokens, <END>
               included), allow_unk (may a caption contain <UNK>?)
    Baseline:  nn_k (neighbours pooled by the nearest-neighbour baseline before consensus re-ranking)

    The defaults were chosen by 5-fold cross-validation on the 271 photos of ../shared/coco (~1,000 training
    captions; they are not tuned for all of COCO). Measured there (mean over the 5 folds, beam 3, CIDEr-D):
    H=256/W=128 beat H=512/W=256 and H=128; weight decay 1.0 beat 0 (+0.04, 4 of 5 folds) and 3.0; min_count 3
    beat 5; 25 epochs of the cosine schedule beat 40. The best epoch is picked by validation CIDEr-D, which beat
    picking it by validation loss (+0.03, 5 of 5 folds); patience 12 because the CIDEr-D of ~22 validation photos
    is noisy (patience 8 once stopped at a lucky epoch 5 and lost 0.09 on that fold). Standardising the features
    made no measurable difference here (+0.01 ± 0.04); it is kept because it costs nothing and makes the
    initialisation and weight decay independent of the encoder's feature scale.
    """

    hidden_size: int = 256
    wordvec_size: int = 128
    cell: str = "lstm"
    min_count: int = 3
    max_length: int = 16
    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-3
    clip: float = 5.0
    weight_decay: float = 1.0
    patience: int | None = 12
    seed: int = 0
    standardise_features: bool = True
    early_stopping: str = "cider"
    max_train_seconds: float | None = None
    beam_size: int = 3
    decode_max_length: int = 17
    allow_unk: bool = False
    nn_k: int = 5

    def __post_init__(self) -> None:
        if self.early_stopping not in ("cider", "loss"):
            raise ValueError(f'early_stopping must be "cider" or "loss", got {self.early_stopping!r}')
        if self.beam_size < 2:
            raise ValueError(f"beam_size must be >= 2 (greedy decoding is always reported), got {self.beam_size}")

    def replace(self, **changes: Any) -> CaptionerSettings:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_config(self) -> Any:
        """The `minicap.train.TrainConfig` of these settings."""
        from minicap.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            clip=self.clip,
            weight_decay=self.weight_decay,
            patience=self.patience,
            seed=self.seed,
            standardise_features=self.standardise_features,
        )


def generate_captions(
    model: Any,
    vocab: Any,
    features: np.ndarray,
    beam_size: int = 1,
    max_length: int = 17,
    allow_unk: bool = False,
    batch_size: int = 256,
) -> list[str]:
    """Captions for images with features (N, F): greedy when beam_size = 1, else beam search. N strings."""
    from minicap.decode import beam_search, decode_captions, greedy

    out: list[str] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        if beam_size == 1:
            ids = greedy(model, chunk, max_length=max_length, allow_unk=allow_unk)
        else:
            ids = beam_search(model, chunk, beam_size=beam_size, max_length=max_length, allow_unk=allow_unk)
        out.extend(decode_captions(ids, vocab))
    return out


class ValidationCider:
    """`callable(model) -> float`: mean CIDEr-D of the model's greedy captions on validation images.

    Plugged into the Trainer as `val_metric`, it picks the best epoch and drives early stopping by what the
    captions are judged on, not by the loss (the two disagree late in training: the loss keeps rewarding
    confident word probabilities after the decoded captions have stopped improving, or got worse).

    vocab: the model's Vocabulary; image_ids (N,); references: image id -> raw captions; features (N, F).
    corpus_ids: the images whose references give CIDEr-D's document frequencies (default: the validation images).
        Pass the training images too: on a small validation set the IDF weights are noisy, and on ONE image every
        n-gram has IDF log(1/1) = 0, so CIDEr-D would be 0 for every caption and pick nothing.
    """

    def __init__(
        self,
        vocab: Any,
        image_ids: Sequence[int] | np.ndarray,
        references: Mapping[int, Sequence[str]],
        features: np.ndarray,
        max_length: int = 17,
        allow_unk: bool = False,
        corpus_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.vocab, self.features = vocab, np.asarray(features)
        self.image_ids = [int(i) for i in image_ids]
        if len(self.image_ids) != len(self.features):
            raise ValueError(f"{len(self.image_ids)} validation ids but {len(self.features)} feature rows")
        self.references = [[tokenize(c) for c in references[i]] for i in self.image_ids]
        corpus = self.image_ids if corpus_ids is None else sorted({int(i) for i in corpus_ids} | set(self.image_ids))
        self.cider = CiderD([tokenize(c) for c in references[i]] for i in corpus)
        self.max_length, self.allow_unk = max_length, allow_unk

    def __call__(self, model: Any) -> float:
        from minicap.decode import greedy

        ids = greedy(model, self.features, max_length=self.max_length, allow_unk=self.allow_unk)
        scores = [
            self.cider.score(self.vocab.decode_tokens(row), refs)
            for row, refs in zip(ids, self.references, strict=True)
        ]
        return float(np.mean(scores))


@dataclass
class TrainedCaptioner:
    """A captioner trained on one split: the best epoch's model, its vocabulary and the training record."""

    model: Any  # minicap.model.CaptionModel (the best epoch's parameters)
    vocab: Any  # minicap.data.Vocabulary built from the training captions
    result: Any  # minicap.train.TrainResult
    seconds: float


def train_captioner(
    coco: Any,
    features: Any,
    train_ids: Sequence[int] | np.ndarray,
    val_ids: Sequence[int] | np.ndarray,
    settings: CaptionerSettings = CaptionerSettings(),
    *,
    out_dir: str | Path | None = None,
    encoder: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
    log: Any = None,
) -> TrainedCaptioner:
    """Train a captioner on the captions of `train_ids`, choosing its best epoch on `val_ids`.

    coco: `minicap.data.CocoCaptions`; features: a FeatureStore (or anything with `.lookup(ids) -> (N, F)`).
    The vocabulary comes from the training captions only; the model starts from `minicap.train.new_model`
    (output bias at log word frequencies) and is trained by `minicap.train.train`. Every image must have
    features: a missing one raises ONE MissingFeaturesError (count and first ids) before anything trains.
    With `out_dir`, checkpoints/history/curves are written there (`best.npz` is the returned model).
    """
    from minicap.train import new_model, train

    t0 = time.perf_counter()
    data = prepare_training_data(coco, features, train_ids, val_ids, settings)
    vocab, enc_train, enc_val = data.vocab, data.train, data.val
    model = new_model(
        vocab, data.feature_size, settings.hidden_size, settings.wordvec_size, settings.cell, seed=settings.seed
    )
    result = train(
        enc_train.captions,
        enc_train.image_ids,
        features,
        vocab,
        val_captions=None if enc_val is None else enc_val.captions,
        val_image_ids=None if enc_val is None else enc_val.image_ids,
        model=model,
        config=settings.train_config(),
        out_dir=out_dir,
        val_metric=data.val_metric,
        max_seconds=settings.max_train_seconds,
        encoder=encoder,
        extra=extra,
        progress=progress,
        log=log,
        plot=out_dir is not None,
    )
    best = result.best_model if result.best_model is not None else result.model
    return TrainedCaptioner(best, vocab, result, time.perf_counter() - t0)


@dataclass
class TrainingData:
    """One split ready for training: the vocabulary (training captions only), the encoded training and validation
    captions (`minicap.data.EncodedCaptions`; val None when there is no validation image), the feature size F, and
    the validation metric (a `ValidationCider`, or None when early stopping watches the loss)."""

    vocab: Any
    train: Any
    val: Any
    feature_size: int
    val_metric: ValidationCider | None


def prepare_training_data(
    coco: Any,
    features: Any,
    train_ids: Sequence[int] | np.ndarray,
    val_ids: Sequence[int] | np.ndarray,
    settings: CaptionerSettings = CaptionerSettings(),
) -> TrainingData:
    """Vocabulary, encoded captions and validation metric of a split (shared with benchmarks/peer_torch.py, so
    that both frameworks train on exactly the same arrays). Missing features: one MissingFeaturesError."""
    from minicap.data import Vocabulary, encode_captions

    train_set, val_set = {int(i) for i in train_ids}, {int(i) for i in val_ids}
    if train_set & val_set:
        raise ValueError(f"{len(train_set & val_set)} images are in both the training and the validation split")
    train_pairs = [(i, t) for i, t in coco.captions if i in train_set]
    val_pairs = [(i, t) for i, t in coco.captions if i in val_set]
    if not train_pairs:
        raise ValueError("no training captions: the training split is empty")
    vocab = Vocabulary.from_captions((t for _, t in train_pairs), min_count=settings.min_count)
    enc_train = encode_captions(train_pairs, vocab, settings.max_length)
    enc_val = encode_captions(val_pairs, vocab, settings.max_length) if val_pairs else None
    lookup = features.lookup if hasattr(features, "lookup") else features
    if enc_val is not None:
        _check_lookup(lookup, enc_val.image_ids, "validation")  # before any model exists
    _check_lookup(lookup, enc_train.image_ids, "training")
    feature_size = int(np.asarray(lookup(enc_train.image_ids[:1])).shape[1])
    val_metric = None
    if settings.early_stopping == "cider" and enc_val is not None:
        ids = sorted(val_set)
        val_metric = ValidationCider(
            vocab,
            ids,
            coco.references(),
            lookup(np.asarray(ids, np.int64)),
            settings.decode_max_length,
            settings.allow_unk,
            corpus_ids=sorted(train_set),  # document frequencies from all training + validation references
        )
    return TrainingData(vocab, enc_train, enc_val, feature_size, val_metric)


def _check_lookup(lookup: Any, image_ids: np.ndarray, what: str) -> None:
    from minicap.train import check_features_available

    check_features_available(image_ids, lookup, what=what)


def baseline_captions(
    coco: Any,
    features: Any,
    train_ids: Sequence[int] | np.ndarray,
    test_ids: Sequence[int] | np.ndarray,
    nn_k: int = 5,
) -> dict[str, dict[int, str]]:
    """The two baselines' captions for `test_ids`: {MOST_FREQUENT: {id: caption}, NEAREST_NEIGHBOUR: {...}}.

    Both see only the training images' captions (and, for the nearest neighbour, their raw features).
    """
    lookup = features.lookup if hasattr(features, "lookup") else features
    train_ids = np.asarray(sorted(int(i) for i in train_ids), dtype=np.int64)
    test_ids = np.asarray(sorted(int(i) for i in test_ids), dtype=np.int64)
    refs = coco.references()
    train_refs = {int(i): refs[int(i)] for i in train_ids}
    frequent = most_frequent_caption_baseline(c for i in train_ids for c in train_refs[int(i)])
    nearest = nearest_neighbour_baseline(
        lookup(train_ids), train_ids, train_refs, lookup(test_ids), test_ids, k=min(nn_k, len(train_ids))
    )
    return {MOST_FREQUENT: {int(i): frequent for i in test_ids}, NEAREST_NEIGHBOUR: nearest}


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

    def table(self, title: str = "") -> str:
        rows = {system: {m: (v, None) for m, v in row.items()} for system, row in self.scores.items()}
        return format_metrics_table(rows, title)


def holdout_evaluation(
    coco: Any,
    features: Any,
    train_ids: Sequence[int] | np.ndarray,
    val_ids: Sequence[int] | np.ndarray,
    test_ids: Sequence[int] | np.ndarray,
    settings: CaptionerSettings = CaptionerSettings(),
    scorer: CaptionScorer | None = None,
    *,
    out_dir: str | Path | None = None,
    encoder: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
    log: Any = None,
) -> HoldoutResult:
    """Train on `train_ids` (best epoch by `val_ids`), caption `test_ids` with the model (greedy and beam) and
    both baselines, and score all four against the test references.

    With a `CaptionScorer` every metric of TABLE_METRICS is computed by pycocoevalcap; without one, only
    CIDEr-D (the pure-Python `CiderD`, document frequencies from the test references) — enough for quick
    comparisons and for machines without Java.
    """
    test_ids = np.asarray(sorted(int(i) for i in test_ids), dtype=np.int64)
    overlap = np.intersect1d(test_ids, np.union1d(np.asarray(train_ids), np.asarray(val_ids)))
    if overlap.size:
        raise ValueError(f"{overlap.size} test images are also training/validation images: {overlap[:5].tolist()}")
    seconds: dict[str, float] = {}
    captioner = train_captioner(
        coco, features, train_ids, val_ids, settings, out_dir=out_dir, encoder=encoder, extra=extra,
        progress=progress, log=log,
    )  # fmt: skip
    seconds["train"] = captioner.seconds
    t0 = time.perf_counter()
    lookup = features.lookup if hasattr(features, "lookup") else features
    _check_lookup(lookup, test_ids, "test")
    hypotheses = model_hypotheses(captioner, lookup(test_ids), test_ids, settings)
    seconds["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hypotheses.update(baseline_captions(coco, features, train_ids, test_ids, settings.nn_k))
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
    )


def model_hypotheses(
    captioner: TrainedCaptioner, test_features: np.ndarray, test_ids: np.ndarray, settings: CaptionerSettings
) -> dict[str, dict[int, str]]:
    """{MODEL_GREEDY: {id: caption}, model_beam(B): {...}} for test images with features (N, F)."""
    out = {}
    for beam, name in ((1, MODEL_GREEDY), (settings.beam_size, model_beam(settings.beam_size))):
        texts = generate_captions(
            captioner.model, captioner.vocab, test_features, beam, settings.decode_max_length, settings.allow_unk
        )
        out[name] = {int(i): t for i, t in zip(test_ids, texts, strict=True)}
    return out


def score_systems(
    references: Mapping[int, Sequence[str]],
    hypotheses: Mapping[str, Mapping[int, str]],
    scorer: CaptionScorer | None = None,
) -> dict[str, dict[str, float]]:
    """system -> corpus metrics. With a scorer: pycocoevalcap's (all its metrics); without: {"CIDEr": CIDEr-D}
    computed by `CiderD` with document frequencies from the references of the images scored (as pycocoevalcap)."""
    if scorer is not None:
        return {name: scorer.score(references, hyps).corpus for name, hyps in hypotheses.items()}
    out = {}
    for name, hyps in hypotheses.items():
        ids = sorted(hyps)
        refs = [[tokenize(c) for c in references[i]] for i in ids]
        cider = CiderD(refs)
        out[name] = {
            "CIDEr": float(np.mean([cider.score(tokenize(hyps[i]), r) for i, r in zip(ids, refs, strict=True)]))
        }
    return out


# ============================================================================================ tables


def format_metrics_table(
    rows: Mapping[str, Mapping[str, tuple[float, float | None]]],
    title: str = "",
    metrics: Sequence[str] = TABLE_METRICS,
) -> str:
    """A fixed-width table: one row per system, one column per metric, each cell 'mean' or 'mean ± sd'.

    rows: system -> metric -> (value, sd or None). Metrics absent from every row are left out.
    """
    metrics = [m for m in metrics if any(m in r for r in rows.values())]
    with_sd = any(sd is not None for r in rows.values() for _, sd in r.values())
    width = 13 if with_sd else 7
    name_width = max([len(n) for n in rows] + [len("system")])
    lines = [title] if title else []
    lines.append(f"{'system':<{name_width}}  " + "  ".join(f"{m:>{width}}" for m in metrics))
    lines.append("-" * len(lines[-1]))
    for name, row in rows.items():
        cells = []
        for m in metrics:
            if m not in row:
                cells.append(f"{'-':>{width}}")
                continue
            value, sd = row[m]
            cells.append(f"{value:.3f} ± {sd:.3f}".rjust(width) if sd is not None else f"{value:{width}.3f}")
        lines.append(f"{name:<{name_width}}  " + "  ".join(cells))
    return "\n".join(lines)


# ============================================================================================ k-fold cross-validation


@dataclass(frozen=True)
class FoldSplit:
    """One fold: sorted int64 image ids. train and val together are the fold's training part."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def fold_splits(
    image_ids: Sequence[int] | np.ndarray, k: int, seed: int = 0, val_fraction: float = 0.1
) -> list[FoldSplit]:
    """K folds by image (`minicap.data.kfold_by_image`); from each fold's training part a `val_fraction` slice
    (at least one image) is held out for early stopping. Deterministic in (id set, k, seed)."""
    from minicap.data import kfold_by_image, split_by_image

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = []
    for f, (train_part, test) in enumerate(kfold_by_image(image_ids, k, seed)):
        n_val = max(1, int(round(val_fraction * len(train_part))))
        if n_val >= len(train_part):
            raise ValueError(f"fold {f + 1}: {len(train_part)} training images are too few to hold out {n_val}")
        split = split_by_image(train_part, [len(train_part) - n_val, n_val], seed=seed + 1 + f, names=("t", "v"))
        out.append(FoldSplit(f + 1, split["t"], split["v"], test))
    return out


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
    settings: CaptionerSettings
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
        title = f"{self.k}-fold cross-validation by image (seed {self.seed}): mean ± sd over folds"
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
            "settings": self.settings.to_dict(),
            "summary": {
                system: {m: {"mean": mean, "sd": sd} for m, (mean, sd) in row.items()}
                for system, row in self.summary().items()
            },
            "paired_vs": self.reference,
            "paired": {s: self.paired(s) for s in self.systems if s != self.reference},
            "folds": self.folds,
        }


def cross_validate(
    coco: Any,
    features: Any,
    k: int = 5,
    settings: CaptionerSettings = CaptionerSettings(),
    scorer: CaptionScorer | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    log: Any = None,
) -> CrossValidation:
    """K-fold cross-validation by image of the captioner and both baselines.

    Every image is a test image exactly once. In each fold a fresh captioner is trained on the fold's training
    part minus a `val_fraction` validation slice (which picks its best epoch and stops it early), then the model
    (greedy and beam), the most-frequent-caption and the nearest-neighbour baselines caption the test images and
    are scored. Folds pair the systems: the same test images, the same training images.

    coco: CocoCaptions whose every image has features in `features` (a FeatureStore or a lookup).
    Returns a CrossValidation (per-fold scores, `summary()`, `paired()`, `table()`).
    """
    log = log or (lambda line: None)
    lookup = features.lookup if hasattr(features, "lookup") else features
    image_ids = coco.image_ids()
    _check_lookup(lookup, image_ids, "cross-validation")
    t0 = time.perf_counter()
    folds = []
    for split in fold_splits(image_ids, k, seed, val_fraction):
        result = holdout_evaluation(coco, features, split.train, split.val, split.test, settings, scorer)
        train = result.captioner.result
        folds.append(
            {
                "fold": split.fold,
                "n_train": len(split.train),
                "n_val": len(split.val),
                "n_test": len(split.test),
                "scores": result.scores,
                "best_epoch": train.best_epoch,
                "epochs": train.epochs,
                "stopped": train.stopped,
                "train_seconds": result.seconds["train"],
                "seconds": float(sum(result.seconds.values())),
            }
        )
        beam = result.scores[model_beam(settings.beam_size)]
        nn_row = result.scores[NEAREST_NEIGHBOUR]
        log(
            f"fold {split.fold}/{k}: {len(split.train)}/{len(split.val)}/{len(split.test)} images, best epoch "
            f"{train.best_epoch}/{train.epochs} ({train.stopped}, {result.seconds['train']:.0f} s); "
            + ", ".join(f"{m} {beam[m]:.3f} vs NN {nn_row[m]:.3f}" for m in ("BLEU-4", "CIDEr") if m in beam)
        )
    return CrossValidation(folds, settings, k, seed, time.perf_counter() - t0)

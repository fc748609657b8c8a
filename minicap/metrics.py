"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr through pycocoevalcap, CIDEr-D in pure Python, COCO
results files, and the table every experiment prints.

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

`CiderD` is the small pure-Python CIDEr-D (no Java) that picks the best epoch during training and re-ranks the
nearest-neighbour baseline; the tests check it against pycocoevalcap.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from minicap.safe_io import atomic_write_json
from minicap.text import tokenize

if TYPE_CHECKING:  # an optional dependency: imported where METEOR starts
    from pycocoevalcap.meteor.meteor import Meteor

__all__ = [
    "METRICS",
    "TABLE_METRICS",
    "EvaluationUnavailable",
    "CaptionScores",
    "CaptionScorer",
    "check_eval_dependencies",
    "ptb_tokenize",
    "score_captions",
    "evaluate_captions",
    "score_systems",
    "cider_d_per_image",
    "write_coco_results",
    "load_coco_results",
    "CiderD",
    "format_metrics_table",
]

METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
# The keys each metric name produces in the result (BLEU gives four: cumulative 1- to 4-gram BLEU).
_METRIC_KEYS = {
    "BLEU": ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"),
    "METEOR": ("METEOR",),
    "ROUGE_L": ("ROUGE_L",),
    "CIDEr": ("CIDEr",),
}
TABLE_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr")

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
        self._meteor: Meteor | None = None  # started on first use: its start-up is the slowest step of an evaluation

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


def score_systems(
    references: Mapping[int, Sequence[str]],
    hypotheses: Mapping[str, Mapping[int, str]],
    scorer: CaptionScorer | None = None,
) -> dict[str, dict[str, float]]:
    """system -> corpus metrics. With a scorer: pycocoevalcap's (all its metrics); without: {"CIDEr": CIDEr-D}
    computed by `CiderD` with document frequencies from the references of the images scored (as pycocoevalcap)."""
    if scorer is not None:
        return {name: scorer.score(references, hyps).corpus for name, hyps in hypotheses.items()}
    return {name: {"CIDEr": float(np.mean(list(cider_d_per_image(references, hyps).values())))}
            for name, hyps in hypotheses.items()}  # fmt: skip


def cider_d_per_image(references: Mapping[int, Sequence[str]], hypotheses: Mapping[int, str]) -> dict[int, float]:
    """image id -> CIDEr-D of its caption, document frequencies from the references of the images scored (as
    pycocoevalcap computes them); the mean over the images is the corpus CIDEr-D of `score_systems`."""
    ids = sorted(hypotheses)
    refs = [[tokenize(c) for c in references[i]] for i in ids]
    cider = CiderD(refs)
    return {i: cider.score(tokenize(hypotheses[i]), r) for i, r in zip(ids, refs, strict=True)}


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

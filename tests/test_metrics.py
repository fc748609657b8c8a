"""minicap.metrics: the pycocoevalcap wrapper, CIDEr-D against pycocoevalcap, COCO results files, score_systems and
the metrics table.

Tests that run Java (the PTB tokenizer, METEOR) skip when pycocoevalcap or `java` is missing. METEOR's start-up
dominates (10-25 s here), so all METEOR-using tests share ONE module-scoped `CaptionScorer`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest

from minicap import metrics
from minicap.baselines import most_frequent_caption_baseline
from minicap.coco import load_coco_captions, split_by_image
from minicap.metrics import (
    TABLE_METRICS,
    CaptionScorer,
    CiderD,
    EvaluationUnavailable,
    format_metrics_table,
    load_coco_results,
    ptb_tokenize,
    score_captions,
    score_systems,
    write_coco_results,
)
from minicap.text import tokenize


def _need_java_eval() -> None:
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("java is not installed (pycocoevalcap's tokenizer and METEOR need it)")


@pytest.fixture(scope="module")
def scorer():
    """All four metrics, METEOR's Java process started once for the whole module."""
    _need_java_eval()
    with CaptionScorer() as s:
        yield s


REFS = {
    1: ["A dog runs on the grass.", "A brown dog running across a lawn.", "The dog is playing in a field."],
    2: ["Two people ride bicycles down a street.", "Cyclists riding on a city road.", "Two bikers on a street."],
    3: ["A plate of food with broccoli and rice.", "A meal of rice and vegetables.", "Broccoli and rice on a plate."],
    4: ["A red bus parked at the curb.", "A double decker bus on a street.", "A large red bus by a sidewalk."],
}

# ----------------------------------------------------------------------------------------------- metrics


def test_bleu_matches_hand_computation():
    _need_java_eval()
    refs = {1: ["a dog is running on the grass", "the dog runs on green grass"], 2: ["a dog is on the grass"]}
    hyps = {1: "A dog runs on the grass.", 2: "a dog on grass"}
    # Image 1 (6 words; closest reference length 6, so no brevity penalty):
    #   unigrams 6/6; bigrams 5/5 (a dog, dog runs, runs on, on the, the grass); trigrams 2/4 (dog runs on,
    #   on the grass); 4-grams 0/3  ->  BLEU-1 = 1, BLEU-2 = 1, BLEU-3 = (1 * 1 * 1/2)^(1/3)
    # Image 2 (4 words vs 6): unigrams 4/4; bigrams 1/3; brevity penalty exp(1 - 6/4)
    # Corpus: pooled counts unigrams 10/10, bigrams 6/8, lengths 10 vs 12 -> penalty exp(1 - 12/10)
    scores = metrics.evaluate_captions(refs, hyps, metrics=["BLEU"])
    assert set(scores.corpus) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}
    bp = math.exp(1 - 12 / 10)
    assert scores.corpus["BLEU-1"] == pytest.approx(bp, rel=1e-6)
    assert scores.corpus["BLEU-2"] == pytest.approx(bp * math.sqrt(6 / 8), rel=1e-6)
    per = scores.per_image
    assert per["BLEU-1"][1] == pytest.approx(1.0, rel=1e-6)
    assert per["BLEU-3"][1] == pytest.approx(0.5 ** (1 / 3), rel=1e-6)
    assert per["BLEU-4"][1] < 1e-3  # no 4-gram matches: ~0 (pycocoevalcap adds 1e-15 to avoid log 0)
    assert per["BLEU-1"][2] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert per["BLEU-2"][2] == pytest.approx(math.exp(-0.5) * math.sqrt(1 / 3), rel=1e-6)
    assert scores.num_images == 2


@pytest.mark.slow
def test_perfect_hypotheses_score_high_and_garbage_scores_zero(scorer):
    perfect = scorer.score(REFS, {i: refs[0] for i, refs in REFS.items()})
    assert set(perfect.corpus) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"}
    assert perfect.corpus["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert perfect.corpus["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect.corpus["ROUGE_L"] == pytest.approx(1.0, abs=1e-6)
    assert perfect.corpus["METEOR"] > 0.9
    assert perfect.corpus["CIDEr"] > 2.0
    garbage = scorer.score(REFS, {i: "zxq vbnm plork" for i in REFS})
    for key in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"):
        assert garbage.corpus[key] < 1e-3, key
    assert set(perfect.per_image["CIDEr"]) == set(REFS)
    assert np.mean(list(perfect.per_image["CIDEr"].values())) == pytest.approx(perfect.corpus["CIDEr"])
    assert {"tokenize", "BLEU", "METEOR", "ROUGE_L", "CIDEr"} <= set(perfect.seconds)


@pytest.mark.slow
def test_empty_hypothesis_and_subset_of_images(scorer):
    # An empty caption is a legal (bad) output: it scores 0, and the other image is still scored.
    scores = scorer.score(REFS, {1: "", 4: "a red bus parked at the curb"})
    assert scores.num_images == 2
    assert scores.per_image["METEOR"][1] == 0.0 and scores.per_image["ROUGE_L"][1] == 0.0
    assert scores.per_image["ROUGE_L"][4] == pytest.approx(1.0)


@pytest.mark.slow
def test_human_captions_beat_most_frequent_caption_on_real_coco(shared_coco, scorer):
    data = load_coco_captions(shared_coco / "captions.json")
    refs = data.references()
    split = split_by_image(data.image_ids(), (0.8, 0.2), seed=0)
    train = set(split["train"].tolist())
    test = split["test"].tolist()
    constant = most_frequent_caption_baseline(t for i, t in data.captions if i in train)
    # Leave-one-out: each image's first caption against its other four ("human" performance).
    held_out_refs = {i: refs[i][1:] for i in test}
    human = scorer.score(held_out_refs, {i: refs[i][0] for i in test}).corpus
    blind = scorer.score(held_out_refs, {i: constant for i in test}).corpus
    assert human["CIDEr"] > 0.5 > blind["CIDEr"]
    for key in ("BLEU-4", "METEOR", "ROUGE_L", "CIDEr"):
        assert human[key] > blind[key], key


def test_score_captions_errors():
    _need_java_eval()
    with pytest.raises(ValueError, match="unknown metric"):
        score_captions(REFS, {1: "a dog"}, metrics=["SPICE"])
    with pytest.raises(ValueError, match=r"1 hypothesis image ids have no references \(first: \[9\]\)"):
        score_captions(REFS, {1: "a dog", 9: "a cat"}, metrics=["BLEU"])
    with pytest.raises(ValueError, match="no hypotheses"):
        score_captions(REFS, {}, metrics=["BLEU"])
    with pytest.raises(TypeError, match="not a str"):
        score_captions(REFS, {1: ["a", "dog"]}, metrics=["BLEU"])


def test_missing_java_or_pycocoevalcap_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(EvaluationUnavailable, match="need Java on the PATH"):
        score_captions(REFS, {1: "a dog"})
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # makes `import pycocoevalcap` raise ImportError
    with pytest.raises(EvaluationUnavailable, match=r"pip install 'minicap\[eval\]'"):
        score_captions(REFS, {1: "a dog"})


def test_ptb_tokenize_keeps_captions_aligned_despite_odd_line_breaks():
    _need_java_eval()
    out = ptb_tokenize({1: ["A dog\ron a\u2028couch.", "Second, caption!"], 2: [], 3: ["The END"]})
    assert out == {1: ["a dog on a couch", "second caption"], 2: [], 3: ["the end"]}


# ----------------------------------------------------------------------------------------------- results files


def test_write_and_load_coco_results(tmp_path):
    path = tmp_path / "out" / "results.json"
    write_coco_results({42: "a cat", 7: "a dog’s bed"}, path)
    assert json.loads(path.read_text(encoding="utf-8")) == [
        {"image_id": 7, "caption": "a dog’s bed"},
        {"image_id": 42, "caption": "a cat"},
    ]
    assert load_coco_results(path) == {7: "a dog’s bed", 42: "a cat"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temp file left
    with pytest.raises(TypeError, match="not a str"):
        write_coco_results({1: None}, path)
    assert load_coco_results(path) == {7: "a dog’s bed", 42: "a cat"}  # a failed write kept the old file
    path.write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    with pytest.raises(ValueError, match="more than one caption"):
        load_coco_results(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="JSON list"):
        load_coco_results(path)


# ----------------------------------------------------------------------------------------------- CIDEr-D


def test_cider_d_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in REFS.items()}
    hyps = {1: "a dog running on grass", 2: "two people on a street", 3: "rice", 4: "a red red red bus bus"}
    res = {i: [" ".join(tokenize(h))] for i, h in hyps.items()}
    _, expected = Cider().compute_score(gts, res)  # document frequencies from these 4 images' references
    cider = CiderD([[r.split() for r in refs] for refs in gts.values()])
    got = [cider.score(res[i][0].split(), [r.split() for r in gts[i]]) for i in gts]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert max(got) > 0.5  # a real signal, not all zeros
    with pytest.raises(ValueError, match="non-empty"):
        CiderD([])


# ----------------------------------------------------------------------------------------------- score_systems


HYPS = {1: "a dog running on grass", 2: "two people on a street", 3: "rice", 4: "a red red red bus bus"}


def test_score_systems_without_a_scorer_is_cider_d_over_the_images_scored():
    systems = {"good": HYPS, "constant": {i: "a dog on a street" for i in REFS}, "half": {1: HYPS[1], 4: HYPS[4]}}
    scores = score_systems(REFS, systems)
    assert list(scores) == list(systems) and all(set(row) == {"CIDEr"} for row in scores.values())
    for name, hyps in systems.items():
        ids = sorted(hyps)
        # Document frequencies from the references of exactly the images this system is scored on.
        cider = CiderD([tokenize(r) for r in REFS[i]] for i in ids)
        expected = np.mean([cider.score(tokenize(hyps[i]), [tokenize(r) for r in REFS[i]]) for i in ids])
        assert scores[name]["CIDEr"] == pytest.approx(expected, rel=1e-12), name
    everywhere = CiderD([tokenize(r) for r in refs] for refs in REFS.values())
    other_df = np.mean([everywhere.score(tokenize(HYPS[i]), [tokenize(r) for r in REFS[i]]) for i in (1, 4)])
    assert scores["half"]["CIDEr"] != pytest.approx(other_df, rel=1e-3)  # the corpus really is the scored images
    assert scores["good"]["CIDEr"] > scores["constant"]["CIDEr"]


def test_score_systems_without_a_scorer_equals_pycocoevalcap_cider_on_the_same_tokens():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider  # pure Python: no Java needed

    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in REFS.items()}
    res = {i: [" ".join(tokenize(h))] for i, h in HYPS.items()}
    expected, _ = Cider().compute_score(gts, res)
    assert score_systems(REFS, {"model": HYPS})["model"]["CIDEr"] == pytest.approx(expected, rel=1e-12)


class RecordingScorer:
    """Stands in for a CaptionScorer: records what it was asked to score, answers with fixed numbers."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, dict]] = []

    def score(self, references, hypotheses):
        self.calls.append((references, dict(hypotheses)))
        value = float(len(self.calls))
        return type("Scores", (), {"corpus": {m: value for m in TABLE_METRICS}})()


def test_score_systems_with_a_scorer_scores_every_system_against_the_same_references():
    scorer = RecordingScorer()
    systems = {"a": {1: "x", 2: "y"}, "b": {3: "z"}}
    scores = score_systems(REFS, systems, scorer)
    assert scores == {"a": dict.fromkeys(TABLE_METRICS, 1.0), "b": dict.fromkeys(TABLE_METRICS, 2.0)}
    assert [hyps for _, hyps in scorer.calls] == [systems["a"], systems["b"]]
    assert all(refs is REFS for refs, _ in scorer.calls)


@pytest.mark.slow
def test_score_systems_with_the_pycocoevalcap_scorer(scorer):
    perfect = {i: refs[0] for i, refs in REFS.items()}
    scores = score_systems(REFS, {"perfect": perfect, "short": {1: "a dog", 4: "a bus"}}, scorer)
    assert set(scores["perfect"]) == set(scores["short"]) == set(TABLE_METRICS)
    assert scores["perfect"] == scorer.score(REFS, perfect).corpus
    assert scores["perfect"]["CIDEr"] > scores["short"]["CIDEr"]


# ----------------------------------------------------------------------------------------------- the table


def test_format_metrics_table():
    table = format_metrics_table({"a": {"CIDEr": (0.5, 0.25), "BLEU-4": (0.1, 0.0)}, "bb": {"CIDEr": (1.0, None)}})
    lines = table.splitlines()
    assert lines[0].split() == ["system", "BLEU-4", "CIDEr"]  # metrics in TABLE_METRICS order
    assert lines[2].split() == ["a", "0.100", "±", "0.000", "0.500", "±", "0.250"]
    assert lines[3].split() == ["bb", "-", "1.000"]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])


def test_format_metrics_table_without_sd_has_a_title_and_narrow_columns():
    table = format_metrics_table({"model": {"CIDEr": (0.51234, None), "METEOR": (0.2, None)}}, "30 test photos")
    lines = table.splitlines()
    assert lines[0] == "30 test photos"
    assert lines[1].split() == ["system", "METEOR", "CIDEr"]
    assert lines[3].split() == ["model", "0.200", "0.512"] and "±" not in table
    only = format_metrics_table({"m": {"CIDEr": (1.0, None), "BLEU-1": (0.5, None)}}, metrics=["CIDEr"])
    assert only.splitlines()[0].split() == ["system", "CIDEr"]


def test_cider_d_per_image_averages_to_the_corpus_score():
    per_image = metrics.cider_d_per_image(REFS, HYPS)
    assert sorted(per_image) == sorted(HYPS)
    assert np.mean(list(per_image.values())) == pytest.approx(score_systems(REFS, {"s": HYPS})["s"]["CIDEr"])
    assert per_image[1] > per_image[3]  # "a dog running on grass" against "rice"

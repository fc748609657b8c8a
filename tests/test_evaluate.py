"""minicap.evaluate: pycocoevalcap metrics, COCO results files, CIDEr-D, and the two baselines.

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

from minicap import evaluate
from minicap.data import load_coco_captions, split_by_image, tokenize
from minicap.evaluate import (
    CaptionScorer,
    CiderD,
    EvaluationUnavailable,
    load_coco_results,
    most_frequent_caption_baseline,
    nearest_neighbour_baseline,
    ptb_tokenize,
    score_captions,
    write_coco_results,
)


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
    scores = evaluate.evaluate_captions(refs, hyps, metrics=["BLEU"])
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
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: None)
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


# ----------------------------------------------------------------------------------------------- baselines


def test_most_frequent_caption_baseline_normalises_and_breaks_ties_alphabetically():
    captions = ["A dog.", "b", "a dog", "B!", "a cat", "   "]
    # "a dog" and "b" both occur twice after tokenizing; the tie goes to the alphabetically first
    assert most_frequent_caption_baseline(captions) == "a dog"
    assert most_frequent_caption_baseline(reversed(captions)) == "a dog"
    assert most_frequent_caption_baseline(["A man's hat", "a man’s hat", "a hat"]) == "a man 's hat"
    with pytest.raises(ValueError, match="no non-empty"):
        most_frequent_caption_baseline(["", "..."])


def _toy_nn_data():
    train_ids = np.array([30, 10, 20])
    # image 10 along axis 0, image 20 along axis 1, image 30 along axis 2 (rows given in id order 30, 10, 20)
    train_features = np.array([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.1], [0.0, 1.0, 0.0, 0.1]])
    train_refs = {
        10: ["a cat on a sofa", "a cat sleeping on a sofa", "a kitten"],
        20: [
            "a red bus on a street",
            "a giraffe eating leaves",
            "a red bus parked on the street",
            "a red double decker bus on the street",
        ],
        30: ["a plate of food"],
    }
    return train_features, train_ids, train_refs


def test_nearest_neighbour_baseline_picks_the_consensus_caption_of_the_most_similar_image():
    train_features, train_ids, train_refs = _toy_nn_data()
    # Test image 1 points along axis 1 but is 50x longer than image 20: cosine (not Euclidean) finds image 20.
    # Test image 2 is nearest to image 30, which has one caption: that caption is returned as is.
    test_features = np.array([[0.2, 50.0, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0], [3.0, 0.2, 0.0, 0.0]])
    out = nearest_neighbour_baseline(train_features, train_ids, train_refs, test_features, [1, 2, 3])
    # Image 20: the giraffe caption agrees with no other caption (CIDEr-D 0); of the bus captions, the one
    # sharing most n-grams with the other two wins (2.29 vs 2.01 and 1.99).
    assert out[1] == "a red bus parked on the street"
    assert out[2] == "a plate of food"
    # Image 10: the two cat captions tie (each is the other's only match); the alphabetically first wins,
    # never the outlier "a kitten".
    assert out[3] == "a cat on a sofa"
    # Shuffling the training rows changes nothing.
    perm = np.array([2, 0, 1])
    again = nearest_neighbour_baseline(train_features[perm], train_ids[perm], train_refs, test_features, [1, 2, 3])
    assert again == out


def test_nearest_neighbour_consensus_choice_is_the_argmax_of_cider_d():
    train_features, train_ids, train_refs = _toy_nn_data()
    out = nearest_neighbour_baseline(train_features, train_ids, train_refs, np.array([[0.0, 1.0, 0.0, 0.0]]), [5])
    cider = CiderD([[tokenize(c) for c in refs] for refs in train_refs.values()])
    pool = [tokenize(c) for c in train_refs[20]]
    consensus = [cider.score(pool[c], pool[:c] + pool[c + 1 :]) for c in range(len(pool))]
    assert out[5] == train_refs[20][int(np.argmax(consensus))]
    assert sorted(consensus)[-1] > sorted(consensus)[-2]  # a strict winner: the test is not decided by ties


def test_nearest_neighbour_k_pools_captions_and_validates_inputs():
    train_features, train_ids, train_refs = _toy_nn_data()
    # Halfway between the cat image (10) and the food image (30): with k=2 both pools count.
    out = nearest_neighbour_baseline(train_features, train_ids, train_refs, np.array([[1.0, 0.0, 1.0, 0.0]]), [7], k=2)
    assert out[7] in train_refs[10] + train_refs[30]
    with pytest.raises(ValueError, match="also training images"):
        nearest_neighbour_baseline(train_features, train_ids, train_refs, train_features[:1], [30])
    with pytest.raises(ValueError, match=r"have no captions in train_refs \(first: \[30\]\)"):
        nearest_neighbour_baseline(train_features, train_ids, {10: ["a"], 20: ["b"]}, train_features[:1], [99])
    with pytest.raises(ValueError, match="feature sizes differ"):
        nearest_neighbour_baseline(train_features, train_ids, train_refs, np.zeros((1, 3)), [99])
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbour_baseline(train_features, train_ids, train_refs, np.zeros((1, 4)), [99], k=4)

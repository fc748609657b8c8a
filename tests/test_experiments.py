"""minicap.experiments: a hold-out run and k-fold cross-validation of the captioner against the two baselines.

All on a synthetic COCO of flat colours: 15 images ("a red picture", "the blue image", ...) whose features are
the colour plus noise, in a FeatureTable, so a whole cross-validation trains in about a second.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from minicap.baselines import MOST_FREQUENT, NEAREST_NEIGHBOUR
from minicap.checkpoint import load_checkpoint
from minicap.coco import CocoCaptions, fold_splits
from minicap.config import CaptionerConfig
from minicap.dataset import FeatureTable, MissingFeaturesError
from minicap.experiments import (
    MODEL_GREEDY,
    CrossValidation,
    HoldoutResult,
    choose_on_validation,
    cross_validate,
    holdout_evaluation,
    model_beam,
)
from minicap.metrics import TABLE_METRICS

COLOURS = ("red", "green", "blue")
# Small enough to train in a fraction of a second, large enough to learn "a <colour> ...".
TINY = CaptionerConfig(
    hidden_size=32, wordvec_size=16, epochs=40, batch_size=16, lr=1e-2, min_count=1, patience=None, nn_k=1
)
SYSTEMS = [MODEL_GREEDY, model_beam(3), MOST_FREQUENT, NEAREST_NEIGHBOUR]


def colour_data(n: int = 15, F: int = 8, seed: int = 0) -> tuple[CocoCaptions, FeatureTable]:
    """Images 1..n coloured red, green, blue in turn, three captions each; features = the colour's axis + noise."""
    rng = np.random.default_rng(seed)
    images, captions, rows = {}, [], []
    for k in range(n):
        image_id, colour = k + 1, COLOURS[k % 3]
        images[image_id] = {"id": image_id, "file_name": f"{image_id:012d}.jpg"}
        captions += [(image_id, t) for t in (f"a {colour} picture", f"a {colour} square", f"the {colour} image")]
        rows.append(np.eye(F)[k % 3] * 3.0 + 0.1 * rng.standard_normal(F))
    return CocoCaptions(images, captions), FeatureTable(np.arange(1, n + 1), np.array(rows, dtype=np.float32))


# ----------------------------------------------------------------------------------------------- hold-out


@pytest.fixture(scope="module")
def holdout(tmp_path_factory) -> tuple[HoldoutResult, CocoCaptions]:
    coco, table = colour_data()
    out = tmp_path_factory.mktemp("holdout")
    train, val, test = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12], [15, 13, 14]
    result = holdout_evaluation(coco, table, train, val, test, TINY, out_dir=out, extra={"note": "kept"})
    return result, coco


def test_holdout_evaluation_captions_the_test_images_with_every_system(holdout):
    result, coco = holdout
    assert result.test_ids.tolist() == [13, 14, 15] and result.val_ids.tolist() == [12]
    assert result.train_ids.tolist() == list(range(1, 12))
    assert list(result.hypotheses) == SYSTEMS and list(result.scores) == SYSTEMS
    for system in SYSTEMS:
        assert sorted(result.hypotheses[system]) == [13, 14, 15]
        assert set(result.scores[system]) == {"CIDEr"}  # no scorer: CIDEr-D only
    refs = coco.references()
    for system in (MODEL_GREEDY, model_beam(3)):  # the model learned the colours
        for image_id, caption in result.hypotheses[system].items():
            assert refs[image_id][0].split()[1] in caption.split(), (system, image_id, caption)
    assert result.scores[model_beam(3)]["CIDEr"] > result.scores[MOST_FREQUENT]["CIDEr"]
    assert set(result.seconds) == {"train", "decode", "baselines", "score"}
    table = result.table("three test images").splitlines()
    assert table[0] == "three test images" and table[1].split() == ["system", "CIDEr"]
    assert [row.split("  ")[0] for row in table[3:]] == SYSTEMS


def test_holdout_evaluation_trains_the_configured_captioner_and_records_it(holdout):
    result, _ = holdout
    trained = result.captioner.result
    assert trained.stopped == "completed" and trained.epochs == TINY.epochs  # patience None: all 40 epochs
    assert trained.criterion == "val_metric"  # best epoch by validation CIDEr-D
    assert result.captioner.model.hidden_size == 32 and result.captioner.model.wordvec_size == 16
    best = load_checkpoint(trained.best_path)
    assert best.extra["config"] == TINY.to_dict() and best.extra["note"] == "kept"
    assert best.train_config == TINY.train_config().to_dict()
    assert best.epoch == trained.best_epoch


def test_holdout_evaluation_refuses_bad_splits_before_training(tmp_path):
    coco, table = colour_data()
    with pytest.raises(ValueError, match=r"1 test images are also training/validation images: \[12\]"):
        holdout_evaluation(coco, table, range(1, 12), [12], [12, 13], TINY, out_dir=tmp_path)
    partial = FeatureTable(table.image_ids[:-1], table.features[:-1])  # test image 15 has no features
    with pytest.raises(MissingFeaturesError, match=r"1 of 3 requested image ids have no features .*\(first: 15\)"):
        holdout_evaluation(coco, partial, range(1, 12), [12], [13, 14, 15], TINY, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # both refused before any training: no checkpoint, no history


# ------------------------------------------------------------------------------------------ cross-validation


def test_fold_splits_are_disjoint_and_cover_every_image():
    ids = np.arange(100, 147)
    folds = fold_splits(ids, k=5, seed=3, val_fraction=0.1)
    assert [f.fold for f in folds] == [1, 2, 3, 4, 5]
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == ids.tolist()  # every image tested exactly once
    for f in folds:
        parts = [set(f.train.tolist()), set(f.val.tolist()), set(f.test.tolist())]
        assert sum(len(p) for p in parts) == len(ids) and set().union(*parts) == set(ids.tolist())
        assert len(f.val) == round(0.1 * (len(f.train) + len(f.val)))
    again = fold_splits(ids[::-1], k=5, seed=3)
    for a, b in zip(folds, again, strict=True):  # the same folds whatever the order of the ids
        assert np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)


def test_cross_validate_table_and_numbers():
    coco, table = colour_data()
    lines: list[str] = []
    cv = cross_validate(coco, table, k=3, config=TINY.replace(epochs=25), scorer=None, seed=0, log=lines.append)
    assert [f["n_test"] for f in cv.folds] == [5, 5, 5]
    assert [f["fold"] for f in cv.folds] == [1, 2, 3] and len(lines) == 3 and lines[0].startswith("fold 1/3:")
    assert all(f["epochs"] == 25 and f["stopped"] == "completed" for f in cv.folds)
    assert cv.systems == SYSTEMS and cv.metrics == ["CIDEr"]
    mean, sd = cv.summary()[model_beam(3)]["CIDEr"]
    values = cv.values(model_beam(3), "CIDEr")
    assert mean == pytest.approx(values.mean()) and sd == pytest.approx(values.std(ddof=1))
    paired = cv.paired(model_beam(3))["CIDEr"]
    diff = values - cv.values(NEAREST_NEIGHBOUR, "CIDEr")
    assert paired["wins"] == int((diff > 0).sum()) and paired["mean"] == pytest.approx(diff.mean())
    text = cv.table()
    assert "3-fold cross-validation by image" in text and "mean ± sd" in text
    for system in SYSTEMS:
        assert any(line.startswith(system) for line in text.splitlines())
    assert f"({paired['wins']}/3)" in text
    saved = json.loads(json.dumps(cv.to_dict()))  # JSON-able as written by --out
    assert saved["settings"] == TINY.replace(epochs=25).to_dict() and saved["k"] == 3 and len(saved["folds"]) == 3


def test_cross_validate_one_fold_is_that_fold_of_the_full_run():
    """only_folds runs some of the same k folds (one per process on a bigger machine): the same images, the same
    training, the same scores as in a run of all k."""
    coco, table = colour_data()
    config = TINY.replace(epochs=4)
    full = cross_validate(coco, table, k=3, config=config, seed=0)
    lines: list[str] = []
    part = cross_validate(coco, table, k=3, config=config, seed=0, only_folds=[3, 2, 3], log=lines.append)
    assert [f["fold"] for f in part.folds] == [2, 3] and [line[:8] for line in lines] == ["fold 2/3", "fold 3/3"]
    for ran, f in zip(part.folds, full.folds[1:], strict=True):
        assert ran["scores"] == f["scores"] and ran["n_train"] == f["n_train"] and ran["best_epoch"] == f["best_epoch"]
    assert "3-fold cross-validation by image (seed 0, folds 2, 3 only)" in part.table()
    assert "(seed 0):" in full.table()
    for bad in ([], [0], [4]):
        with pytest.raises(ValueError, match=r"only_folds must name folds among 1\.\.3"):
            cross_validate(coco, table, k=3, config=config, only_folds=bad)


def test_cross_validate_captions_without_features_one_clear_error():
    coco, table = colour_data()
    for extra_id in (901, 902):
        coco.images[extra_id] = {"id": extra_id, "file_name": f"{extra_id:012d}.jpg"}
        coco.captions.append((extra_id, "a grey picture"))
    with pytest.raises(MissingFeaturesError, match=r"2 of 17 requested image ids have no features.*901, 902"):
        cross_validate(coco, table, 3, TINY)


def test_cross_validation_summaries_from_known_fold_scores():
    scores = [
        {"model, beam 3": {"CIDEr": 0.5, "BLEU-4": 0.2}, NEAREST_NEIGHBOUR: {"CIDEr": 0.4, "BLEU-4": 0.25}},
        {"model, beam 3": {"CIDEr": 0.7, "BLEU-4": 0.3}, NEAREST_NEIGHBOUR: {"CIDEr": 0.5, "BLEU-4": 0.2}},
    ]
    cv = CrossValidation([{"fold": f + 1, "scores": s} for f, s in enumerate(scores)], TINY, k=2, seed=4, seconds=1.0)
    assert cv.metrics == ["BLEU-4", "CIDEr"] == [m for m in TABLE_METRICS if m in ("CIDEr", "BLEU-4")]
    assert cv.values("model, beam 3", "CIDEr").tolist() == [0.5, 0.7]
    mean, sd = cv.summary()["model, beam 3"]["CIDEr"]
    assert mean == pytest.approx(0.6) and sd == pytest.approx(np.std([0.5, 0.7], ddof=1))
    paired = cv.paired("model, beam 3")
    assert paired["CIDEr"] == {"mean": pytest.approx(0.15), "sd": pytest.approx(np.std([0.1, 0.2], ddof=1)),
                               "wins": 2, "folds": 2}  # fmt: skip
    assert paired["BLEU-4"]["wins"] == 1 and paired["BLEU-4"]["mean"] == pytest.approx(0.025)
    text = cv.table()
    assert "2-fold cross-validation by image (seed 4)" in text
    assert "+0.150 ± 0.071 (2/2)" in text and "(1/2)" in text
    assert cv.to_dict()["paired"] == {"model, beam 3": paired}


# ---------------------------------------------------------------------------------- settings chosen on validation


def test_choose_on_validation_keeps_the_best_validation_score_and_records_every_candidate():
    coco, table = colour_data()
    train, val = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14]
    weak = TINY.replace(epochs=1, lr=1e-4)  # one tiny step: still the unigram model, far worse on validation
    lines: list[str] = []
    winner, records = choose_on_validation(coco, table, train, val, [weak, TINY.replace(epochs=15)], log=lines.append)
    assert [r["chosen"] for r in records] == [False, True]
    assert records[1]["best_val"] > records[0]["best_val"] and records[1]["criterion"] == "val_metric"
    assert records[0]["differs"] == {} and records[1]["differs"] == {"epochs": 15, "lr": TINY.lr}
    assert winner.result.best_score == records[1]["best_val"] and winner.result.epochs == 15
    assert lines and lines[-1].startswith("chosen on validation: as configured ") and lines[-1].endswith(" *")
    # Equal scores: the first config wins.
    _, tied = choose_on_validation(coco, table, train, val, [TINY.replace(epochs=3)] * 2)
    assert [r["chosen"] for r in tied] == [True, False]
    with pytest.raises(ValueError, match="at least one"):
        choose_on_validation(coco, table, train, val, [])


def test_cross_validate_chooses_in_every_fold_and_scores_the_chosen_model_only():
    """Each fold trains every candidate on its training part, keeps the best on its validation slice, and its
    scores are exactly those of a hold-out run of the chosen settings alone (the test images chose nothing)."""
    coco, table = colour_data()
    weak = TINY.replace(epochs=1, lr=1e-4)
    lines: list[str] = []
    cv = cross_validate(coco, table, k=3, config=weak, seed=0, log=lines.append, choices=[TINY.replace(epochs=15)])
    for fold, split in zip(cv.folds, fold_splits(coco.image_ids(), 3, 0, TINY.val_fraction), strict=True):
        assert len(fold["choices"]) == 2 and sum(c["chosen"] for c in fold["choices"]) == 1
        chosen = weak if fold["choices"][0]["chosen"] else TINY.replace(epochs=15)
        alone = holdout_evaluation(coco, table, split.train, split.val, split.test, chosen)
        assert fold["scores"] == alone.scores
    assert any(line.startswith("fold 1/3: ") and "chosen " in line for line in lines)
    json.dumps(cv.to_dict())  # the choices travel in --out's JSON
    with pytest.raises(ValueError, match="beam_size"):
        cross_validate(coco, table, k=3, config=TINY, choices=[TINY.replace(beam_size=2)])


def test_holdout_with_choices_keeps_every_candidates_run_in_its_own_folder(tmp_path):
    coco, table = colour_data()
    result = holdout_evaluation(
        coco, table, list(range(1, 12)), [12], [13, 14, 15], TINY.replace(epochs=2), out_dir=tmp_path,
        choices=[TINY.replace(epochs=3)],
    )  # fmt: skip
    assert (tmp_path / "choice-1" / "best.npz").is_file() and (tmp_path / "choice-2" / "best.npz").is_file()
    assert len(result.choices) == 2 and sum(c["chosen"] for c in result.choices) == 1

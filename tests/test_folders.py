"""Three folders, three roles: train on folder A, pick the best epoch on folder B, score folder C — the COCO 2014
recipe of the README (10,000 / 2,000 / 2,000 images, each downloaded into its own folder), here on crafted folders
of 24 / 8 / 8 images that a tiny captioner learns in a second.

    minicap train --features A.pkl --captions A.json --val-features B.pkl --val-captions B.json --out run
    minicap evaluate --checkpoint run/best.npz --features C.pkl --captions C.json
"""

from __future__ import annotations

import json
from pathlib import Path

import crafted
import numpy as np
import pytest

from minicap.checkpoint import load_checkpoint
from minicap.cli import main
from minicap.coco import join_captions, load_coco_captions
from minicap.dataset import FeatureTable, JoinedFeatures, MissingFeaturesError
from minicap.vision.store import FeatureStore

# crafted.TINY_TRAIN without its split option (--test-images): with a validation folder nothing is split.
TINY = [a for a in crafted.TINY_TRAIN if a not in ("--test-images", "4")]


@pytest.fixture
def folders(tmp_path) -> dict[str, tuple[Path, Path]]:
    """name -> (captions, features) of three crafted folders that share no image (ids 1-24, 101-108, 201-208)."""
    return {
        "A": crafted.run_files(tmp_path / "A", 24, seed=0, first_id=1),
        "B": crafted.run_files(tmp_path / "B", 8, seed=1, first_id=101),
        "C": crafted.run_files(tmp_path / "C", 8, seed=2, first_id=201),
    }


def files(folder: tuple[Path, Path], val: bool = False) -> list[str]:
    captions, features = folder
    prefix = "--val-" if val else "--"
    return [f"{prefix}features", str(features), f"{prefix}captions", str(captions)]


def train_a_val_b(folders: dict[str, tuple[Path, Path]], *extra: str) -> list[str]:
    return ["train", *files(folders["A"]), *files(folders["B"], val=True), *TINY, *extra]


# ------------------------------------------------------------------------------------------ the two joins


def test_joined_features_look_each_id_up_in_its_own_part():
    a = FeatureTable(np.array([1, 2, 3]), np.arange(6, dtype=np.float32).reshape(3, 2))
    b = FeatureTable(np.array([10, 11]), -np.arange(4, dtype=np.float32).reshape(2, 2) - 1)
    joined = JoinedFeatures((a.image_ids, a), (b.image_ids, b))
    np.testing.assert_array_equal(joined.lookup([11, 2, 1, 10]), [[-3, -4], [2, 3], [0, 1], [-1, -2]])
    assert joined.lookup([]).shape == (0, 2) and joined.lookup([2]).dtype == np.float32
    with pytest.raises(MissingFeaturesError, match="1 of 2 requested image ids have no features") as info:
        joined.lookup([1, 99])
    assert info.value.missing == [99]
    with pytest.raises(ValueError, match=r"2 image ids are in two parts of the joined features: \[2, 3\]"):
        JoinedFeatures((a.image_ids, a), (np.array([3, 2, 7]), b))


def test_join_captions_refuses_shared_images(folders, tmp_path):
    a, b = load_coco_captions(folders["A"][0]), load_coco_captions(folders["B"][0])
    joined = join_captions(a, b)
    assert joined.num_captions == a.num_captions + b.num_captions
    np.testing.assert_array_equal(joined.image_ids(), np.concatenate([a.image_ids(), b.image_ids()]))
    overlapping, _ = crafted.run_files(tmp_path / "overlap", 8, first_id=20)  # ids 20-27: 20-24 are A's too
    with pytest.raises(ValueError, match=r"5 image ids are in both .* \(first: \[20, 21, 22, 23, 24\]\)"):
        join_captions(a, load_coco_captions(overlapping))


# ------------------------------------------------------------------------------------------ end to end


def test_train_on_a_validate_on_b_then_score_c_through_the_cli(folders, tmp_path, capsys):
    run = tmp_path / "run"
    # the best epoch by validation CIDEr-D (the default), decoded on B's images
    assert main([*train_a_val_b(folders, "--early-stopping", "cider"), "--epochs", "3", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "24 training images" in out and "8 validation images" in out and "no test images" in out

    ckpt = load_checkpoint(run / "best.npz")
    data = ckpt.extra["data"]
    assert data["train_image_ids"] == list(range(1, 25))  # every image of A trains: no split
    assert data["val_image_ids"] == list(range(101, 109))  # every image of B validates
    assert data["test_image_ids"] == [] and data["num_images"] == {"train": 24, "val": 8, "test": 0}
    assert data["val_captions_file"] == str(folders["B"][0].resolve())
    assert data["val_features_file"] == str(folders["B"][1].resolve())
    history = json.loads((run / "history.json").read_text())
    assert history["criterion"] == "val_metric" and len(history["epochs"]) == 3
    assert all(np.isfinite(e["val_loss"]) and e["val_metric"] is not None for e in history["epochs"])
    # the standardisation statistics are A's alone (B's features have another noise seed and would shift them)
    a = FeatureStore.load(folders["A"][1]).features.astype(np.float64)
    np.testing.assert_allclose(ckpt.model.feature_mean, a.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ckpt.model.feature_std, a.std(axis=0), rtol=1e-5, atol=1e-6)

    scores = tmp_path / "c.json"
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), *files(folders["C"]), "--cider-only",
                 "--out", str(scores)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "none of which it trained or validated on (a held-out score)" in out
    assert f"on all 8 images of {folders['C'][0]} (held out" in out and "warning" not in out
    assert set(json.loads(scores.read_text())["scores"]) == {"model, greedy", "model, beam 3"}

    # a test folder extracted with another encoder file (of the same feature size) is refused
    other = resave(folders["C"][1], tmp_path / "other.pkl", onnx_sha256="d" * 64)
    evaluate_other = ["evaluate", "--checkpoint", str(run / "best.npz"), *files((folders["C"][0], other))]
    assert main([*evaluate_other, "--cider-only"]) == 2
    assert "was extracted with encoder dddddddddddd..., " in capsys.readouterr().err

    # folder B picked the epoch: scoring it is said NOT to be held out
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), *files(folders["B"]), "--cider-only"]) == 0
    out = capsys.readouterr().out
    assert "warning: 8 of the 8 images of" in out and "(first: [101, 102, 103, 104, 105])" in out
    assert "8 seen in training or validation: NOT held out" in out and "(a held-out score)" not in out


# ------------------------------------------------------------------------------------------ refusals


def resave(features: Path, to: Path, **manifest_changes: object) -> Path:
    store = FeatureStore.load(features)
    FeatureStore(store.ids, store.features, {**store.manifest, **manifest_changes}).save(to)
    return to


def test_folders_that_share_images_are_refused_naming_them(folders, tmp_path, capsys):
    shared = crafted.run_files(tmp_path / "shared", 8, first_id=23)  # 23, 24 are A's
    assert main(["train", *files(folders["A"]), *files(shared, val=True), *TINY, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "2 image ids are in both" in err and "[23, 24]" in err and "must not share an image" in err
    assert not (tmp_path / "r" / "last.npz").exists()


def test_validation_features_of_another_encoder_are_refused(folders, tmp_path, capsys):
    captions_b, features_b = folders["B"]
    other_encoder = resave(features_b, tmp_path / "other.pkl", onnx_sha256="d" * 64)
    assert main(["train", *files(folders["A"]), *files((captions_b, other_encoder), val=True), *TINY]) == 2
    err = capsys.readouterr().err
    assert "was not made by the same encoder" in err and "onnx_sha256 'cccc" in err and "'dddd" in err

    other_size = crafted.run_files(tmp_path / "F10", 8, F=10, first_id=101)
    assert main(["train", *files(folders["A"]), *files(other_size, val=True), *TINY]) == 2
    assert "holds 10-d features, these are 8-d" in capsys.readouterr().err


def test_half_a_validation_folder_or_a_split_option_is_refused(folders, capsys):
    captions_b, features_b = folders["B"]
    assert main(["train", *files(folders["A"]), "--val-features", str(features_b), *TINY]) == 2
    assert "needs its features and its captions" in capsys.readouterr().err
    assert main([*train_a_val_b(folders), "--split-seed", "3"]) == 2
    assert "nothing is split, so these options do not apply: split_seed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ resume


def test_resume_continues_exactly_and_needs_the_same_validation_folder(folders, tmp_path, capsys):
    whole, paused = tmp_path / "whole", tmp_path / "paused"
    assert main([*train_a_val_b(folders), "--epochs", "2", "--out", str(whole)]) == 0
    assert main([*train_a_val_b(folders), "--epochs", "2", "--out", str(paused), "--max-seconds", "1e-9"]) == 0
    assert load_checkpoint(paused / "last.npz").step == 1  # one update, then paused
    capsys.readouterr()
    last = ["--resume", str(paused / "last.npz"), "--no-progress"]

    assert main(["train", *files(folders["A"]), *last]) == 2  # without the validation folder
    assert "chose its best epoch on the validation folder" in capsys.readouterr().err
    assert main(["train", *files(folders["A"]), *files(folders["C"], val=True), *last]) == 2  # another one
    assert "the data differ from those" in capsys.readouterr().err
    captions_b, features_b = folders["B"]
    store = FeatureStore.load(features_b)
    shuffled = tmp_path / "shuffled.pkl"
    FeatureStore(store.ids, store.features[::-1].copy(), store.manifest).save(shuffled)
    assert main(["train", *files(folders["A"]), *files((captions_b, shuffled), val=True), *last]) == 2
    assert "the features of the validation images differ" in capsys.readouterr().err
    assert load_checkpoint(paused / "last.npz").step == 1  # nothing was trained or written

    assert main(["train", *files(folders["A"]), *files(folders["B"], val=True), *last]) == 0
    resumed, uninterrupted = load_checkpoint(paused / "best.npz"), load_checkpoint(whole / "best.npz")
    assert resumed.step == uninterrupted.step > 1
    for name, value in uninterrupted.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[name], value, err_msg=name)
    assert resumed.extra["data"] == uninterrupted.extra["data"]


def test_a_split_run_does_not_resume_with_a_validation_folder(folders, tmp_path, capsys):
    run = tmp_path / "split"
    args = ["train", *files(folders["A"]), *crafted.TINY_TRAIN, "--epochs", "2", "--out", str(run)]
    assert main([*args, "--max-seconds", "1e-9"]) == 0
    capsys.readouterr()
    resume = ["train", *files(folders["A"]), *files(folders["B"], val=True), "--resume", str(run / "last.npz")]
    assert main(resume) == 2
    assert "not on a validation folder: resume it without --val-features" in capsys.readouterr().err

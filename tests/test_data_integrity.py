"""Data integrity: no silently wrong numbers. What the data are is checked where they are stored and loaded, and a
result that is worse than no training at all is said out loud.

Issue 10 items guarded here: 2 (a 16-bit PNG became a white image), 4 (NaN/inf features were stored, loaded and
trained on), 5 (a changed byte in a feature store went unnoticed), 6 (--resume accepted another feature store),
7 (training that made the model worse ended without a word) and the first half of 17 (words beyond max_length entered
the vocabulary). Every input is crafted inside the test.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import crafted
import numpy as np
import pytest
from PIL import Image
from test_vision_extract import make_tiny_encoder

from minicap.checkpoint import load_checkpoint
from minicap.cli import main
from minicap.coco import encode_splits, load_coco_captions
from minicap.dataset import FeatureTable
from minicap.train import TrainingWarning
from minicap.vision.encoders.spec import UnsupportedImage, load_rgb
from minicap.vision.store import FORMAT, FeatureStore, FeatureStoreError, FeatureStoreWarning


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny.onnx"
    make_tiny_encoder(path)
    return path


# ------------------------------------------------------------------------------ item 2: 16-bit images


def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped_to_white(tmp_path, tiny_encoder, capsys):
    sixteen = np.linspace(5000, 30000, 48 * 64).reshape(48, 64).astype(np.uint16)  # dark to mid grey
    Image.fromarray(sixteen).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    eight = np.round(sixteen * (255 / 65535)).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "grey8.png")
    Image.new("RGB", (64, 48), (255, 255, 255)).save(tmp_path / "white.png")
    decoded = np.asarray(load_rgb(tmp_path / "grey16.png"))
    assert decoded.shape == (48, 64, 3) and np.array_equal(decoded[..., 0], eight)  # 19..117, not 255 everywhere

    # Through `minicap extract`: the 16-bit photo gets the 8-bit photo's features, not the white image's.
    names = ["grey16.png", "grey8.png", "white.png"]
    images = [{"id": k, "file_name": n} for k, n in enumerate(names, 1)]
    (tmp_path / "c.json").write_text(json.dumps({"images": images, "annotations": []}))
    argv = ["extract", "--images", str(tmp_path), "--captions", str(tmp_path / "c.json"), "--encoder"]
    assert main([*argv, str(tiny_encoder), "--out", str(tmp_path / "f.pkl"), "--no-progress"]) == 0
    grey16, grey8, white = FeatureStore.load(tmp_path / "f.pkl").lookup([1, 2, 3])
    np.testing.assert_allclose(grey16, grey8, rtol=1e-6)
    assert not np.allclose(grey16, white)


def test_images_without_a_known_8_bit_meaning_are_refused_with_the_reason(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float.tiff")  # mode F
    with pytest.raises(UnsupportedImage, match=r"floating-point pixels \(mode F\): their range is unknown"):
        load_rgb(tmp_path / "float.tiff")
    Image.fromarray(np.full((8, 8), 100_000, np.int32)).save(tmp_path / "int32.tiff")  # mode I beyond 16 bits
    with pytest.raises(UnsupportedImage, match="32-bit integer pixels from 100000 to 100000"):
        load_rgb(tmp_path / "int32.tiff")
    Image.fromarray(np.full((8, 8), 40_000, np.int32)).save(tmp_path / "int16.tiff")  # mode I holding 16-bit values
    assert np.asarray(load_rgb(tmp_path / "int16.tiff"))[0, 0].tolist() == [156, 156, 156]  # 40000 * 255 / 65535


# ------------------------------------------------------------------------------ item 4: NaN and infinity


def _store(n: int = 6, F: int = 4) -> FeatureStore:
    rng = np.random.default_rng(0)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    return FeatureStore(ids, rng.standard_normal((n, F)).astype(np.float32), {"onnx_sha256": "a" * 64})


def _write_unchecked(path: Path, ids: np.ndarray, features: np.ndarray) -> Path:
    """A store file as an older minicap (or another program) could have written it: no checks, no checksum."""
    payload = {"format": FORMAT, "ids": ids, "features": features, "manifest": {}}
    path.write_bytes(pickle.dumps(payload, protocol=5))
    return path


def test_non_finite_features_are_refused_when_made_saved_and_loaded_naming_the_images(tmp_path):
    store = _store()
    bad = store.features.copy()
    bad[1, 2], bad[4, 0] = np.nan, -np.inf
    with pytest.raises(
        FeatureStoreError, match=r"the features of 2 image\(s\) hold NaN or infinity \(image ids 11, 14\)"
    ):
        FeatureStore(store.ids, bad, {})
    spatial = np.zeros((6, 2, 2, 3), np.float16)
    spatial[5, 1, 1, 2] = np.inf
    with pytest.raises(
        FeatureStoreError, match=r"the spatial maps of 1 image\(s\) hold NaN or infinity \(image ids 15\)"
    ):
        FeatureStore(store.ids, store.features, {}, spatial=spatial)
    path = _write_unchecked(tmp_path / "nan.pkl", store.ids, bad)
    with pytest.raises(FeatureStoreError, match=rf"feature store {path}: the features of 2 image\(s\) hold NaN"):
        FeatureStore.load(path)
    with pytest.raises(ValueError, match=r"the features of 1 image\(s\) hold NaN or infinity \(image ids \[11\]\)"):
        FeatureTable(store.ids, np.where(np.arange(6)[:, None] == 1, np.nan, store.features))


def test_train_and_evaluate_refuse_a_store_with_nan_features(tmp_path, capsys):
    captions, features = crafted.run_files(tmp_path)
    good = FeatureStore.load(features)
    bad = good.features.copy()
    bad[good.rows([7])[0], 3] = np.nan
    nan_store = _write_unchecked(tmp_path / "nan.pkl", good.ids, bad)
    run = ["train", "--features", str(nan_store), "--captions", str(captions), "--out", str(tmp_path / "run")]
    assert main([*run, "--epochs", "1", *crafted.TINY_TRAIN]) == 2  # was: "training diverged at step 1"
    err = capsys.readouterr().err
    assert f"feature store {nan_store}: the features of 1 image(s) hold NaN or infinity (image ids 7)" in err
    assert "diverged" not in err

    assert main(["train", *crafted.files_args(captions, features), "--out", str(tmp_path / "ok"), *crafted.TINY_TRAIN,
                 "--epochs", "1"]) == 0  # fmt: skip
    evaluate = ["evaluate", "--checkpoint", str(tmp_path / "ok" / "best.npz"), "--captions", str(captions)]
    assert main([*evaluate, "--features", str(nan_store), "--cider-only"]) == 2  # was: exit 0, different scores
    assert "hold NaN or infinity (image ids 7)" in capsys.readouterr().err


def test_extract_skips_an_image_whose_features_are_not_finite(tmp_path, tiny_encoder, monkeypatch, capsys):
    import minicap.vision.extract as extract_mod

    images, captions = crafted.photos(tmp_path)
    real_run = extract_mod.OnnxEncoder.run

    def run_with_a_broken_image(self, batch, spatial=False):  # as if the encoder file were damaged
        features, maps = real_run(self, batch, spatial)
        features[1] = np.nan
        return features, maps

    monkeypatch.setattr(extract_mod.OnnxEncoder, "run", run_with_a_broken_image)
    argv = ["extract", "--images", str(images), "--captions", str(captions), "--encoder", str(tiny_encoder)]
    assert main([*argv, "--out", str(tmp_path / "f.pkl"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "extracted 5, reused 0, skipped 1" in out
    assert "skipped 2 " in out and "the encoder gave NaN or infinite features" in out
    assert 2 not in FeatureStore.load(tmp_path / "f.pkl")


# ------------------------------------------------------------------------------ item 5: checksums


def test_a_changed_byte_in_a_feature_store_is_an_error_naming_the_file(tmp_path):
    store = _store()
    store.save(tmp_path / "f.pkl")
    data = bytearray((tmp_path / "f.pkl").read_bytes())
    at = data.find(store.features.tobytes()) + 4 * 5 + 2  # inside feature [1, 1]: a small change of its value
    data[at] ^= 0x01
    (tmp_path / "flipped.pkl").write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match=r"flipped\.pkl is damaged: its contents do not match the checksum"):
        FeatureStore.load(tmp_path / "flipped.pkl")
    assert FeatureStore.load(tmp_path / "f.pkl").checksum() == store.checksum()  # the original verifies


def test_a_store_without_a_checksum_loads_with_a_warning_and_a_rerun_of_extract_adds_one(tmp_path, tiny_encoder):
    images, captions = crafted.photos(tmp_path)
    argv = ["extract", "--images", str(images), "--captions", str(captions), "--encoder", str(tiny_encoder)]
    out = tmp_path / "f.pkl"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    payload = pickle.loads(out.read_bytes())  # our own file: plain pickle is safe here
    del payload["sha256"]  # as minicap wrote stores before checksums
    out.write_bytes(pickle.dumps(payload, protocol=5))
    with pytest.warns(FeatureStoreWarning, match=f"feature store {out} has no checksum"):
        old = FeatureStore.load(out)
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0  # reuses every feature, saves with a checksum
    assert "sha256" in pickle.loads(out.read_bytes())
    np.testing.assert_array_equal(FeatureStore.load(out).features, old.features)


# ------------------------------------------------------------------------------ item 6: resuming on other features


def test_resume_with_another_feature_store_is_refused_unless_asked_for(tmp_path, capsys):
    captions, features = crafted.run_files(tmp_path)
    store = FeatureStore.load(features)
    shuffled = np.random.default_rng(1).permutation(len(store))
    FeatureStore(store.ids, store.features[shuffled].copy(), store.manifest).save(tmp_path / "other.pkl")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *crafted.files_args(captions, features),
                "--out",
                str(run),
                "--epochs",
                "2",
                "--max-seconds",
                "1e-9",
                *crafted.TINY_TRAIN,
            ]
        )
        == 0
    )  # fmt: skip  (one update, then paused)
    capsys.readouterr()
    resume = ["train", "--features", str(tmp_path / "other.pkl"), "--captions", str(captions), "--resume"]
    resume += [str(run / "last.npz"), "--no-progress"]
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert "the features of the training images and the features of the validation images differ from those" in err
    assert "--allow-other-features" in err
    assert load_checkpoint(run / "last.npz").step == 1  # nothing was trained or written

    assert main([*resume, "--allow-other-features"]) == 0
    assert "note: resuming on other features, as asked" in capsys.readouterr().out
    assert main([*resume, "--no-progress"]) == 0  # the run now continues on them: no flag needed again


# ------------------------------------------------------------------------------ item 7: worse than untrained


def test_training_that_makes_the_model_worse_says_so_on_stderr_and_in_the_history(tmp_path, capsys):
    captions, features = crafted.run_files(tmp_path)
    train = ["train", *crafted.files_args(captions, features), "--epochs", "2", *crafted.TINY_TRAIN]
    bad, good = tmp_path / "lr10", tmp_path / "good"
    assert main([*train, "--out", str(bad), "--lr", "10", "--clip", "1000"]) == 0  # completes: no NaN, a bad model
    err = capsys.readouterr().err
    history = json.loads((bad / "history.json").read_text())
    initial = history["initial"]["val_loss"]
    assert all(e["val_loss"] > initial for e in history["epochs"])
    assert err.startswith(f"warning: training made the model worse: the validation loss was {initial:.6g} before")
    assert "try a lower one, --lr" in err
    assert history["warnings"] == [err.removeprefix("warning: ").rstrip("\n")]

    assert main([*train, "--out", str(good)]) == 0  # the same data at a sensible rate: no word
    assert capsys.readouterr().err == "" and "warnings" not in json.loads((good / "history.json").read_text())


def test_the_trainer_issues_a_training_warning(tmp_path):
    from minicap.captioner import train_captioner
    from minicap.config import CaptionerConfig

    captions, features = crafted.run_files(tmp_path)
    coco, store = load_coco_captions(captions), FeatureStore.load(features)
    config = CaptionerConfig(hidden_size=8, wordvec_size=4, min_count=1, epochs=1, lr=10.0, clip=1000.0,
                             early_stopping="loss", weight_decay=0.0)  # fmt: skip
    with pytest.warns(TrainingWarning, match="training made the model worse"):
        train_captioner(coco, store, store.ids[:18], store.ids[18:20], config)


# ------------------------------------------------------------------------------ item 17: the vocabulary


def test_the_vocabulary_holds_the_words_trained_on_not_the_tail_of_an_overlong_caption(tmp_path):
    captions, _ = crafted.run_files(tmp_path)
    data = json.loads(captions.read_text())
    tail = " ".join(f"zq{k % 1000:03d}" for k in range(200_000))  # 1,000 words, 200 times each, after word 16
    data["annotations"][0]["caption"] = "a red dog on the grass " + tail
    captions.write_text(json.dumps(data))
    coco = load_coco_captions(captions)
    encoded = encode_splits(coco, {"train": coco.image_ids()[:18]}, min_count=3, max_length=16)
    assert not any(word.startswith("zq") for word in encoded.vocab.idx_to_word)
    assert len(encoded.vocab) == 4 + len({"a", "on", "the", "grass", "in", "street", *crafted.COLOURS,
                                          *crafted.THINGS})  # fmt: skip
    # Its counts are exactly how often each token is a target in the encoded training captions.
    targets = encoded["train"].captions[:, 1:]
    counts = np.bincount(targets[targets > 0], minlength=len(encoded.vocab))
    assert counts[2:].tolist() == encoded.vocab.counts[2:]  # <END>, <UNK> and every word


def test_training_says_how_many_captions_were_cut_and_how_large_the_vocabulary_is(tmp_path):
    from minicap.captioner import train_captioner
    from minicap.config import CaptionerConfig

    captions, features = crafted.run_files(tmp_path)
    data = json.loads(captions.read_text())
    data["annotations"][0]["caption"] = "a red dog on the grass " + " ".join(["again"] * 40)
    captions.write_text(json.dumps(data))
    coco, store = load_coco_captions(captions), FeatureStore.load(features)
    train_ids = [i for i in store.ids if i != data["annotations"][0]["image_id"]][:17]
    train_ids.append(data["annotations"][0]["image_id"])
    lines: list[str] = []
    config = CaptionerConfig(hidden_size=8, wordvec_size=4, min_count=1, epochs=1, early_stopping="loss")
    trained = train_captioner(coco, store, train_ids, [i for i in store.ids if i not in train_ids][:2], config,
                              log=lines.append)  # fmt: skip
    said = [line for line in lines if line.startswith("vocabulary:")]
    assert said == [
        f"vocabulary: {len(trained.vocab)} words (min count 1 in the training captions); "
        f"{sum(1 for i, _ in coco.captions if i in set(train_ids))} training captions, 1 of them cut to 16 words"
    ]


def test_a_changed_byte_in_a_checkpoint_is_caught_by_the_zip_crc(tmp_path):
    from minicap.checkpoint import CheckpointError, save_checkpoint
    from minicap.models import CaptionModel

    model = CaptionModel(vocab_size=7, feature_size=4, wordvec_size=3, hidden_size=5, seed=0)
    path = save_checkpoint(tmp_path / "c.npz", model)
    data = bytearray(path.read_bytes())
    at = data.find(model.params["W_embed"].tobytes()) + 5  # inside an array the .npz stores uncompressed
    data[at] ^= 0x01
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped\.npz is truncated or corrupt .*Bad CRC-32"):
        load_checkpoint(tmp_path / "flipped.npz")

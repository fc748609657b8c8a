"""Training loop, checkpoints and `minicap train`: all on tiny synthetic images and captions (no shared data)."""

from __future__ import annotations

import json
import os
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

import minicap.safe_io
from minicap.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minicap.cli import main
from minicap.data import CaptionDataset, FeatureTable, Vocabulary, encode_captions
from minicap.decode import decode_captions, greedy
from minicap.features import FeatureStore, FeatureStoreError, MissingFeaturesError
from minicap.model import CaptionModel
from minicap.optim import Adam
from minicap.train import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    feature_statistics,
    make_schedule,
    new_model,
    train,
)

WORDS = [f"w{i}" for i in range(12)]


def toy_data(n_images: int, per_image: int = 1, F: int = 8, seed: int = 0, first_id: int = 100):
    """Random image features and random captions of 3-7 words: (vocab, encoded captions, FeatureTable, texts)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + n_images)
    pairs = [(int(i), " ".join(rng.choice(WORDS, size=rng.integers(3, 8)))) for i in ids for _ in range(per_image)]
    vocab = Vocabulary.from_captions(t for _, t in pairs)
    enc = encode_captions(pairs, vocab, max_length=8)
    table = FeatureTable(ids, rng.standard_normal((n_images, F)).astype(np.float32))
    return SimpleNamespace(vocab=vocab, enc=enc, table=table, texts=[t for _, t in pairs], ids=ids)


def small_run(out_dir, epochs=4, patience=None, seed=0, val_metric=None, plot=False, **config):
    """A Trainer on 40 training and 10 validation captions with a tiny LSTM (3 minibatches per epoch)."""
    d = toy_data(25, per_image=2, seed=seed)
    train_rows = d.enc.image_ids < 120  # images 100..119 train, 120..124 validate
    train_data = CaptionDataset(d.enc.captions[train_rows], d.enc.image_ids[train_rows], d.table.lookup)
    val_data = CaptionDataset(d.enc.captions[~train_rows], d.enc.image_ids[~train_rows], d.table.lookup)
    model = new_model(d.vocab, 8, hidden_size=8, wordvec_size=6, seed=seed)
    settings = dict(epochs=epochs, batch_size=16, lr=3e-2, warmup=0.1, patience=patience, seed=seed) | config
    trainer = Trainer(
        model,
        d.vocab,
        train_data,
        val_data,
        TrainConfig(**settings),
        out_dir=out_dir,
        val_metric=val_metric,
        progress=False,
        log=None,
        plot=plot,
    )
    return trainer, SimpleNamespace(d=d, train=train_data, val=val_data)


def assert_same_params(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"parameter {name} differs"


def timeless(history: dict) -> dict:
    """A history without its wall-clock fields (the only entries that may differ between identical runs)."""
    epochs = [
        {k: v for k, v in e.items() if k not in ("seconds", "val_seconds", "sequences_per_second")}
        for e in history["epochs"]
    ]
    return {"steps": history["steps"], "epochs": epochs, "criterion": history["criterion"]}


# ----------------------------------------------------------------------------------------------- learning


def test_overfits_fifty_captions_and_greedy_decoding_reproduces_them():
    d = toy_data(50, F=16)  # 50 images, one distinct random caption each
    model = new_model(d.vocab, 16, hidden_size=48, wordvec_size=32)
    config = TrainConfig(epochs=60, batch_size=50, lr=3e-2, patience=None)  # 60 updates; reaches ~0.1 (4 seeds)
    result = train(
        d.enc.captions, d.enc.image_ids, d.table, d.vocab, model=model, config=config, progress=False, log=None
    )
    assert result.stopped == "completed" and result.steps == 60
    assert result.history["epochs"][-1]["train_loss"] < 0.5  # nats per caption (≈ 7 tokens)
    captions = decode_captions(greedy(result.model, d.table.features, max_length=10), d.vocab)
    exact = np.mean([got == want for got, want in zip(captions, d.texts, strict=True)])
    assert exact >= 0.8, f"only {exact:.0%} of the training captions reproduced"


def test_history_records_every_step_and_epoch_and_the_schedule(tmp_path):
    trainer, _ = small_run(tmp_path, epochs=3, plot=True)
    result = trainer.fit()
    steps = result.history["steps"]
    assert steps["step"] == list(range(1, 10)) and steps["epoch"] == [1] * 3 + [2] * 3 + [3] * 3
    schedule = make_schedule(trainer.config, 9)
    assert steps["lr"] == [schedule(s) for s in range(9)]  # warm-up then cosine, one value per update
    assert all(np.isfinite(steps["loss"])) and all(n > 0 for n in steps["grad_norm"])
    for e in result.history["epochs"]:
        assert e["val_loss"] > 0 and e["train_loss"] > 0 and e["sequences_per_second"] > 0 and e["seconds"] > 0
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert timeless(on_disk) == timeless(result.history) and on_disk["stopped"] == "completed"
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.best_path == tmp_path / "best.npz" and result.last_path == tmp_path / "last.npz"


def test_features_are_standardised_with_training_statistics_only(tmp_path):
    trainer, data = small_run(None, epochs=1)
    mean, std = feature_statistics(data.train.image_ids, data.train.features)
    np.testing.assert_allclose(trainer.model.feature_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(trainer.model.feature_std, std, rtol=1e-6)
    everything = feature_statistics(data.d.table.image_ids, data.d.table.lookup)[0]
    assert not np.allclose(trainer.model.feature_mean, everything, rtol=1e-3)  # validation images left out


def test_early_stopping_on_a_pluggable_metric(tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.8, 0.6, 1.0])  # best after epoch 2; patience 2 stops after epoch 4
    trainer, _ = small_run(tmp_path, epochs=6, patience=2, val_metric=lambda model: next(scores))
    result = trainer.fit()
    assert result.stopped == "early stopping" and result.epochs == 4
    assert result.criterion == "val_metric" and result.best_epoch == 2 and result.best_score == 0.9
    assert [e["val_metric"] for e in result.history["epochs"]] == [0.5, 0.9, 0.7, 0.8]
    best = load_checkpoint(tmp_path / "best.npz")
    assert best.epoch == 2 and best.metrics["val_metric"] == 0.9
    assert_same_params(best.model.params, result.best_model.params)
    assert load_checkpoint(tmp_path / "last.npz").epoch == 4


def test_without_validation_data_the_training_loss_picks_the_best_epoch(tmp_path):
    _, data = small_run(None)
    empty = CaptionDataset(data.val.captions[:0], data.val.image_ids[:0], data.val.features)
    model = new_model(data.d.vocab, 8, hidden_size=8, wordvec_size=6)
    config = TrainConfig(epochs=2, batch_size=16, lr=3e-2, patience=1)
    result = Trainer(model, data.d.vocab, data.train, empty, config, progress=False, log=None).fit()
    assert result.criterion == "train_loss" and result.stopped == "completed"
    assert all(e["val_loss"] is None for e in result.history["epochs"])
    assert result.best_score == -min(e["train_loss"] for e in result.history["epochs"])


# ----------------------------------------------------------------------------------------------- resuming


def test_resume_after_epoch_k_gives_identical_parameters_and_history(tmp_path):
    straight, _ = small_run(tmp_path / "a", epochs=4, patience=3)
    expected = straight.fit()

    first, data = small_run(tmp_path / "b", epochs=4, patience=3)
    paused = first.fit(until_epoch=2)
    assert paused.stopped == "paused" and paused.epochs == 2
    resumed = Trainer.from_checkpoint(tmp_path / "b" / "last.npz", data.train, data.val, progress=False, log=None)
    assert resumed.state.epoch == 2 and resumed.optimizer.t == 6
    result = resumed.fit()

    assert result.stopped == expected.stopped and result.steps == expected.steps == 12
    assert_same_params(result.model.params, expected.model.params)
    assert_same_params(result.best_model.params, expected.best_model.params)
    for key in ("m", "v"):
        assert_same_params(getattr(resumed.optimizer, key), getattr(straight.optimizer, key))
    assert timeless(result.history) == timeless(expected.history)


def test_resume_mid_epoch_after_a_time_budget_gives_identical_parameters(tmp_path):
    straight, _ = small_run(None, epochs=2, schedule="constant")
    expected = straight.fit()

    trainer, data = small_run(tmp_path, epochs=2, schedule="constant")
    result = trainer.fit(max_seconds=0)  # every call makes exactly one update, then saves last.npz mid-epoch
    calls = 1
    while result.stopped == "time budget":
        assert load_checkpoint(tmp_path / "last.npz").train_state["batch_in_epoch"] in (0, 1, 2)
        trainer = Trainer.from_checkpoint(
            tmp_path / "last.npz", data.train, data.val, progress=False, log=None, plot=False
        )
        result = trainer.fit(max_seconds=0)
        calls += 1
    assert calls == 6 and result.stopped == "completed"  # 2 epochs x 3 minibatches
    assert_same_params(result.model.params, expected.model.params)
    assert timeless(result.history) == timeless(expected.history)


def test_resume_refuses_other_captions_and_other_feature_sizes(tmp_path):
    trainer, data = small_run(tmp_path, epochs=2)
    trainer.fit(until_epoch=1)
    other = CaptionDataset(data.train.captions[:-1], data.train.image_ids[:-1], data.train.features)
    with pytest.raises(ValueError, match="captions differ"):
        Trainer.from_checkpoint(tmp_path / "last.npz", other, data.val, progress=False, log=None)

    wide = FeatureTable(data.d.table.image_ids, np.zeros((25, 12), np.float32))  # F = 12, the model wants 8
    wide_train = CaptionDataset(data.train.captions, data.train.image_ids, wide.lookup)
    with pytest.raises(FeatureStoreError, match="expects 8-d image features, but the features given are 12-d"):
        Trainer.from_checkpoint(tmp_path / "last.npz", wide_train, None, progress=False, log=None)


# ----------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_parts(seed=0):
    d = toy_data(6, seed=seed)
    model = new_model(d.vocab, 8, hidden_size=5, wordvec_size=4, seed=seed)
    model.set_feature_standardisation(np.full(8, 0.5), np.full(8, 2.0))
    opt = Adam(lr=1e-3)
    _, grads = model.loss(d.table.features[d.enc.image_ids - 100], d.enc.captions)
    opt.step(model.params, grads)
    return d, model, opt


def test_checkpoint_round_trip(tmp_path):
    d, model, opt = _checkpoint_parts()
    rng = np.random.default_rng(5)
    rng.random(3)
    history = {"steps": {"step": [1, 2], "loss": [3.25, 2.5]}, "epochs": [{"epoch": 1, "train_loss": 2.9}]}
    encoder = {
        "architecture": "efficientnet_lite0",
        "onnx_sha256": "ab" * 32,
        "onnx_file": "enc.onnx",
        "feature_size": 8,
    }
    save_checkpoint(
        tmp_path / "c.npz",
        model,
        d.vocab,
        optimizer=opt,
        step=7,
        epoch=2,
        metrics={"val_loss": 1.5},
        rng=rng,
        encoder=encoder,
        history=history,
        extra={"note": "ünïcode"},
    )
    ckpt = load_checkpoint(tmp_path / "c.npz")

    assert_same_params(ckpt.model.params, model.params)
    assert ckpt.model.config == model.config and ckpt.vocab == d.vocab
    np.testing.assert_array_equal(ckpt.model.feature_mean, model.feature_mean)
    np.testing.assert_array_equal(ckpt.model.feature_std, model.feature_std)
    assert (ckpt.step, ckpt.epoch, ckpt.metrics, ckpt.encoder) == (7, 2, {"val_loss": 1.5}, encoder)
    assert ckpt.history == history and ckpt.extra == {"note": "ünïcode"}
    assert ckpt.make_rng().random() == rng.random()  # the generator continues where it was
    restored = Adam(lr=1.0)
    restored.load_state_dict(ckpt.optimizer_state, params=ckpt.model.params)
    assert restored.t == 1 and restored.lr == 1e-3
    assert_same_params(restored.m, opt.m)
    with zipfile.ZipFile(tmp_path / "c.npz") as z:  # only .npy arrays, and the header is text
        assert all(name.endswith(".npy") for name in z.namelist())
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert z["header"].dtype.kind == "U"


def test_crash_between_temp_write_and_rename_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    d, model, opt = _checkpoint_parts()
    path = tmp_path / "last.npz"
    save_checkpoint(path, model, d.vocab, optimizer=opt, step=1, epoch=1)
    before, saved_w = path.read_bytes(), model.params["W_vocab"].copy()

    model.params["W_vocab"] += 1.0

    def crash(src, dst):  # the temporary file is complete; the process "dies" before the rename
        raise OSError("simulated crash before os.replace")

    monkeypatch.setattr(minicap.safe_io.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, model, d.vocab, optimizer=opt, step=2, epoch=2)
    monkeypatch.undo()

    assert path.read_bytes() == before
    ckpt = load_checkpoint(path)
    assert ckpt.step == 1 and np.array_equal(ckpt.model.params["W_vocab"], saved_w)
    assert os.listdir(tmp_path) == ["last.npz"]  # the temporary file was cleaned up


def test_load_checkpoint_gives_clear_errors(tmp_path):
    d, model, opt = _checkpoint_parts()
    good = save_checkpoint(tmp_path / "good.npz", model, d.vocab, optimizer=opt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.npz")

    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="not an .npz"):
        load_checkpoint(tmp_path / "text.npz")

    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.npz")

    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minicap checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")

    np.savez(tmp_path / "other.npz", header=np.array(json.dumps({"format": "something else"})))
    with pytest.raises(CheckpointError, match="not a minicap checkpoint"):
        load_checkpoint(tmp_path / "other.npz")

    np.savez(tmp_path / "pickled.npz", header=np.array([{"format": "minicap.checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(tmp_path / "pickled.npz")


def test_save_refuses_a_model_with_nan_parameters(tmp_path):
    d, model, _ = _checkpoint_parts()
    model.params["Wh"][0, 0] = np.nan
    with pytest.raises(CheckpointError, match="NaN or infinite parameters"):
        save_checkpoint(tmp_path / "x.npz", model, d.vocab)
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------------------------- failures


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer, _ = small_run(tmp_path, epochs=4)
    real_loss = CaptionModel.loss

    def loss_with_nan_at_step_5(self, features, captions, backward=True):
        loss, grads = real_loss(self, features, captions, backward)
        # 4 updates done: this is update 5 (epoch 2, batch 2). Validation after epoch 1 ran at 3 updates.
        return (np.float32(np.nan), grads) if trainer.state.step == 4 else (loss, grads)

    monkeypatch.setattr(CaptionModel, "loss", loss_with_nan_at_step_5)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    assert "diverged at step 5 (epoch 2, batch 2)" in message and "loss = nan" in message
    assert f"Last good training loss: {trainer.history['steps']['loss'][-1]:.4f} at step 4" in message
    assert "last.npz (epoch 1)" in message and "lower learning rate" in message and "--clip" in message
    assert (info.value.step, info.value.epoch) == (5, 2)

    ckpt = load_checkpoint(tmp_path / "last.npz")  # written after epoch 1, untouched since
    assert ckpt.epoch == 1 and ckpt.step == 3
    assert all(np.all(np.isfinite(p)) for p in ckpt.model.params.values())
    assert load_checkpoint(tmp_path / "best.npz").epoch == 1
    assert json.loads((tmp_path / "history.json").read_text())["stopped"].startswith("diverged")


def test_nan_validation_loss_stops_training_without_saving_that_epoch(tmp_path, monkeypatch):
    trainer, _ = small_run(tmp_path, epochs=2)
    real_loss = CaptionModel.loss

    def nan_in_validation(self, features, captions, backward=True):
        loss, grads = real_loss(self, features, captions, backward)
        return (np.float32(np.nan), grads) if trainer.state.batch_in_epoch == 3 else (loss, grads)  # epoch end

    monkeypatch.setattr(CaptionModel, "loss", nan_in_validation)
    with pytest.raises(TrainingDiverged, match=r"after step 3 \(end of epoch 1\): validation loss = nan") as info:
        trainer.fit()
    assert "This epoch's model was not saved" in str(info.value) and "checkpoint is" not in str(info.value)
    assert not (tmp_path / "last.npz").exists() and not (tmp_path / "best.npz").exists()


def test_captions_without_features_give_one_error_before_training():
    d = toy_data(50)
    partial = FeatureTable(d.table.image_ids[:40], d.table.features[:40])  # images 140..149 have no features
    with pytest.raises(MissingFeaturesError) as info:
        train(d.enc.captions, d.enc.image_ids, partial, d.vocab, progress=False, log=None)
    message = str(info.value)
    assert "10 of 50 requested image ids have no features" in message
    assert "10 training captions belong to these images" in message and "first: 140, 141, 142, 143, 144" in message


# ----------------------------------------------------------------------------------------------- CLI


def write_coco(tmp_path, n_images=30, per_image=5, F=8, seed=0, blank=(3, 17, 40)):
    """captions.json (with empty/whitespace captions at the `blank` positions) and a feature store for it."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n_images + 1, dtype=np.int64) * 7
    annotations = []
    for i in ids:
        for _ in range(per_image):
            annotations.append({"image_id": int(i), "caption": " ".join(rng.choice(WORDS, size=rng.integers(3, 8)))})
    for k, pos in enumerate(blank):
        annotations[pos]["caption"] = ["", "   ", " \t\n"][k % 3]
    for k, ann in enumerate(annotations):
        ann["id"] = k
    captions = {"images": [{"id": int(i), "file_name": f"{i:012d}.jpg"} for i in ids], "annotations": annotations}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    store = FeatureStore(
        ids,
        rng.standard_normal((n_images, F)).astype(np.float32),
        {"architecture": "synthetic", "onnx_sha256": "0" * 64},
    )
    store.save(tmp_path / f"features{F}.pkl")
    return tmp_path / "captions.json", tmp_path / f"features{F}.pkl", store


TINY = ["--hidden", "8", "--wordvec", "6", "--min-count", "1", "--batch-size", "32", "--no-progress"]


def test_cli_train_writes_a_run_and_resumes_it(tmp_path, capsys):
    captions, features, _ = write_coco(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--features", str(features), "--captions", str(captions), "--out", str(out), *TINY]
    assert main([*args, "--epochs", "3", "--max-seconds", "0"]) == 0  # time budget: stops after one update
    printed = capsys.readouterr().out
    assert "3 empty captions dropped" in printed  # 150 captions, 3 of them blank
    assert "24 / 3 / 3 images for train / val / test" in printed and "stopped: time budget" in printed

    assert (
        main(
            [
                "train",
                "--features",
                str(features),
                "--captions",
                str(captions),
                "--resume",
                str(out / "last.npz"),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "stopped: completed after 3 epochs" in printed
    for name in ("last.npz", "best.npz", "history.json", "training_curves.png"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out / "best.npz")
    data = ckpt.extra["data"]
    assert data["empty_captions_dropped"] == 3 and len(data["test_image_ids"]) == 3 and data["min_count"] == 1
    assert ckpt.encoder["architecture"] == "synthetic" and ckpt.encoder["feature_size"] == 8
    assert ckpt.model.hidden_size == 8 and ckpt.train_config["epochs"] == 3

    # A resumed run keeps its settings: a different one is refused, naming it.
    assert main([*args[: -len(TINY)], "--resume", str(out / "last.npz"), "--lr", "0.5", "--no-progress"]) == 2
    assert "lr=0.5 (checkpoint: 0.001)" in capsys.readouterr().err


def test_cli_train_bad_inputs_and_divergence(tmp_path, capsys, monkeypatch):
    captions, features, store = write_coco(tmp_path)
    out = tmp_path / "run"
    new_run = ["train", "--captions", str(captions), "--out", str(out), *TINY, "--epochs", "2"]
    resume = ["train", "--captions", str(captions), "--resume", str(out / "last.npz"), "--no-progress"]
    assert main([*new_run, "--features", str(features), "--max-seconds", "0"]) == 0  # one update, then saved
    capsys.readouterr()

    # Features of another size than the checkpoint's model.
    _, wide, _ = write_coco(tmp_path, F=12)
    assert main([*resume, "--features", str(wide)]) == 2
    assert "expects 8-d image features, but this store holds 12-d" in capsys.readouterr().err

    # A new run into a folder that holds one already.
    assert main([*new_run, "--features", str(features)]) == 2
    assert "already holds a run" in capsys.readouterr().err

    # Captions of images that have no features: one error, with the count and the first ids.
    store.subset(store.ids[:-4]).save(tmp_path / "partial.pkl")
    assert main([*new_run, "--features", str(tmp_path / "partial.pkl"), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "have no features" in err and "first:" in err

    # A NaN loss: exit code 1, a message with a hint, and the last checkpoint untouched.
    before = (out / "last.npz").read_bytes()
    monkeypatch.setattr(CaptionModel, "loss", lambda self, f, c, backward=True: (np.float32(np.nan), {}))
    assert main([*resume, "--features", str(features)]) == 1
    err = capsys.readouterr().err
    assert "training diverged at step 2" in err and "lower learning rate" in err
    assert (out / "last.npz").read_bytes() == before
    assert load_checkpoint(out / "last.npz").step == 1

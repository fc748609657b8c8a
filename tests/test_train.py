"""The one training loop (minicap.train.Trainer) on the caption model, checkpoints, and `minicap train`: all on tiny
synthetic images and captions (no shared data)."""

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
from minicap.cli.flags import CONFIG_FLAGS
from minicap.config import CaptionerConfig
from minicap.dataset import CaptionDataset, FeatureTable, feature_statistics
from minicap.decode import decode_captions, greedy
from minicap.models import CaptionModel
from minicap.optim import Adam
from minicap.text import Vocabulary, encode_captions
from minicap.train import TrainConfig, Trainer, TrainingDiverged, make_schedule, validation_loss
from minicap.vision.store import FeatureStore

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


def caption_model(vocab: Vocabulary, train: CaptionDataset, hidden: int, wordvec: int, seed: int = 0) -> CaptionModel:
    """A caption model as the captioner builds one: output bias at log word frequencies, features standardised with
    the training images' statistics."""
    model = CaptionModel(
        len(vocab), train.feature_size, wordvec, hidden, seed=seed, word_counts=vocab.word_frequencies()
    )
    model.set_feature_standardisation(*feature_statistics(train.image_ids, train.features))
    return model


def small_run(
    out_dir,
    epochs=4,
    patience=None,
    seed=0,
    val_metric=None,
    plot=False,
    stop_when=None,
    on_divergence="raise",
    **config,
):
    """A Trainer on 40 training and 10 validation captions with a tiny LSTM (3 minibatches per epoch)."""
    d = toy_data(25, per_image=2, seed=seed)
    train_rows = d.enc.image_ids < 120  # images 100..119 train, 120..124 validate
    train_data = CaptionDataset(d.enc.captions[train_rows], d.enc.image_ids[train_rows], d.table)
    val_data = CaptionDataset(d.enc.captions[~train_rows], d.enc.image_ids[~train_rows], d.table, "validation")
    model = caption_model(d.vocab, train_data, hidden=8, wordvec=6, seed=seed)
    settings = dict(epochs=epochs, batch_size=16, lr=3e-2, warmup=0.1, patience=patience, seed=seed) | config
    trainer = Trainer(
        model,
        train_data,
        TrainConfig(**settings),
        val_data=val_data,
        vocab=d.vocab,
        out_dir=out_dir,
        val_metric=val_metric,
        stop_when=stop_when,
        on_divergence=on_divergence,
        progress=False,
        log=None,
        plot=plot,
    )
    return trainer, SimpleNamespace(d=d, train=train_data, val=val_data)


def resume(path, data, **kwargs) -> Trainer:
    return Trainer.from_checkpoint(path, data.train, val_data=data.val, progress=False, log=None, plot=False, **kwargs)


def assert_same_params(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"parameter {name} differs"


WALL_CLOCK = ("seconds", "val_seconds", "examples_per_second")


def timeless(history: dict) -> dict:
    """A history without its wall-clock fields (the only entries that may differ between identical runs)."""
    epochs = [{k: v for k, v in e.items() if k not in WALL_CLOCK} for e in history["epochs"]]
    return {
        "steps": history["steps"],
        "epochs": epochs,
        "criterion": history["criterion"],
        "clip": history["clip"],
        "initial": history["initial"],
    }


# ----------------------------------------------------------------------------------------------- learning


def test_overfits_fifty_captions_and_greedy_decoding_reproduces_them():
    d = toy_data(50, F=16)  # 50 images, one distinct random caption each
    data = CaptionDataset(d.enc.captions, d.enc.image_ids, d.table)
    model = caption_model(d.vocab, data, hidden=48, wordvec=32)
    config = TrainConfig(epochs=60, batch_size=50, lr=3e-2, patience=None)  # 60 updates; reaches ~0.1 (4 seeds)
    result = Trainer(model, data, config, vocab=d.vocab, progress=False, log=None).fit()
    assert result.stopped == "completed" and result.steps == 60 and result.criterion == "train_loss"
    assert result.history["epochs"][-1]["train_loss"] < 0.5  # nats per caption (≈ 7 tokens)
    captions = decode_captions(greedy(result.model, d.table.features, max_length=10), d.vocab)
    exact = np.mean([got == want for got, want in zip(captions, d.texts, strict=True)])
    assert exact >= 0.8, f"only {exact:.0%} of the training captions reproduced"


def test_history_records_every_step_and_epoch_and_the_schedule(tmp_path):
    trainer, data = small_run(tmp_path, epochs=3, plot=True)
    before = validation_loss(trainer.model.copy(), data.val, 256)
    result = trainer.fit()
    history = result.history
    assert history["initial"] == {"val_loss": before, "val_metric": None}  # before any update
    assert history["criterion"] == "val_loss" and history["clip"] == 5.0
    steps = history["steps"]
    assert steps["step"] == list(range(1, 10)) and steps["epoch"] == [1] * 3 + [2] * 3 + [3] * 3
    schedule = make_schedule(trainer.config, 9)
    assert steps["lr"] == [schedule(s) for s in range(9)]  # warm-up then cosine, one value per update
    assert all(np.isfinite(steps["loss"])) and all(n > 0 for n in steps["grad_norm"])
    assert result.losses == steps["loss"] and result.grad_norms == steps["grad_norm"]
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3] and [e["step"] for e in history["epochs"]] == [3, 6, 9]
    for e in history["epochs"]:
        assert e["val_loss"] > 0 and e["train_loss"] > 0 and e["examples_per_second"] > 0 and e["seconds"] > 0
        assert e["val_metric"] is None and e["lr"] == steps["lr"][e["step"] - 1]
    # The mean training loss of an epoch weighs each batch by its size (16, 16 and 8 captions).
    first = np.array(steps["loss"][:3])
    assert history["epochs"][0]["train_loss"] == pytest.approx(float(first @ [16, 16, 8]) / 40, rel=1e-12)
    val_losses = [e["val_loss"] for e in history["epochs"]]
    assert [e["best"] for e in history["epochs"]] == [v == min(val_losses[: k + 1]) for k, v in enumerate(val_losses)]
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert timeless(on_disk) == timeless(history) and on_disk["stopped"] == "completed"
    assert on_disk["config"] == trainer.config.to_dict()
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.best_path == tmp_path / "best.npz" and result.last_path == tmp_path / "last.npz"
    assert load_checkpoint(result.last_path).history["initial"] == history["initial"]


def test_early_stopping_on_a_pluggable_metric(tmp_path):
    scores = iter([0.3, 0.5, 0.9, 0.7, 0.8, 0.6, 1.0])  # before training, then per epoch: best after epoch 2
    trainer, _ = small_run(tmp_path, epochs=6, patience=2, val_metric=lambda model: next(scores))
    result = trainer.fit()
    assert result.stopped == "early stopping" and result.epochs == 4  # patience 2: epochs 3 and 4 did not improve
    assert result.criterion == "val_metric" and result.best_epoch == 2 and result.best_score == 0.9
    assert result.history["initial"]["val_metric"] == 0.3
    assert [e["val_metric"] for e in result.history["epochs"]] == [0.5, 0.9, 0.7, 0.8]
    assert [e["best"] for e in result.history["epochs"]] == [True, True, False, False]
    best = load_checkpoint(tmp_path / "best.npz")
    assert best.epoch == 2 and best.metrics["val_metric"] == 0.9
    assert_same_params(best.model.params, result.best_model.params)
    assert load_checkpoint(tmp_path / "last.npz").epoch == 4
    assert_same_params(load_checkpoint(tmp_path / "last.npz").model.params, result.model.params)


def test_stop_when_ends_the_run_with_its_reason(tmp_path):
    seen = []

    def stop_when(history):
        seen.append(len(history["epochs"]))
        return "good enough" if history["epochs"][-1]["epoch"] == 2 else None

    trainer, _ = small_run(tmp_path, epochs=5, stop_when=stop_when)
    result = trainer.fit()
    assert result.stopped == "good enough" and result.epochs == 2 and seen == [1, 2]
    assert json.loads((tmp_path / "history.json").read_text())["stopped"] == "good enough"


def test_without_validation_data_the_training_loss_picks_the_best_epoch():
    _, data = small_run(None)
    empty = CaptionDataset(data.val.captions[:0], data.val.image_ids[:0], data.val.features)
    model = caption_model(data.d.vocab, data.train, hidden=8, wordvec=6)
    config = TrainConfig(epochs=2, batch_size=16, lr=3e-2, patience=1)
    result = Trainer(model, data.train, config, val_data=empty, progress=False, log=None).fit()
    assert result.criterion == "train_loss" and result.stopped == "completed"
    assert result.history["initial"] == {"val_loss": None, "val_metric": None}
    assert all(e["val_loss"] is None for e in result.history["epochs"])
    assert result.best_score == -min(e["train_loss"] for e in result.history["epochs"])


def test_features_of_another_size_than_the_model_are_refused_before_training():
    _, data = small_run(None)
    model = CaptionModel(len(data.d.vocab), 12, 6, 8)  # F = 12, the features are 8-d
    with pytest.raises(ValueError, match="expects 12-d image features, but the training features given are 8-d"):
        Trainer(model, data.train, TrainConfig(), val_data=data.val, progress=False, log=None)


# ----------------------------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("paused_after", [1, 2, 3])
def test_resume_after_any_epoch_gives_identical_parameters_and_history(tmp_path, paused_after):
    straight, _ = small_run(tmp_path / "a", epochs=4, patience=3)
    expected = straight.fit()

    first, data = small_run(tmp_path / "b", epochs=4, patience=3)
    paused = first.fit(until_epoch=paused_after)
    assert paused.stopped == "paused" and paused.epochs == paused_after and paused.steps == 3 * paused_after
    resumed = resume(tmp_path / "b" / "last.npz", data)
    assert resumed.state.epoch == paused_after and resumed.optimizer.t == 3 * paused_after
    assert resumed.out_dir == tmp_path / "b" and resumed.vocab == data.d.vocab
    result = resumed.fit()

    assert result.stopped == expected.stopped and result.steps == expected.steps == 12
    assert result.best_epoch == expected.best_epoch and result.best_score == expected.best_score
    assert_same_params(result.model.params, expected.model.params)
    assert_same_params(result.best_model.params, expected.best_model.params)
    for key in ("m", "v"):
        assert_same_params(getattr(resumed.optimizer, key), getattr(straight.optimizer, key))
    assert timeless(result.history) == timeless(expected.history)
    for name in ("last.npz", "best.npz"):
        a, b = load_checkpoint(tmp_path / "a" / name), load_checkpoint(tmp_path / "b" / name)
        assert_same_params(a.model.params, b.model.params)
        assert (a.epoch, a.step, a.header["rng"]) == (b.epoch, b.step, b.header["rng"])


def test_resume_mid_epoch_after_a_time_budget_gives_identical_parameters(tmp_path):
    straight, _ = small_run(None, epochs=2, schedule="constant")
    expected = straight.fit()

    trainer, data = small_run(tmp_path, epochs=2, schedule="constant")
    result = trainer.fit(max_seconds=0)  # every call makes exactly one update, then saves last.npz mid-epoch
    calls = 1
    positions = []
    while result.stopped == "time budget":
        assert result.last_path == tmp_path / "last.npz"
        positions.append(load_checkpoint(tmp_path / "last.npz").train_state["batch_in_epoch"])
        trainer = resume(tmp_path / "last.npz", data)
        result = trainer.fit(max_seconds=0)
        calls += 1
    assert calls == 6 and result.stopped == "completed"  # 2 epochs x 3 minibatches
    assert positions == [1, 2, 0, 1, 2]  # mid-epoch saves, and the save at the end of epoch 1
    assert_same_params(result.model.params, expected.model.params)
    assert_same_params(result.best_model.params, expected.best_model.params)
    assert timeless(result.history) == timeless(expected.history)


def test_resume_refuses_other_data_other_feature_sizes_and_another_criterion(tmp_path):
    trainer, data = small_run(tmp_path, epochs=2)
    trainer.fit(until_epoch=1)
    last = tmp_path / "last.npz"
    other = CaptionDataset(data.train.captions[:-1], data.train.image_ids[:-1], data.train.features)
    with pytest.raises(ValueError, match="the data differ from those .*last.npz was trained on"):
        Trainer.from_checkpoint(last, other, val_data=data.val, progress=False, log=None)
    other_val = CaptionDataset(data.val.captions[1:], data.val.image_ids[1:], data.val.features)
    with pytest.raises(ValueError, match="the data differ"):
        Trainer.from_checkpoint(last, data.train, val_data=other_val, progress=False, log=None)

    wide = FeatureTable(data.d.table.image_ids, np.zeros((25, 12), np.float32))  # F = 12, the model wants 8
    wide_train = CaptionDataset(data.train.captions, data.train.image_ids, wide)
    with pytest.raises(ValueError, match="expects 8-d image features, but the training features given are 12-d"):
        Trainer.from_checkpoint(last, wide_train, progress=False, log=None)

    with pytest.raises(ValueError, match="chose its best epoch by val_loss, this resumed run would use val_metric"):
        Trainer.from_checkpoint(last, data.train, val_data=data.val, val_metric=lambda m: 0.0, progress=False)
    save_checkpoint(tmp_path / "model_only.npz", trainer.model, data.d.vocab)
    with pytest.raises(CheckpointError, match="no training state: it cannot be resumed"):
        Trainer.from_checkpoint(tmp_path / "model_only.npz", data.train, val_data=data.val)
    assert load_checkpoint(last).epoch == 1  # nothing was written by the refused attempts


# ----------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_parts(seed=0):
    d = toy_data(6, seed=seed)
    model = CaptionModel(len(d.vocab), 8, 4, 5, seed=seed, word_counts=d.vocab.word_frequencies())
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

    assert isinstance(ckpt.model, CaptionModel) and ckpt.header["model_class"] == "CaptionModel"
    assert_same_params(ckpt.model.params, model.params)
    assert ckpt.model.config == model.config and ckpt.vocab == d.vocab
    np.testing.assert_array_equal(ckpt.model.feature_mean, model.feature_mean)
    np.testing.assert_array_equal(ckpt.model.feature_std, model.feature_std)
    assert ckpt.model.constants.keys() == {"feature_mean", "feature_std"}
    assert (ckpt.step, ckpt.epoch, ckpt.metrics, ckpt.encoder) == (7, 2, {"val_loss": 1.5}, encoder)
    assert ckpt.history == history and ckpt.extra == {"note": "ünïcode"}
    assert ckpt.make_rng().random() == rng.random()  # the generator continues where it was
    restored = Adam(lr=1.0)
    restored.load_state_dict(ckpt.optimizer_state, params=ckpt.model.params)
    assert restored.t == 1 and restored.lr == 1e-3
    assert_same_params(restored.m, opt.m)
    with zipfile.ZipFile(tmp_path / "c.npz") as z:  # only .npy arrays, and the header is text
        assert all(name.endswith(".npy") for name in z.namelist())
        assert {"constant/feature_mean.npy", "constant/feature_std.npy"} <= set(z.namelist())
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


def _fail_at_update_5(trainer: Trainer, monkeypatch, what: str) -> dict:
    """Make the 5th update (epoch 2, batch 2) give a NaN loss or an infinite gradient; returns a dict that then
    holds the parameters as they were before that update."""
    real_loss = CaptionModel.loss
    before: dict = {}

    def loss(self, features, captions, backward=True):
        loss, grads = real_loss(self, features, captions, backward)
        if backward and trainer.state.step == 4:  # 4 updates done; validation after epoch 1 ran at 3
            before.update({k: v.copy() for k, v in self.params.items()})
            if what == "loss":
                return np.float32(np.nan), grads
            grads["W_vocab"][0, 0] = np.inf
        return loss, grads

    monkeypatch.setattr(CaptionModel, "loss", loss)
    return before


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_divergence_raises_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, what):
    trainer, _ = small_run(tmp_path, epochs=4)
    before = _fail_at_update_5(trainer, monkeypatch, what)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    assert "diverged at step 5 (epoch 2, batch 2)" in message
    assert ("loss = nan" if what == "loss" else "gradient norm = inf") in message
    assert f"Last good training loss: {trainer.history['steps']['loss'][-1]:.4f} at step 4" in message
    assert "last.npz (epoch 1)" in message and "lower learning rate" in message and "--clip" in message
    assert (info.value.step, info.value.epoch) == (5, 2)
    assert info.value.last_good_loss == trainer.history["steps"]["loss"][-1]
    assert_same_params(trainer.model.params, before)  # the failing step updated nothing

    ckpt = load_checkpoint(tmp_path / "last.npz")  # written after epoch 1, untouched since
    assert ckpt.epoch == 1 and ckpt.step == 3
    assert all(np.all(np.isfinite(p)) for p in ckpt.model.params.values())
    assert load_checkpoint(tmp_path / "best.npz").epoch == 1
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert on_disk["stopped"].startswith("diverged") and on_disk["diverged_at"] == 4  # 0-based failing step
    assert len(on_disk["steps"]["loss"]) == 4


def test_divergence_with_on_divergence_stop_ends_the_run_with_the_last_good_model(tmp_path, monkeypatch):
    trainer, _ = small_run(tmp_path, epochs=4, on_divergence="stop")
    before = _fail_at_update_5(trainer, monkeypatch, "loss")
    result = trainer.fit()
    assert result.stopped == "diverged" and result.steps == 4 and result.epochs == 1
    assert result.history["diverged_at"] == 4 and len(result.losses) == 4
    assert_same_params(result.model.params, before)
    assert result.best_epoch == 1
    assert_same_params(result.best_model.params, load_checkpoint(tmp_path / "best.npz").model.params)
    assert load_checkpoint(tmp_path / "last.npz").step == 3  # no model after the divergence was saved
    assert json.loads((tmp_path / "history.json").read_text())["stopped"] == "diverged"
    with pytest.raises(ValueError, match="on_divergence"):
        Trainer(trainer.model, trainer.train_data, on_divergence="ignore")


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
    assert json.loads((tmp_path / "history.json").read_text())["diverged_at"] == 2


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
    assert main([*args, "--epochs", "3", "--max-seconds", "1e-9"]) == 0  # stops after one update
    printed = capsys.readouterr().out
    assert "3 empty captions dropped" in printed  # 150 captions, 3 of them blank
    # The one configuration's split of 30 images: 6 test (at most a fifth), 10% of the rest for validation.
    assert "22 / 2 / 6 images for train / val / test" in printed and "stopped: time budget" in printed
    assert load_checkpoint(out / "last.npz").step == 1

    resumed = ["train", "--features", str(features), "--captions", str(captions), "--resume", str(out / "last.npz")]
    assert main([*resumed, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "stopped: completed after 3 epochs" in printed
    for name in ("last.npz", "best.npz", "history.json", "training_curves.png"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out / "best.npz")
    data = ckpt.extra["data"]
    assert len(data["test_image_ids"]) == 6 and len(data["val_image_ids"]) == 2
    assert data["num_images"] == {"train": 22, "val": 2, "test": 6}
    assert data["captions_file"] == str(captions.resolve()) and data["features_file"] == str(features.resolve())
    config = CaptionerConfig().replace(hidden_size=8, wordvec_size=6, min_count=1, batch_size=32, epochs=3)
    assert ckpt.extra["config"] == config.to_dict()
    assert ckpt.encoder["architecture"] == "synthetic" and ckpt.encoder["feature_size"] == 8
    assert ckpt.model.hidden_size == 8 and ckpt.train_config == config.train_config().to_dict()
    assert load_checkpoint(out / "last.npz").epoch == 3

    # A resumed run keeps its settings: a different one is refused, naming it; the same value is fine.
    assert main([*resumed, "--lr", "0.5", "--no-progress"]) == 2
    assert "lr=0.5 (checkpoint: 0.002)" in capsys.readouterr().err
    assert main([*resumed, "--hidden", "8", "--no-progress"]) == 0  # nothing left to do, but allowed
    assert "stopped: completed" in capsys.readouterr().out


def test_cli_train_bad_inputs_and_divergence(tmp_path, capsys, monkeypatch):
    captions, features, store = write_coco(tmp_path)
    out = tmp_path / "run"
    new_run = ["train", "--captions", str(captions), "--out", str(out), *TINY, "--epochs", "2"]
    resumed = ["train", "--captions", str(captions), "--resume", str(out / "last.npz"), "--no-progress"]
    assert main([*new_run, "--features", str(features), "--max-seconds", "1e-9"]) == 0  # one update, saved
    capsys.readouterr()

    # Features of another size than the checkpoint's model.
    _, wide, _ = write_coco(tmp_path, F=12)
    assert main([*resumed, "--features", str(wide)]) == 2
    assert "expects 8-d image features, but this store holds 12-d" in capsys.readouterr().err

    # A new run into a folder that holds one already.
    assert main([*new_run, "--features", str(features)]) == 2
    assert "already holds a run" in capsys.readouterr().err

    # Captions of images that have no features: one error, with the count and the first ids.
    store.subset(store.ids[:-4]).save(tmp_path / "partial.pkl")
    assert main([*new_run, "--features", str(tmp_path / "partial.pkl"), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "have no features" in err and "first:" in err
    assert not (tmp_path / "other" / "last.npz").exists()

    # A NaN loss: exit code 1, a message with a hint, and the last checkpoint untouched.
    before = (out / "last.npz").read_bytes()
    monkeypatch.setattr(CaptionModel, "loss", lambda self, f, c, backward=True: (np.float32(np.nan), {}))
    assert main([*resumed, "--features", str(features)]) == 1
    err = capsys.readouterr().err
    assert "training diverged at step 2" in err and "lower learning rate" in err
    assert (out / "last.npz").read_bytes() == before
    assert load_checkpoint(out / "last.npz").step == 1


# ------------------------------------------------------------------------------- flags of the one configuration

# One value per flag of `CONFIG_FLAGS`, each different from CaptionerConfig()'s default.
FLAG_VALUES = {
    "--model": ("attention", "attention"),
    "--attention-size": ("64", 64),
    "--attention-reg": ("0.5", 0.5),
    "--deep-output": ("yes", True),
    "--cell": ("rnn", "rnn"),
    "--hidden": ("12", 12),
    "--wordvec": ("10", 10),
    "--dropout": ("0.35", 0.35),
    "--min-count": ("2", 2),
    "--max-length": ("9", 9),
    "--split-seed": ("4", 4),
    "--test-fraction": ("0.25", 0.25),
    "--val-fraction": ("0.2", 0.2),
    "--epochs": ("7", 7),
    "--batch-size": ("16", 16),
    "--lr": ("0.01", 0.01),
    "--schedule": ("constant", "constant"),
    "--clip": ("2.5", 2.5),
    "--weight-decay": ("0", 0.0),
    "--patience": ("3", 3),
    "--init-seed": ("5", 5),
    "--early-stopping": ("loss", "loss"),
    "--beam": ("5", 5),
    "--length-penalty": ("0.7", 0.7),
}


@pytest.fixture
def captured_train(monkeypatch):
    """Replace `train_from_files` (what `minicap train` calls) with a recorder: no data needed, nothing trained. The
    command imports it from the package when it runs, so the package is where to replace it."""
    import minicap.pipeline

    calls = []

    def fake(features, captions, out_dir=None, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(result=SimpleNamespace(summary=lambda: "trained"))

    monkeypatch.setattr(minicap.pipeline, "train_from_files", fake)
    return calls


TRAIN_FILES = ["train", "--features", "f.pkl", "--captions", "c.json", "--no-progress"]


def test_cli_train_without_flags_uses_the_one_configuration(captured_train):
    assert main(TRAIN_FILES) == 0
    assert captured_train[0]["config"] == CaptionerConfig() and captured_train[0]["given"] == []


def test_every_config_flag_of_cli_train_overrides_exactly_one_field(captured_train):
    fields = {flag: field for flag, field, _, _ in CONFIG_FLAGS}
    assert set(FLAG_VALUES) | {"--test-images"} == set(fields)  # every flag is tested
    for flag, (text, value) in FLAG_VALUES.items():
        assert getattr(CaptionerConfig(), fields[flag]) != value, flag
        assert main([*TRAIN_FILES, flag, text]) == 0
        call = captured_train.pop()
        assert call["config"] == CaptionerConfig().replace(**{fields[flag]: value}), flag
        assert call["given"] == [fields[flag]], flag
    # Two spellings with a meaning of their own: --patience 0 is "never", --test-images N alone is exactly N.
    assert main([*TRAIN_FILES, "--patience", "0"]) == 0
    assert captured_train.pop()["config"] == CaptionerConfig().replace(patience=None)
    assert main([*TRAIN_FILES, "--test-images", "5"]) == 0
    call = captured_train.pop()
    assert call["config"] == CaptionerConfig().replace(min_test_images=5, test_fraction=0.0)
    assert call["given"] == ["min_test_images", "test_fraction"]
    assert main([*TRAIN_FILES, "--test-images", "5", "--test-fraction", "0.3"]) == 0
    assert captured_train.pop()["config"] == CaptionerConfig().replace(min_test_images=5, test_fraction=0.3)
    # `minicap train --seed S` is --init-seed S (demo and evaluate keep --seed for the split's / folds' seed).
    assert main([*TRAIN_FILES, "--seed", "5"]) == 0
    assert captured_train.pop()["config"] == CaptionerConfig().replace(seed=5)
    # Several flags at once: each sets its own field.
    assert main([*TRAIN_FILES, "--hidden", "12", "--lr", "0.01", "--max-seconds", "30"]) == 0
    call = captured_train.pop()
    assert call["config"] == CaptionerConfig().replace(hidden_size=12, lr=0.01) and call["max_seconds"] == 30.0


@pytest.mark.parametrize(
    ("flag", "value", "complaint"),
    [
        ("--hidden", "0", "expected a positive integer, got 0"),
        ("--epochs", "2.5", "expected a positive integer, got '2.5'"),
        ("--batch-size", "-1", "expected a positive integer, got -1"),
        ("--split-seed", "-3", "expected an integer >= 0, got -3"),
        ("--patience", "x", "expected an integer >= 0, got 'x'"),
        ("--lr", "0", "expected a finite number > 0, got 0"),
        ("--lr", "nan", "expected a finite number > 0, got nan"),
        ("--clip", "inf", "expected a finite number > 0, got inf"),
        ("--weight-decay", "-0.1", "expected a finite number >= 0, got -0.1"),
        ("--length-penalty", "abc", "expected a finite number >= 0, got 'abc'"),
        ("--test-fraction", "1", "expected a number in [0, 1), got 1"),
        ("--val-fraction", "-0.1", "expected a number in [0, 1), got -0.1"),
        ("--cell", "gru", "invalid choice: 'gru'"),
        ("--schedule", "step", "invalid choice: 'step'"),
        ("--max-seconds", "0", "expected a finite number > 0, got 0"),
    ],
)
def test_invalid_numbers_are_argparse_errors(flag, value, complaint, captured_train, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN_FILES, flag, value])
    assert exit_info.value.code == 2 and captured_train == []
    err = capsys.readouterr().err
    assert f"argument {flag}: {complaint}" in err and err.startswith("usage: minicap train")

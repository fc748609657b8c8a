"""minicap's main job end to end: `minicap demo`, `minicap evaluate` (k-fold and one checkpoint), `minicap caption`,
and the one CaptionerConfig behind `minicap train`, `demo` and `evaluate` (the same recorded configuration, the
deprecated spellings of their seeds).

Almost everything runs on a tiny synthetic COCO folder (15 JPEGs of three colours, three captions each) with the
tiny ONNX encoder of test_vision_extract.py, so a whole demo takes a second or two. One module-scoped run goes through
the real command line (real EfficientNet-Lite0 graph, pycocoevalcap with METEOR) — the `make demo` path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_vision_extract import make_tiny_encoder

from minicap.baselines import MOST_FREQUENT, NEAREST_NEIGHBOUR
from minicap.checkpoint import load_checkpoint, save_checkpoint
from minicap.cli import main
from minicap.coco import CocoCaptions, CocoDataMissing, find_coco, split_images
from minicap.config import CaptionerConfig
from minicap.experiments import MODEL_GREEDY, model_beam
from minicap.metrics import load_coco_results
from minicap.models import CaptionModel
from minicap.pipeline import DEMO_TIME_BUDGET, EncoderNotFound, caption_files, config_split, ensure_features, run_demo
from minicap.plots import plot_captioned_photos
from minicap.text import Vocabulary
from minicap.vision.store import FeatureStore

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220)}
# Small enough to train in a fraction of a second, large enough to learn "a <colour> ...".
TINY = CaptionerConfig(
    hidden_size=32, wordvec_size=16, epochs=40, batch_size=16, lr=1e-2, min_count=1, patience=None, nn_k=1
)
SYSTEMS = [MODEL_GREEDY, model_beam(3), MOST_FREQUENT, NEAREST_NEIGHBOUR]


def make_coco(root: Path, n: int = 15, seed: int = 0) -> Path:
    """root/images/<12-digit id>.jpg (flat colour + noise) and root/captions.json (3 captions per image)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in range(n):
        colour = list(COLOURS)[k % 3]
        pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-15, 15, (40, 56, 3)), 0, 255).astype(np.uint8)
        name = f"{k + 1:012d}.jpg"
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": k + 1, "file_name": name, "width": 56, "height": 40})
        for j, text in enumerate([f"a {colour} picture", f"a {colour} square", f"the {colour} image"]):
            annotations.append({"id": 10 * k + j, "image_id": k + 1, "caption": text})
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny.onnx"
    make_tiny_encoder(path)
    return path


@pytest.fixture(scope="module")
def demo(coco_dir, tiny_encoder, tmp_path_factory):
    """One demo run on the synthetic folder, CIDEr-D only (no Java): (result, log lines)."""
    lines: list[str] = []
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(coco_dir, out, config=TINY, encoder=tiny_encoder, scorer=None, progress=False, log=lines.append)
    return result, lines


# ----------------------------------------------------------------------------------------------- the demo


def test_demo_writes_every_output_and_prints_one_table(demo):
    result, lines = demo
    split = result.split
    assert len(split["test"]) == 3 and len(split["val"]) == 1 and len(split["train"]) == 11  # 15 images
    assert not set(split["test"]) & set(split["train"]) and not set(split["val"]) & set(split["train"])
    # The table: a header, a rule, one row per system, a CIDEr column.
    table = result.table.splitlines()
    assert "CIDEr" in table[1] and table[2].startswith("---")
    assert [row.split("  ")[0] for row in table[3:]] == SYSTEMS
    assert set(result.scores) == set(SYSTEMS)
    # COCO results files: one caption for each held-out image, per system.
    for system in SYSTEMS:
        assert load_coco_results(result.results_files[system]) == result.hypotheses[system]
        assert sorted(result.hypotheses[system]) == split["test"]
    assert result.figure.stat().st_size > 10_000
    assert result.checkpoint is not None and result.checkpoint.is_file()
    metrics = json.loads(result.metrics_file.read_text())
    assert metrics["scores"] == result.scores and metrics["split"] == split
    assert any("split by image" in line for line in lines)


def test_demo_model_learns_the_colours(demo):
    """The whole chain works: JPEG -> ONNX features -> standardised -> LSTM -> beam search -> the right colour."""
    result, _ = demo
    refs = result.references
    for system in (MODEL_GREEDY, model_beam(3)):
        for image_id, caption in result.hypotheses[system].items():
            colour = refs[image_id][0].split()[1]
            assert colour in caption.split(), (system, image_id, caption)
    assert result.scores[model_beam(3)]["CIDEr"] > result.scores[MOST_FREQUENT]["CIDEr"]


def test_checkpoint_records_encoder_split_and_standardisation(demo, tiny_encoder):
    result, _ = demo
    ckpt = load_checkpoint(result.checkpoint)
    assert Path(ckpt.encoder["onnx_path"]) == tiny_encoder.resolve()
    assert ckpt.encoder["feature_size"] == 8 and len(ckpt.encoder["onnx_sha256"]) == 64
    assert ckpt.extra["data"]["test_image_ids"] == result.split["test"]
    assert ckpt.model.feature_mean is not None  # standardised with training statistics, saved with the model


def test_features_are_extracted_once_and_reused(demo, coco_dir, tiny_encoder):
    result, _ = demo
    store = ensure_features(find_coco(coco_dir), tiny_encoder, result.features, progress=False)
    run = store.manifest["extraction"]
    assert (run["extracted"], run["reused"]) == (0, 15)


def test_the_split_of_the_one_configuration():
    split = split_images(np.arange(271), test_fraction=0.1, min_test_images=30, seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [217, 24, 30]
    assert split_images(np.arange(271), seed=0)["test"].tolist() == split["test"].tolist()  # deterministic
    assert len(split_images(np.arange(10))["test"]) == 2  # at most a fifth held out
    with pytest.raises(ValueError, match="at least 3 images"):
        split_images([1, 2])
    # What `minicap demo` and `minicap train` split by: the configuration's fields.
    images = {int(i): {"id": int(i), "file_name": f"{i}.jpg"} for i in range(271)}
    coco = CocoCaptions(images, [(i, "a caption") for i in images])
    assert {k: v.tolist() for k, v in config_split(coco, CaptionerConfig()).items()} == {
        k: v.tolist() for k, v in split.items()
    }
    other = config_split(coco, CaptionerConfig(split_seed=1, test_fraction=0.2, val_fraction=0.25))
    assert [len(other[k]) for k in ("train", "val", "test")] == [163, 54, 54]
    assert other["test"].tolist() != split["test"].tolist()


# ------------------------------------------------------------------------------------------ missing data


@pytest.mark.parametrize("layout", ["absent", "no captions", "no jpgs"])
def test_missing_data_says_how_to_get_some(tmp_path, layout):
    root = tmp_path / "coco"
    if layout != "absent":
        (root / "images").mkdir(parents=True)
        if layout == "no jpgs":
            (root / "captions.json").write_text("{}")
    with pytest.raises(CocoDataMissing) as e:
        find_coco(root)
    message = str(e.value)
    assert f"no COCO data at {root}" in message
    assert "minicap data download --split val2017 --limit 300 --out data/coco" in message
    assert "assets/coco" in message and "MINICAP_COCO=/path/to/coco make demo" in message


def test_cli_demo_with_a_missing_folder_exits_2_with_the_message(tmp_path, monkeypatch, capsys):
    """A folder named by $MINICAP_COCO (what `make demo` passes) or --coco that is not there: exit 2, the reason and
    how to get data, nothing built. (With no folder named at all the demo reads the embedded sample: test_sample.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINICAP_COCO", str(tmp_path / "elsewhere"))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no COCO data at {tmp_path / 'elsewhere'}: the folder does not exist.")
    assert "minicap data download" in err and "MINICAP_COCO=/path/to/coco make demo" in err
    assert not (tmp_path / "runs").exists()  # nothing built before the data check
    monkeypatch.delenv("MINICAP_COCO")
    assert main(["demo", "--coco", str(tmp_path / "nowhere")]) == 2
    assert f"no COCO data at {tmp_path / 'nowhere'}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ evaluate --folds


def test_cli_evaluate_folds_on_a_feature_store(demo, coco_dir, tmp_path, capsys):
    result, _ = demo
    out = tmp_path / "cv.json"
    args = [
        "evaluate",
        "--folds",
        "3",
        "--features",
        str(result.features),
        "--captions",
        str(coco_dir / "captions.json"),
    ]
    flags = ["--hidden", "32", "--wordvec", "16", "--epochs", "5", "--min-count", "1"]
    assert main([*args, *flags, "--cider-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3-fold cross-validation by image (seed 0)" in printed and "/3)" in printed
    for system in SYSTEMS:
        assert any(line.startswith(system) for line in printed.splitlines())
    saved = json.loads(out.read_text())
    assert saved["k"] == 3 and saved["seed"] == 0 and len(saved["folds"]) == 3
    assert saved["settings"] == CaptionerConfig(hidden_size=32, wordvec_size=16, epochs=5, min_count=1).to_dict()


def test_cli_evaluate_chooses_settings_on_each_folds_validation_slice(demo, coco_dir, tmp_path, capsys):
    result, _ = demo
    out = tmp_path / "cv.json"
    data = ["--features", str(result.features), "--captions", str(coco_dir / "captions.json"), "--cider-only"]
    flags = ["--hidden", "32", "--wordvec", "16", "--epochs", "3", "--min-count", "1"]
    choose = ["--choose", "dropout=0,0.3", "--choose", "lr=0.002,0.01"]
    assert main(["evaluate", "--folds", "2", *data, *flags, *choose, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("chosen on validation: ") == 2 and "fold 1/2: " in printed
    saved = json.loads(out.read_text())
    for fold in saved["folds"]:
        settings = [(c["config"]["dropout"], c["config"]["lr"]) for c in fold["choices"]]
        assert settings == [(0.0, 0.002), (0.0, 0.01), (0.3, 0.002), (0.3, 0.01)]  # the grid, first flag outermost
        assert sum(c["chosen"] for c in fold["choices"]) == 1
        assert all(c["config"]["hidden_size"] == 32 for c in fold["choices"])  # the other flags apply to each
    assert saved["settings"]["dropout"] == 0.0 and saved["settings"]["lr"] == 0.002  # the first candidate
    for bad in (["--choose", "dropout=1"], ["--choose", "colour=red"], ["--choose", "cell=gru"]):
        assert main(["evaluate", "--folds", "2", *data, *flags, *bad]) == 2
        assert capsys.readouterr().err.count("error: --choose") == 1
    assert main(["evaluate", "--checkpoint", "x.npz", *data, "--choose", "dropout=0,0.3"]) == 2
    assert "--choose needs --folds" in capsys.readouterr().err


def test_captions_without_features_one_clear_error(coco_dir, demo, tmp_path, capsys):
    result, _ = demo
    data = json.loads((coco_dir / "captions.json").read_text())
    for extra_id in (901, 902):
        data["images"].append({"id": extra_id, "file_name": f"{extra_id:012d}.jpg"})
        data["annotations"].append({"id": extra_id, "image_id": extra_id, "caption": "a grey picture"})
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(data))
    args = ["evaluate", "--folds", "3", "--features", str(result.features), "--captions", str(captions)]
    assert main([*args, "--cider-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "2 of 17 requested image ids have no features" in err and "901, 902" in err


# ------------------------------------------------------------------------------------------ evaluate --checkpoint


def test_cli_evaluate_checkpoint_on_its_held_out_images(demo, coco_dir, capsys):
    result, _ = demo
    args = ["evaluate", "--checkpoint", str(result.checkpoint), "--features", str(result.features)]
    assert main([*args, "--captions", str(coco_dir / "captions.json"), "--cider-only"]) == 0
    out = capsys.readouterr().out
    assert "3 held-out test images recorded in the checkpoint" in out
    for system in SYSTEMS:
        assert any(line.startswith(system) for line in out.splitlines())
    # Decoding follows the checkpoint's configuration; --beam overrides its beam width.
    assert main([*args, "--captions", str(coco_dir / "captions.json"), "--cider-only", "--beam", "2"]) == 0
    rows = [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()]
    assert model_beam(2) in rows and model_beam(3) not in rows


def test_cli_evaluate_features_of_another_size_clear_error(demo, coco_dir, tmp_path, capsys):
    result, _ = demo
    store = FeatureStore.load(result.features)
    other = FeatureStore(store.ids, np.ones((len(store), 6), np.float32), {"architecture": "other_net"})
    other.save(tmp_path / "f6.pkl")
    args = ["evaluate", "--checkpoint", str(result.checkpoint), "--features", str(tmp_path / "f6.pkl")]
    assert main([*args, "--captions", str(coco_dir / "captions.json"), "--cider-only"]) == 2
    err = capsys.readouterr().err
    assert "expects 8-d image features" in err and "6-d features from other_net" in err


def test_cli_evaluate_needs_data(capsys):
    assert main(["evaluate", "--folds", "5"]) == 2
    assert "--folds needs --coco DIR, or both --features" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ minicap caption


def test_caption_files_through_the_recorded_encoder(demo, coco_dir, tmp_path, capsys):
    result, _ = demo
    test_id = result.split["test"][0]
    photo = coco_dir / "images" / f"{test_id:012d}.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    missing = tmp_path / "missing.jpg"
    assert main(["caption", str(photo), str(broken), str(missing), "--checkpoint", str(result.checkpoint)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{photo}: ")
    # JPEG -> encoder -> standardise -> decode gives what the demo decoded from the stored features.
    assert lines[0].split(": ", 1)[1] == result.hypotheses[MODEL_GREEDY][test_id]
    assert f"skipped {broken}: not a readable image" in captured.err
    assert f"skipped {missing}: file not found" in captured.err
    run = caption_files([photo], result.checkpoint, beam_size=3)
    assert run.captions == [(photo, result.hypotheses[model_beam(3)][test_id])] and run.failures == []
    assert main(["caption", str(broken), "--checkpoint", str(result.checkpoint)]) == 1
    assert "none of the 1 images could be read" in capsys.readouterr().err


def _checkpoint_with_encoder(path: Path, encoder: dict, feature_size: int = 8) -> Path:
    vocab = Vocabulary.from_captions(["a red picture"])
    model = CaptionModel(len(vocab), feature_size, 4, 4, seed=0)
    return save_checkpoint(path, model, vocab, encoder=encoder)


def test_caption_encoder_missing_or_mismatched(tmp_path, tiny_encoder, capsys, coco_dir):
    image = str(coco_dir / "images" / "000000000001.jpg")
    from minicap.safe_io import sha256_file

    sha = sha256_file(tiny_encoder)
    gone = tmp_path / "gone" / "tiny.onnx"
    ckpt = _checkpoint_with_encoder(
        tmp_path / "a.npz", {"architecture": "tiny_test", "onnx_sha256": sha, "onnx_path": str(gone)}
    )
    assert main(["caption", image, "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "was not found" in err and str(gone) in err and "--encoder FILE.onnx" in err
    # --encoder: a different encoder file is refused (its features would mean nothing to this model) ...
    other = tmp_path / "other.onnx"
    make_tiny_encoder(other, seed=1)
    assert main(["caption", image, "--checkpoint", str(ckpt), "--encoder", str(other)]) == 2
    assert "is not the encoder" in capsys.readouterr().err
    # ... the right one is accepted; and the recorded file is found by name next to the checkpoint.
    assert main(["caption", image, "--checkpoint", str(ckpt), "--encoder", str(tiny_encoder)]) == 0
    capsys.readouterr()
    shutil.copy(tiny_encoder, tmp_path / "tiny.onnx")
    ckpt_b = _checkpoint_with_encoder(tmp_path / "b.npz", {"onnx_sha256": sha, "onnx_file": "tiny.onnx"})
    with pytest.raises(EncoderNotFound, match="does not exist"):
        caption_files([image], ckpt_b, encoder=tmp_path / "nope.onnx")
    assert caption_files([image], ckpt_b).encoder == tmp_path / "tiny.onnx"


def test_caption_feature_size_mismatch(tmp_path, tiny_encoder, coco_dir, capsys):
    ckpt = _checkpoint_with_encoder(tmp_path / "c.npz", {}, feature_size=12)  # records no encoder
    image = str(coco_dir / "images" / "000000000001.jpg")
    assert main(["caption", image, "--checkpoint", str(ckpt)]) == 2
    assert "does not record which encoder" in capsys.readouterr().err
    assert main(["caption", image, "--checkpoint", str(ckpt), "--encoder", str(tiny_encoder)]) == 2
    err = capsys.readouterr().err
    assert "gives 8-d features" in err and "expects 12-d ones" in err


# ------------------------------------------------------------------------------------------ one configuration


def assert_same_params(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"parameter {name} differs"


def test_cli_train_and_demo_record_the_same_configuration(coco_dir, tiny_encoder, tmp_path, monkeypatch, capsys):
    """`minicap train` without config flags and `minicap demo` on the same COCO folder build, split and train the
    same captioner from the one CaptionerConfig: their checkpoints record the same configuration, model, training
    settings and split (and, trained on the same features, the same parameters)."""
    import minicap.pipeline.demo

    # The demo's own EfficientNet-Lite0 and METEOR would take a minute: the tiny encoder, and CIDEr-D only. Patched
    # where `run_demo` looks them up, its own module (the package only re-exports them).
    monkeypatch.setattr(minicap.pipeline.demo, "ensure_encoder", lambda work_dir, arch, log=None: tiny_encoder)
    monkeypatch.setattr(minicap.pipeline.demo, "make_scorer", lambda log=None: None)
    captions = coco_dir / "captions.json"
    assert main(["demo", "--coco", str(coco_dir), "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["metrics_from"] == "CIDEr-D only"
    # The same folder through `minicap extract` and `minicap train`, as the README tells a user to.
    features = tmp_path / "features.pkl"
    extract = ["extract", "--images", str(coco_dir / "images"), "--captions", str(captions), "--no-progress"]
    assert main([*extract, "--encoder", str(tiny_encoder), "--out", str(features)]) == 0
    train = ["train", "--features", str(features), "--captions", str(captions), "--out", str(tmp_path / "train")]
    assert main([*train, "--no-progress"]) == 0
    capsys.readouterr()

    for name in ("best.npz", "last.npz"):
        by_demo = load_checkpoint(tmp_path / "demo" / "model" / name)
        by_train = load_checkpoint(tmp_path / "train" / name)
        demo_config, train_config = by_demo.extra["config"], by_train.extra["config"]
        assert demo_config.keys() == train_config.keys() == CaptionerConfig().to_dict().keys()
        for field, value in CaptionerConfig().to_dict().items():  # field for field: the defaults, in both
            assert demo_config[field] == train_config[field] == value, field
        assert by_demo.header["model_class"] == by_train.header["model_class"] == "CaptionModel"
        assert by_demo.model.config == by_train.model.config
        assert by_demo.model.config["hidden_size"] == CaptionerConfig().hidden_size
        assert by_demo.train_config == by_train.train_config == CaptionerConfig().train_config().to_dict()
        assert by_demo.header["optimizer"] == by_train.header["optimizer"]
        demo_data, train_data = by_demo.extra["data"], by_train.extra["data"]
        assert demo_data["num_images"] == train_data["num_images"] == {"train": 11, "val": 1, "test": 3}
        assert demo_data["val_image_ids"] == train_data["val_image_ids"]
        assert demo_data["test_image_ids"] == train_data["test_image_ids"]
        assert demo_data["captions_file"] == train_data["captions_file"] == str(captions.resolve())
        assert by_demo.vocab == by_train.vocab
        assert by_demo.encoder["onnx_sha256"] == by_train.encoder["onnx_sha256"]
        # The same features, so the same recipe gives the same model, bit for bit.
        assert (by_demo.epoch, by_demo.step) == (by_train.epoch, by_train.step)
        assert_same_params(by_demo.model.params, by_train.model.params)
        np.testing.assert_array_equal(by_demo.model.feature_mean, by_train.model.feature_mean)
    demo_store, train_store = FeatureStore.load(tmp_path / "demo" / "features.pkl"), FeatureStore.load(features)
    assert np.array_equal(demo_store.ids, train_store.ids)
    assert np.array_equal(demo_store.features, train_store.features)


@pytest.fixture
def captured_demo(monkeypatch):
    """Replace `run_demo` (what `minicap demo` calls) with a recorder: nothing is built or trained. The command
    imports it from the package when it runs, so the package is where to replace it."""
    import minicap.pipeline

    calls = []

    def fake(coco, out_dir, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(summary=lambda: "demo done")

    monkeypatch.setattr(minicap.pipeline, "run_demo", fake)
    return calls


def test_cli_demo_seed_is_a_deprecated_spelling_of_split_seed(captured_demo, tmp_path, capsys):
    base = ["demo", "--coco", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(base) == 0
    assert captured_demo[-1]["config"] == CaptionerConfig()
    assert captured_demo[-1]["max_train_seconds"] == DEMO_TIME_BUDGET
    assert "deprecated" not in capsys.readouterr().err

    assert main([*base, "--seed", "7"]) == 0  # the old spelling still works ...
    err = capsys.readouterr().err
    assert (
        "note: `minicap demo --seed` is deprecated; it sets the split seed: say --split-seed" in err
    )  # ... with a note
    assert captured_demo[-1]["config"] == CaptionerConfig(split_seed=7)  # the split, not the initialisation seed
    assert main([*base, "--split-seed", "7"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert captured_demo[-1]["config"] == CaptionerConfig(split_seed=7)
    assert main([*base, "--seed", "7", "--split-seed", "2"]) == 0  # the new spelling wins
    assert "deprecated" in capsys.readouterr().err and captured_demo[-1]["config"] == CaptionerConfig(split_seed=2)

    # The other flags of the one configuration, and the time budget.
    assert main([*base, "--epochs", "3", "--hidden", "16", "--beam", "2", "--max-train-seconds", "20"]) == 0
    assert captured_demo[-1]["config"] == CaptionerConfig(epochs=3, hidden_size=16, beam_size=2)
    assert captured_demo[-1]["max_train_seconds"] == 20.0
    for bad in (["--seed", "-1"], ["--split-seed", "x"], ["--lr", "0"], ["--max-train-seconds", "-5"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *bad])
        assert exit_info.value.code == 2 and f"argument {bad[0]}:" in capsys.readouterr().err
    assert len(captured_demo) == 5


@pytest.fixture
def captured_folds(monkeypatch):
    """Replace `cross_validate` (what `minicap evaluate --folds` calls) with a recorder."""
    import minicap.experiments

    calls = []

    def fake(coco, store, k, config, scorer, *, seed, log, progress, choices=(), only_folds=None):
        calls.append(
            {"k": k, "config": config, "seed": seed, "scorer": scorer, "progress": progress, "choices": list(choices)}
            | ({"only_folds": only_folds} if only_folds is not None else {})
        )
        ran = [{"fold": f} for f in (only_folds or range(1, k + 1))]
        return SimpleNamespace(table=lambda: "the table", seconds=0.0, k=k, folds=ran, to_dict=lambda: {"seed": seed})

    monkeypatch.setattr(minicap.experiments, "cross_validate", fake)
    return calls


def test_cli_evaluate_seed_is_a_deprecated_spelling_of_fold_seed(captured_folds, demo, coco_dir, capsys):
    result, _ = demo
    data = ["--features", str(result.features), "--captions", str(coco_dir / "captions.json"), "--cider-only"]
    base = ["evaluate", "--folds", "4", *data]
    assert main(base) == 0
    assert captured_folds[-1] == {
        "k": 4,
        "config": CaptionerConfig(),
        "seed": 0,
        "scorer": None,
        "progress": True,
        "choices": [],
    }
    assert "deprecated" not in capsys.readouterr().err

    assert main([*base, "--seed", "7"]) == 0  # the old spelling still works, with a note
    err = capsys.readouterr().err
    assert "note: `minicap evaluate --seed` is deprecated; it sets the seed of the folds: say --fold-seed" in err
    assert captured_folds[-1]["seed"] == 7 and captured_folds[-1]["config"] == CaptionerConfig()  # not config.seed
    assert main([*base, "--fold-seed", "7"]) == 0
    assert "deprecated" not in capsys.readouterr().err and captured_folds[-1]["seed"] == 7
    assert main([*base, "--seed", "7", "--fold-seed", "2"]) == 0  # the new spelling wins
    assert captured_folds[-1]["seed"] == 2

    assert main([*base, "--epochs", "3", "--split-seed", "5", "--min-count", "1"]) == 0
    assert captured_folds[-1]["config"] == CaptionerConfig(epochs=3, split_seed=5, min_count=1)
    # The seed of the initialisation (and dropout masks, minibatch order) is --init-seed; the folds stay seed 0.
    assert main([*base, "--init-seed", "3"]) == 0
    assert captured_folds[-1]["config"] == CaptionerConfig(seed=3) and captured_folds[-1]["seed"] == 0
    # --fold I runs fold I of the same K folds (one fold per process); I must be a fold of K.
    assert main([*base, "--fold", "2", "--fold", "4"]) == 0
    assert captured_folds[-1]["only_folds"] == [2, 4] and captured_folds[-1]["k"] == 4
    assert "(0 s for 2 of 4 folds)" in capsys.readouterr().out
    assert main([*base, "--fold", "5"]) == 2
    assert "error: --fold I needs --folds K with 1 <= I <= K" in capsys.readouterr().err
    for bad in (["--seed", "-2"], ["--fold-seed", "1.5"], ["--hidden", "0"], ["--fold", "0"], ["--init-seed", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *bad])
        assert exit_info.value.code == 2 and f"argument {bad[0]}:" in capsys.readouterr().err
    assert len(captured_folds) == 7


# ------------------------------------------------------------------------------------------ the figure


def test_plot_captioned_photos_checks_its_inputs(tmp_path):
    photo = np.zeros((20, 30, 3), np.uint8)
    path = plot_captioned_photos([photo, photo], [{"m": "a"}, {"m": ""}], tmp_path / "p.png", [["x"], ["y"]])
    assert path.stat().st_size > 2_000
    with pytest.raises(ValueError, match="one entry per photo"):
        plot_captioned_photos([photo], [{"m": "a"}, {"m": "b"}], tmp_path / "q.png")


# ------------------------------------------------------------------------------------------ the real command line


@pytest.fixture(scope="module")
def cli_demo(coco_dir, tmp_path_factory):
    """`minicap demo` exactly as `make demo` runs it: real EfficientNet-Lite0 graph, pycocoevalcap metrics."""
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("java is not installed (pycocoevalcap's tokenizer and METEOR need it)")
    out = tmp_path_factory.mktemp("cli_demo")
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", "--coco", str(coco_dir), "--out", str(out), "--no-progress", "--max-train-seconds", "20"])
    return code, stdout.getvalue(), stderr.getvalue(), out


@pytest.mark.slow
def test_cli_demo_end_to_end_prints_the_metrics_table(cli_demo):
    code, out, err, work = cli_demo
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("system"))
    assert header.split() == ["system", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"]
    rows = [line for line in out.splitlines() if line.split("  ")[0] in SYSTEMS]
    assert len(rows) == 4 and all(len(row.split()) >= 8 for row in rows)
    for name in ("efficientnet_lite0.onnx", "features.pkl", "model/best.npz", "captioned_photos.png", "metrics.json"):
        assert (work / name).is_file(), name
    assert len(list((work / "results").glob("*.json"))) == 4


@pytest.mark.slow
def test_cli_caption_with_the_real_encoder(cli_demo, coco_dir, capsys, request):
    code, _, _, work = cli_demo
    assert code == 0
    images = [str(coco_dir / "images" / "000000000001.jpg")]
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "coco" / "images"
    if shared.is_dir():  # a real COCO photo too, when the shared data is here
        images.append(str(sorted(shared.glob("*.jpg"))[0]))
    assert main(["caption", *images, "--checkpoint", str(work / "model" / "best.npz"), "--beam", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # One "IMAGE: caption" line per image, in order (this model saw 11 flat-colour photos: its words may be few).
    assert [line.split(": ", 1)[0] for line in lines] == images


def test_the_command_line_asks_openblas_for_one_thread_before_numpy_loads():
    """`import minicap.cli` must not load NumPy (minicap/__init__ imports its entry points lazily), or the CLI's
    OPENBLAS_NUM_THREADS=1 would come too late and the commands would run — and round — with every core's thread."""
    import os
    import subprocess

    code = (
        "import os, sys, minicap.cli\n"
        "assert 'numpy' not in sys.modules, 'importing the CLI loaded NumPy'\n"
        "minicap.cli.captioning.one_blas_thread()\n"
        "import numpy, minicap\n"
        "assert minicap.CaptionModel.__name__ == 'CaptionModel'\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    env["OPENBLAS_NUM_THREADS"] = "2"  # the user's choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


def test_cli_evaluate_extracts_spatial_maps_when_an_attention_model_is_among_the_choices(captured_folds, monkeypatch):
    import minicap.cli

    asked = []
    fake_data = lambda args, spatial=False: asked.append(spatial) or (1, 2)  # noqa: E731
    monkeypatch.setattr(minicap.cli.captioning, "_evaluation_data", fake_data)
    base = ["evaluate", "--folds", "2", "--coco", "x", "--cider-only", "--no-progress"]
    assert main(base) == 0
    assert main([*base, "--choose", "model=meanpool,attention"]) == 0
    assert main([*base, "--model", "attention"]) == 0
    assert asked == [False, True, True]
    assert [len(c["choices"]) for c in captured_folds] == [0, 1, 0]  # the second model is the one choice

"""minicap's main job end to end: `minicap demo`, `minicap evaluate` (k-fold and one checkpoint), `minicap caption`.

Almost everything runs on a tiny synthetic COCO folder (15 JPEGs of three colours, three captions each) with the
tiny ONNX encoder of test_features.py, so a whole demo takes a second or two. One module-scoped run goes through
the real command line (real EfficientNet-Lite0 graph, pycocoevalcap with METEOR) — the `make demo` path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_features import make_tiny_encoder

from minicap.checkpoint import load_checkpoint, save_checkpoint
from minicap.cli import main
from minicap.data import Vocabulary, load_coco_captions
from minicap.evaluate import (
    MODEL_GREEDY,
    MOST_FREQUENT,
    NEAREST_NEIGHBOUR,
    CaptionerSettings,
    cross_validate,
    fold_splits,
    format_metrics_table,
    load_coco_results,
    model_beam,
)
from minicap.features import FeatureStore, MissingFeaturesError
from minicap.model import CaptionModel
from minicap.pipeline import (
    CocoDataMissing,
    EncoderNotFound,
    caption_files,
    demo_split,
    ensure_features,
    find_coco,
    run_demo,
)
from minicap.plots import plot_captioned_photos

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220)}
# Small enough to train in a fraction of a second, large enough to learn "a <colour> ...".
TINY = CaptionerSettings(
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
    result = run_demo(coco_dir, out, settings=TINY, encoder=tiny_encoder, scorer=None, progress=False, log=lines.append)
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


def test_demo_split_sizes():
    split = demo_split(np.arange(271), test_images=30, seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [217, 24, 30]
    assert demo_split(np.arange(271), seed=0)["test"].tolist() == split["test"].tolist()  # deterministic
    assert len(demo_split(np.arange(10))["test"]) == 2  # at most a fifth held out
    with pytest.raises(ValueError, match="at least 3 images"):
        demo_split([1, 2])


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
    assert "minicap data download --captions captions_val2017.json --limit 300 --out data/coco" in message
    assert "annotations_trainval2017.zip" in message and "MINICAP_COCO=/path/to/coco make demo" in message


def test_cli_demo_without_data_exits_2_with_the_message(tmp_path, monkeypatch, capsys):
    """What `make demo` runs (`minicap demo --coco "$MINICAP_COCO"`), and the default data/coco."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINICAP_COCO", raising=False)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no COCO data at data/coco: the folder does not exist.")
    assert "minicap data download" in err and "MINICAP_COCO=/path/to/coco make demo" in err
    assert not (tmp_path / "runs").exists()  # nothing built before the data check
    monkeypatch.setenv("MINICAP_COCO", str(tmp_path / "elsewhere"))
    assert main(["demo"]) == 2
    assert f"no COCO data at {tmp_path / 'elsewhere'}" in capsys.readouterr().err


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


def test_cross_validate_table_and_numbers(coco_dir, tiny_encoder, demo):
    result, _ = demo
    store = FeatureStore.load(result.features)
    coco = load_coco_captions(coco_dir / "captions.json")
    cv = cross_validate(coco, store, k=3, settings=TINY.replace(epochs=25), scorer=None, seed=0)
    assert [f["n_test"] for f in cv.folds] == [5, 5, 5]
    assert cv.systems == SYSTEMS and cv.metrics == ["CIDEr"]
    mean, sd = cv.summary()[model_beam(3)]["CIDEr"]
    values = cv.values(model_beam(3), "CIDEr")
    assert mean == pytest.approx(values.mean()) and sd == pytest.approx(values.std(ddof=1))
    paired = cv.paired(model_beam(3))["CIDEr"]
    diff = values - cv.values(NEAREST_NEIGHBOUR, "CIDEr")
    assert paired["wins"] == int((diff > 0).sum()) and paired["mean"] == pytest.approx(diff.mean())
    table = cv.table()
    assert "3-fold cross-validation by image" in table and "mean ± sd" in table
    for system in SYSTEMS:
        assert any(line.startswith(system) for line in table.splitlines())
    assert f"({paired['wins']}/3)" in table
    json.dumps(cv.to_dict())  # JSON-able as written by --out


def test_format_metrics_table():
    table = format_metrics_table({"a": {"CIDEr": (0.5, 0.25), "BLEU-4": (0.1, 0.0)}, "bb": {"CIDEr": (1.0, None)}})
    lines = table.splitlines()
    assert lines[0].split() == ["system", "BLEU-4", "CIDEr"]  # metrics in TABLE_METRICS order
    assert lines[2].split() == ["a", "0.100", "±", "0.000", "0.500", "±", "0.250"]
    assert lines[3].split() == ["bb", "-", "1.000"]


def test_captions_without_features_one_clear_error(coco_dir, demo, tmp_path, capsys):
    result, _ = demo
    data = json.loads((coco_dir / "captions.json").read_text())
    for extra_id in (901, 902):
        data["images"].append({"id": extra_id, "file_name": f"{extra_id:012d}.jpg"})
        data["annotations"].append({"id": extra_id, "image_id": extra_id, "caption": "a grey picture"})
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(data))
    with pytest.raises(MissingFeaturesError, match=r"2 of 17 requested image ids have no features.*901, 902"):
        cross_validate(load_coco_captions(captions), FeatureStore.load(result.features), 3, TINY)
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
    from minicap.encoders.onnx_build import sha256_file

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

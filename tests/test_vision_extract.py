"""minicap.vision.extract: the ONNX encoder file contract, decoding awkward and broken images, and resumable
extraction into a FeatureStore (after a crash, after a kill -9), plus the `minicap extract` command.

Almost everything runs a tiny encoder built here with onnx.helper (3x3 conv, ReLU, global average pool, 32x32
input) that follows the same file contract as minicap.vision.encoders' real graphs, so the tests take seconds. The
real EfficientNet-Lite0 graph is checked once against the shared reference outputs (skipped when absent).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import minicap.vision.extract as extract_mod
from minicap.vision.encoders.spec import EncoderSpec, load_rgb
from minicap.vision.extract import (
    DecodedBatch,
    OnnxEncoder,
    decode_batches,
    extract_features,
    load_image_tensor,
)
from minicap.vision.store import FeatureStore, FeatureStoreError

REPO_ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------ the tiny encoder


def make_tiny_encoder(path: Path, size: int = 32, channels: int = 8, seed: int = 0) -> EncoderSpec:
    """Write an encoder ONNX file with minicap's contract: `image` (N,3,S,S) -> `features` (N,C),
    `logits` (N,1000), `spatial` (N,S/4,S/4,C) NHWC, plus the minicap.* metadata. Returns its EncoderSpec."""
    h = size // 4
    spec = EncoderSpec(
        arch="tiny_test",
        input_size=size,
        resize_shorter=size + 4,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        feature_size=channels,
        spatial_shape=(h, h, channels),
    )
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(channels)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.standard_normal((1000, channels)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["image", "conv_w", "conv_b"],
            ["conv"],
            kernel_shape=[3, 3],
            strides=[4, 4],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("Transpose", ["act"], ["spatial"], perm=[0, 2, 3, 1]),
        helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc_w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000]),
            helper.make_tensor_value_info("spatial", TensorProto.FLOAT, ["N", h, h, channels]),
        ],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(
        model,
        {
            "minicap.arch": spec.arch,
            "minicap.encoder_spec": spec.to_json(),
            "minicap.weights_sha256": "0" * 64,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return spec


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny.onnx"
    make_tiny_encoder(path)
    return path


# ----------------------------------------------------------------------------------- images for extraction


def _exif_rotated_jpeg(path: Path) -> None:
    """A 96x48 JPEG whose EXIF orientation 6 says "rotate 90 degrees clockwise to display"."""
    x = np.zeros((48, 96, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]  # red ramp left -> right
    x[:20, :30, 1] = 255  # a green block in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(x).save(path, quality=95, exif=exif)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, request):
    """Real COCO photos plus every kind of awkward or broken file: (dir, {id: path}, {bad id: reason}).

    Without the shared data, six synthetic 640x480 JPEGs stand in for the photos, so that the extraction,
    resume and kill tests still run."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths: dict[int, Path] = {}
    try:
        real = sorted((request.getfixturevalue("shared_coco") / "images").glob("*.jpg"))[:6]
        for src in real:
            shutil.copy(src, d / src.name)
    except pytest.skip.Exception:
        real = [d / f"{i:012d}.jpg" for i in range(1, 7)]
        for path in real:
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
    for src in real:
        paths[int(src.stem)] = d / src.name
    noise = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))

    def add(image_id: int, name: str) -> Path:
        paths[image_id] = d / name
        return d / name

    noise.convert("CMYK").save(add(900001, "cmyk.jpg"))
    rgba = noise.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (60, 80), dtype=np.uint8)))
    rgba.save(add(900002, "rgba.png"))
    noise.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(add(900003, "palette.png"))
    noise.convert("L").save(add(900004, "gray.jpg"))
    _exif_rotated_jpeg(add(900005, "exif6.jpg"))
    # The same JPEG pixels without EXIF: as stored, and rotated by hand (lossless PNGs).
    with Image.open(d / "exif6.jpg") as raw:
        raw_rgb = raw.convert("RGB")
    raw_rgb.save(add(900006, "exif6_as_stored.png"))
    raw_rgb.transpose(Image.Transpose.ROTATE_270).save(add(900007, "exif6_rotated_by_hand.png"))
    data = real[0].read_bytes()
    add(910001, "truncated.jpg").write_bytes(data[: len(data) // 3])
    add(910002, "text.jpg").write_text("this is not a JPEG\n")
    add(910003, "empty.jpg").write_bytes(b"")
    add(910004, "missing.jpg")  # never created
    bad = {910001: "truncated", 910002: "not an image", 910003: "empty file", 910004: "file not found"}
    return d, paths, bad


@pytest.fixture(scope="module")
def full_run(image_dir, tiny_encoder, tmp_path_factory) -> FeatureStore:
    """One uninterrupted extraction over image_dir, the reference the other runs are compared with."""
    _, paths, _ = image_dir
    out = tmp_path_factory.mktemp("full") / "features.pkl"
    return extract_features(paths, tiny_encoder, out, batch_size=4, workers=2, spatial=True, progress=False)


# ------------------------------------------------------------------------------------------------ extraction


def test_extraction_keeps_good_images_and_lists_bad_ones(image_dir, full_run, tiny_encoder):
    _, paths, bad = image_dir
    good = sorted(set(paths) - set(bad))
    assert full_run.ids.tolist() == good  # saved sorted by id
    skipped = {s["id"]: s for s in full_run.manifest["skipped"]}
    assert sorted(skipped) == sorted(bad)
    for image_id, words in bad.items():
        assert words in skipped[image_id]["reason"], skipped[image_id]
        assert skipped[image_id]["path"] == str(paths[image_id])
    assert full_run.manifest["extraction"] == {
        **full_run.manifest["extraction"],
        "requested": len(paths),
        "reused": 0,
        "extracted": len(good),
        "skipped": len(bad),
    }
    # The features equal running the encoder by hand on the same preprocessed images.
    encoder = OnnxEncoder(tiny_encoder)
    x = np.stack([load_image_tensor(paths[i], encoder.spec) for i in good])
    expected, expected_maps = encoder.run(x, spatial=True)
    np.testing.assert_allclose(full_run.features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full_run.spatial.astype(np.float32), expected_maps, rtol=1e-3, atol=1e-3)
    assert full_run.spatial.dtype == np.float16 and full_run.spatial_shape == (8, 8, 8)


def test_manifest_records_encoder_and_preprocessing(full_run, tiny_encoder):
    import hashlib

    m = full_run.manifest
    assert m["architecture"] == "tiny_test"
    assert m["onnx_sha256"] == hashlib.sha256(tiny_encoder.read_bytes()).hexdigest()
    assert m["weights_sha256"] == "0" * 64
    props = {p.key: p.value for p in onnx.load(str(tiny_encoder)).metadata_props}
    assert full_run.spec == EncoderSpec.from_json(props["minicap.encoder_spec"])
    assert m["encoder_spec"]["input_size"] == 32
    assert m["minicap_version"] and m["created_utc"].endswith("+00:00")


def test_odd_modes_are_converted_and_exif_orientation_honoured(image_dir, full_run):
    _, paths, _ = image_dir
    for image_id, mode in ((900001, "CMYK"), (900002, "RGBA"), (900003, "P"), (900004, "L")):
        with Image.open(paths[image_id]) as img:
            assert img.mode == mode  # the file really is in that mode
        assert image_id in full_run and np.isfinite(full_run.lookup([image_id])).all()
    assert load_rgb(paths[900005]).size == (48, 96)  # displayed upright: the 96x48 file turned on its side
    exif, by_hand, as_stored = full_run.lookup([900005, 900007, 900006])
    np.testing.assert_allclose(exif, by_hand, rtol=1e-5, atol=1e-6)
    assert np.abs(exif - as_stored).max() > 1e-2  # and the rotation changed what the encoder saw


def test_rerun_reuses_everything(image_dir, full_run, tiny_encoder, tmp_path, monkeypatch):
    _, paths, bad = image_dir
    out = tmp_path / "f.pkl"
    full_run.save(out)
    decoded = _count_decodes(monkeypatch)
    again = extract_features(paths, tiny_encoder, out, batch_size=4, spatial=True, progress=False)
    assert sorted(decoded) == sorted(str(paths[i]) for i in bad)  # only the failures are retried
    assert again.manifest["extraction"]["reused"] == len(paths) - len(bad)
    np.testing.assert_array_equal(again.features, full_run.features)


def _count_decodes(monkeypatch) -> list[str]:
    decoded: list[str] = []
    real = extract_mod.load_image_tensor

    def counting(path, spec):
        decoded.append(str(path))
        return real(path, spec)

    monkeypatch.setattr(extract_mod, "load_image_tensor", counting)
    return decoded


def test_resume_after_a_crash_computes_only_missing_ids(image_dir, full_run, tiny_encoder, tmp_path, monkeypatch):
    _, paths, bad = image_dir
    out = tmp_path / "features.pkl"
    real_run = OnnxEncoder.run
    calls = {"n": 0}

    def crash_on_third_batch(self, images, spatial=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_run(self, images, spatial)

    monkeypatch.setattr(OnnxEncoder, "run", crash_on_third_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(paths, tiny_encoder, out, batch_size=4, save_every=4, spatial=True, progress=False)
    monkeypatch.setattr(OnnxEncoder, "run", real_run)
    assert not out.exists()
    parts = sorted((tmp_path / "features.pkl.parts").glob("part-*.pkl"))
    assert len(parts) == 2  # one chunk per batch before the crash
    saved = np.concatenate([FeatureStore.load(p).ids for p in parts])

    decoded = _count_decodes(monkeypatch)
    resumed = extract_features(paths, tiny_encoder, out, batch_size=4, save_every=4, spatial=True, progress=False)
    assert sorted(decoded) == sorted(str(paths[i]) for i in paths if i not in saved)
    assert resumed.manifest["extraction"]["reused"] == len(saved)
    _assert_same_store(resumed, full_run)
    _assert_same_store(FeatureStore.load(out), full_run)
    assert not (tmp_path / "features.pkl.parts").exists()  # chunks folded into the final file


def _assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.spatial.astype(np.float32), b.spatial.astype(np.float32), rtol=1e-3, atol=1e-3)
    assert a.manifest["skipped"] == b.manifest["skipped"]


_KILLABLE_RUN = """
import sys, time
from pathlib import Path
import minicap.vision.extract as fm

paths = {int(k): v for k, v in __import__("json").loads(Path(sys.argv[1]).read_text()).items()}
marker = Path(sys.argv[4])
real_save = fm.FeatureStore.save

def save_then_hang(self, path):
    real_save(self, path)
    if ".parts" in str(path):  # the first partial save is on disk: signal the test and wait to be killed
        marker.touch()
        time.sleep(120)

fm.FeatureStore.save = save_then_hang
fm.extract_features(paths, sys.argv[2], sys.argv[3], batch_size=4, save_every=8, spatial=True, progress=False)
"""


def test_killed_run_resumes_to_the_same_features(image_dir, full_run, tiny_encoder, tmp_path, monkeypatch):
    _, paths, _ = image_dir
    out, marker = tmp_path / "features.pkl", tmp_path / "first-chunk-saved"
    (tmp_path / "paths.json").write_text(json.dumps({str(k): str(v) for k, v in paths.items()}))
    (tmp_path / "run.py").write_text(textwrap.dedent(_KILLABLE_RUN))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [
        sys.executable,
        str(tmp_path / "run.py"),
        str(tmp_path / "paths.json"),
        str(tiny_encoder),
        str(out),
    ]
    proc = subprocess.Popen([*args, str(marker)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the extraction subprocess never saved a chunk"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    parts = list((tmp_path / "features.pkl.parts").glob("part-*.pkl"))
    assert len(parts) == 1
    saved = FeatureStore.load(parts[0]).ids
    assert len(saved) == 8

    decoded = _count_decodes(monkeypatch)
    resumed = extract_features(paths, tiny_encoder, out, batch_size=4, save_every=8, spatial=True, progress=False)
    assert len(decoded) == len(paths) - 8
    assert not set(decoded) & {str(paths[i]) for i in saved.tolist()}
    _assert_same_store(resumed, full_run)


def test_refuses_to_mix_encoders_or_spatial_settings(image_dir, full_run, tmp_path):
    _, paths, _ = image_dir
    out = tmp_path / "f.pkl"
    full_run.save(out)
    before = out.read_bytes()
    other = tmp_path / "other.onnx"
    make_tiny_encoder(other, seed=1)
    with pytest.raises(FeatureStoreError, match="another encoder"):
        extract_features(paths, other, out, spatial=True, progress=False)
    assert out.read_bytes() == before
    with pytest.raises(FeatureStoreError, match="with spatial maps but this run asks spatial=False"):
        extract_features(paths, full_run_encoder(tmp_path, full_run), out, spatial=False, progress=False)


def full_run_encoder(tmp_path: Path, store: FeatureStore) -> Path:
    """Rebuild the tiny encoder (deterministic from its seed): the very file `store` came from."""
    path = tmp_path / "again.onnx"
    make_tiny_encoder(path)
    assert OnnxEncoder(path).sha256 == store.manifest["onnx_sha256"]
    return path


@pytest.mark.parametrize(("workers", "pool"), [(0, "thread"), (1, "process")])
def test_same_features_without_overlap_or_with_processes(image_dir, full_run, tiny_encoder, tmp_path, workers, pool):
    _, paths, _ = image_dir
    store = extract_features(
        paths,
        tiny_encoder,
        tmp_path / "f.pkl",
        batch_size=5,
        workers=workers,
        pool=pool,
        spatial=True,
        progress=False,
    )
    _assert_same_store(store, full_run)


def test_extraction_without_spatial_and_input_errors(image_dir, tiny_encoder, tmp_path):
    _, paths, bad = image_dir
    pairs = [(i, p) for i, p in paths.items() if i not in bad][:3]
    store = extract_features(pairs, tiny_encoder, tmp_path / "f.pkl", progress=False)
    assert store.spatial is None and len(store) == 3
    with pytest.raises(ValueError, match="listed twice"):
        extract_features(pairs + pairs[:1], tiny_encoder, tmp_path / "g.pkl", progress=False)
    with pytest.raises(TypeError, match="image ids must be integers"):
        extract_features({"139": pairs[0][1]}, tiny_encoder, tmp_path / "g.pkl", progress=False)
    with pytest.raises(FileNotFoundError, match="encoder .*nope.onnx does not exist"):
        extract_features(pairs, tmp_path / "nope.onnx", tmp_path / "g.pkl", progress=False)
    (tmp_path / "junk.onnx").write_text("not onnx")
    with pytest.raises(FeatureStoreError, match="not a loadable ONNX model"):
        extract_features(pairs, tmp_path / "junk.onnx", tmp_path / "g.pkl", progress=False)


def test_all_images_bad_gives_an_empty_store(image_dir, tiny_encoder, tmp_path):
    _, paths, bad = image_dir
    store = extract_features({i: paths[i] for i in bad}, tiny_encoder, tmp_path / "f.pkl", progress=False)
    assert len(store) == 0 and store.features.shape == (0, 8)
    assert len(FeatureStore.load(tmp_path / "f.pkl").skipped) == len(bad)


# --------------------------------------------------------------------------------------- the encoder contract


def _variant(src: Path, dst: Path, *, drop_metadata: bool = False, drop_spatial: bool = False, input_name="image"):
    """A copy of the tiny encoder that breaks (or just lacks part of) the file contract."""
    model = onnx.load(str(src))
    if drop_metadata:
        del model.metadata_props[:]
    if drop_spatial:
        keep = [o for o in model.graph.output if o.name != "spatial"]
        del model.graph.output[:]
        model.graph.output.extend(keep)
        nodes = [n for n in model.graph.node if n.op_type != "Transpose"]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    if input_name != "image":
        model.graph.input[0].name = input_name
        for node in model.graph.node:
            node.input[:] = [input_name if x == "image" else x for x in node.input]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def test_onnx_encoder_reads_its_spec_and_runs(tiny_encoder):
    encoder = OnnxEncoder(tiny_encoder)
    assert encoder.arch == "tiny_test" and encoder.weights_sha256 == "0" * 64 and encoder.has_spatial
    assert encoder.spec.input_size == 32 and encoder.spec.feature_size == 8
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    feats, maps = encoder.run(x)
    assert feats.shape == (3, 8) and feats.dtype == np.float32 and maps is None
    feats2, maps = encoder.run(x, spatial=True)
    np.testing.assert_array_equal(feats, feats2)
    assert maps.shape == (3, 8, 8, 8)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), feats, rtol=1e-5, atol=1e-6)  # features = pooled map
    m = encoder.manifest()
    assert m["architecture"] == "tiny_test" and m["onnx_file"] == "tiny.onnx" and m["onnx_sha256"] == encoder.sha256
    assert m["encoder_spec"] == json.loads(encoder.spec.to_json())


def test_onnx_encoder_refuses_files_outside_the_contract(tiny_encoder, image_dir, tmp_path):
    no_meta = _variant(tiny_encoder, tmp_path / "no_meta.onnx", drop_metadata=True)
    with pytest.raises(FeatureStoreError, match="no 'minicap.encoder_spec' metadata"):
        OnnxEncoder(no_meta)
    renamed = _variant(tiny_encoder, tmp_path / "renamed.onnx", input_name="pixels")
    with pytest.raises(FeatureStoreError, match=r"does not follow the encoder contract: inputs \['pixels'\]"):
        OnnxEncoder(renamed)
    flat = _variant(tiny_encoder, tmp_path / "flat.onnx", drop_spatial=True)
    encoder = OnnxEncoder(flat)
    assert not encoder.has_spatial
    with pytest.raises(FeatureStoreError, match="no 'spatial' output"):
        encoder.run(np.zeros((1, 3, 32, 32), np.float32), spatial=True)
    _, paths, _ = image_dir
    with pytest.raises(FeatureStoreError, match="no 'spatial' output"):
        extract_features(paths, flat, tmp_path / "f.pkl", spatial=True, progress=False)
    assert not (tmp_path / "f.pkl").exists()


# ------------------------------------------------------------------------------------------------- decoding


def test_decode_batches_keeps_order_and_records_failures(image_dir, tiny_encoder):
    _, paths, bad = image_dir
    spec = OnnxEncoder(tiny_encoder).spec
    items = sorted(paths.items())
    serial = list(decode_batches(items, spec, batch_size=4, workers=0))
    assert all(isinstance(b, DecodedBatch) for b in serial)
    assert len(serial) == -(-len(items) // 4)
    decoded = np.concatenate([b.ids for b in serial]).tolist()
    assert decoded == [i for i, _ in items if i not in bad]  # in the order given, failures left out
    assert sorted(f["id"] for b in serial for f in b.failures) == sorted(bad)
    for b in serial:
        assert b.images.dtype == np.float32 and b.images.shape == (len(b.ids), 3, 32, 32)
        assert len(b.ids) + len(b.failures) <= 4
    first = dict(items)[decoded[0]]
    np.testing.assert_array_equal(serial[0].images[0], load_image_tensor(first, spec))
    threaded = list(decode_batches(items, spec, batch_size=4, workers=2))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.failures == b.failures
    only_bad = list(decode_batches([(i, paths[i]) for i in bad], spec, batch_size=10, workers=0))
    assert only_bad[0].images.shape == (0, 3, 32, 32) and len(only_bad[0].failures) == len(bad)
    with pytest.raises(ValueError, match="pool must be"):
        list(decode_batches(items, spec, workers=1, pool="fibre"))


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_extract(image_dir, tiny_encoder, tmp_path, capsys):
    from minicap.cli import main

    d, paths, bad = image_dir
    records = [{"id": i, "file_name": p.name} for i, p in paths.items()]
    (tmp_path / "c.json").write_text(json.dumps({"images": records, "annotations": []}))
    found = len(paths) - 1  # missing.jpg is not in the folder
    bad_found = len(bad) - 1  # truncated, text and empty files are found, then skipped
    skipped = bad_found + 1  # ... and missing.jpg is named as skipped too ("file not found")
    out = tmp_path / "f.pkl"

    def extract(captions: Path, out: Path, encoder: Path = tiny_encoder, *more: str) -> int:
        argv = ["extract", "--images", str(d), "--captions", str(captions), "--encoder", str(encoder)]
        return main([*argv, "--out", str(out), "--no-progress", *more])

    assert extract(tmp_path / "c.json", out, tiny_encoder, "--batch-size", "4", "--workers", "1") == 0
    text = capsys.readouterr().out
    assert f"{len(paths)} listed in {tmp_path / 'c.json'}, {found} found in {d}, 1 missing (listed below)" in text
    assert f"extracted {found - bad_found}, reused 0, skipped {skipped}" in text
    assert "truncated.jpg: OSError: image file is truncated" in text and "empty file (0 bytes)" in text
    assert "missing.jpg: file not found" in text
    assert len(FeatureStore.load(out)) == found - bad_found

    assert extract(tmp_path / "c.json", out) == 0  # a re-run reuses everything
    assert f"extracted 0, reused {found - bad_found}, skipped {skipped}" in capsys.readouterr().out

    bad_records = [r for r in records if r["id"] in bad]
    (tmp_path / "bad.json").write_text(json.dumps({"images": bad_records, "annotations": []}))
    assert extract(tmp_path / "bad.json", tmp_path / "g.pkl") == 1
    assert "no image could be extracted" in capsys.readouterr().err
    assert extract(tmp_path / "c.json", tmp_path / "h.pkl", tmp_path / "nope.onnx") == 2
    assert "nope.onnx does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("captions", "message"),
    [
        (
            {"images": [{"id": 139, "file_name": "a.jpg"}, {"id": 139, "file_name": "b.jpg"}], "annotations": []},
            "image id 139 is listed twice in 'images'",
        ),
        ([{"image_id": 139, "caption": "a dog"}], "the top level is a list, not an object with 'images'"),
    ],
    ids=["duplicate image id", "top-level list"],
)
def test_cli_extract_refuses_what_the_captions_loader_refuses(tiny_encoder, tmp_path, captions, message):
    """`minicap extract` reads the captions JSON with the one loader, so it refuses what training would refuse."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "000000000139.jpg"):
        Image.new("RGB", (40, 40), (200, 30, 30)).save(images / name)
    (tmp_path / "c.json").write_text(json.dumps(captions))
    out = tmp_path / "f.pkl"
    argv = ["extract", "--images", str(images), "--captions", str(tmp_path / "c.json"), "--encoder", str(tiny_encoder)]
    run = subprocess.run(
        [sys.executable, "-m", "minicap", *argv, "--out", str(out), "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"error: {tmp_path / 'c.json'}: {message}")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr  # one clear line
    assert run.stdout == ""  # refused before listing or extracting anything
    assert not out.exists() and not (tmp_path / "f.pkl.parts").exists()


def test_cli_extract_bad_input_exits_2(tiny_encoder, tmp_path, capsys):
    from minicap.cli import main

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "images" / "000000000139.jpg")
    good = {"images": [{"id": 139, "file_name": "000000000139.jpg"}], "annotations": []}
    (tmp_path / "c.json").write_text(json.dumps(good))
    (tmp_path / "instances.json").write_text(
        json.dumps(good | {"annotations": [{"image_id": 139, "bbox": [0, 0, 1, 1]}]})
    )

    def extract(captions: Path, images: Path) -> int:
        argv = ["extract", "--images", str(images), "--captions", str(captions), "--encoder", str(tiny_encoder)]
        return main([*argv, "--out", str(tmp_path / "f.pkl"), "--no-progress"])

    assert extract(tmp_path / "nope.json", tmp_path / "images") == 2
    assert "nope.json" in capsys.readouterr().err
    assert extract(tmp_path / "instances.json", tmp_path / "images") == 2
    assert "looks like an instances/keypoints file" in capsys.readouterr().err
    assert extract(tmp_path / "c.json", tmp_path / "no-images") == 2
    assert f"image directory {tmp_path / 'no-images'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "f.pkl").exists()


# ---------------------------------------------------------------------------------- the real encoder graph


@pytest.fixture(scope="session")
def lite0_encoder(tmp_path_factory) -> Path:
    """The real EfficientNet-Lite0 graph (with spatial maps), built once from the installed weights."""
    import minicap.vision.encoders as encoders

    if not hasattr(encoders, "build_encoder"):
        pytest.skip("minicap.vision.encoders.build_encoder is not available")
    try:
        weights = encoders.default_weights_path("efficientnet_lite0")
    except ValueError as e:  # the weights package is not installed
        pytest.skip(str(e))
    path = tmp_path_factory.mktemp("lite0") / "efficientnet_lite0.onnx"
    encoders.save_encoder(encoders.build_encoder("efficientnet_lite0", weights, spatial=True), path)
    return path


def test_real_encoder_matches_reference_features(lite0_encoder, shared_coco, shared_reference, tmp_path):
    ref = np.load(shared_reference / "efficientnet_lite0_reference.npz")
    ids = ref["image_ids"].astype(np.int64)
    paths = {int(i): shared_coco / "images" / f"{int(i):012d}.jpg" for i in ids}
    store = extract_features(paths, lite0_encoder, tmp_path / "f.pkl", batch_size=4, spatial=True, progress=False)
    assert store.feature_size == 1280 and store.spatial_shape == (7, 7, 1280)
    assert store.manifest["architecture"] == "efficientnet_lite0" and not store.skipped
    np.testing.assert_allclose(store.lookup(ids), ref["image_pool"], rtol=1e-3, atol=1e-3)
    # The pooled features are the mean of the spatial map (float16 storage: a looser tolerance).
    pooled = store.lookup_spatial(ids).astype(np.float32).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, ref["image_pool"], rtol=1e-2, atol=1e-2)

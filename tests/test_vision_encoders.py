"""Tests for the ONNX encoders: EfficientNet-Lite0 against the shared PyTorch reference outputs, Inception v3
against an independent NumPy forward pass of torchvision's architecture (random weights), the file contract
(names, shapes, metadata), weight-mismatch errors and the `minicap encoder build` command."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from minicap.cli import main
from minicap.vision.encoders import (
    INCEPTION_V3_WEIGHTS_NAME,
    WeightsMismatchError,
    build_encoder,
    build_encoder_from_state_dict,
    default_weights_path,
    get_spec,
    load_rgb,
    load_state_dict,
    preprocess,
    read_encoder_metadata,
    save_encoder,
)
from minicap.vision.encoders.onnx_ops import fold_batchnorm


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Norm-relative error ||a - b|| / ||b||."""
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": x}), strict=True))


# ============================================================================================================
# EfficientNet-Lite0: the real weights against the reference outputs in ../shared/reference


@pytest.fixture(scope="session")
def lite0():
    """(model, session) for EfficientNet-Lite0 with the spatial output, built once for the whole run."""
    model = build_encoder("efficientnet_lite0", spatial=True)
    return model, session(model)


@pytest.fixture(scope="session")
def reference(shared_reference):
    return dict(np.load(shared_reference / "efficientnet_lite0_reference.npz"))


def test_lite0_reproduces_reference_on_random_input(lite0, reference):
    out = run(lite0[1], reference["random_input"])
    assert out["features"].shape == (2, 1280) and out["logits"].shape == (2, 1000)
    assert rel_err(out["features"], reference["random_pool"]) <= 1e-5
    assert rel_err(out["logits"], reference["random_logits"]) <= 1e-5


def test_lite0_reproduces_reference_top5_on_coco_images(lite0, reference):
    out = run(lite0[1], reference["image_input"])
    top5 = np.argsort(-out["logits"], axis=1)[:, :5]
    np.testing.assert_array_equal(top5, reference["image_top5"])
    assert rel_err(out["features"], reference["image_pool"]) <= 1e-5
    assert rel_err(out["logits"], reference["image_logits"]) <= 1e-5


def test_lite0_preprocessing_of_the_reference_images(reference, shared_coco):
    spec = get_spec("efficientnet_lite0")
    images = [shared_coco / "images" / f"{int(i):012d}.jpg" for i in reference["image_ids"]]
    x = np.stack([preprocess(load_rgb(p), spec) for p in images])
    assert x.shape == reference["image_input"].shape and x.dtype == np.float32
    assert rel_err(x, reference["image_input"]) <= 1e-5


def test_lite0_spatial_output_pools_to_features(lite0, rng):
    x = rng.standard_normal((3, 3, 224, 224)).astype(np.float32)  # batch 3: the batch dim is dynamic
    out = run(lite0[1], x)
    assert out["spatial"].shape == (3, 7, 7, 1280)
    np.testing.assert_allclose(out["spatial"].mean(axis=(1, 2)), out["features"], rtol=1e-5, atol=1e-6)


def test_lite0_graph_contract(lite0):
    model, _ = lite0
    onnx.checker.check_model(model)
    graph = model.graph
    assert [i.name for i in graph.input] == ["image"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in graph.output] == ["features", "logits", "spatial"]
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops  # folded into the convolutions
    assert ops.count("Conv") == 1 + 16 * 2 + 15 + 1  # stem, depthwise + project per block, 15 expands, head
    assert ops.count("Add") == 9  # identity skips: blocks with stride 1 and in == out
    assert all(init.data_type == onnx.TensorProto.FLOAT for init in graph.initializer)
    assert model.opset_import[0].version >= 13


def test_lite0_metadata_and_saved_file(lite0, tmp_path):
    model, sess = lite0
    weights = default_weights_path("efficientnet_lite0")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sha.startswith("57934424")  # torch hub names weight files after their hash's first 8 digits
    props = {p.key: p.value for p in model.metadata_props}
    assert props["minicap.arch"] == "efficientnet_lite0"
    assert props["minicap.encoder_spec"] == get_spec("efficientnet_lite0").to_json()
    assert props["minicap.weights_sha256"] == sha

    path = tmp_path / "enc" / "lite0.onnx"
    save_encoder(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["lite0.onnx"]  # no temporary file left behind
    meta = read_encoder_metadata(path)
    assert meta["arch"] == "efficientnet_lite0" and meta["spec"] == get_spec("efficientnet_lite0")
    assert meta["weights_sha256"] == sha and meta["outputs"] == ["features", "logits", "spatial"]
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    from_file = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})
    np.testing.assert_array_equal(from_file[0], sess.run(["logits"], {"image": x})[0])


def test_read_encoder_metadata_rejects_foreign_files(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xff")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        read_encoder_metadata(tmp_path / "junk.onnx")
    node = onnx.helper.make_node("Relu", ["image"], ["features"])
    t = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "g", [t("image", onnx.TensorProto.FLOAT, [1])], [t("features", onnx.TensorProto.FLOAT, [1])]
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="not a minicap encoder.*minicap.arch"):
        read_encoder_metadata(tmp_path / "plain.onnx")


def test_lite0_weight_mismatches_are_all_listed():
    state = load_state_dict(default_weights_path("efficientnet_lite0"))
    del state["_blocks.3._bn1.running_var"]
    state["_blocks.16._project_conv.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    state["_fc.bias"] = np.zeros(10, np.float32)
    with pytest.raises(WeightsMismatchError) as info:
        build_encoder_from_state_dict("efficientnet_lite0", state, weights_sha256="0" * 64)
    msg = str(info.value)
    assert "EfficientNet-Lite0" in msg
    assert "1 missing keys: _blocks.3._bn1.running_var (144,)" in msg  # block 3: 24 channels x 6 = 144
    assert "1 unexpected keys: _blocks.16._project_conv.weight" in msg
    assert "_fc.bias: expected (1000,), got (10,)" in msg


def test_fold_batchnorm_equals_conv_then_batchnorm(rng):
    """One conv + BatchNorm, computed the long way in NumPy, against the folded weights and bias."""
    x = rng.standard_normal((2, 4, 9, 9))
    w = rng.standard_normal((5, 4, 3, 3))
    gamma, beta = rng.uniform(0.5, 1.5, 5), rng.uniform(-1, 1, 5)
    mean, var = rng.uniform(-1, 1, 5), rng.uniform(0.1, 2, 5)
    z = np_conv2d(x, w, 1, (1, 1))
    c = (slice(None), None, None)  # per-channel parameters broadcast over (N, C, H, W)
    expected = (z - mean[c]) / np.sqrt(var[c] + 1e-3) * gamma[c] + beta[c]
    w2, b2 = fold_batchnorm(w, gamma, beta, mean, var, 1e-3)
    assert w2.dtype == b2.dtype == np.float32
    got = np_conv2d(x, w2.astype(np.float64), 1, (1, 1)) + b2.astype(np.float64)[c]
    assert rel_err(got, expected) < 1e-6  # float32 rounding of the folded weights only


# ============================================================================================================
# Inception v3: random weights in torchvision's layout, checked against an independent NumPy forward pass.


def torchvision_inception_v3_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's `inception_v3(aux_logits=True).state_dict()`, following the layer
    sizes in its constructor (580 entries with torchvision 0.29, checked once outside this test suite)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def basic(name: str, c_in: int, c_out: int, kh: int, kw: int | None = None) -> None:
        shapes[f"{name}.conv.weight"] = (c_out, c_in, kh, kh if kw is None else kw)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{p}"] = (c_out,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()

    basic("Conv2d_1a_3x3", 3, 32, 3)
    basic("Conv2d_2a_3x3", 32, 32, 3)
    basic("Conv2d_2b_3x3", 32, 64, 3)
    basic("Conv2d_3b_1x1", 64, 80, 1)
    basic("Conv2d_4a_3x3", 80, 192, 3)
    for m, c_in, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        basic(f"{m}.branch1x1", c_in, 64, 1)
        basic(f"{m}.branch5x5_1", c_in, 48, 1)
        basic(f"{m}.branch5x5_2", 48, 64, 5)
        basic(f"{m}.branch3x3dbl_1", c_in, 64, 1)
        basic(f"{m}.branch3x3dbl_2", 64, 96, 3)
        basic(f"{m}.branch3x3dbl_3", 96, 96, 3)
        basic(f"{m}.branch_pool", c_in, pool, 1)
    basic("Mixed_6a.branch3x3", 288, 384, 3)
    basic("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    basic("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
    basic("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    for m, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        basic(f"{m}.branch1x1", 768, 192, 1)
        basic(f"{m}.branch7x7_1", 768, c7, 1)
        basic(f"{m}.branch7x7_2", c7, c7, 1, 7)
        basic(f"{m}.branch7x7_3", c7, 192, 7, 1)
        basic(f"{m}.branch7x7dbl_1", 768, c7, 1)
        basic(f"{m}.branch7x7dbl_2", c7, c7, 7, 1)
        basic(f"{m}.branch7x7dbl_3", c7, c7, 1, 7)
        basic(f"{m}.branch7x7dbl_4", c7, c7, 7, 1)
        basic(f"{m}.branch7x7dbl_5", c7, 192, 1, 7)
        basic(f"{m}.branch_pool", 768, 192, 1)
    basic("AuxLogits.conv0", 768, 128, 1)
    basic("AuxLogits.conv1", 128, 768, 5)
    shapes["AuxLogits.fc.weight"], shapes["AuxLogits.fc.bias"] = (1000, 768), (1000,)
    basic("Mixed_7a.branch3x3_1", 768, 192, 1)
    basic("Mixed_7a.branch3x3_2", 192, 320, 3)
    basic("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    basic("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    basic("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    basic("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    for m, c_in in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        basic(f"{m}.branch1x1", c_in, 320, 1)
        basic(f"{m}.branch3x3_1", c_in, 384, 1)
        basic(f"{m}.branch3x3_2a", 384, 384, 1, 3)
        basic(f"{m}.branch3x3_2b", 384, 384, 3, 1)
        basic(f"{m}.branch3x3dbl_1", c_in, 448, 1)
        basic(f"{m}.branch3x3dbl_2", 448, 384, 3)
        basic(f"{m}.branch3x3dbl_3a", 384, 384, 1, 3)
        basic(f"{m}.branch3x3dbl_3b", 384, 384, 3, 1)
        basic(f"{m}.branch_pool", c_in, 192, 1)
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def random_inception_state(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights scaled so activations stay O(1): He-initialised convs (std sqrt(2 / fan_in)) and
    BatchNorm statistics near the identity but not equal to it, so that the folding is really exercised."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in torchvision_inception_v3_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(1000, dtype=np.int64)
        elif key.endswith("conv.weight") or key.endswith("fc.weight"):
            fan_in = int(np.prod(shape[1:]))
            gain = 2.0 if key.endswith("conv.weight") else 1.0
            state[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(gain / fan_in))
        elif key.endswith("bn.weight"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:  # bn.bias, running_mean, fc.bias
            state[key] = rng.uniform(-0.2, 0.2, shape).astype(np.float32)
    return state


# ---- an independent NumPy Inception v3 (torchvision's forward, unfolded BatchNorm) --------------------------


def np_conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: tuple[int, int]) -> np.ndarray:
    """Cross-correlation (N, C, H, W) * (O, C, kh, kw) -> (N, O, H', W'), zero padding (ph, pw)."""
    ph, pw = padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]  # (N, C, H', W', kh, kw)
    return np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def np_max_pool(x: np.ndarray) -> np.ndarray:
    """3x3, stride 2, no padding."""
    return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


def np_avg_pool_same(x: np.ndarray) -> np.ndarray:
    """3x3, stride 1, zero padding 1 counted in the average (count_include_pad=True)."""
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return sliding_window_view(x, (3, 3), axis=(2, 3)).mean(axis=(4, 5))


def np_inception_v3(sd: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    def conv(x, name, stride=1, padding=(0, 0)):  # BasicConv2d: conv, BatchNorm (eps 1e-3), ReLU
        z = np_conv2d(x, sd[f"{name}.conv.weight"], stride, padding)
        bn = {p: sd[f"{name}.bn.{p}"][:, None, None] for p in ("weight", "bias", "running_mean", "running_var")}
        z = (z - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
        return np.maximum(z, 0)

    cat = lambda xs: np.concatenate(xs, axis=1)  # noqa: E731
    x = conv(x, "Conv2d_1a_3x3", stride=2)
    x = conv(x, "Conv2d_2a_3x3")
    x = conv(x, "Conv2d_2b_3x3", padding=(1, 1))
    x = np_max_pool(x)
    x = conv(x, "Conv2d_3b_1x1")
    x = conv(x, "Conv2d_4a_3x3")
    x = np_max_pool(x)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        b5 = conv(conv(x, f"{m}.branch5x5_1"), f"{m}.branch5x5_2", padding=(2, 2))
        b3 = conv(conv(x, f"{m}.branch3x3dbl_1"), f"{m}.branch3x3dbl_2", padding=(1, 1))
        b3 = conv(b3, f"{m}.branch3x3dbl_3", padding=(1, 1))
        x = cat([conv(x, f"{m}.branch1x1"), b5, b3, conv(np_avg_pool_same(x), f"{m}.branch_pool")])
    m = "Mixed_6a"
    b3 = conv(conv(x, f"{m}.branch3x3dbl_1"), f"{m}.branch3x3dbl_2", padding=(1, 1))
    x = cat([conv(x, f"{m}.branch3x3", stride=2), conv(b3, f"{m}.branch3x3dbl_3", stride=2), np_max_pool(x)])
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        b7 = conv(conv(x, f"{m}.branch7x7_1"), f"{m}.branch7x7_2", padding=(0, 3))
        b7 = conv(b7, f"{m}.branch7x7_3", padding=(3, 0))
        bd = conv(x, f"{m}.branch7x7dbl_1")
        for i, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
            bd = conv(bd, f"{m}.branch7x7dbl_{i}", padding=pad)
        x = cat([conv(x, f"{m}.branch1x1"), b7, bd, conv(np_avg_pool_same(x), f"{m}.branch_pool")])
    m = "Mixed_7a"
    b3 = conv(conv(x, f"{m}.branch3x3_1"), f"{m}.branch3x3_2", stride=2)
    b7 = conv(conv(x, f"{m}.branch7x7x3_1"), f"{m}.branch7x7x3_2", padding=(0, 3))
    b7 = conv(conv(b7, f"{m}.branch7x7x3_3", padding=(3, 0)), f"{m}.branch7x7x3_4", stride=2)
    x = cat([b3, b7, np_max_pool(x)])
    for m in ("Mixed_7b", "Mixed_7c"):
        b3 = conv(x, f"{m}.branch3x3_1")
        b3 = cat([conv(b3, f"{m}.branch3x3_2a", padding=(0, 1)), conv(b3, f"{m}.branch3x3_2b", padding=(1, 0))])
        bd = conv(conv(x, f"{m}.branch3x3dbl_1"), f"{m}.branch3x3dbl_2", padding=(1, 1))
        bd = cat([conv(bd, f"{m}.branch3x3dbl_3a", padding=(0, 1)), conv(bd, f"{m}.branch3x3dbl_3b", padding=(1, 0))])
        x = cat([conv(x, f"{m}.branch1x1"), b3, bd, conv(np_avg_pool_same(x), f"{m}.branch_pool")])
    features = x.mean(axis=(2, 3))
    return {
        "features": features,
        "logits": features @ sd["fc.weight"].T + sd["fc.bias"],
        "spatial": x.transpose(0, 2, 3, 1),
    }


@pytest.fixture(scope="module")
def inception():
    """(state dict, model with spatial output, session) for random torchvision-layout weights."""
    state = random_inception_state()
    model = build_encoder_from_state_dict("inception_v3", state, weights_sha256="ab" * 32, spatial=True)
    return state, model, session(model)


def test_inception_state_dict_layout_has_torchvision_size():
    """torchvision documents 27,161,264 parameters for inception_v3 (its BatchNorm running statistics and
    counters are buffers, not parameters); our key table must add up to the same."""
    shapes = torchvision_inception_v3_shapes()
    assert len(shapes) == 580
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(buffers)) == 27_161_264


def test_inception_matches_numpy_reference(inception, rng):
    state, _, sess = inception
    x = rng.standard_normal((1, 3, 299, 299)).astype(np.float32)
    out = run(sess, x)
    assert out["features"].shape == (1, 2048) and out["logits"].shape == (1, 1000)
    assert out["spatial"].shape == (1, 8, 8, 2048)
    assert all(np.isfinite(v).all() for v in out.values())
    expected = np_inception_v3(state, x)
    assert 0.1 < np.abs(expected["features"]).mean() < 100  # the random weights keep activations O(1)
    for name in ("features", "logits", "spatial"):
        assert rel_err(out[name], expected[name]) < 1e-4, name


def test_inception_intermediate_shapes(inception):
    """Shape inference through the graph gives torchvision's documented sizes after every stage."""
    _, model, _ = inception
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    expected = {
        "Conv2d_1a_3x3": (32, 149, 149),
        "Conv2d_2a_3x3": (32, 147, 147),
        "Conv2d_2b_3x3": (64, 147, 147),
        "maxpool1": (64, 73, 73),
        "Conv2d_3b_1x1": (80, 73, 73),
        "Conv2d_4a_3x3": (192, 71, 71),
        "maxpool2": (192, 35, 35),
        "Mixed_5b": (256, 35, 35),
        "Mixed_5c": (288, 35, 35),
        "Mixed_5d": (288, 35, 35),
        "Mixed_6a": (768, 17, 17),
        "Mixed_6b": (768, 17, 17),
        "Mixed_6c": (768, 17, 17),
        "Mixed_6d": (768, 17, 17),
        "Mixed_6e": (768, 17, 17),
        "Mixed_7a": (1280, 8, 8),
        "Mixed_7b": (2048, 8, 8),
        "Mixed_7c": (2048, 8, 8),
        "features": (2048,),
        "logits": (1000,),
        "spatial": (8, 8, 2048),
    }
    for name, shape in expected.items():
        assert shapes[name] == ("N", *shape), name


def test_inception_graph_contract(inception):
    _, model, _ = inception
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == "image"
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 299, 299]
    props = {p.key: p.value for p in model.metadata_props}
    assert props == {
        "minicap.arch": "inception_v3",
        "minicap.encoder_spec": get_spec("inception_v3").to_json(),
        "minicap.weights_sha256": "ab" * 32,
    }
    assert not any(i.name.startswith("AuxLogits") for i in model.graph.initializer)  # ignored by name
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("problem", ["missing", "unexpected", "both"])
def test_inception_rejects_missing_and_unexpected_keys(problem):
    state = random_inception_state()
    if problem in ("missing", "both"):
        del state["Mixed_6c.branch7x7_2.conv.weight"]
        del state["fc.bias"]
    if problem in ("unexpected", "both"):
        state["Mixed_8a.branch1x1.conv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(WeightsMismatchError) as info:
        build_encoder_from_state_dict("inception_v3", state, weights_sha256="0" * 64)
    msg = str(info.value)
    assert "Inception v3" in msg
    assert ("2 missing keys: Mixed_6c.branch7x7_2.conv.weight (160, 160, 1, 7), fc.bias (1000,)" in msg) == (
        problem != "unexpected"
    )
    assert ("1 unexpected keys: Mixed_8a.branch1x1.conv.weight" in msg) == (problem != "missing")


def test_inception_accepts_files_without_counters_and_ignores_any_auxlogits_key(inception):
    """torchvision's Google weights predate `num_batches_tracked`; AuxLogits.* is ignored whatever it holds."""
    state, full, _ = inception
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    trimmed["AuxLogits.something_else"] = np.zeros(3, np.float32)
    model = build_encoder_from_state_dict("inception_v3", trimmed, weights_sha256="0" * 64)
    assert [o.name for o in model.graph.output] == ["features", "logits"]
    # Same weights in the graph as with the counters present (the numbers themselves are checked above).
    weights = {i.name: i.raw_data for i in model.graph.initializer}
    assert weights == {i.name: i.raw_data for i in full.graph.initializer}


def test_inception_against_torchvision_if_installed(inception, rng):
    """Optional: the same random weights in torchvision's own Inception3 give the same outputs."""
    models = pytest.importorskip("torchvision.models")  # first: skips before the slow torch import
    torch = pytest.importorskip("torch")
    state, _, sess = inception
    net = models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = rng.standard_normal((2, 3, 299, 299)).astype(np.float32)
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(x)).numpy()
    assert rel_err(run(sess, x)["logits"], logits) < 1e-4


# ============================================================================================================
# The command line


def test_cli_builds_lite0(tmp_path, capsys):
    out = tmp_path / "lite0.onnx"
    assert main(["encoder", "build", "--arch", "efficientnet_lite0", "--out", str(out)]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out
    meta = read_encoder_metadata(out)
    assert meta["arch"] == "efficientnet_lite0" and meta["outputs"] == ["features", "logits"]
    assert meta["weights_sha256"] == hashlib.sha256(default_weights_path("efficientnet_lite0").read_bytes()).hexdigest()


def test_cli_inception_without_weights_says_which_file_to_supply(tmp_path, capsys, monkeypatch):
    """Without --weights the weights are downloaded (tests/test_download_weights.py); here the "internet" is a
    port where nothing listens, so the download fails and the error names the file to supply."""
    from fake_http import closed_port_url

    monkeypatch.setenv("MINICAP_DOWNLOAD_BASE_URL", closed_port_url())
    monkeypatch.setenv("MINICAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("minicap.vision.fetch.retry_delay", lambda *args, **kwargs: 0.0)
    out = tmp_path / "inc.onnx"
    assert main(["encoder", "build", "--arch", "inception_v3", "--out", str(out)]) == 2
    assert INCEPTION_V3_WEIGHTS_NAME in capsys.readouterr().err
    assert not out.exists()


def test_cli_reports_unfitting_and_unsafe_weights(tmp_path, capsys):
    lite0_weights = str(default_weights_path("efficientnet_lite0"))
    args = ["encoder", "build", "--arch", "inception_v3", "--weights", lite0_weights, "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "do not fit Inception v3" in err and "missing keys: Conv2d_1a_3x3.conv.weight" in err

    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")  # os.system("true")
    args = ["encoder", "build", "--arch", "efficientnet_lite0", "--weights", str(evil), "--out", str(tmp_path / "y")]
    assert main(args) == 2
    assert "'os.system', which is not on the allow-list" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

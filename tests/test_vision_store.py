"""minicap.vision.store: the FeatureStore (ids, float32 features, optional spatial maps, manifest): save/load round
trips, lookups in requested order with one clear error for missing ids, subset/merge, validation, and safety: a store
is loaded with a restricted unpickler that refuses code-running globals before anything runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import minicap.dataset
import minicap.vision.store as store_mod
from minicap.safe_io import UnsafePickleError
from minicap.vision.store import FORMAT, FeatureStore, FeatureStoreError, FeatureStoreWarning, MissingFeaturesError


def small_store(n: int = 5, f: int = 4, spatial: bool = False, sha: str = "a" * 64) -> FeatureStore:
    rng = np.random.default_rng(n)
    return FeatureStore(
        ids=np.arange(100, 100 + n, dtype=np.int64)[::-1].copy(),
        features=rng.standard_normal((n, f)).astype(np.float32),
        manifest={
            "architecture": "tiny_test",
            "onnx_sha256": sha,
            "skipped": [{"id": 7, "path": "x", "reason": "r"}],
        },
        spatial=rng.standard_normal((n, 2, 2, f)).astype(np.float16) if spatial else None,
    )


# ------------------------------------------------------------------------------------------- store: basics


@pytest.mark.parametrize("spatial", [False, True])
def test_save_load_round_trip(tmp_path, spatial):
    store = small_store(spatial=spatial)
    store.save(tmp_path / "f.pkl")
    back = FeatureStore.load(tmp_path / "f.pkl")
    np.testing.assert_array_equal(back.ids, store.ids)
    np.testing.assert_array_equal(back.features, store.features)
    assert back.features.dtype == np.float32 and back.ids.dtype == np.int64
    assert back.manifest == store.manifest
    if spatial:
        assert back.spatial.dtype == np.float16
        np.testing.assert_array_equal(back.spatial, store.spatial)
        assert back.spatial_shape == (2, 2, 4)
    else:
        assert back.spatial is None and back.spatial_shape is None
    assert back.feature_size == 4 and len(back) == 5


def test_lookup_returns_rows_in_requested_order():
    store = small_store()
    got = store.lookup([102, 100, 104])
    order = {int(i): r for r, i in enumerate(store.ids)}
    np.testing.assert_array_equal(got, store.features[[order[102], order[100], order[104]]])
    assert store.lookup(np.array([], dtype=np.int64)).shape == (0, 4)
    assert store.rows([]).shape == (0,)
    assert 101 in store and 999 not in store and "101" not in store


def test_lookup_missing_ids_one_clear_error():
    store = small_store()
    with pytest.raises(MissingFeaturesError) as info:
        store.lookup([100, 1, 2, 3, 4, 5, 6, 7, 101])
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, minicap.dataset.MissingFeaturesError)  # one error type
    assert err.missing == [1, 2, 3, 4, 5, 6, 7]
    msg = str(err)
    assert msg.startswith("7 of 9 requested image ids have no features")
    assert "first: 1, 2, 3, 4, 5, ..." in msg and "'" not in msg[:3]  # not KeyError's quoted repr


def test_check_feature_size():
    store = small_store(f=4)
    store.check_feature_size(4)
    with pytest.raises(FeatureStoreError, match=r"the decoder expects 1280-d image features.*holds 4-d"):
        store.check_feature_size(1280, what="decoder")


def test_encoder_info_for_checkpoints():
    store = small_store(f=4)
    store.manifest |= {"architecture": "tiny_test", "onnx_file": "tiny.onnx", "weights_sha256": "0" * 64}
    assert store.encoder_info("runs/features.pkl") == {
        "architecture": "tiny_test",
        "onnx_sha256": "a" * 64,
        "onnx_file": "tiny.onnx",
        "weights_sha256": "0" * 64,
        "feature_size": 4,
        "features_file": "runs/features.pkl",
    }
    bare = FeatureStore(np.array([1], np.int64), np.zeros((1, 3), np.float32))
    assert bare.encoder_info() == {
        "architecture": None,
        "onnx_sha256": None,
        "onnx_file": None,
        "weights_sha256": None,
        "feature_size": 3,
        "features_file": None,
    }


def test_subset_and_merge():
    store = small_store(n=5, spatial=True)
    sub = store.subset([103, 101])
    np.testing.assert_array_equal(sub.ids, [103, 101])
    np.testing.assert_array_equal(sub.features, store.lookup([103, 101]))
    np.testing.assert_array_equal(sub.spatial, store.lookup_spatial([103, 101]))

    other = FeatureStore(
        ids=np.array([101, 200], np.int64),
        features=np.full((2, 4), 9.0, np.float32),
        manifest={"onnx_sha256": "a" * 64, "skipped": [{"id": 200, "path": "y", "reason": "old"}]},
        spatial=np.zeros((2, 2, 2, 4), np.float16),
    )
    merged = sub.merge(other)
    assert sorted(merged.ids.tolist()) == [101, 103, 200]
    np.testing.assert_array_equal(merged.lookup([101]), store.lookup([101]))  # self's row wins on overlap
    np.testing.assert_array_equal(merged.lookup([200]), np.full((1, 4), 9.0, np.float32))
    assert [s["id"] for s in merged.skipped] == [7]  # 200 now has features, so it is no longer "skipped"

    # Several at once, in one concatenation: the first store holding an id wins.
    third = FeatureStore(
        ids=np.array([200, 300], np.int64),
        features=np.full((2, 4), -1.0, np.float32),
        manifest={"onnx_sha256": "a" * 64},
        spatial=np.ones((2, 2, 2, 4), np.float32),  # float32 maps join the float16 store as float16
    )
    many = sub.merge(other, third)
    assert many.ids.tolist() == [103, 101, 200, 300] and many.spatial.dtype == np.float16
    np.testing.assert_array_equal(many.lookup([200, 300]), [[9.0] * 4, [-1.0] * 4])

    foreign = small_store(sha="b" * 64, spatial=True)
    with pytest.raises(FeatureStoreError, match="different encoders"):
        store.merge(foreign)
    with pytest.raises(FeatureStoreError, match="spatial"):
        store.merge(small_store(spatial=False))


def test_constructor_and_save_validate():
    ids = np.array([1, 2], np.int64)
    with pytest.raises(FeatureStoreError, match="float32"):
        FeatureStore(ids, np.zeros((2, 3), np.float64))
    with pytest.raises(FeatureStoreError, match="int64"):
        FeatureStore(ids.astype(np.int32), np.zeros((2, 3), np.float32))
    with pytest.raises(FeatureStoreError, match="2 ids but 3 feature rows"):
        FeatureStore(ids, np.zeros((3, 3), np.float32))
    with pytest.raises(FeatureStoreError, match=r"unique; repeated: \[1\]"):
        FeatureStore(np.array([1, 1], np.int64), np.zeros((2, 3), np.float32))
    with pytest.raises(FeatureStoreError, match="spatial"):
        FeatureStore(ids, np.zeros((2, 3), np.float32), spatial=np.zeros((2, 3), np.float32))


def test_save_refuses_non_builtin_manifest_values(tmp_path):
    """Anything but builtins would need more globals than the restricted loader allows."""
    store = FeatureStore(np.array([1], np.int64), np.zeros((1, 3), np.float32), manifest={"bad": np.float32(1)})
    with pytest.raises(TypeError, match=r"manifest\['bad'\] is a float32; a manifest holds only builtins"):
        store.save(tmp_path / "f.pkl")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ store: safety


class _Payload:
    """Pickles as a call to `func(*args)`: how a malicious pickle runs code at load time."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious_payloads(marker: Path) -> dict[str, object]:
    import builtins
    import subprocess as sp

    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Payload(sp.Popen, ["touch", str(marker)]),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


# payload -> the global its pickle names (os.system lives in the `posix` module on Linux)
_PICKLED_AS = {"os.system": os.system.__module__ + ".system", "builtins.eval": "builtins.eval"}
_PICKLED_AS |= {"subprocess.Popen": "subprocess.Popen", "builtins.exec": "builtins.exec"}


@pytest.mark.parametrize("name", sorted(_PICKLED_AS))
def test_load_refuses_code_execution(tmp_path, name):
    marker = tmp_path / "pwned"
    evil = _malicious_payloads(marker)[name]
    # Hidden inside an otherwise well-formed store, where the manifest would be.
    store = small_store()
    payload = {"format": FORMAT, "ids": store.ids, "features": store.features, "manifest": evil}
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(UnsafePickleError, match=rf"refusing to load feature store .*evil\.pkl.*'{_PICKLED_AS[name]}'"):
        FeatureStore.load(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_malicious_payload_is_live(tmp_path):
    """The os.system payload really runs under plain pickle.loads, so the refusal test above can fail."""
    marker = tmp_path / "pwned"
    data = pickle.dumps({"manifest": _malicious_payloads(marker)["os.system"]})
    with pytest.raises(UnsafePickleError):
        FeatureStore.load(_write(tmp_path / "x.pkl", data))
    assert not marker.exists()
    pickle.loads(data)  # the unsafe way, on our own harmless `touch`
    assert marker.exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_load_accepts_numpy1_module_names(tmp_path):
    """Pickles written by NumPy 1.x name `numpy.core.multiarray`; NumPy 2 calls it `numpy._core`."""
    store = small_store()
    payload = {"format": FORMAT, "ids": store.ids, "features": store.features, "manifest": {}}
    data = pickle.dumps(payload, protocol=3)  # protocol 3 spells globals as text lines: easy to rename
    assert b"cnumpy._core.multiarray\n_reconstruct" in data
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    with pytest.warns(FeatureStoreWarning, match="has no checksum"):  # so old that it has none: loaded, with a word
        back = FeatureStore.load(_write(tmp_path / "old.pkl", data))
    np.testing.assert_array_equal(back.features, store.features)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ({"ids": 1}, "not a feature store of format"),
        (
            {"format": FORMAT, "ids": np.zeros(2, np.int64)},
            r"lacks the keys \['features', 'manifest'\]",
        ),
        (
            {
                "format": FORMAT,
                "ids": np.array([3, 3], np.int64),
                "features": np.zeros((2, 2), np.float32),
                "manifest": {},
            },
            r"unique; repeated: \[3\]",
        ),
        (
            {
                "format": FORMAT,
                "ids": np.array([1, 2], np.int64),
                "features": np.zeros((2, 2), np.float64),
                "manifest": {},
            },
            "features must be a 2-D float32 array",
        ),
        (
            {
                "format": FORMAT,
                "ids": np.array([1, 2], np.int64),
                "features": np.zeros((2, 2), np.float32),
                "spatial": np.zeros((3, 1, 1, 2), np.float16),
                "manifest": {},
            },
            "2 ids but 3 spatial maps",
        ),
    ],
)
def test_load_validates_contents(tmp_path, payload, message):
    path = _write(tmp_path / "bad.pkl", pickle.dumps(payload, protocol=5))
    with pytest.raises(FeatureStoreError, match=message):
        FeatureStore.load(path)


def test_load_refuses_another_format_version(tmp_path):
    """The format name is written into every store and checked on load: a future layout is refused by name."""
    store = small_store(spatial=True)
    store.save(tmp_path / "f.pkl")
    assert FORMAT == "minicap.features/1" and FORMAT.encode() in (tmp_path / "f.pkl").read_bytes()
    payload = {"format": "minicap.features/2", "ids": store.ids, "features": store.features}
    payload |= {"spatial": store.spatial, "manifest": store.manifest}
    with pytest.raises(FeatureStoreError, match="found format 'minicap.features/2'"):
        FeatureStore.load(_write(tmp_path / "future.pkl", pickle.dumps(payload)))


def test_load_truncated_and_missing_files(tmp_path):
    small_store().save(tmp_path / "f.pkl")
    data = (tmp_path / "f.pkl").read_bytes()
    with pytest.raises(FeatureStoreError, match="truncated or corrupt"):
        FeatureStore.load(_write(tmp_path / "cut.pkl", data[: len(data) // 2]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureStore.load(tmp_path / "nope.pkl")


def test_failed_save_leaves_previous_file_loadable(tmp_path, monkeypatch):
    path = tmp_path / "f.pkl"
    old = small_store(n=3)
    old.save(path)

    def dump_half_then_fail(payload, f):
        f.write(pickle.dumps(payload)[:100])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store_mod, "_dump", dump_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        small_store(n=6).save(path)
    back = FeatureStore.load(path)
    np.testing.assert_array_equal(back.ids, old.ids)
    np.testing.assert_array_equal(back.features, old.features)
    assert [p.name for p in tmp_path.iterdir()] == ["f.pkl"]  # no temporary file left behind

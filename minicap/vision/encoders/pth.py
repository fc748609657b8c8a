"""Read PyTorch `.pth` weight files into NumPy arrays without torch, and without trusting the file.

A `.pth` file is a *pickle*: a little program for Python's pickle machine. Plain `pickle.load` would run
any function the file names (`os.system` included), so we unpickle with `RestrictedUnpickler`, which hands
back only the handful of names a state dict needs, each mapped to OUR OWN small function below — never to
torch. A file that names anything else is refused before anything in it runs.

How a tensor is pickled: `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`. The *storage* is
a flat typed buffer (e.g. `torch.FloatStorage` of 864 elements); the pickle refers to it by a *persistent
id*, `('storage', <storage type>, key, location, numel)`, and its bytes live outside the pickle. The tensor
is the view `storage[offset + sum(i_k * stride_k)]` for every index (i_0, i_1, ...) within `size` — exactly
what `np.lib.stride_tricks.as_strided` expresses.

Two container formats:

* **zip** (PyTorch >= 1.6): `<archive>/data.pkl` is the pickle; storage `key`'s raw bytes are the record
  `<archive>/data/<key>`; an optional `<archive>/byteorder` record says "little" or "big".
* **legacy** (before 1.6; e.g. the EfficientNet-Lite0 and torchvision Inception v3 files): five pickles one
  after another — the magic number 0x1950a86a20f9469cfc6c, the protocol version (1001), a dict of system
  info (endianness, type sizes), the pickle holding the object, and the list of storage keys; then, in that
  order, each storage as an 8-byte little-endian element count followed by its raw bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from minicap.safe_io import RestrictedUnpickler, UnsafePickleError

__all__ = ["PthFormatError", "UnsafePickleError", "load_pth", "load_state_dict"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class PthFormatError(ValueError):
    """The file is not a readable PyTorch `.pth` file (wrong format, truncated, or inconsistent)."""


# ------------------------------------------------------------------------------------------ placeholders
# The unpickler builds these small records instead of torch objects. Storages are only *described* while the
# pickle is read (in the legacy format their bytes come after it); tensors are materialised at the end.


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for a torch storage class such as `torch.FloatStorage`."""

    torch_name: str
    dtype: str  # NumPy dtype name, or "bfloat16" (no NumPy equivalent: widened to float32 on load)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class _DType:
    """Stands in for a `torch.<dtype>` object (used by `_rebuild_tensor_v3` for the newer unsigned types)."""

    torch_name: str
    dtype: str


@dataclasses.dataclass
class _Storage:
    """One storage: its element type, length, and (once read) its raw bytes."""

    key: str
    storage_type: _StorageType
    numel: int
    data: bytes | memoryview | None = None

    def array(self, byteorder: str) -> np.ndarray:
        """The storage as a 1-D array of its element type, native byte order (bfloat16: its uint16 bits)."""
        if self.data is None:
            raise PthFormatError(f"storage {self.key!r} is referenced but its bytes were never found in the file")
        name = "uint16" if self.storage_type.dtype == "bfloat16" else self.storage_type.dtype
        dtype = np.dtype(name).newbyteorder("<" if byteorder == "little" else ">")
        need = self.numel * dtype.itemsize
        if len(self.data) < need:
            raise PthFormatError(
                f"storage {self.key!r} should hold {self.numel} x {dtype.itemsize} bytes = {need} bytes, "
                f"the file has only {len(self.data)} (truncated?)"
            )
        arr = np.frombuffer(self.data, dtype=dtype, count=self.numel)
        return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


@dataclasses.dataclass(frozen=True)
class _StorageView:
    """A slice of a storage (legacy files could share one storage between several views)."""

    root: _Storage
    offset: int  # in elements
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRecipe:
    """Everything needed to cut a tensor out of its storage: `storage[offset + sum(i_k * stride_k)]`."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str | None = None  # set by `_rebuild_tensor_v3`: the storage is raw bytes reinterpreted as this


# ------------------------------------------------------------------------------------ allow-listed globals
# Each accepts the arguments PyTorch pickles and returns a _TensorRecipe; none touches the file system.


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRecipe:
    """`torch._utils._rebuild_tensor` (files from PyTorch < 0.4) and the common core of the versions below."""
    if not isinstance(storage, (_Storage, _StorageView)):
        raise PthFormatError(f"a tensor's storage must be a persistent storage reference, got {type(storage)}")
    if not isinstance(storage_offset, int) or not _is_int_tuple(size) or not _is_int_tuple(stride):
        raise PthFormatError(f"malformed tensor: offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    if len(size) != len(stride):
        raise PthFormatError(f"malformed tensor: size {size} and stride {stride} differ in length")
    return _TensorRecipe(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    *rest: Any,
) -> _TensorRecipe:
    """`torch._utils._rebuild_tensor_v2`; `requires_grad`, hooks and metadata mean nothing to NumPy."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    *rest: Any,
) -> _TensorRecipe:
    """`torch._utils._rebuild_tensor_v3`: an untyped (byte) storage plus an explicit dtype."""
    if not isinstance(dtype, _DType):
        raise PthFormatError(f"_rebuild_tensor_v3 expects a torch dtype, got {dtype!r}")
    recipe = _rebuild_tensor(storage, storage_offset, size, stride)
    return dataclasses.replace(recipe, dtype=dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, *rest: Any) -> Any:
    """`torch._utils._rebuild_parameter(_with_state)`: an `nn.Parameter` is just its tensor here."""
    return data


def _is_int_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(v, int) for v in x)


# Storage classes -> element type. All are plain fixed-size numbers, read straight from bytes.
_STORAGE_TYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# torch dtypes that `_rebuild_tensor_v3` names (the ones without a typed storage class of their own).
_V3_DTYPES = {"uint16": "uint16", "uint32": "uint32", "uint64": "uint64"}

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(f"torch.{name}", dtype) for name, dtype in _STORAGE_TYPES.items()},
    **{("torch", name): _DType(f"torch.{name}", dtype) for name, dtype in _V3_DTYPES.items()},
    # Raw bytes, reinterpreted by `_rebuild_tensor_v3` (pickled under its defining module's name).
    ("torch.storage", "UntypedStorage"): _StorageType("torch.storage.UntypedStorage", "uint8"),
}


# ------------------------------------------------------------------------------------------ the two formats


def load_pth(path: str | os.PathLike) -> Any:
    """Load a `.pth` file (zip or legacy format) with every tensor turned into a NumPy array.

    Returns whatever object was saved (usually an ordered dict of name -> array). Raises
    `UnsafePickleError` if the file names any global outside the tensor-rebuilding allow-list (nothing is
    executed), `PthFormatError` if it is not a PyTorch file or is inconsistent, `FileNotFoundError` if it
    does not exist.
    """
    path = Path(path)
    what = f"{path} (a .pth file)"
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # a zip archive starts with a local file header
    if is_zip:
        try:
            return _load_zip(path, what)
        except zipfile.BadZipFile as e:
            raise PthFormatError(f"{what}: damaged zip archive ({e})") from None
    data = path.read_bytes()
    if len(data) >= 263 and data[257:262] == b"ustar":
        raise PthFormatError(f"{path}: PyTorch's pre-2017 tar format is not supported; re-save it with torch.save")
    return _load_legacy(data, what)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a state dict (`torch.save(model.state_dict(), path)`) as `{name: array}`, in file order.

    Arrays keep their dtype (float32, float16, int64, ...), except bfloat16, which is widened to float32.
    """
    obj = load_pth(path)
    if not isinstance(obj, Mapping):
        raise PthFormatError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping name -> tensor)")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise PthFormatError(
            f"{path} is not a plain state dict: these entries are not tensors: {', '.join(bad[:10])}"
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            + " (a training checkpoint? save model.state_dict() on its own)"
        )
    return dict(obj)


def _load_zip(path: Path, what: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise PthFormatError(
                f"{path} is a zip archive but not a PyTorch one: expected exactly one '<archive>/data.pkl', "
                f"found {pickles or 'none'}"
            )
        prefix = pickles[0][: -len("data.pkl")]  # "<archive>/"
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise PthFormatError(f"{path}: unknown byte order {byteorder!r}")

        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            # ('storage', storage_type, key, location, numel)
            if not (isinstance(pid, tuple) and len(pid) == 5 and _as_str(pid[0]) == "storage"):
                raise PthFormatError(f"{path}: unsupported persistent id {pid!r}")
            _, storage_type, key, _location, numel = pid
            storage = _describe_storage(storages, storage_type, _as_str(key), numel, path)
            if storage.data is None:
                record = f"{prefix}data/{storage.key}"
                try:
                    storage.data = zf.read(record)
                except KeyError:
                    raise PthFormatError(f"{path}: storage record {record!r} is missing") from None
            return storage

        with zf.open(pickles[0]) as f:
            obj = _unpickle(RestrictedUnpickler(f, _ALLOWED_GLOBALS, persistent_load, what=what), what)
    return _materialise(obj, byteorder)


def _unpickle(unpickler: RestrictedUnpickler, what: str) -> Any:
    """Run `unpickler`; our own refusals pass through, anything else means the bytes are garbled."""
    try:
        return unpickler.load()
    except (UnsafePickleError, PthFormatError):
        raise
    except Exception as e:  # truncated or garbled pickle bytes: EOFError, UnpicklingError, ...
        raise PthFormatError(f"{what}: corrupt pickle data ({type(e).__name__}: {e})") from None


def _load_legacy(data: bytes, what: str) -> Any:
    f = io.BytesIO(data)
    # The header pickles and the key list hold only numbers, strings, lists and dicts: no global is allowed.
    try:
        magic = RestrictedUnpickler(f, {}, what=what).load()
    except UnsafePickleError:
        raise
    except Exception:
        magic = None
    if magic != LEGACY_MAGIC_NUMBER:
        raise PthFormatError(
            f"{what} is not a PyTorch file: neither a zip archive nor a legacy file with the magic number"
        )
    protocol = _unpickle(RestrictedUnpickler(f, {}, what=what), what)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise PthFormatError(f"{what}: unsupported legacy protocol version {protocol!r}")
    sys_info = _unpickle(RestrictedUnpickler(f, {}, what=what), what)
    byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"

    storages: dict[str, _Storage] = {}
    views: dict[str, _StorageView] = {}

    def persistent_load(pid: Any) -> _Storage | _StorageView:
        # ('storage', storage_type, root_key, location, numel, view_metadata)
        if isinstance(pid, tuple) and pid and _as_str(pid[0]) == "module":
            raise PthFormatError(f"{what} holds a pickled nn.Module; save and load model.state_dict() instead")
        if not (isinstance(pid, tuple) and len(pid) == 6 and _as_str(pid[0]) == "storage"):
            raise PthFormatError(f"{what}: unsupported persistent id {pid!r}")
        _, storage_type, root_key, _location, numel, view_metadata = pid
        storage = _describe_storage(storages, storage_type, _as_str(root_key), numel, what)
        if view_metadata is None:
            return storage
        view_key, offset, view_size = view_metadata
        if not (isinstance(offset, int) and isinstance(view_size, int) and 0 <= offset <= offset + view_size):
            raise PthFormatError(f"{what}: malformed storage view {view_metadata!r}")
        return views.setdefault(_as_str(view_key), _StorageView(storage, offset, view_size))

    obj = _unpickle(RestrictedUnpickler(f, _ALLOWED_GLOBALS, persistent_load, what=what), what)
    keys = _unpickle(RestrictedUnpickler(f, {}, what=what), what)
    if not isinstance(keys, list):
        raise PthFormatError(f"{what}: the storage key list is missing")

    # After the pickles: for each key in order, an int64 element count and the storage's raw bytes.
    view = memoryview(data)
    pos = f.tell()
    for key in keys:
        key = _as_str(key)
        if key not in storages:
            raise PthFormatError(f"{what}: storage {key!r} is listed but no tensor uses it")
        storage = storages[key]
        if pos + 8 > len(data):
            raise PthFormatError(f"{what} is truncated: storage {key!r} is missing")
        count = int.from_bytes(data[pos : pos + 8], "little")  # torch writes this count little-endian
        nbytes = count * storage.storage_type.itemsize
        if count != storage.numel or pos + 8 + nbytes > len(data):
            raise PthFormatError(
                f"{what}: storage {key!r} should have {storage.numel} elements; the file says {count}, has "
                f"{len(data) - pos - 8} bytes left (truncated or corrupt)"
            )
        storage.data = view[pos + 8 : pos + 8 + nbytes]
        pos += 8 + nbytes
    return _materialise(obj, byteorder)


def _describe_storage(storages: dict[str, _Storage], storage_type: Any, key: str, numel: Any, where: Any) -> _Storage:
    """The `_Storage` for `key`, created on first sight; later references must agree with the first."""
    if not isinstance(storage_type, _StorageType):
        raise PthFormatError(f"{where}: storage {key!r} has type {storage_type!r}, not a torch storage class")
    if not isinstance(numel, int) or numel < 0:
        raise PthFormatError(f"{where}: storage {key!r} has a bad element count {numel!r}")
    storage = storages.setdefault(key, _Storage(key, storage_type, numel))
    if storage.storage_type != storage_type:
        raise PthFormatError(f"{where}: storage {key!r} is referenced with two different types")
    return storage


def _as_str(x: Any) -> str:
    """Python-2-era files may hold byte strings where newer ones hold text."""
    return x.decode("ascii") if isinstance(x, bytes) else str(x)


# ------------------------------------------------------------------------------------------ tensors


def _materialise(obj: Any, byteorder: str) -> Any:
    """Replace every `_TensorRecipe` inside `obj` (dicts, lists, tuples) with its NumPy array."""
    arrays: dict[str, np.ndarray] = {}  # storage key -> its 1-D array, decoded once

    def walk(x: Any) -> Any:
        if isinstance(x, _TensorRecipe):
            return _tensor_from_recipe(x, arrays, byteorder)
        if isinstance(x, collections.OrderedDict):
            return collections.OrderedDict((k, walk(v)) for k, v in x.items())
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, tuple):
            return tuple(walk(v) for v in x)
        if isinstance(x, (_Storage, _StorageView, _StorageType, _DType)):
            raise PthFormatError(f"the file holds a bare {type(x).__name__.strip('_')}; only tensors are supported")
        return x

    return walk(obj)


def _tensor_from_recipe(recipe: _TensorRecipe, arrays: dict[str, np.ndarray], byteorder: str) -> np.ndarray:
    """Cut one tensor out of its storage: a strided view of the storage, then a contiguous copy."""
    storage, start, limit = recipe.storage, 0, None
    if isinstance(storage, _StorageView):
        storage, start, limit = storage.root, storage.offset, storage.numel
    if storage.key not in arrays:
        arrays[storage.key] = storage.array(byteorder)
    base = arrays[storage.key]
    base = base[start : start + limit] if limit is not None else base[start:]
    if recipe.dtype is not None:  # v3: the storage is raw bytes; reinterpret them as the tensor's dtype
        file_dtype = np.dtype(recipe.dtype).newbyteorder("<" if byteorder == "little" else ">")
        if base.dtype != np.uint8:
            raise PthFormatError(f"_rebuild_tensor_v3 needs an untyped storage, got {storage.storage_type}")
        base = base[: base.size - base.size % file_dtype.itemsize].view(file_dtype)
        base = base if file_dtype.isnative else base.astype(file_dtype.newbyteorder("="))

    size, stride, offset = recipe.size, recipe.stride, recipe.offset
    # Bounds check BEFORE as_strided, which would happily read memory outside the buffer.
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise PthFormatError(f"tensor with negative size/stride/offset: {size}, {stride}, {offset}")
    if 0 in size:
        out = np.empty(size, dtype=base.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= base.size:
            raise PthFormatError(
                f"tensor of size {size}, stride {stride}, offset {offset} reaches element {last} of a storage"
                f" with only {base.size} elements (corrupt file)"
            )
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
        )
        out = np.array(view, order="C")  # own, contiguous, writeable memory
    if storage.storage_type.dtype == "bfloat16" and recipe.dtype is None:
        # bfloat16 is the top half of a float32: shift the 16 bits up and reinterpret.
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out

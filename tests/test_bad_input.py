"""Bad input, careless or hostile: every command answers with one clear line and exit code 2 (or skips the one bad
photo, naming it) — no traceback, no hang, no silently ignored option.

Issue 10 items guarded here: 3 and 10 (a duplicate image id, a top-level list: one loader, one rule, every command),
8 (a FIFO named x.jpg hung `extract`), 9 (a photo listed but absent was not named), 11 (a poisoned --out gave a
traceback), 12 (numeric flags validated at parse time), 13 (`evaluate --checkpoint --out` ignored --out) and 14
(`extract --out DIR` said the store "does not exist"). Every input is crafted inside the test.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import crafted
import pytest
from test_vision_extract import make_tiny_encoder

from minicap.cli import main
from minicap.vision.encoders.spec import NotARegularFile, load_rgb
from minicap.vision.store import FeatureStore, FeatureStoreError

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny.onnx"
    make_tiny_encoder(path)
    return path


def _extract(images: Path, captions: Path, encoder: Path, out: Path, *more: str) -> list[str]:
    return ["extract", "--images", str(images), "--captions", str(captions), "--encoder", str(encoder),
            "--out", str(out), "--no-progress", *more]  # fmt: skip


# ------------------------------------------------------------------- items 3 and 10: one loader, one rule


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"].append(dict(d["images"][0], file_name="other.jpg")), "image id 1 is listed twice"),
        (lambda d: [{"image_id": 1, "caption": "a dog"}], "the top level is a list, not an object with 'images'"),
    ],
    ids=["duplicate image id", "top-level list"],
)
def test_every_command_refuses_the_same_captions_file_with_the_same_message(tmp_path, tiny_encoder, capsys, edit,
                                                                            message):  # fmt: skip
    images, captions = crafted.photos(tmp_path / "photos")
    data = json.loads(captions.read_text())
    data = edit(data) or data
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    _, features = crafted.run_files(tmp_path / "run")
    commands = {
        "extract": _extract(images, bad, tiny_encoder, tmp_path / "f.pkl"),
        "train": ["train", "--features", str(features), "--captions", str(bad), "--out", str(tmp_path / "t")],
        "evaluate": ["evaluate", "--folds", "2", "--features", str(features), "--captions", str(bad), "--cider-only"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        assert capsys.readouterr().err.startswith(f"error: {bad}: {message}"), name
    assert not (tmp_path / "f.pkl").exists() and not (tmp_path / "t").exists()


# ------------------------------------------------------------------- item 8: not a regular file


def test_a_fifo_named_like_a_photo_is_skipped_with_its_reason_and_never_opened(tmp_path, tiny_encoder):
    images, captions = crafted.photos(tmp_path)
    os.mkfifo(images / "x.jpg")
    data = json.loads(captions.read_text())
    data["images"].append({"id": 99, "file_name": "x.jpg"})
    captions.write_text(json.dumps(data))
    run = subprocess.run(  # a child process: if the FIFO were opened, the timeout ends the test instead of hanging
        [sys.executable, "-m", "minicap", *_extract(images, captions, tiny_encoder, tmp_path / "f.pkl")],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "extracted 6, reused 0, skipped 1" in run.stdout
    assert f"skipped 99 {images / 'x.jpg'}: a named pipe (FIFO), not a regular file: not opened" in run.stdout


def test_load_rgb_refuses_a_fifo_without_blocking(tmp_path):
    """The same check for `minicap caption`, which reads photos through the same load_rgb."""
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            load_rgb(fifo)
        except BaseException as e:  # noqa: BLE001 (the test inspects whatever was raised)
            outcome.append(e)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # it opened the FIFO and waits for a writer: give it one (and EOF), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_rgb opened a FIFO and blocked")
    assert len(outcome) == 1 and isinstance(outcome[0], NotARegularFile)
    assert str(outcome[0]) == "a named pipe (FIFO), not a regular file: not opened (reading it could block forever)"


# ------------------------------------------------------------------- item 9: a listed photo that is absent


def test_a_listed_photo_that_is_absent_is_named_in_the_output_and_the_manifest(tmp_path, tiny_encoder, capsys):
    images, captions = crafted.photos(tmp_path)
    (images / "000000000004.jpg").unlink()
    out = tmp_path / "f.pkl"
    assert main(_extract(images, captions, tiny_encoder, out)) == 0
    printed = capsys.readouterr().out
    assert f"images: 6 listed in {captions}, 5 found in {images}, 1 missing (listed below)" in printed
    assert f"skipped 4 {images / '000000000004.jpg'}: file not found" in printed
    store = FeatureStore.load(out)
    assert store.skipped == [{"id": 4, "path": str(images / "000000000004.jpg"), "reason": "file not found"}]
    assert store.manifest["extraction"]["requested"] == 6 and len(store) == 5


# ------------------------------------------------------------------- item 11: a poisoned existing output


def test_a_poisoned_output_file_is_refused_cleanly_and_its_payload_never_runs(tmp_path, tiny_encoder, capsys):
    images, captions = crafted.photos(tmp_path)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    out = tmp_path / "f.pkl"
    out.write_bytes(pickle.dumps({"format": "minicap.features/1", "ids": Payload()}))
    assert main(_extract(images, captions, tiny_encoder, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} is not a minicap feature store: refusing to load feature store {out}: it "
                          f"references the global '{os.system.__module__}.system'")  # fmt: skip
    assert err.count("\n") == 1 and "nothing was executed" in err and "Traceback" not in err
    assert not marker.exists()


# ------------------------------------------------------------------- item 12: numbers checked at parse time


@pytest.mark.parametrize(
    ("argv", "flag", "complaint"),
    [
        (["extract", "--images", "i", "--captions", "c", "--encoder", "e", "--out", "o"], "--batch-size", "0"),
        (["extract", "--images", "i", "--captions", "c", "--encoder", "e", "--out", "o"], "--save-every", "-5"),
        (["extract", "--images", "i", "--captions", "c", "--encoder", "e", "--out", "o"], "--workers", "-1"),
        (["data", "download", "--captions", "c", "--limit", "2", "--out", "o"], "--timeout", "nan"),
        (["data", "download", "--captions", "c", "--limit", "2", "--out", "o"], "--workers", "0"),
        (["data", "download", "--captions", "c", "--limit", "2", "--out", "o"], "--retries", "-1"),
        (["data", "download", "--captions", "c", "--limit", "2", "--out", "o"], "--backoff", "inf"),
        (["caption", "x.jpg", "--checkpoint", "c.npz"], "--beam", "0"),
        (["evaluate", "--features", "f", "--captions", "c"], "--folds", "1"),
        (["train", "--features", "f", "--captions", "c"], "--hidden", "0"),
        (["train", "--features", "f", "--captions", "c"], "--wordvec", "0"),
    ],
)
def test_numeric_flags_are_checked_by_argparse_before_anything_runs(argv, flag, complaint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, flag, complaint])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("usage: minicap")
    assert f"error: argument {flag}: expected " in err and complaint in err.splitlines()[-1]


# ------------------------------------------------------------------- item 13: evaluate --checkpoint --out


def test_evaluate_a_checkpoint_writes_the_scores_to_out(tmp_path, capsys):
    captions, features = crafted.run_files(tmp_path)
    run = tmp_path / "run"
    assert main(["train", *crafted.files_args(captions, features), "--out", str(run), "--epochs", "1",
                 *crafted.TINY_TRAIN]) == 0  # fmt: skip
    out = tmp_path / "scores" / "ev.json"
    evaluate = ["evaluate", "--checkpoint", str(run / "best.npz"), *crafted.files_args(captions, features)]
    assert main([*evaluate, "--cider-only", "--out", str(out)]) == 0
    assert f"scores -> {out}" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["checkpoint"] == str(run / "best.npz") and "CIDEr" in written["scores"]["model, greedy"]


# ------------------------------------------------------------------- item 14: a directory as the output


def test_a_directory_given_as_the_output_is_called_a_directory(tmp_path, tiny_encoder, capsys):
    images, captions = crafted.photos(tmp_path)
    folder = tmp_path / "features"
    folder.mkdir()
    assert main(_extract(images, captions, tiny_encoder, folder)) == 2
    assert capsys.readouterr().err == (
        f"error: could not write {folder}: it is a directory, not a file name (e.g. {folder / 'features.pkl'}); "
        "nothing was written\n"
    )
    with pytest.raises(FeatureStoreError, match=f"{folder} is a directory, not a feature store file"):
        FeatureStore.load(folder)

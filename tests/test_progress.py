"""Progress of long runs: `minicap evaluate --folds K` reports fold and epoch with an estimate of the time left —
a tqdm bar on a terminal, one plain line per epoch otherwise (`minicap.experiments.RunProgress`)."""

from __future__ import annotations

import io
import re

from test_experiments import TINY, colour_data

from minicap.experiments import RunProgress, cross_validate, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 42, 62, 599, 1440, 3900)] == [
        "0s",
        "42s",
        "1m02s",
        "9m59s",
        "24m",
        "1h05m",
    ]


def test_one_line_per_epoch_with_the_eta_when_not_a_terminal():
    clock, out = Clock(), io.StringIO()
    progress = RunProgress(5, 25, stream=out, clock=clock)  # StringIO is not a terminal: lines, no bar
    progress.start_fold(1)
    clock.now = 62.0
    progress.epoch({"seconds": 12.0, "val_seconds": 0.3})
    clock.now = 124.0
    progress.epoch({"seconds": 12.0, "val_seconds": 0.3})
    lines = out.getvalue().splitlines()
    assert lines[0] == "fold 1/5, epoch 1/25: 12.3 s/epoch, elapsed 1m02s, ETA 2h08m"  # 62 s × 124 = 7688 s epochs left
    assert lines[1] == "fold 1/5, epoch 2/25: 12.3 s/epoch, elapsed 2m04s, ETA 2h07m"  # 62 s × 123 = 7626 s
    assert "\r" not in out.getvalue()


def test_a_fold_that_stops_early_leaves_its_unused_epochs_out_of_the_eta():
    clock, out = Clock(), io.StringIO()
    progress = RunProgress(2, 10, stream=out, clock=clock)
    progress.start_fold(1)
    for _ in range(4):
        clock.now += 10.0
        progress.epoch({"seconds": 10.0})
    progress.end_fold()  # early stopping after 4 of 10 epochs
    assert progress.total == 14
    progress.start_fold(2)
    clock.now += 10.0
    progress.epoch({"seconds": 10.0})
    assert out.getvalue().splitlines()[-1] == "fold 2/2, epoch 1/10: 10.0 s/epoch, elapsed 50s, ETA 1m30s"
    assert progress.eta() == 90.0  # 10 s × 9 epochs left


def test_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = RunProgress(3, 4, stream=out)
    assert progress.use_bar
    progress.start_fold(2)
    progress.epoch({"seconds": 1.5})
    progress.close()
    text = out.getvalue()
    assert "fold 2/3, epoch 1/4" in text and "1/12" in text and "\r" in text  # tqdm redraws one line


def test_cross_validate_reports_every_epoch_of_every_fold():
    coco, table = colour_data()
    out = io.StringIO()
    config = TINY.replace(epochs=3)
    cv = cross_validate(coco, table, k=3, config=config, progress=RunProgress(3, 3, stream=out, bar=False))
    lines = out.getvalue().splitlines()
    assert [re.match(r"fold (\d)/3, epoch (\d)/3: ", line).groups() for line in lines] == [
        (str(f), str(e)) for f in (1, 2, 3) for e in (1, 2, 3)
    ]
    assert lines[-1].endswith("ETA 0s") and all("s/epoch, elapsed " in line for line in lines)
    assert all(len(f["epoch_seconds"]) == len(f["val_seconds"]) == 3 for f in cv.folds)


def test_cli_evaluate_prints_progress_lines_to_stderr_unless_told_not_to(tmp_path, capsys):
    import json

    from minicap.cli import main

    coco, table = colour_data()
    from minicap.vision.store import FeatureStore

    FeatureStore(table.image_ids, table.features, {"architecture": "colours"}).save(tmp_path / "f.pkl")
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in coco.image_ids().tolist()],
        "annotations": [{"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate(coco.captions)],
    }
    (tmp_path / "c.json").write_text(json.dumps(data))
    args = ["evaluate", "--folds", "3", "--features", str(tmp_path / "f.pkl"), "--captions", str(tmp_path / "c.json")]
    flags = ["--hidden", "16", "--wordvec", "8", "--epochs", "2", "--min-count", "1", "--cider-only"]
    assert main([*args, *flags]) == 0
    err = capsys.readouterr().err
    assert len(re.findall(r"^fold \d/3, epoch \d/2: .* ETA ", err, flags=re.M)) == 6
    assert main([*args, *flags, "--no-progress"]) == 0
    assert "epoch 1/2" not in capsys.readouterr().err

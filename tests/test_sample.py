"""The COCO sample committed in assets/coco: complete, licensed as it says, small, and what `minicap demo` reads.

assets/coco/README.md says what the sample is and how assets/coco/build_sample.py made it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED
from PIL import Image

from minicap.baselines import most_frequent_caption_baseline
from minicap.coco import (
    DOWNLOAD_HINT,
    SAMPLE_COCO,
    choose_coco_dir,
    coco_image_paths,
    load_coco_captions,
    split_by_image,
)
from minicap.metrics import CiderD
from minicap.text import tokenize

NUM_PHOTOS = 600  # as assets/coco/README.md says
NUM_CAPTIONS = 3001
MAX_BYTES = 15_000_000
NO_DERIVATIVES = {3, 6}  # COCO's "NoDerivs" licences: no downscaled copies allowed


@pytest.fixture(scope="module")
def raw(sample_coco: Path) -> dict:
    return json.loads((sample_coco / "captions.json").read_text(encoding="utf-8"))


def test_the_fixture_is_the_folder_the_package_knows(sample_coco):
    assert sample_coco.resolve() == SAMPLE_COCO
    assert (sample_coco / "images").is_dir() and (sample_coco / "captions.json").is_file()


def test_captions_load_with_the_one_loader_and_every_photo_is_found(sample_coco):
    coco = load_coco_captions(sample_coco / "captions.json")
    assert coco.num_images == NUM_PHOTOS and coco.num_captions == NUM_CAPTIONS and coco.num_dropped_empty == 0
    assert len(coco.image_ids()) == NUM_PHOTOS  # every photo has captions
    assert min(len(c) for c in coco.references().values()) >= 5
    paths = coco_image_paths(coco, sample_coco / "images")
    assert sorted(paths) == sorted(coco.images)


def test_every_photo_listed_is_present_decodable_and_small(sample_coco, raw):
    listed = {rec["file_name"]: rec for rec in raw["images"]}
    on_disk = {p.name for p in (sample_coco / "images").iterdir()}
    assert on_disk == set(listed)  # nothing missing, nothing extra
    short_sides = []
    for name, rec in listed.items():
        assert name == f"{rec['id']:012d}.jpg"
        with Image.open(sample_coco / "images" / name) as img:
            assert img.format == "JPEG" and img.mode in ("RGB", "L")
            img.load()  # decodes the whole file: a truncated one raises here
            assert img.size == (rec["width"], rec["height"])
        assert rec["original_width"] >= rec["width"] and rec["original_height"] >= rec["height"]
        short_sides.append(min(img.size))
    # Short side 256 (what EfficientNet-Lite0 resizes to); the few smaller ones were never upscaled.
    assert max(short_sides) == 256 and np.mean(np.equal(short_sides, 256)) > 0.95


def test_no_photo_forbids_modified_copies(raw):
    licences = {lic["id"]: lic for lic in raw["licenses"]}
    used = {rec["license"] for rec in raw["images"]}
    assert not used & NO_DERIVATIVES
    assert used <= set(licences)  # every photo's licence is named in the `licenses` list
    assert all("NoDerivs" not in licences[i]["name"] and licences[i]["url"].startswith("http") for i in used)
    for rec in raw["images"]:
        assert rec["flickr_url"].startswith("http") and rec["coco_url"].startswith("http://images.cocodataset.org/")


def test_attribution_lists_every_photo_with_its_licence_and_urls(sample_coco, raw):
    text = (sample_coco / "ATTRIBUTION.md").read_text(encoding="utf-8")
    licences = {lic["id"]: lic for lic in raw["licenses"]}
    rows = [line for line in text.splitlines() if re.match(r"\| \d{12}\.jpg \|", line)]
    assert len(rows) == NUM_PHOTOS
    for rec in raw["images"]:
        lic = licences[rec["license"]]
        row = f"| {rec['file_name']} | [{lic['name']}]({lic['url']}) | <{rec['flickr_url']}> | <{rec['coco_url']}> |"
        assert row in rows, rec["file_name"]
    # The terms: own licences for the photos, CC BY 4.0 for COCO's captions, not the repository's licence.
    assert "Each photo keeps its own licence" in text
    assert "CC BY 4.0" in text and "https://creativecommons.org/licenses/by/4.0/" in text
    assert "The repository's licence (MIT) covers neither the photos nor the captions." in text
    assert "downscaled" in text  # the change made to the photos is indicated


def test_the_whole_folder_is_at_most_15_mb(sample_coco):
    paths = [sample_coco, *sample_coco.rglob("*")]
    allocated = sum(p.lstat().st_blocks * 512 for p in paths)
    apparent = sum(p.lstat().st_size for p in paths)
    assert apparent <= allocated <= MAX_BYTES, (apparent, allocated)
    if shutil.which("du"):  # the same as `du` counts it
        du = subprocess.run(["du", "-s", "--block-size=1", str(sample_coco)], capture_output=True, text=True)
        if du.returncode == 0:
            assert int(du.stdout.split()[0]) <= MAX_BYTES


def test_photos_of_shared_coco_are_included_when_their_licence_allows(shared_coco, raw):
    shared = json.loads((shared_coco / "captions.json").read_text(encoding="utf-8"))
    allowed = {rec["id"] for rec in shared["images"] if rec["license"] not in NO_DERIVATIVES}
    assert allowed <= {rec["id"] for rec in raw["images"]}


@pytest.mark.slow
def test_the_builder_reproduces_the_sample(sample_coco, tmp_path):
    source, prefer = SHARED / "coco-2500", SHARED / "coco" / "captions.json"
    builder = sample_coco / "build_sample.py"
    if not (source.is_dir() and prefer.is_file()) or SHARED != REPO_ROOT.parent / "shared":
        pytest.skip(f"the builder's default sources ../shared/coco-2500 and ../shared/coco are not at {SHARED}")
    spec = importlib.util.spec_from_file_location("build_sample", builder)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    for name in ("captions.json", "ATTRIBUTION.md"):
        assert (tmp_path / name).read_bytes() == (sample_coco / name).read_bytes(), name
    built = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert built == sorted(p.name for p in (sample_coco / "images").iterdir())
    if Image.__version__ == "13.0.0":  # the Pillow (and libjpeg-turbo) that made the committed files
        for name in built:
            assert (tmp_path / "images" / name).read_bytes() == (sample_coco / "images" / name).read_bytes(), name


# ------------------------------------------------------------------------------------------------ real data use


def test_human_captions_beat_the_most_frequent_caption_on_the_sample(sample_coco):
    """On real captions: a held-out human caption scores far above the one most frequent training caption."""
    coco = load_coco_captions(sample_coco / "captions.json")
    refs = coco.references()
    split = split_by_image(coco.image_ids(), (0.8, 0.2), seed=0)
    train, test = split["train"].tolist(), split["test"].tolist()
    constant = tokenize(most_frequent_caption_baseline(t for i in train for t in refs[i]))
    cider = CiderD([[tokenize(t) for t in refs[i]] for i in train])
    # Leave-one-out: each test photo's first caption against its others ("human" performance).
    human = np.mean([cider.score(tokenize(refs[i][0]), [tokenize(t) for t in refs[i][1:]]) for i in test])
    blind = np.mean([cider.score(constant, [tokenize(t) for t in refs[i][1:]]) for i in test])
    assert human > 0.5 > 0.1 > blind


# ------------------------------------------------------------------------------------------------ the default data


def test_the_sample_is_the_default_unless_a_folder_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("MINICAP_COCO", raising=False)
    assert choose_coco_dir() == (SAMPLE_COCO, "the embedded sample")
    monkeypatch.setenv("MINICAP_COCO", "")  # set but empty, as `MINICAP_COCO= make demo` leaves it
    assert choose_coco_dir(None) == (SAMPLE_COCO, "the embedded sample")
    monkeypatch.setenv("MINICAP_COCO", str(tmp_path / "env"))
    assert choose_coco_dir() == (tmp_path / "env", "$MINICAP_COCO")
    assert choose_coco_dir(tmp_path / "arg") == (tmp_path / "arg", "--coco")  # --coco wins


def test_the_download_hint_offers_the_sample():
    assert "assets/coco" in DOWNLOAD_HINT and f"minicap demo --coco {SAMPLE_COCO}" in DOWNLOAD_HINT


def test_makefile_passes_no_folder_unless_minicap_coco_is_set():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "data/coco" not in makefile
    assert '$(BIN)/minicap demo $(if $(MINICAP_COCO),--coco "$(MINICAP_COCO)")' in makefile


@pytest.mark.slow
def test_minicap_demo_with_no_folder_named_runs_on_the_sample(monkeypatch, tmp_path, capsys):
    """The `make demo` path on a fresh machine: no --coco, no $MINICAP_COCO, no data/coco; offline. Shortened
    (one epoch of a small model) — the real encoder, all 600 photos and the metrics are as in the demo."""
    from minicap.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINICAP_COCO", raising=False)
    args = ["demo", "--out", str(tmp_path / "run"), "--no-progress", "--photos", "2", "--epochs", "1"]
    assert main([*args, "--hidden", "32", "--wordvec", "16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"data: {SAMPLE_COCO}, the embedded sample of real COCO photos")
    assert f"{NUM_CAPTIONS} captions of {NUM_PHOTOS} images from {SAMPLE_COCO}" in out
    assert "60 held-out test photos" in out and "nearest neighbour" in out
    assert (tmp_path / "run" / "captioned_photos.png").is_file() and not (tmp_path / "data").exists()

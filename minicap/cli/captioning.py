"""The captioner's commands: `minicap train`, `demo`, `evaluate` and `caption`. Each builds its captioner from the
one `CaptionerConfig` (flags: `minicap.cli.flags`); the work is in minicap.pipeline (shared with lesson 06) and
minicap.experiments."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from minicap.cli.flags import (
    add_config_flags,
    choices_from_flag,
    config_from_flags,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:  # for annotations only: each command imports what it needs when it runs
    from minicap.coco import CocoCaptions
    from minicap.vision.store import FeatureStore


def _command_errors() -> tuple[type[Exception], ...]:
    """What train, demo and evaluate report as one line instead of a traceback: missing files (a COCO folder
    among them), bad JSON, foreign or truncated checkpoints and stores, missing features (a KeyError), bad options,
    metrics that cannot run, and a training run that diverged."""
    from minicap.metrics import EvaluationUnavailable
    from minicap.safe_io import UnsafePickleError
    from minicap.train import TrainingDiverged

    return OSError, ValueError, LookupError, UnsafePickleError, EvaluationUnavailable, TrainingDiverged


def _failed(error: Exception) -> int:
    """Print `error` for the user and return the exit code: 1 when training diverged (the run failed), 2 for bad
    input (the command could not run as asked)."""
    from minicap.train import TrainingDiverged

    print(f"error: {error}", file=sys.stderr)
    return 1 if isinstance(error, TrainingDiverged) else 2


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
    p.add_argument("--max-seconds", type=positive_float, metavar="S", help="time budget; stops resumably")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(p, seed_synonym=True)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from minicap.pipeline import train_from_files

    try:
        config, given = config_from_flags(args)
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
    except _command_errors() as e:
        return _failed(e)
    print(trained.result.summary())
    return 0


# ----------------------------------------------------------------------------------- demo, evaluate, caption
# The main job end to end. The work is in minicap.pipeline (shared with lesson 06) and minicap.experiments.


def one_blas_thread() -> None:
    """Ask OpenBLAS for one thread unless the user chose: must run before NumPy is first imported.

    The captioner's matrices are small (N=64, H=256). On the shared 2-core machine this was written on, two
    OpenBLAS threads made a training step 2-10x SLOWER whenever another process held a core, and 1.6x faster only
    when the machine was idle (minicap/pipeline/__init__.py has the numbers). Set OPENBLAS_NUM_THREADS=2 to choose two.
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
    p.add_argument("--photos", type=non_negative_int, default=6, help="held-out photos in the figure (default 6)")
    p.add_argument(
        "--max-train-seconds",
        type=positive_float,
        default=None,
        metavar="S",
        help="training time budget (default 100)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seed", dest="old_seed", type=non_negative_int, help="deprecated spelling of --split-seed")
    add_config_flags(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import os

    one_blas_thread()
    from minicap.coco import choose_coco_dir
    from minicap.pipeline import DEMO_TIME_BUDGET, run_demo

    coco, chosen_by = choose_coco_dir(args.coco)  # --coco, else $MINICAP_COCO, else the embedded sample
    if chosen_by == "the embedded sample":
        where = os.path.relpath(coco) if coco.is_relative_to(os.getcwd()) else str(coco)
        print(
            f"data: {where}, the embedded sample of real COCO photos (another folder: --coco DIR or MINICAP_COCO=DIR)"
        )
    else:
        print(f"data: {coco} (from {chosen_by})")
    if args.old_seed is not None:
        print(
            "note: `minicap demo --seed` is deprecated; it sets the split seed: say --split-seed "
            "(--init-seed is the seed of the initialisation and the minibatch order)",
            file=sys.stderr,
        )
        args.split_seed = args.split_seed if args.split_seed is not None else args.old_seed
    try:
        config, _ = config_from_flags(args)
        result = run_demo(
            coco,
            args.out,
            config=config,
            max_train_seconds=args.max_train_seconds if args.max_train_seconds is not None else DEMO_TIME_BUDGET,
            photos=args.photos,
            progress=not args.no_progress,
        )
    except _command_errors() as e:
        return _failed(e)
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
    what.add_argument("--folds", type=number(int, 2), metavar="K", help="K-fold cross-validation (K >= 2)")
    what.add_argument("--checkpoint", metavar="CKPT", help="score this checkpoint on its held-out images")
    p.add_argument("--coco", metavar="DIR", help="COCO folder (DIR/images + DIR/captions.json)")
    p.add_argument("--work", metavar="DIR", default="runs/demo", help="where --coco's encoder/features are cached")
    p.add_argument("--features", metavar="F.pkl", help="feature store (instead of --coco)")
    p.add_argument("--captions", metavar="JSON", help="COCO captions JSON of those images (instead of --coco)")
    p.add_argument("--fold-seed", type=non_negative_int, default=None, help="seed of the folds (default 0)")
    p.add_argument(
        "--fold",
        type=positive_int,
        action="append",
        metavar="I",
        help="with --folds K: run only fold I of the K (repeat for several), e.g. one fold per process; the same "
        "folds as a full run",
    )
    p.add_argument("--seed", dest="old_seed", type=non_negative_int, help="deprecated spelling of --fold-seed")
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
    add_config_flags(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    one_blas_thread()
    from pathlib import Path

    from minicap.experiments import cross_validate
    from minicap.pipeline import evaluate_checkpoint, make_scorer
    from minicap.safe_io import atomic_write_json

    if args.checkpoint and (args.features is None or args.captions is None):
        print("error: --checkpoint needs --features F.pkl and --captions JSON", file=sys.stderr)
        return 2
    if args.folds is not None and args.coco is None and (args.features is None or args.captions is None):
        print("error: --folds needs --coco DIR, or both --features F.pkl and --captions JSON", file=sys.stderr)
        return 2
    if args.choose and args.folds is None:
        print("error: --choose needs --folds K (settings are chosen on each fold's validation slice)", file=sys.stderr)
        return 2
    if args.fold and (args.folds is None or max(args.fold) > args.folds):
        print("error: --fold I needs --folds K with 1 <= I <= K", file=sys.stderr)
        return 2
    if args.old_seed is not None:
        print("note: `minicap evaluate --seed` is deprecated; it sets the seed of the folds: say --fold-seed "
              "(--init-seed is the seed of the initialisation and the minibatch order)", file=sys.stderr)  # fmt: skip
    fold_seed = args.fold_seed if args.fold_seed is not None else (args.old_seed or 0)
    scorer = None
    try:
        config, _ = config_from_flags(args)
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
        choices = choices_from_flag(args.choose, config)  # [config] without --choose
        coco, store = _evaluation_data(args, spatial=any(c.model == "attention" for c in choices))
        cv = cross_validate(
            coco, store, args.folds, choices[0], scorer, seed=fold_seed, log=print, progress=not args.no_progress,
            choices=choices[1:], only_folds=args.fold,
        )  # fmt: skip
    except _command_errors() as e:
        return _failed(e)
    finally:
        if scorer is not None:
            scorer.close()
    print()
    print(cv.table())
    ran = "" if len(cv.folds) == cv.k else f"{len(cv.folds)} of "
    print(f"({cv.seconds:.0f} s for {ran}{cv.k} folds)")
    if args.out:
        atomic_write_json(Path(args.out), cv.to_dict())
        print(f"per-fold numbers -> {args.out}")
    return 0


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
    p.add_argument("--beam", type=positive_int, default=1, metavar="K", help="beam width; 1 = greedy (default 1)")
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
    one_blas_thread()
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


SUBCOMMANDS = [_add_train, _add_demo, _add_evaluate, _add_caption]

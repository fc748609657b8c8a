"""What the commands' flags accept: finite numbers in a range (argparse types) and the captioner's flags.

`minicap train`, `demo` and `evaluate` build the same captioner from the one `CaptionerConfig`; each flag of
`CONFIG_FLAGS` overrides one of its fields, and `--choose FLAG=V1,V2` (evaluate) turns flags into candidate
settings to choose from on validation photos.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minicap.config import CaptionerConfig


# ----------------------------------------------------------------------------------------------- numbers


def number(kind: type, low: float, low_included: bool = True, high: float | None = None) -> Callable[[str], float]:
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


positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, low_included=False)
non_negative_float = number(float, 0)
fraction = number(float, 0, high=1)


def yes_no(text: str) -> bool:
    """An argparse type: yes/no (also true/false, on/off, 1/0) -> bool."""
    words = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return words[text.lower()]


# ----------------------------------------------------------------------------------------------- the configuration
# `minicap train`, `demo` and `evaluate` build the same captioner from the one CaptionerConfig; each of these flags
# overrides one of its fields (defaults None, so that a resumed run can tell a flag given on purpose from a default).


# flag, CaptionerConfig field, type, help (the default is read from CaptionerConfig and added to the help)
CONFIG_FLAGS: list[tuple[str, str, object, str]] = [
    (
        "--model",
        "model",
        ["meanpool", "attention"],
        "captioner: one pooled vector, or soft attention over the spatial "
        "maps (needs features extracted with --spatial)",
    ),
    ("--cell", "cell", ["lstm", "rnn"], "recurrent cell"),
    ("--hidden", "hidden_size", positive_int, "hidden size H"),
    ("--wordvec", "wordvec_size", positive_int, "word-vector size W"),
    ("--dropout", "dropout", fraction, "inverted dropout rate on word vectors and LSTM outputs (training)"),
    ("--attention-size", "attention_size", positive_int, "attention size A (--model attention)"),
    ("--attention-reg", "attention_reg", non_negative_float, "λ of the doubly stochastic regulariser (attention)"),
    ("--deep-output", "deep_output", yes_no, "yes: the paper's deep output layer (attention)"),
    ("--min-count", "min_count", positive_int, "keep words seen at least this often in the training captions"),
    ("--max-length", "max_length", positive_int, "longest training caption in words; longer ones are cut"),
    ("--split-seed", "split_seed", non_negative_int, "seed of the train/val/test split by image"),
    ("--test-fraction", "test_fraction", fraction, "fraction of the images held out for testing"),
    ("--test-images", "min_test_images", positive_int, "at least this many test images (at most a fifth)"),
    ("--val-fraction", "val_fraction", fraction, "fraction of the rest that picks the best epoch"),
    ("--epochs", "epochs", positive_int, "epochs"),
    ("--batch-size", "batch_size", positive_int, "captions per update"),
    ("--lr", "lr", positive_float, "peak learning rate of Adam"),
    ("--schedule", "schedule", ["cosine", "constant"], "learning-rate schedule"),
    ("--clip", "clip", positive_float, "global gradient-norm threshold"),
    ("--weight-decay", "weight_decay", non_negative_float, "decoupled (AdamW) weight decay"),
    ("--patience", "patience", non_negative_int, "epochs without improvement before stopping; 0 = never"),
    ("--init-seed", "seed", non_negative_int, "seed of the initialisation, the dropout masks and the minibatch order"),
    ("--early-stopping", "early_stopping", ["cider", "loss"], "best epoch by validation CIDEr-D or loss"),
    ("--beam", "beam_size", positive_int, "beam width reported beside greedy decoding"),
    ("--length-penalty", "length_penalty", non_negative_float, "GNMT length penalty alpha of beam search"),
]


def add_config_flags(p: argparse.ArgumentParser, seed_synonym: bool = False) -> None:
    """One flag per CaptionerConfig field. seed_synonym: `--seed` is also accepted for `--init-seed` (`minicap train`;
    in `demo` and `evaluate` `--seed` is the deprecated spelling of the split's or the folds' seed)."""
    from minicap.config import CaptionerConfig

    defaults = CaptionerConfig()
    group = p.add_argument_group("captioner (each flag overrides one field of the one CaptionerConfig)")
    for flag, field, kind, text in CONFIG_FLAGS:
        names = [flag, "--seed"] if seed_synonym and flag == "--init-seed" else [flag]
        default = getattr(defaults, field)
        default_text = "never" if field == "patience" and default is None else default
        if isinstance(default, bool):
            default_text = "yes" if default else "no"
        if isinstance(kind, list):
            group.add_argument(*names, dest=field, choices=kind, help=f"{text} (default {default_text})")
        else:
            metavar = "yes|no" if kind is yes_no else None
            group.add_argument(*names, dest=field, type=kind, metavar=metavar, help=f"{text} (default {default_text})")


def config_from_flags(args: argparse.Namespace) -> tuple[CaptionerConfig, list[str]]:
    """The one CaptionerConfig with the flags the user gave applied, and the names of the fields they set."""
    from minicap.config import CaptionerConfig

    given = {field: getattr(args, field) for _, field, _, _ in CONFIG_FLAGS if getattr(args, field, None) is not None}
    if given.get("patience") == 0:
        given["patience"] = None  # 0 on the command line: no early stopping
    if "min_test_images" in given and "test_fraction" not in given:
        given["test_fraction"] = 0.0  # --test-images N alone: exactly N test images (at most a fifth)
    return CaptionerConfig().replace(**given), sorted(given)


def choices_from_flag(given: list[str], config: CaptionerConfig) -> list[CaptionerConfig]:
    """`--choose FLAG=V1,V2` (repeated: their grid) -> the configs to choose from, `config` changed by each
    combination; the first combination's config comes first. No --choose: [config]."""
    import itertools

    kinds = {flag[2:]: (field, kind) for flag, field, kind, _ in CONFIG_FLAGS}
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

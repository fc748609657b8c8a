"""The `minicap` command line. Only `minicap/__main__.py` and the console script import this package.

Each subcommand is a pair of functions: `_add_<name>(subparsers)` declares its arguments and sets
`func=_run_<name>`; `_run_<name>(args) -> int` imports what it needs (lazily, so `minicap --help` is instant),
calls the library and returns the exit code. The library functions do the work; these stay thin.

    flags.py      what the flags accept; the captioner's flags (one per CaptionerConfig field) and --choose
    data.py       data download, extract, encoder build: photos, the ONNX encoder, features extracted once
    captioning.py train, demo, evaluate, caption: the captioner of the one CaptionerConfig
    (here)        gradcheck, and the entry point `main`
"""

from __future__ import annotations

import argparse
import sys

from minicap.cli import captioning, data

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


# ----------------------------------------------------------------------------------------------- entry point

_SUBCOMMANDS = [_add_gradcheck, *data.SUBCOMMANDS, *captioning.SUBCOMMANDS]


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

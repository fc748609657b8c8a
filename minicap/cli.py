"""The `minicap` command line. Only `minicap/__main__.py` and the console script import this module.

Each subcommand is a pair of functions: `_add_<name>(subparsers)` declares its arguments and sets
`func=_run_<name>`; `_run_<name>(args) -> int` imports what it needs (lazily, so `minicap --help` is instant),
calls the library and returns the exit code. The library functions do the work; these stay thin.
"""

from __future__ import annotations

import argparse
import sys

# ----------------------------------------------------------------------------------------------- gradcheck


def _add_gradcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcheck", help="check every layer's and the caption model's gradients numerically")
    p.set_defaults(func=_run_gradcheck)


def _run_gradcheck(args: argparse.Namespace) -> int:
    from minicap.gradcheck import run_all_checks

    return 0 if run_all_checks(verbose=True) else 1


# ----------------------------------------------------------------------------------------------- entry point

_SUBCOMMANDS = [
    _add_gradcheck,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicap", description="Image captioning from scratch in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

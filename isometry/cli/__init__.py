"""The `isometry` command: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=run` on it; `run(args)` returns the exit code. Errors in arguments print one line and
exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys


#: Subcommand modules, in the order `isometry --help` lists them.
SUBCOMMANDS = ["spectrum", "train", "plot", "toy", "theory", "reproduce", "diagnose"]


class UsageError(ValueError):
    """A bad argument value found after parsing: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit code 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isometry",
                     description="Jacobian singular-value spectra for dynamical-isometry analysis.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"isometry.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        sys.stderr.write(f"isometry {args.command}: error: {err}\n")
        return 2


def comma_list(kind=str):
    """An argparse type for comma-separated lists: "4,16" -> [4, 16]."""

    def parse(text: str):
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                             f"{kind.__name__}, got {text!r}") from None

    parse.__name__ = f"list of {kind.__name__}"
    return parse

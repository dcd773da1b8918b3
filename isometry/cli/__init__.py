"""The `isometry` command: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=run` on it; `run(args)` returns the exit code. Errors in arguments, data files and run
directories print one line and exit with code 2; Ctrl-C prints one line and exits with 130.
Output folders are checked for writability before anything is computed (`output_dir`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile


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
    from isometry.data import DataError

    try:
        return int(args.func(args) or 0)
    except (UsageError, DataError) as err:
        sys.stderr.write(f"isometry {args.command}: error: {_one_line(err)}\n")
        return 2
    except KeyboardInterrupt as err:
        step = getattr(err, "step", None)
        where = getattr(err, "run_dir", None)
        lead = "\n" if sys.stderr.isatty() else ""  # past the terminal's ^C
        if step is not None and where is not None:
            sys.stderr.write(f"{lead}isometry {args.command}: stopped at step {step}; continue with "
                             f"--resume (checkpoint in {where})\n")
        else:
            sys.stderr.write(f"{lead}isometry {args.command}: interrupted\n")
        return 130


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def output_dir(path: str, option: str = "--out", create: bool = True) -> str:
    """Checks (before any computing) that `path` is, or can be made, a writable folder.

    Creates it (and its parents) unless `create` is False; raises `UsageError` naming the path
    and the reason (not a folder, read-only, no permission).
    """
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{option} {path!r} is a file, not a folder")
        if create:
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            raise UsageError(f"{option} {path!r} does not exist")
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(f"{option} {path!r} is not a writable folder ({reason})") from None
    return path


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

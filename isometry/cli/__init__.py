"""The `isometry` command: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=run` on it; `run(args)` returns the exit code. Only the module of the command that runs
is imported (`build_parser`): `isometry --help` and every command start without loading the
other commands' dependencies. Errors in arguments, data files and run
directories print one line and exit with code 2; Ctrl-C prints one line and exits with 130.
Output folders are checked for writability before anything is computed (`output_dir`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import tempfile

from isometry.data import DataError

#: Subcommand modules, in the order `isometry --help` lists them, with their one-line help.
SUMMARIES = {
    "spectrum": "Jacobian singular-value spectra of models at init",
    "train": "train a model, tracking Jacobian spectra during training",
    "plot": "figures of a training run directory",
    "toy": "the (1 + αw)^L toy of the ReZero paper: Figure 2 and learning rate versus depth",
    "theory": "predicted vs measured Jacobian spectra of plain FC nets",
    "reproduce": "reproduce one of the paper's figures or tables",
    "diagnose": "diagnose a model's signal propagation: findings and fixes",
}
SUBCOMMANDS = list(SUMMARIES)


class UsageError(ValueError):
    """A bad argument value found after parsing: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit code 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The `isometry` parser, with the full options of `commands` (None: of every command).

    The other commands are listed by name and help only. Their modules, which import jax,
    flax, scipy or matplotlib at their top, are imported here and only here, by name: this
    lazy import is on purpose, so that a command (and `isometry --help`) starts fast.
    """
    wanted = SUBCOMMANDS if commands is None else commands
    parser = _Parser(prog="isometry",
                     description="Jacobian singular-value spectra for dynamical-isometry analysis.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, summary in SUMMARIES.items():
        if name in wanted:
            importlib.import_module(f"isometry.cli.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not an option (None: none)."""
    return next((word for word in argv if not word.startswith("-")), None)


#: Environment variable naming the folder where compiled programs persist between runs of a
#: command (jax's persistent compilation cache); "off" turns it off.
CACHE_ENV = "ISOMETRY_COMPILATION_CACHE"


def use_compilation_cache(environ=os.environ) -> str | None:
    """Lets jax keep compiled programs on disk between commands, before jax is imported.

    The folder is $ISOMETRY_COMPILATION_CACHE (default ~/.cache/isometry/jax; "off": none),
    unless jax's own JAX_COMPILATION_CACHE_DIR is set. A second `isometry spectrum` of the same
    shapes then loads its programs instead of compiling them (0.7 s instead of 3.9 s for a
    d = 16 matrix-free spectrum here). Programs that compiled in under 0.3 s are not kept
    (an entry is ~100 KB; delete the folder to reclaim it). Returns the folder (None: off or
    not writable).
    """
    folder = environ.get("JAX_COMPILATION_CACHE_DIR") or environ.get(
        CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "isometry", "jax"))
    if folder.lower() == "off":
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without the cache
        return None
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", folder)
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    return folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if "jax" not in sys.modules:  # read by jax when it is imported (by the command)
        use_compilation_cache()
    parser = build_parser([command_of(argv)])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2

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


@dataclasses.dataclass(frozen=True)
class CommaList:
    """An argparse type for comma-separated lists of `kind`.

    >>> CommaList(int)("4,16,")
    [4, 16]
    """

    kind: type = str

    def __call__(self, text: str) -> list:
        try:
            return [self.kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                             f"{self.kind.__name__}, got {text!r}") from None

    def __repr__(self) -> str:  # how argparse names the type in its messages
        return f"list of {self.kind.__name__}"


def comma_list(kind=str) -> CommaList:
    """An argparse type for comma-separated lists: `comma_list(int)("4,16")` is [4, 16]."""
    return CommaList(kind)

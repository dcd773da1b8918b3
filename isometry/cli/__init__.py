"""The `isometry` command: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=run` on it; `run(args)` returns the exit code. Only the module of the command that runs
is imported (`build_parser`): `isometry --help` and every command start without loading the
other commands' dependencies. Errors in arguments, data files and run
directories print one line and exit with code 2, as does a full disk (or quota): the files
written before stay whole (`isometry._io.atomic_write`); Ctrl-C prints one line and exits
with 130. Output folders are checked for writability before anything is computed
(`output_dir`). A command module imports nothing heavy at its top (jax, flax, scipy,
matplotlib): its parser and the checks of the parsed values answer before `run` imports them.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import os
import re
import shutil
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

    The other commands are listed by name and help only. The command modules are imported
    here and only here, by name; none imports jax, flax, scipy or matplotlib at its top (its
    `run` does, after checking the parsed arguments), so `isometry --help`, a command's
    `--help` and every argument error answer in a fraction of a second
    (tests/test_cli_errors.py).
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


#: A value that starts with "-" and a digit or ".": a negative number or list ("-1,1").
_NEGATIVE = re.compile(r"^-\.?\d")


def join_negative_values(argv: list[str]) -> list[str]:
    """`--opt -1,1` as `--opt=-1,1`: argparse reads a word like "-1,1" as an option.

    argparse takes "-1" and "-2.5" as values but not "-1,1" or "-1e-3"; joining every word
    that looks like a negative number to the long option before it lets `--range -3,1`,
    `--w-range -2.5,2.5` or `--lr -1e-3` mean what they say (a flag before such a word was an
    error anyway). Words after "--" are left alone.
    """
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        prev = out[-1] if out else ""
        if _NEGATIVE.match(word) and prev.startswith("--") and "=" not in prev and prev != "--":
            out[-1] = f"{prev}={word}"
        else:
            out.append(word)
    return out


#: errno values of a full disk or quota, and how the one line names them.
_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
#: errno values of a file the command cannot read or write (permissions, read-only file
#: system, a folder or file in the way): one line naming the file, as for a full disk.
_FILE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
                errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG}


def disk_full_message(err: OSError, args) -> str:
    """The one line for a write that found the disk (or quota) full: which path (the error's
    file, else the command's --out or --run-dir), the free space there, and what to do."""
    where = err.filename or next((getattr(args, name) for name in ("out", "run_dir")
                                  if getattr(args, name, None)), None)
    line = _DISK_FULL[err.errno]
    if where is not None:
        where = os.fspath(where)
        line += f" writing {where!r}" if err.filename else f" writing into {where!r}"
        try:
            folder = os.path.dirname(os.path.abspath(where)) if err.filename else where
            line += f" ({_size(shutil.disk_usage(folder).free)} free there)"
        except OSError:
            pass
    again = "the same command with --resume" if getattr(args, "command", "") == "train" \
        else "the command again"
    return (f"{line}; the files written before are intact (each file is replaced whole or "
            f"not at all): free some space and run {again}")


def _size(n: float) -> str:
    """A byte count as people read it: 0 B, 512 B, 3.2 MB, 84.7 GB."""
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.3g} {units[i]}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are files: no display needed
    argv = join_negative_values(argv)
    if "jax" not in sys.modules:  # read by jax when it is imported (by the command)
        use_compilation_cache()
    parser = build_parser([command_of(argv)])
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's parser, as its other argument errors are
        prog = f"isometry {args.command}" if args.command else "isometry"
        sys.stderr.write(f"{prog}: error: unrecognized arguments: {' '.join(unknown)}\n")
        raise SystemExit(2)
    if args.command is None:
        parser.print_help()
        return 2

    try:
        return int(args.func(args) or 0)
    except (UsageError, DataError) as err:
        sys.stderr.write(f"isometry {args.command}: error: {_one_line(err)}\n")
        return 2
    except MemoryError as err:  # the toolkit's own size checks (they say what to change)
        if not str(err):
            raise
        sys.stderr.write(f"isometry {args.command}: error: {_one_line(err)}\n")
        return 2
    except OSError as err:
        if err.errno in _DISK_FULL:
            line = disk_full_message(err, args)
        elif err.errno in _FILE_ERRORS and err.filename:  # of a rename: the target
            line = f"{err.strerror or err}: {os.fspath(err.filename2 or err.filename)!r}"
        else:
            raise
        sys.stderr.write(f"isometry {args.command}: error: {_one_line(line)}\n")
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

"""`isometry reproduce NAME`: one of the paper's results as NAME.png, NAME.json and NAME.md.

    isometry reproduce fig5 --scale cpu --out docs/reproduce
    isometry reproduce table2 --scale paper --data-dir ~/data     # CIFAR-10 from ~/data

NAME: fig2 (toy model), fig4 (Jacobian spectra), fig5 (FC nets), fig7 / table3 (character
Transformers), fig8 (ReZero α's), table2 (ResNets), depth (10,000-layer FC nets and 128-layer
Transformers). --scale smoke runs in seconds, cpu in under
15 minutes on two CPU cores, paper uses the paper's settings (meant for a GPU).
"""

from __future__ import annotations

import argparse
import os

from isometry.cli import UsageError, output_dir
from isometry.cli._names import EXPERIMENTS, SCALES, SWEEPABLE

# The experiments (jax, flax, matplotlib) are imported by `run`, after the checks of the
# arguments: an argument error answers without loading them.


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce one of the paper's figures or tables",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--scale", default="cpu", help=f"{' | '.join(SCALES)} (default: cpu)")
    p.add_argument("--out", default=".", help="output folder (default: .)")
    p.add_argument("--data-dir", default=None,
                   help="folder with cifar-10-python.tar.gz and/or enwik8 (default: synthetic "
                        "images and a local text)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--lr-sweep", nargs="?", const="0.1,0.3,1,3,10", default=None,
                   metavar="F1,F2,...",
                   help="also train each variant at its best learning rate of the grid "
                        "shared lr × F (default grid 0.1,0.3,1,3,10; same budget for all, "
                        "chosen by the final training loss) and report the speed-ups at both "
                        "(fig5, fig7 / table3, table2)")
    p.add_argument("--runs", default=None,
                   help="folder for the training runs' run directories (default: OUT/runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.name not in EXPERIMENTS:
        raise UsageError(f"unknown NAME {args.name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if args.scale not in SCALES:
        raise UsageError(f"unknown --scale {args.scale!r}; choose one of {', '.join(SCALES)}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir!r} is not a folder")
    factors = _factors(args.lr_sweep)
    if factors is not None and args.name not in SWEEPABLE:
        raise UsageError(f"{args.name} trains nothing with a shared learning rate to sweep; "
                         f"--lr-sweep works with {', '.join(SWEEPABLE)}")
    output_dir(args.out)  # before computing: a path that cannot be written fails at once
    if args.runs is not None:
        output_dir(args.runs, "--runs")
    from isometry.experiments import reproduce
    from isometry.train._tracking import RunDirError
    from isometry.train import RunConfigError

    try:
        paths = reproduce(args.name, args.scale, args.out, data_dir=args.data_dir, seed=args.seed,
                          runs_dir=args.runs, lr_sweep=factors)
    except (RunConfigError, RunDirError) as err:  # a broken or foreign run under --runs
        raise UsageError(str(err)) from None
    for kind in ("png", "json", "md"):
        print(paths[kind])
    return 0


def _factors(text: str | None) -> tuple[float, ...] | None:
    """--lr-sweep's factors: positive finite numbers separated by commas."""
    if text is None:
        return None
    try:
        factors = tuple(float(f) for f in text.split(","))
    except ValueError:
        factors = ()
    if not factors or not all(0 < f < float("inf") for f in factors):
        raise UsageError(f"--lr-sweep {text!r}: give positive factors of the shared learning "
                         f"rate separated by commas, e.g. --lr-sweep 0.1,0.3,1,3,10")
    return factors

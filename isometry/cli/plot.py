"""`isometry plot RUN_DIR`: the figures of a training run made by `isometry train`.

Writes into RUN_DIR (or --out): loss.png (training and held-out loss, accuracy or bits per
byte), spectra.png (log10 σ histograms over steps, Figure 4b–d style), alpha.png (|α| over
layers and steps, Figure 8 style; only for models with α) and chi.png (chi, σ_max, σ_min).
Works on a run that is still going (a torn last line is skipped).
"""

from __future__ import annotations

import os
import sys
import warnings

from isometry.cli import UsageError, comma_list, output_dir


def register(sub) -> None:
    p = sub.add_parser("plot", help="figures of a training run directory", description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `isometry train`")
    p.add_argument("--out", default=None, help="where the PNGs go (default: RUN_DIR)")
    p.add_argument("--range", type=comma_list(float), default=None, metavar="LO,HI",
                   help="log10 sigma range of spectra.png, e.g. -3,1 (default: the range of the data)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.range is not None and (len(args.range) != 2 or not args.range[0] < args.range[1]):
        raise UsageError(f"--range takes two numbers LO,HI with LO < HI (e.g. --range -3,1), "
                         f"got {args.range}")
    if not os.path.isfile(os.path.join(args.run_dir, "metrics.jsonl")):
        what = "does not exist" if not os.path.exists(args.run_dir) else "holds no metrics.jsonl"
        raise UsageError(f"RUN_DIR {args.run_dir!r} {what}: not a run directory of isometry train")
    # imported here, after the checks of the arguments: an argument error answers without
    # loading matplotlib and the tracking module
    from isometry import plot
    from isometry.train._tracking import read_metrics

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = read_metrics(args.run_dir)
    except (OSError, ValueError) as err:  # unreadable, or not a run's metrics
        raise UsageError(str(err)) from None
    for w in caught:
        print(f"isometry plot: {w.message}", file=sys.stderr)
    if not records:
        raise UsageError(f"{args.run_dir!r} has no records yet")
    out = output_dir(args.out or args.run_dir, "--out" if args.out else "RUN_DIR")
    name = os.path.basename(os.path.normpath(args.run_dir))
    figures = {"loss.png": plot.training_curves, "spectra.png": plot.spectrum_heatmap,
               "alpha.png": plot.alpha_heatmap, "chi.png": plot.chi_curve}
    written = []
    for filename, make in figures.items():
        if filename == "alpha.png" and not any(r.get("alpha") for r in records):
            continue
        if filename in ("spectra.png", "chi.png") and not any("histogram" in r for r in records):
            continue
        if filename == "spectra.png":
            fig = make(records, run_dir=args.run_dir,
                       range=tuple(args.range) if args.range else None)
        else:
            fig = make(records, title=name if filename == "loss.png" else None)
        written.append(plot.save(fig, os.path.join(out, filename)))
    print("wrote " + ", ".join(written), file=sys.stderr)
    return 0

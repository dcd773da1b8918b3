"""`isometry toy`: the paper's Figure 2 toy x_L = (1 + αw)^L x_0, as PNG and JSON.

Writes fig2.png (log gradient norm over (w, α), ReZero descent paths from α = 0 in red, the
zero-loss curve αw = T^{1/L} − 1) and fig2.json (setup; per path its start, final α and w,
α·w, steps; the contour grid and the paths), in the schema of `isometry reproduce fig2`
(`isometry.experiments.fig2.record`). With --depth-sweep also lr_depth.png and lr_depth.json: the largest converging
learning rate and the fewest steps versus depth, residual (α = 1) against ReZero (α₀ = 0).
"""

from __future__ import annotations

import math
import os
import sys
from types import SimpleNamespace

from isometry._io import write_json
from isometry.cli import UsageError, comma_list, output_dir
from isometry.cli._names import FIG2_DEFAULTS, SWEEP_DEFAULTS

# The experiments (JAX, matplotlib) are imported inside the functions, after the checks of the
# arguments: `isometry --help` and an argument error answer without loading them. The parser's
# defaults are `_names`' copy of the experiments' settings.


def register(sub) -> None:
    fig2, sweep = SimpleNamespace(**FIG2_DEFAULTS), SimpleNamespace(**SWEEP_DEFAULTS)
    p = sub.add_parser("toy", help="the (1 + αw)^L toy of the ReZero paper: Figure 2 and "
                                   "learning rate versus depth", description=__doc__)
    p.add_argument("--out", default="isometry-toy",
                   help="directory for fig2.png/json (default: ./isometry-toy)")
    p.add_argument("--depth", type=int, default=fig2.depth, help=f"L (default: {fig2.depth})")
    p.add_argument("--target", type=float, default=fig2.target,
                   help=f"target gain T (default: {fig2.target:g})")
    p.add_argument("--inputs", type=comma_list(float), default=list(fig2.inputs),
                   help="training inputs x_0 (default: 1.0,1.1,...,1.8)")
    p.add_argument("--lr", type=float, default=fig2.lr, help=f"learning rate (default: {fig2.lr:g})")
    p.add_argument("--w-starts", type=comma_list(float), default=list(fig2.w_starts),
                   help="initial w of the paths from alpha = 0 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=fig2.max_steps,
                   help=f"most descent steps per path (default: {fig2.max_steps})")
    p.add_argument("--tol", type=float, default=fig2.tol,
                   help=f"converged when the loss is <= tol (default: {fig2.tol:g})")
    p.add_argument("--w-range", type=comma_list(float), default=list(fig2.w_range),
                   help="contour grid range of w, 'low,high' (default: -2.5,2.5)")
    p.add_argument("--alpha-range", type=comma_list(float), default=list(fig2.alpha_range),
                   help="contour grid range of alpha, 'low,high' (default: -1.5,1.5)")
    p.add_argument("--grid", type=int, default=fig2.grid_size,
                   help=f"grid points per axis (default: {fig2.grid_size})")
    p.add_argument("--no-residual", action="store_true",
                   help="leave out the vanilla residual paths (alpha fixed at 1)")
    p.add_argument("--depth-sweep", action="store_true",
                   help="also sweep depth: largest converging learning rate and fewest steps")
    p.add_argument("--depths", type=comma_list(int), default=list(sweep.depths),
                   help="depths of the sweep (default: 2,...,32)")
    p.add_argument("--w0", type=float, default=sweep.w0,
                   help="initial w of the sweep, both toys (default: 1)")
    p.add_argument("--sweep-steps", type=int, default=sweep.max_steps,
                   help=f"step budget that defines 'converges' in the sweep (default: {sweep.max_steps})")
    p.set_defaults(func=run)


def _pair(name: str, values: list[float]) -> tuple[float, float]:
    if len(values) != 2:
        raise UsageError(f"--{name} takes two numbers 'low,high', got {values}")
    return float(values[0]), float(values[1])


#: Setting names in the library's messages -> the options that set them.
_FIG2_OPTIONS = {"grid_size": "--grid", "max_steps": "--steps", "w_starts": "--w-starts",
                 "w_range": "--w-range", "alpha_range": "--alpha-range", "depth": "--depth",
                 "target": "--target", "inputs": "--inputs", "lr": "--lr", "tol": "--tol"}
_SWEEP_OPTIONS = {"max_steps": "--sweep-steps", "depths": "--depths", "depth": "--depths: depth"}


def _usage(err: ValueError, options: dict) -> UsageError:
    message = str(err)
    for name, option in options.items():
        if message.startswith(name + " "):
            return UsageError(option + message[len(name):])
    return UsageError(message)


def check_args(args) -> None:
    """The checks of the counts and ranges that need no experiment module (the settings'
    own `check` does the rest)."""
    for name in ("w-range", "alpha-range"):
        lo, hi = _pair(name, getattr(args, name.replace("-", "_")))
        if not lo < hi:
            raise UsageError(f"--{name} must be 'low,high' with low < high, got {lo:g},{hi:g}")
    for option, value, least in (("--depth", args.depth, 1), ("--steps", args.steps, 1),
                                 ("--grid", args.grid, 2), ("--sweep-steps", args.sweep_steps, 1)):
        if value < least:
            raise UsageError(f"{option} must be at least {least}, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr:g}")
    if not args.w_starts:
        raise UsageError("--w-starts needs at least one initial w, e.g. --w-starts 0.5,1")
    if args.depth_sweep and (not args.depths or min(args.depths) < 1):
        raise UsageError(f"--depths needs positive depths, got {args.depths}")


def settings(args):
    """(Figure2Settings, DepthSweepSettings or None) from the arguments, checked (after
    `check_args`)."""
    from isometry.experiments import fig2 as fig2_experiment, toy_depth

    fig2 = fig2_experiment.Figure2Settings(
        depth=args.depth, target=args.target, inputs=tuple(args.inputs),
        w_starts=tuple(args.w_starts), lr=args.lr, max_steps=args.steps, tol=args.tol,
        w_range=_pair("w-range", args.w_range), alpha_range=_pair("alpha-range", args.alpha_range),
        grid_size=args.grid, residual=not args.no_residual)
    try:
        fig2.check()
    except ValueError as err:
        raise _usage(err, _FIG2_OPTIONS) from None
    if not args.depth_sweep:
        return fig2, None
    sweep = toy_depth.DepthSweepSettings(depths=tuple(args.depths), target=args.target,
                                   inputs=tuple(args.inputs), w0=args.w0,
                                   max_steps=args.sweep_steps, tol=args.tol)
    try:
        return fig2, sweep.check()
    except ValueError as err:
        raise _usage(err, _SWEEP_OPTIONS) from None


def _print_paths(record: dict) -> None:
    print(f"zero-loss curve alpha*w = {record['solution_product']:.10g}; "
          f"alpha = 1 stability bound lr < {record['residual_stability_bound']:.4g}")
    print(f"{'path':<9}{'w0':>8}{'alpha0':>8}{'final w':>11}{'final a':>11}{'a*w':>11}"
          f"{'steps':>8}  outcome")
    for name in ("rezero", "residual"):
        for r in record.get(name, []):
            outcome = "converged" if r["converged"] else "diverged" if r["diverged"] else "budget"
            print(f"{name:<9}{r['w0']:>8.3g}{r['alpha0']:>8.3g}{_num(r['final_w'])}"
                  f"{_num(r['final_alpha'])}{_num(r['final_product'])}{r['steps']:>8}  {outcome}")


def _print_scaling(record: dict) -> None:
    for name in ("residual", "rezero"):
        fit = record[name]["scaling"]
        if fit.get("better"):
            print(f"{name}: largest lr ~ exp({fit['exponential']['slope']:.3f} L) "
                  f"[rms {fit['exponential']['rms_log_residual']:.2f}] or "
                  f"L^{fit['power_law']['slope']:.2f} [rms {fit['power_law']['rms_log_residual']:.2f}]"
                  f" -> {fit['better']} fits better over L = {fit['depths_used']}")
        else:
            print(f"{name}: too few depths converged to fit ({fit['depths_used']})")


def run(args) -> int:
    check_args(args)
    output_dir(args.out)  # before computing: a path that cannot be written fails at once
    from isometry import plot
    from isometry.experiments import fig2, toy_depth

    fig2_settings, sweep_settings = settings(args)
    record = fig2.record(fig2.figure2(fig2_settings))  # the schema of `reproduce fig2`
    _print_paths(record)
    written = [plot.save(fig2.figure(record), os.path.join(args.out, "fig2.png")),
               write_json(os.path.join(args.out, "fig2.json"), record)]
    if sweep_settings is not None:
        record = toy_depth.record(toy_depth.depth_sweep(sweep_settings, progress=sys.stderr.isatty()))
        _print_scaling(record)
        written.append(plot.save(toy_depth.figure(record), os.path.join(args.out, "lr_depth.png")))
        written.append(write_json(os.path.join(args.out, "lr_depth.json"), record))
    print("wrote " + ", ".join(written), file=sys.stderr)
    return 0


def _num(x) -> str:
    return f"{'nan':>11}" if x is None else f"{x:>11.5g}"

"""The spectrum engine on the command line: `--method` and the engine's settings.

    --method auto|dense|lanczos   the engine (default: auto, dense up to 4096 dimensions)
    --k N  --rtol R  --max-steps N  --lanczos-steps N  --lanczos-probes N  --chi-probes N
    --block-size N                the matrix-free engine's settings (`iso.lanczos`)
    --chunk-size N                the dense engine's products at once (`iso.dense`)
    --memory-budget GIB           the budget of both engines, in GiB

The parser takes them as plain values (parsing must not import jax); `engine_from_args` builds
the validated settings object when the command runs, and a bad value is one line and exit 2
naming the option.
"""

from __future__ import annotations

import re

from isometry.cli import UsageError

__all__ = ["add_engine_args", "engine_from_args"]

#: option -> (engine setting, the engine that has it).
OPTIONS = {"--k": ("k", "lanczos"), "--rtol": ("rtol", "lanczos"),
           "--max-steps": ("max_steps", "lanczos"), "--lanczos-steps": ("num_steps", "lanczos"),
           "--lanczos-probes": ("num_probes", "lanczos"), "--chi-probes": ("chi_probes", "lanczos"),
           "--block-size": ("block_size", "lanczos"), "--chunk-size": ("chunk_size", "dense"),
           "--memory-budget": ("memory_budget", "both")}


def add_engine_args(group, *, default: str = "auto", dense_only: bool = False) -> None:
    """Adds `--method` and the engine settings to an argparse parser or group (`dense_only`:
    the dense engine's `--chunk-size` and `--memory-budget` alone, for `diagnose`)."""
    if dense_only:
        group.set_defaults(method="dense")
        _add_dense_args(group)
        return
    group.add_argument("--method", default=default, choices=("auto", "dense", "lanczos"),
                       help=f"spectrum engine: dense Jacobian + SVD, matrix-free Lanczos, or "
                            f"auto by size (dense up to 4096 dimensions; default: {default})")
    number = dict(type=int, default=None)
    group.add_argument("--k", **number, help="matrix-free: top singular values to certify "
                                             "(default: 10, at most the smaller side of J)")
    group.add_argument("--rtol", type=float, default=None,
                       help="matrix-free: relative accuracy of the top k (default: 1e-6)")
    group.add_argument("--max-steps", **number,
                       help="matrix-free: most vectors of the top run (default: 256)")
    group.add_argument("--lanczos-steps", **number,
                       help="matrix-free: vectors per density probe (default: 64)")
    group.add_argument("--lanczos-probes", **number,
                       help="matrix-free: random probes of the density (default: 8)")
    group.add_argument("--chi-probes", **number,
                       help="matrix-free: Hutchinson probes of chi (default: 64)")
    group.add_argument("--block-size", **number,
                       help="matrix-free: vectors per Golub-Kahan step (default: by cost)")
    _add_dense_args(group)


def _add_dense_args(group) -> None:
    group.add_argument("--chunk-size", type=int, default=None,
                       help="dense: Jacobian-vector products at once (default: all)")
    group.add_argument("--memory-budget", type=float, default=None,
                       help="GiB the engine's arrays may take (default: 4)")


def engine_from_args(args, n_short: int | None = None):
    """The engine settings the options ask for (`iso.engine_of`), or UsageError naming the
    option. With `n_short` (the smaller side of J), the default k of 10 is capped to it."""
    from isometry.spectrum._engine import engine_of

    settings, used = {}, {}
    for option, (name, engine) in OPTIONS.items():
        value = getattr(args, option[2:].replace("-", "_"), None)
        if value is None:
            continue
        if engine not in (args.method, "both") and args.method != "auto":
            raise UsageError(f"{option} is a setting of the {engine} engine; it does not apply "
                             f"to --method {args.method}")
        if name == "memory_budget":
            if not value > 0:
                raise UsageError(f"--memory-budget must be a number of GiB > 0, got {value:g}")
            value = value * 2**30
        settings[name] = value
        used[name] = option
    if n_short is not None and args.method != "dense":
        if settings.get("k", 0) > n_short:
            raise UsageError(f"--k {settings['k']} is more than the {n_short} singular values "
                             f"J has (the smaller of its input and output sizes)")
        settings.setdefault("k", min(10, n_short))
        settings.setdefault("max_steps", max(256, settings["k"]))
    try:
        return engine_of(args.method, **settings)
    except (TypeError, ValueError) as err:
        text = str(err)
        for name, option in used.items():  # the options' names, as the user typed them
            text = re.sub(rf"(?<![\w-]){name}(?![\w-])", option, text)
        raise UsageError(text) from None

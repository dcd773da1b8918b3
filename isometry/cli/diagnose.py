"""`isometry diagnose`: why a model's signal does (not) propagate, and what to change.

Builds one model (`--model fc|resnet|transformer`, `--variant`, `--depth`, …; with no options
the fully connected ReZero net of depth 32 and width 256), runs `isometry.diagnose` on one
Gaussian probe input and prints a table of the measurements and the findings, each with its
number and a suggested change; writes diagnosis.json and a four-panel diagnosis.png (χ_l
profile, σ histogram, token similarity by depth, |α| and ∂L/∂α by layer).

    isometry diagnose --model fc --variant plain --activation tanh --sigma-w2 1 --sigma-b2 0.05
    isometry diagnose --model transformer --variant postnorm --depth 64 --json

With --run RUN_DIR it diagnoses a training run of `isometry train` instead: the model that
RUN_DIR/config.json describes, at its initialization (step 0, rebuilt from the run's seed) and
at every checkpoint in the directory (checkpoint.npz and kept copies checkpoint_*.npz), on the
run's first probe input; it prints one line per step and writes diagnosis_run.json and
diagnosis_run.png (the main numbers over training). The model options are then taken from
config.json.

    isometry diagnose --run runs/rezero
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os

import numpy as np

from isometry.cli import UsageError, output_dir
from isometry.cli._engine_args import add_engine_args, engine_from_args
from isometry.cli._model_args import GIVEN, StoreGiven, add_model_args, check_model_args, given
from isometry.cli._report import report, table_stream

# jax, flax, the models and the diagnosis are imported by the functions that use them, after
# the checks of the arguments: an argument error answers without loading them.


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="diagnose a model's signal propagation: findings and fixes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, depth_default="32", one_model=True)
    p.add_argument("--sigma-w2", type=float, default=None,
                   help="FC weight variance x width, > 0 (default: the variant's; with --model fc "
                        "--variant plain the mean-field prediction is added)")
    p.add_argument("--sigma-b2", type=float, default=0.0, action=StoreGiven,
                   help="FC bias variance, >= 0 (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and input (default: 0)")
    p.add_argument("--x64", action="store_true", help="float64 weights and inputs")
    add_engine_args(p, dense_only=True)
    p.add_argument("--burn-in", type=int, default=0,
                   help="layers left out at the bottom of the ln chi_l slope (the transient "
                        "while the probe's length settles to its fixed point; 0 <= N < depth; "
                        "default: 0)")
    p.add_argument("--out", default="isometry-diagnose",
                   help="directory for diagnosis.json and diagnosis.png (default: "
                        "./isometry-diagnose)")
    p.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="diagnose every checkpoint of this run directory of isometry train "
                        "(model options come from its config.json)")
    p.add_argument("--json", action="store_true",
                   help="print the JSON on stdout (the table goes to stderr)")
    p.set_defaults(func=run, seq_len=8)


def check_args(args) -> None:
    """Every check the parsed arguments alone allow, before anything is imported or built."""
    if args.burn_in < 0:
        raise UsageError(f"--burn-in must be 0 or more layers, got {args.burn_in}")
    if args.run is None:
        check_model_args(args, one_model=True)
        depth = _depth(args)
        if not args.burn_in < depth:
            raise UsageError(f"--burn-in must be in [0, depth) = [0, {depth}), got {args.burn_in}")
        if args.sigma_w2 is not None and not (math.isfinite(args.sigma_w2) and args.sigma_w2 > 0):
            raise UsageError(f"--sigma-w2 (weight variance x width) must be a positive number, "
                             f"got {args.sigma_w2:g}")
        if not (math.isfinite(args.sigma_b2) and args.sigma_b2 >= 0):
            raise UsageError(f"--sigma-b2 (bias variance) must be 0 or a positive number, "
                             f"got {args.sigma_b2:g}")
        if args.model != "fc":
            for option, typed in (("--sigma-w2", args.sigma_w2 is not None),
                                  ("--sigma-b2", given(args, "sigma_b2"))):
                if typed:
                    raise UsageError(f"{option} applies to --model fc only")
    elif not os.path.isfile(os.path.join(args.run, "config.json")):
        what = ("is not a directory" if not os.path.isdir(args.run) else
                "holds no config.json: it is not a run directory")
        raise UsageError(f"--run {args.run!r} {what} (give a run directory of isometry train)")
    output_dir(args.out)  # before computing: a path that cannot be written fails at once


def _depth(args) -> int:
    """The one depth of the arguments (a ResNet's --blocks: 2·sum + 2)."""
    return 2 * sum(args.blocks) + 2 if args.blocks else args.depth[0]


def compute(args):
    """(the Diagnosis, the JSON document) for the model the arguments describe."""
    import jax
    from flax import nnx

    import models
    from isometry import theory
    from isometry.diagnosis._diagnose import diagnose
    from isometry.cli import _zoo

    (variant,) = check_model_args(args, one_model=True)
    kind, depth, dtype = _zoo.MODEL_KINDS[args.model], _depth(args), _zoo.param_dtype(args)
    rngs = nnx.Rngs(args.seed)
    mean_field = None
    if args.model == "fc":
        try:
            net = models.FullyConnected(depth, args.width, variant=variant,
                                        activation=args.activation, alpha_init=args.alpha_init,
                                        sigma_w2=args.sigma_w2, sigma_b2=args.sigma_b2,
                                        param_dtype=dtype, rngs=rngs)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if variant == "plain" and args.activation in theory.ACTIVATIONS:
            sw2 = args.sigma_w2 if args.sigma_w2 is not None else 2.0
            mean_field = dict(activation=args.activation, sigma_w2=sw2, sigma_b2=args.sigma_b2)
    else:
        net = kind.build(args, variant, depth, rngs)
        if hasattr(net, "eval"):
            net.eval()
    x = kind.probe_inputs(args, jax.random.key(10_000 + args.seed), 1, dtype)[0]
    try:
        diagnosis = diagnose(net, x, mean_field=mean_field, burn_in=args.burn_in,
                             engine=engine_from_args(args))
    except FloatingPointError as err:
        raise UsageError(str(err)) from None
    doc = dict(model=args.model, variant=variant, depth=depth, seed=args.seed,
               dtype=diagnosis.dtype, diagnosis=diagnosis.to_dict())
    return diagnosis, doc


#: The model settings `isometry train` stores in config.json (its `_RUN_KEYS` but data and x64).
_MODEL_KEYS = ("model", "variant", "depth", "width", "alpha_init", "activation", "seq_len",
               "d_model", "heads", "ffn", "blocks")


def _run_model(args, config: dict):
    """(model, probe input) of the run that config.json describes, built as `isometry train`
    built it (same builder, sizes and seed)."""
    from isometry import data as datasets
    from isometry.cli import _zoo

    if "model" not in config or "data" not in config:
        raise UsageError(f"run dir {args.run!r} was not written by isometry train (its "
                         f"config.json names no model): use iso.diagnose_run(run_dir, model, x)")
    settings = {k: config[k] for k in _MODEL_KEYS if k in config}
    run_args = argparse.Namespace(**{**vars(args), **settings, "x64": bool(config.get("x64")),
                                     "variant": [settings["variant"]],
                                     "depth": [settings["depth"]], GIVEN: ()})
    kind, _ = _zoo.resolve(run_args)
    data = datasets.load_data(config["data"], seq_len=config.get("seq_len") or 128)
    model = _zoo.build_model(kind, run_args, settings["variant"], settings["depth"],
                             int(config["train"]["seed"]), task=data.task)
    x = np.asarray(data.probe_inputs(1))[0]
    shape = kind.train_input_shape(data.task)
    x = x.reshape(shape) if shape is not None else x
    dtype = _zoo.param_dtype(run_args)
    return model, x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x


def run_diagnosis(args):
    """(the RunDiagnosis, the JSON document) of `--run`; bad run directories are one line."""
    import jax

    from isometry.diagnosis._run import checkpoint_files, diagnose_run
    from isometry.train import RunConfigError, run_config

    try:
        config = run_config(args.run, "diagnose")
        if not checkpoint_files(args.run):
            raise RunConfigError(f"run dir {args.run!r} holds no checkpoint: nothing to diagnose")
        with jax.enable_x64(True) if config.get("x64") else contextlib.nullcontext():
            model, x = _run_model(args, config)
            result = diagnose_run(args.run, model, x, initial=True, burn_in=args.burn_in)
    except (RunConfigError, KeyError, TypeError) as err:
        raise UsageError(str(err) if isinstance(err, RunConfigError) else
                         f"run dir {args.run!r}: config.json lacks or mistypes {err}") from None
    return result, dict(run_dir=args.run, model=config["model"], variant=config["variant"],
                        depth=config["depth"], diagnosis=result.to_dict())


def _run_report(args) -> int:
    result, doc = run_diagnosis(args)
    print(f"run {args.run}: {doc['model']} {doc['variant']} depth {doc['depth']}",
          file=table_stream(args.json))
    print(result.table(), file=table_stream(args.json))
    report(args.out, "diagnosis_run", result.figure(), doc, args.json)
    return 0


def run(args) -> int:
    check_args(args)
    if args.run is not None:
        return _run_report(args)
    import jax

    # --x64: float64 for this command only (scoped, the global setting is left alone)
    with jax.enable_x64(True) if args.x64 else contextlib.nullcontext():
        diagnosis, doc = compute(args)
        print(f"{args.model} {doc['variant']} depth {doc['depth']}", file=table_stream(args.json))
        print(diagnosis.table(), file=table_stream(args.json))
        fig = diagnosis.figure(title=f"{args.model} {doc['variant']}, depth {doc['depth']}: "
                                     f"{diagnosis.phase or 'no stack'}; "
                                     f"{', '.join(diagnosis.codes) or 'no findings'}")
        report(args.out, "diagnosis", fig, doc, args.json)
    return 0

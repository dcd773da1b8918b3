"""`isometry train`: train one model, tracking Jacobian spectra, α's and losses in a run directory.

Example (the paper's Figure 5 net, on CIFAR-10, spectra every 50 steps):

    isometry train --model fc --variant rezero --depth 32 --width 256 --data cifar10 \\
        --data-path ~/data/cifar-10-python.tar.gz --epochs 5 --batch-size 100 \\
        --optimizer adagrad --lr 0.01 --track-every 50 --run-dir runs/fc-rezero
    isometry plot runs/fc-rezero

A killed or stopped (Ctrl-C: checkpoint, exit code 130) run continues with the same command
plus `--resume`; `--steps` (constant and step schedules), `--checkpoint-every`,
`--eval-every` and `--eval-batches` may change on resume.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from isometry import data as datasets
from isometry.cli import UsageError, comma_list, output_dir
from isometry.cli._devices import add_mesh_arguments, check_device_args, mesh_from_args
from isometry.cli._engine_args import add_engine_args, engine_from_args
from isometry.cli._model_args import StoreGiven, add_model_args, check_model_args, given
from isometry.cli._names import ADAGRAD_STYLES, ALPHA_VARIANTS, OPTIMIZERS, SCHEDULES

# jax, the models and the training loop are imported by `run`, after the checks of the
# arguments: an argument error answers without loading them.

#: Settings that define a run besides the training config (stored in config.json).
_RUN_KEYS = ("model", "variant", "depth", "width", "alpha_init", "activation", "data", "seq_len",
             "d_model", "heads", "ffn", "blocks", "x64")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model, tracking Jacobian spectra during training",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, one_model=True)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic",
                   help="synthetic[:HxWxC] | cifar10 | enwik8 | text:PATH (default: synthetic)")
    g.add_argument("--data-path", default=None,
                   help="CIFAR-10 archive/folder or enwik8 file (default: $ISOMETRY_CIFAR10 / "
                        "$ISOMETRY_ENWIK8)")
    # --seq-len (the language-model window, default 128) comes with the model options
    g = p.add_argument_group("optimization")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 1000)")
    length.add_argument("--epochs", type=float, default=None, help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=100, help="default: 100")
    g.add_argument("--optimizer", default="adagrad", choices=OPTIMIZERS, help="default: adagrad")
    g.add_argument("--adagrad", default="pytorch", choices=ADAGRAD_STYLES,
                   help="Adagrad as torch.optim.Adagrad (the paper's; accumulator from 0) or "
                        "optax's defaults (accumulator from 0.1) (default: pytorch)")
    g.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default: 0.01)")
    g.add_argument("--alpha-lr", type=float, default=None,
                   help="learning rate of the alpha's (default: --lr); alpha gets no weight decay")
    g.add_argument("--momentum", type=float, default=0.9, action=StoreGiven,
                   help="SGD momentum in [0, 1) (default: 0.9; --optimizer sgd only)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="default: 0")
    g.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (default: 0)")
    g.add_argument("--schedule", default="constant", choices=SCHEDULES, help="default: constant")
    g.add_argument("--decay-steps", type=comma_list(int), default=[],
                   help="steps at which --schedule step multiplies the rate by --decay-factor")
    g.add_argument("--decay-factor", type=float, default=0.1, action=StoreGiven,
                   help="> 0 (default: 0.1; --schedule step only)")
    g.add_argument("--clip", type=float, default=None, help="clip gradients to this global norm")
    g.add_argument("--seed", type=int, default=0, help="seed of weights and data order (default: 0)")
    g.add_argument("--x64", action="store_true", help="float64 weights and inputs")
    g = p.add_argument_group("tracking and run directory")
    g.add_argument("--track-every", type=int, default=100, help="spectra every N steps (default: 100)")
    g.add_argument("--probes", type=int, default=8, help="fixed probe inputs for spectra (default: 8; 0: none)")
    add_engine_args(g, default="auto")
    g.add_argument("--log-every", type=int, default=10, help="loss and alpha every N steps (default: 10)")
    g.add_argument("--eval-every", type=int, default=0, help="held-out evaluation every N steps (default: at the end)")
    g.add_argument("--eval-batches", type=int, default=10, help="held-out batches per evaluation (default: 10)")
    g.add_argument("--checkpoint-every", type=int, default=500, help="default: 500")
    g.add_argument("--run-dir", default="isometry-run", help="default: ./isometry-run")
    g.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--stall-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="end the run (exit code 4, saying what it was doing and where it resumes "
                        "from) when nothing progressed for this long (default: 1800; 0: never)")
    add_mesh_arguments(p, "data-parallel training over a device mesh: each batch split over "
                          "'data', parameters replicated; default: one device")
    p.set_defaults(func=run)


def _check_optimizer_args(args, variant: str) -> None:
    """Settings that do not apply to the chosen optimizer or schedule are errors, not ignored."""
    if given(args, "image_size"):
        raise UsageError("--image-size sets the probe images of `isometry spectrum`; training "
                         "takes its images from --data (e.g. --data synthetic:24x24x3)")
    if given(args, "momentum") and args.optimizer != "sgd":
        raise UsageError(f"--momentum applies to --optimizer sgd only, not {args.optimizer} "
                         f"(leave it out, or use --optimizer sgd)")
    if given(args, "decay_factor") and args.schedule != "step":
        raise UsageError(f"--decay-factor applies to --schedule step only, not {args.schedule} "
                         f"(leave it out, or use --schedule step with --decay-steps)")
    if args.alpha_lr is not None and variant not in ALPHA_VARIANTS[args.model]:
        raise UsageError(f"--alpha-lr applies to variants with α only "
                         f"({', '.join(ALPHA_VARIANTS[args.model])} for --model {args.model}), "
                         f"not {variant}")


def _check_run_args(args, variant: str) -> None:
    """The settings and the run directory, before anything is loaded or built."""
    _check_optimizer_args(args, variant)
    if args.epochs is not None and not 0 < args.epochs < float("inf"):
        raise UsageError(f"--epochs must be a positive number, got {args.epochs}")
    if args.probes < 0:
        raise UsageError(f"--probes must be 0 (no spectra) or more, got {args.probes}")
    if not args.stall_timeout >= 0:
        raise UsageError(f"--stall-timeout must be 0 (never) or more seconds, got {args.stall_timeout}")
    for option, value in (("--track-every", args.track_every), ("--log-every", args.log_every)):
        if value < 1:
            raise UsageError(f"{option} must be at least 1")
    if args.resume:  # nothing to create: the run must be there
        if not os.path.isdir(args.run_dir):
            raise UsageError(f"nothing to resume: --run-dir {args.run_dir!r} does not exist (leave "
                             f"out --resume to start a run there)")
        output_dir(args.run_dir, "--run-dir", create=False)
    else:
        output_dir(args.run_dir, "--run-dir")


def _load_data(args):
    try:
        return datasets.load_data(args.data, path=args.data_path, seq_len=args.seq_len)
    except datasets.DataError as err:
        raise UsageError(str(err)) from None


def _train_config(args, data):
    """The `TrainConfig` the options ask for (--epochs counted in steps of --batch-size)."""
    from isometry.train import TrainConfig

    if args.epochs is not None:
        steps = math.ceil(args.epochs * data.examples_per_epoch / args.batch_size)
    else:
        steps = 1000 if args.steps is None else args.steps
    try:
        return TrainConfig(steps=steps, batch_size=args.batch_size, optimizer=args.optimizer,
                           adagrad=args.adagrad, lr=args.lr, alpha_lr=args.alpha_lr,
                           momentum=args.momentum, weight_decay=args.weight_decay,
                           warmup=args.warmup, schedule=args.schedule,
                           decay_steps=tuple(args.decay_steps), decay_factor=args.decay_factor,
                           clip=args.clip, seed=args.seed, eval_every=args.eval_every,
                           eval_batches=args.eval_batches, checkpoint_every=args.checkpoint_every)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _build_model(kind, args, variant: str, depth: int, task):
    """The model, sized for the data's task (`args` itself stays as parsed)."""
    if task.kind not in kind.tasks:
        raise UsageError(f"--model {args.model} does not do {task.kind.replace('_', ' ')} "
                         f"(data {args.data}); it does: {', '.join(kind.tasks) or 'none yet'}")
    from isometry.cli import _zoo

    # the model's inputs and outputs sized for the data (see _zoo.ModelKind)
    return _zoo.build_model(kind, args, variant, depth, args.seed, task=task)


def run(args) -> int:
    (variant,) = check_model_args(args, one_model=True)
    check_device_args(args)
    _check_run_args(args, variant)
    import jax

    from isometry.cli import _zoo
    from isometry.train._tracking import RunDirError
    from isometry.train import RunConfigError, train

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    mesh = mesh_from_args(args, batch_size=args.batch_size)  # before jax's backend starts
    kind = _zoo.MODEL_KINDS[args.model]
    (depth,) = _zoo.depths(args)
    engine = engine_from_args(args)  # a bad engine setting fails before data and model load
    data = _load_data(args)
    config = _train_config(args, data)
    model = _build_model(kind, args, variant, depth, data.task)
    settings = dict(vars(args), variant=variant, depth=depth)
    run_info = {k: settings[k] for k in _RUN_KEYS if k in settings}
    try:
        result = train(model, data, config, run_dir=args.run_dir, resume=args.resume,
                       run_info=run_info, input_shape=kind.train_input_shape(data.task),
                       probes=args.probes,
                       track_every=args.track_every, log_every=args.log_every,
                       engine=engine,
                       progress=False if args.no_progress else None, mesh=mesh,
                       stall_timeout=args.stall_timeout)
    except (RunConfigError, RunDirError, FileExistsError) as err:
        raise UsageError(str(err)) from None
    except MemoryError as err:  # JacobianTooLargeError: a dense spectrum that does not fit
        raise UsageError(f"{err} (--method lanczos tracks it matrix-free)") from None
    if jax.process_index() != 0:  # one of several processes: process 0 prints
        return 3 if result.diverged else 0
    final = result.final
    shown = {k: final[k] for k in ("step", "loss", "eval_loss", "eval_accuracy", "eval_bpb")
             if k in final}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    print(f"wrote {args.run_dir} (isometry plot {args.run_dir} draws it)", file=sys.stderr)
    return 3 if result.diverged else 0

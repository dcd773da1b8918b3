"""The optax training loop the experiments use: one jitted step, α with its own learning rate,
spectra tracked on the way, and a run directory a killed run resumes from.

    model = models.FullyConnected(32, 256, variant="rezero", in_features=3072, out_features=10,
                                  rngs=nnx.Rngs(0))
    data = isometry.data.load_data("cifar10")
    result = train(model, data, TrainConfig(steps=5000, optimizer="adagrad", lr=0.01),
                   run_dir="runs/rezero", input_shape=(3072,))

The model is split into its graph, its `nnx.Param`s and the rest (BatchNorm statistics, RNG
state); the jitted step maps pure pytrees (params, rest, opt_state, x, y) to new ones.
Batch `s` (0-based) of the training stream is `data.train_batch(seed, s, batch_size)`, so the
data order, and with it the whole run, is a function of the seed: a run resumed from a
checkpoint ends where an uninterrupted one does (same compiled code, same inputs).

Run directory (see `isometry.tracking` for metrics.jsonl and spectra/):

  config.json      the run's settings; `resume=True` with different settings raises
                   `RunConfigError` naming the keys that differ.
  checkpoint.npz   the state after step k: arrays "step", "layout" (`PARAM_LAYOUT`), "leaf_i"
                   (the i-th leaf of
                   (params, rest, opt_state) in pytree order; PRNG keys as "key_i" holding
                   their key data). Written atomically every `checkpoint_every` steps and
                   at the end, after the records of steps <= k are on disk; resuming cuts
                   records past k.

Losses: softmax cross-entropy in nats (mean over examples, or over tokens for language
models); accuracy; bits per byte = cross-entropy / ln 2 for byte-level language models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import signal
import sys
import threading
import zipfile
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from isometry import _sharding
from isometry._params import alpha_mask
from isometry._stack import LayerStack
from isometry._io import atomic_write, json_text
from isometry.calibrate import batchnorm_calibration, has_batchnorm
from isometry.tracking import Tracker

__all__ = ["TrainConfig", "TrainResult", "RunConfigError", "TrainingInterrupted", "train", "make_optimizer",
           "learning_rate_schedule", "make_train_step", "make_eval_step", "save_checkpoint",
           "load_checkpoint", "scale_by_torch_adagrad", "OPTIMIZERS", "SCHEDULES", "ADAGRAD_STYLES",
           "FIXUP_LR_FACTORS"]

OPTIMIZERS = ("adagrad", "sgd", "adam", "adamw")
#: FixUp's scalar biases and multipliers train at lr/10 (the FixUp code's parameter groups).
FIXUP_LR_FACTORS = tuple((name, 0.1) for name in ("bias1a", "bias1b", "bias2a", "bias2b",
                                                  "scale", "stem_bias", "head_bias"))
#: `TrainConfig.adagrad`: PyTorch's Adagrad (the paper's) or optax's defaults.
ADAGRAD_STYLES = ("pytorch", "optax")
SCHEDULES = ("constant", "step", "onecycle", "cosine")
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.npz"
#: The parameter layout of checkpoints and run directories: "stacked" = scanned layer stacks,
#: one leaf per stack with a leading layer axis (isometry 0.1 wrote one leaf per layer and no
#: marker; such files are refused, never loaded into the wrong leaves).
PARAM_LAYOUT = "stacked"
_OLD_LAYOUT = ("was written by isometry 0.1, whose models kept one parameter per layer; models "
               "now stack their layers (one leaf per stack, a leading layer axis), so it cannot "
               "be loaded: start a new run directory")


class RunConfigError(ValueError):
    """A run directory holds a run with other settings than the ones asked for, or its files
    (config.json, checkpoint.npz) are missing or corrupt: nothing was changed in it."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT) after a checkpoint of the last finished step.

    Attributes:
      step: the last finished step (the checkpoint's); `resume=True` continues from it.
      run_dir: the run directory (None when the run writes none: nothing was saved).
    """

    def __init__(self, step: int, run_dir: str | None):
        super().__init__(f"stopped at step {step}")
        self.step, self.run_dir = step, run_dir


#: TrainConfig fields that are not part of a run's identity: a resumed run may change them.
#: `steps` too, when the learning rate does not depend on it (constant and step schedules).
RESUMABLE_CHANGES = ("checkpoint_every", "eval_every", "eval_batches")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes:
      steps: optimizer steps.
      batch_size: examples (or sequences) per step.
      optimizer: "adagrad", "sgd" (with `momentum`), "adam" or "adamw".
      adagrad: "pytorch" (default: `torch.optim.Adagrad`, as the paper ran it — the
        accumulator starts at 0 and the update is g/(√G + 1e-10), so the first step is
        −lr·sign(g)) or "optax" (`optax.adagrad`: accumulator from 0.1, g/√(G + 1e-7), whose
        first step is lr·g/√(0.1 + g²), far smaller for small gradients).
      lr: peak learning rate of all parameters but α.
      alpha_lr: learning rate of the α's (None: `lr`); α's never get weight decay.
      lr_factors: ((name, factor), …): leaves with a key `name` on their path train at
        lr·factor (with weight decay), e.g. FixUp's scalar biases and multipliers at lr/10 as
        in the FixUp code (`FIXUP_LR_FACTORS`).
      momentum: SGD momentum (0 for plain SGD).
      weight_decay: L2 coupled to the gradient for sgd/adagrad/adam (PyTorch style),
        decoupled for adamw; never applied to α.
      warmup: steps of linear warm-up from 0 to the peak rate.
      schedule: after warm-up: "constant"; "step" (multiply by `decay_factor` at each step in
        `decay_steps`); "onecycle" (optax's cosine one-cycle); "cosine" (decay to 0). See
        `learning_rate_schedule`.
      decay_steps, decay_factor: the "step" schedule.
      clip: clip gradients to this global norm (None: no clipping).
      seed: seed of the data order (model initialization is the caller's `nnx.Rngs`).
      eval_every: evaluate on the held-out split every this many steps (0: only at the end).
      eval_batches: batches of the held-out split per evaluation (None: all).
      checkpoint_every: write checkpoint.npz every this many steps (and at the end).
    """

    steps: int
    batch_size: int = 100
    optimizer: str = "adagrad"
    adagrad: str = "pytorch"
    lr: float = 0.01
    alpha_lr: float | None = None
    lr_factors: tuple[tuple[str, float], ...] = ()
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup: int = 0
    schedule: str = "constant"
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1
    clip: float | None = None
    seed: int = 0
    eval_every: int = 0
    eval_batches: int | None = 10
    checkpoint_every: int = 500

    def __post_init__(self):
        problems = []
        if self.steps < 1 or self.batch_size < 1:
            problems.append(f"steps and batch_size must be positive (got {self.steps}, {self.batch_size})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if any(not f > 0 for _, f in self.lr_factors):
            problems.append(f"lr_factors must be positive, got {self.lr_factors}")
        if self.adagrad not in ADAGRAD_STYLES:
            problems.append(f"unknown adagrad style {self.adagrad!r}; use one of {ADAGRAD_STYLES}")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if not self.lr > 0 or (self.alpha_lr is not None and not self.alpha_lr >= 0):
            problems.append(f"learning rates must be positive (lr={self.lr}, alpha_lr={self.alpha_lr})")
        if self.warmup < 0 or self.warmup >= max(self.steps, 1) and self.warmup:
            problems.append(f"warmup must be in [0, steps), got {self.warmup}")
        if self.clip is not None and not self.clip > 0:
            problems.append(f"clip must be positive, got {self.clip}")
        if self.checkpoint_every < 1 or self.eval_every < 0:
            problems.append("checkpoint_every must be >= 1 and eval_every >= 0")
        if problems:
            raise ValueError("; ".join(problems))


# --- optimizer ---------------------------------------------------------------------------------

def learning_rate_schedule(peak: float, config: TrainConfig) -> optax.Schedule:
    """Warm-up then the configured schedule, as a function of the 0-based update count.

    "constant": linear warm-up 0 → peak over `warmup` steps, then peak.
    "step": after warm-up, peak × decay_factor^(number of `decay_steps` passed).
    "cosine": after warm-up, cosine decay from peak to 0 at `steps`.
    "onecycle": optax's cosine one-cycle over `steps`: rises from peak/25 to peak over
      `warmup` steps (30% of the steps when warmup = 0), then falls to peak/25e4.
    """
    w, n = config.warmup, config.steps
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(n, peak, pct_start=(w / n) if w else 0.3)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, w, n, end_value=0.0) if w else \
            optax.cosine_decay_schedule(peak, n)
    if config.schedule == "step":
        after = optax.piecewise_constant_schedule(
            peak, {int(s) - w: config.decay_factor for s in sorted(config.decay_steps) if s > w})
    else:
        after = optax.constant_schedule(peak)
    if not w:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, w), after], [w])


def scale_by_torch_adagrad(eps: float = 1e-10) -> optax.GradientTransformation:
    """PyTorch's Adagrad scaling: G_t = G_{t−1} + g_t² from G_0 = 0, update g_t / (√G_t + eps).

    With a learning rate after it (`optax.scale_by_learning_rate`) this is
    `torch.optim.Adagrad(lr, lr_decay=0, initial_accumulator_value=0, eps=1e-10)`: its first
    step is −lr·g/(|g| + eps) ≈ −lr·sign(g), whatever the gradient's size. (`optax.adagrad`
    starts G at 0.1 and divides by √(G + eps), so its first step is lr·g/√(0.1 + g²).)

    Example:
      >>> tx = optax.chain(scale_by_torch_adagrad(), optax.scale_by_learning_rate(0.1))
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, _ = tx.update({"w": jnp.array([1e-3, -4.0])}, tx.init(params))
      >>> [round(float(u), 6) for u in updates["w"]]
      [-0.1, 0.1]
    """

    def init(params):
        return optax.ScaleByRssState(sum_of_squares=jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        sums = jax.tree_util.tree_map(lambda s, g: s + jnp.square(g), state.sum_of_squares,
                                      updates)
        updates = jax.tree_util.tree_map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
        return updates, optax.ScaleByRssState(sum_of_squares=sums)

    return optax.GradientTransformation(init, update)


def _base_optimizer(config: TrainConfig, lr: optax.Schedule, weight_decay: float):
    decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    match config.optimizer:
        case "adagrad" if config.adagrad == "pytorch":
            return optax.chain(*decay, scale_by_torch_adagrad(), optax.scale_by_learning_rate(lr))
        case "adagrad":
            return optax.chain(*decay, optax.adagrad(lr))
        case "sgd":
            return optax.chain(*decay, optax.sgd(lr, momentum=config.momentum or None))
        case "adam":
            return optax.chain(*decay, optax.adam(lr))
        case "adamw":
            return optax.adamw(lr, weight_decay=weight_decay)


def _lr_label(path, is_alpha: bool, factors: dict) -> str:
    if is_alpha:
        return "alpha"
    names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path}
    hits = [name for name in factors if name in names]
    return f"factor:{hits[0]}" if hits else "rest"


def make_optimizer(config: TrainConfig, params: Any) -> optax.GradientTransformation:
    """The optax optimizer: global-norm clipping, then separate rules for α and the rest.

    α (leaves on a path with a key named `alpha`, `isometry.alpha_mask`) gets the same
    optimizer with learning rate `alpha_lr` (warm-up and schedule included) and no weight decay;
    leaves named in `config.lr_factors` get lr·factor.
    """
    alpha_lr = config.lr if config.alpha_lr is None else config.alpha_lr
    factors = dict(config.lr_factors)
    labels = jax.tree_util.tree_map_with_path(
        lambda path, a: _lr_label(path, a, factors), alpha_mask(params))
    rules = {"rest": _base_optimizer(config, learning_rate_schedule(config.lr, config),
                                     config.weight_decay),
             "alpha": _base_optimizer(config, learning_rate_schedule(alpha_lr, config), 0.0)}
    for name, factor in factors.items():
        rules[f"factor:{name}"] = _base_optimizer(
            config, learning_rate_schedule(config.lr * factor, config), config.weight_decay)
    tx = optax.multi_transform(rules, labels)
    return optax.chain(optax.clip_by_global_norm(config.clip), tx) if config.clip else tx


# --- the step ----------------------------------------------------------------------------------

def _losses(logits, y):
    """Per-example (per-token) cross-entropy in nats and correctness."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return ce, jnp.argmax(logits, axis=-1) == y


def make_train_step(graphdef, tx: optax.GradientTransformation, *,
                    donate: bool = False) -> Callable:
    """A jitted `(params, rest, opt_state, x, y) -> (params, rest, opt_state, metrics)`.

    metrics: {"loss": mean cross-entropy (nats), "accuracy": share of argmax hits,
    "grad_norm": global gradient norm before clipping}. Works for classification (logits
    (B, C), y (B,)) and language models (logits (B, T, V), y (B, T)).

    `donate=True` lets XLA write the new parameters and optimizer state into the buffers of
    the old ones (`donate_argnums`): one copy of each fewer at the peak, which is what a
    10,000-layer net needs; the arrays passed in are invalid after the call.
    """

    def loss_fn(model, x, y):
        ce, hit = _losses(model(x), y)
        return jnp.mean(ce), jnp.mean(hit)

    @functools.partial(jax.jit, donate_argnums=(0, 2) if donate else ())
    def step(params, rest, opt_state, x, y):
        model = nnx.merge(graphdef, params, rest)
        # nnx.value_and_grad: gradients w.r.t. the nnx.Params; BatchNorm statistics and RNG
        # counts the forward pass updates stay in `model`
        (loss, acc), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        rest = nnx.state(model, nnx.Not(nnx.Param))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, rest, opt_state, {"loss": loss, "accuracy": acc,
                                         "grad_norm": optax.tree.norm(grads)}

    return step


def make_eval_step(graphdef) -> Callable:
    """A jitted `(params, rest, x, y) -> (sum of cross-entropies, hits, count)` (eval mode)."""

    @jax.jit
    def evaluate(params, rest, x, y):
        ce, hit = _losses(nnx.merge(graphdef, params, rest)(x), y)
        return jnp.sum(ce), jnp.sum(hit), ce.size

    return evaluate


def _evaluate(eval_step, params, rest, data, batch_size, max_batches, prepare, task_kind) -> dict:
    total = hits = count = 0.0
    for x, y in data.eval_batches(batch_size, max_batches):
        s, h, c = eval_step(params, rest, prepare(x), y)
        total, hits, count = total + float(s), hits + float(h), count + c
    if not count:
        return {}
    out = {"eval_loss": total / count, "eval_accuracy": hits / count}
    if task_kind == "language_model":
        out["eval_bpb"] = out["eval_loss"] / math.log(2)
    return out


# --- checkpoints -------------------------------------------------------------------------------

def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save_checkpoint(path: str, step: int, tree: Any) -> None:
    """Writes `tree`'s leaves and `step` to an .npz file atomically (format: module docstring)."""
    arrays = {"step": np.asarray(step, np.int64), "layout": np.asarray(PARAM_LAYOUT)}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        if _is_key(leaf):
            arrays[f"key_{i}"] = np.asarray(jax.random.key_data(leaf))
        else:
            arrays[f"leaf_{i}"] = np.asarray(leaf)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str, template: Any) -> tuple[int, Any]:
    """(step, tree) from `save_checkpoint`'s file; `template` gives the structure, shapes, dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    try:
        with zipfile.ZipFile(path) as archive:  # CRC of every array: a flipped bit is an error
            bad = archive.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"CRC check failed for {bad}")
        z = np.load(path)
        if "layout" not in z.files:
            raise RunConfigError(f"checkpoint {path!r} {_OLD_LAYOUT}")
        step = int(z["step"])
        out = []
        for i, t in enumerate(leaves):
            if _is_key(t):
                out.append(jax.random.wrap_key_data(z[f"key_{i}"], impl=jax.random.key_impl(t)))
                continue
            a = z[f"leaf_{i}"]
            if a.shape != np.shape(t) or a.dtype != np.dtype(t.dtype):
                raise ValueError(f"leaf {i} is {a.dtype}{list(a.shape)}, the model needs "
                                 f"{np.dtype(t.dtype)}{list(np.shape(t))}")
            out.append(jnp.asarray(a))
        if len(z.files) != len(leaves) + 2:
            raise ValueError(f"it has {len(z.files) - 2} arrays, the model needs {len(leaves)}")
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise RunConfigError(f"checkpoint {path!r} is corrupt ({type(err).__name__}: {err}); the "
                             f"run cannot continue from it (nothing was changed)") from None
    except (KeyError, ValueError, OSError) as err:
        raise RunConfigError(f"checkpoint {path!r} does not match this model and optimizer: "
                             f"{err}") from None
    return step, jax.tree_util.tree_unflatten(treedef, out)


# --- the loop ----------------------------------------------------------------------------------

def _check_no_records_past_start(run_dir: str) -> None:
    """Resuming without a checkpoint restarts at step 0: refuse when records past 0 exist."""
    from isometry.tracking import METRICS_FILE, read_metrics

    if not os.path.exists(os.path.join(run_dir, METRICS_FILE)):
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = read_metrics(run_dir)
    last = max((r.get("step", 0) for r in records), default=0)
    if last > 0:
        raise RunConfigError(f"run dir {run_dir!r} has records up to step {last} but no "
                             f"{CHECKPOINT_FILE}: it cannot continue from there; start it anew "
                             f"in another run directory (or delete this one)")


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final state, the last record, and how the run ended."""

    params: Any
    rest: Any
    step: int
    final: dict
    diverged: bool


def _jsonable_config(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _prepare_run_dir(run_dir: str, info: dict, resume: bool) -> bool:
    """Checks config.json (it writes nothing); True when resuming a run found there.

    A fresh run needs a run dir without config.json; `resume` needs one whose config.json
    equals `info` except for `RESUMABLE_CHANGES` (and `steps` for schedules that do not
    depend on it). The error names the keys that differ.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not resume:
        if os.path.exists(path):
            raise FileExistsError(f"run dir {run_dir!r} already holds a run; pass --resume "
                                  f"(resume=True) to continue it, or choose another run dir")
        return False
    if not os.path.isdir(run_dir):
        raise RunConfigError(f"nothing to resume: run dir {run_dir!r} does not exist (leave out "
                             f"--resume to start a run there)")
    if not os.path.exists(path):
        raise RunConfigError(f"nothing to resume: {run_dir!r} holds no {CONFIG_FILE}, so it is not "
                             f"a run directory (leave out --resume to start a run there)")
    try:
        with open(path) as f:
            stored = json.load(f)
        if not isinstance(stored, dict):
            raise ValueError(f"expected a JSON object, got {type(stored).__name__}")
    except (ValueError, OSError) as err:
        raise RunConfigError(f"{path} is corrupt ({err}); the run cannot be resumed (nothing was "
                             f"changed)") from None
    if "param_layout" not in stored:
        raise RunConfigError(f"run dir {run_dir!r} {_OLD_LAYOUT}")
    old, new = _flat(stored), _flat(info)
    free = {f"train.{k}" for k in RESUMABLE_CHANGES}
    if info.get("train", {}).get("schedule") in ("constant", "step"):
        free.add("train.steps")
    diff = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in free]
    if diff:
        hint = ("; --steps can change only with the constant and step schedules (the others "
                "depend on it)" if any(d.startswith("train.steps:") for d in diff) else "")
        raise RunConfigError(f"run dir {run_dir!r} was made with other settings: {'; '.join(diff)}"
                             f"{hint}; resume with the same settings or use a new run dir")
    return True


@contextlib.contextmanager
def _interruptible():
    """Yields `stopped()`: True once SIGINT (Ctrl-C) arrived; a second Ctrl-C interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _spectrum_target(model, graphdef_eval, probe_inputs, calibration_inputs=None):
    """(apply_fn(state, x), probes): the residual stack x_0 → x_L at fixed x_0 = embed(probes).

    Models that follow `isometry.LayerStack` (every `models.Stack`) are tracked on their stack,
    with x_0 the embedding of the probe inputs at initialization (fixed afterwards); other
    models on their whole function of (floating) inputs. With `calibration_inputs`, every
    spectrum is taken with BatchNorm statistics of that batch (`isometry.calibrate`).
    """
    calibrated = (batchnorm_calibration(model, calibration_inputs)
                  if calibration_inputs is not None and has_batchnorm(model) else (lambda s: s))
    if isinstance(model, LayerStack):
        x0 = nnx.merge(graphdef_eval, calibrated(nnx.state(model))).embed(jnp.asarray(probe_inputs))
        return (lambda state, x: nnx.merge(graphdef_eval, calibrated(state)).stack(x)), x0
    return ((lambda state, x: nnx.merge(graphdef_eval, calibrated(state))(x)),
            jnp.asarray(probe_inputs))


def train(model: nnx.Module, data, config: TrainConfig, *, run_dir: str | None = None,
          resume: bool = False, run_info: dict | None = None, input_shape: tuple | None = None,
          probes: int = 8, track_every: int = 100, log_every: int = 10,
          method: str = "auto", progress: bool | None = None,
          calibrate_batchnorm: bool = False, mesh=None) -> TrainResult:
    """Trains `model` on `data`, tracking spectra, α's and losses into `run_dir`.

    Args:
      model: an `nnx.Module` mapping a batch of inputs to logits (updated in place at the end).
      data: an `isometry.data` data set (`task`, `train_batch`, `eval_batches`, `probe_inputs`).
      config: the `TrainConfig`.
      run_dir: where metrics, spectra, config and checkpoints go (None: nothing is written,
        no spectra are tracked).
      resume: continue the run in `run_dir` from its checkpoint (same settings required).
      run_info: more settings stored in config.json and compared on resume (model, data, ...).
      input_shape: reshape each example to this shape before the model (e.g. (3072,) for a
        fully connected net on images).
      probes: number of fixed probe inputs for the spectra (0: no spectra).
      track_every, log_every: spectrum and record intervals (`isometry.Tracker`).
      method: spectrum method ("auto", "dense", "lanczos").
      progress: show a tqdm bar (default: when stderr is a terminal).
      calibrate_batchnorm: take every tracked spectrum with BatchNorm statistics of the first
        training batch (one train-mode pass, `isometry.calibrate`) instead of the running
        averages, which start at (0, 1) and describe no data early in training.
      mesh: data-parallel training over this `jax.sharding.Mesh` (`isometry.device_mesh`):
        every batch split over its "data" axis, parameters and optimizer state replicated (or
        as sharded as the model was built with `mesh=`); spectra and files as without it.

    Returns:
      `TrainResult` with the final params/rest, the last step, the final record, and whether
      the loss became non-finite (training stops there).

    Raises:
      TrainingInterrupted: on Ctrl-C (SIGINT), after the current step finished and a
        checkpoint of it was written (`resume=True` continues from there).
      RunConfigError: `resume` with other settings, or missing or corrupt run files; nothing
        in `run_dir` is changed then.
    """
    from tqdm import tqdm

    if probes < 0 or track_every < 1 or log_every < 1:
        raise ValueError(f"probes must be >= 0 and track_every, log_every >= 1; got probes={probes}, "
                         f"track_every={track_every}, log_every={log_every}")
    task = data.task
    model.eval()
    graphdef_eval = nnx.graphdef(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    dtype = next((l.dtype for l in jax.tree_util.tree_leaves(params)
                  if jnp.issubdtype(l.dtype, jnp.floating)), jnp.float32)

    def prepare(x):
        x = np.asarray(x)
        if input_shape is not None:
            x = x.reshape(len(x), *input_shape)
        return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x

    tx = make_optimizer(config, params)
    opt_state = tx.init(params)
    step_fn = make_train_step(graphdef, tx)
    eval_fn = make_eval_step(graphdef_eval)
    # the learning rate of every step, for the records (one compiled call, not one per step)
    lrs = np.asarray(jax.jit(jax.vmap(learning_rate_schedule(config.lr, config)))(
        jnp.arange(config.steps)))

    start, tracker = 0, None
    if run_dir is not None:
        info = _jsonable_config({"param_layout": PARAM_LAYOUT,
                                 "train": dataclasses.asdict(config), "probes": probes,
                                 "track_every": track_every, "log_every": log_every,
                                 "method": method, "input_shape": input_shape,
                                 "calibrate_batchnorm": calibrate_batchnorm,
                                 **(run_info or {})})
        resuming = _prepare_run_dir(run_dir, info, resume)  # checks only: writes nothing
        ckpt = os.path.join(run_dir, CHECKPOINT_FILE)
        if resuming and os.path.exists(ckpt):
            start, (params, rest, opt_state) = load_checkpoint(ckpt, (params, rest, opt_state))
            if start > config.steps:
                raise RunConfigError(f"run dir {run_dir!r} is at step {start}, past the {config.steps} "
                                     f"steps asked for: ask for at least {start}")
        elif resuming:
            _check_no_records_past_start(run_dir)
        apply_fn, x0 = (None, None)
        if probes:
            calib = (prepare(data.train_batch(config.seed, 0, config.batch_size)[0])
                     if calibrate_batchnorm else None)
            apply_fn, x0 = _spectrum_target(model, graphdef_eval,
                                            prepare(data.probe_inputs(probes)), calib)
        tracker = Tracker(run_dir, apply_fn=apply_fn, probes=x0, every=track_every,
                          log_every=log_every, method=method,
                          resume_step=start if resuming else None)
        # every check passed: now the run's settings (new, or with changed intervals/steps)
        atomic_write(os.path.join(run_dir, CONFIG_FILE), json_text(info, indent=1).encode())

    if mesh is not None:
        state = _sharding.replicate_for_training((params, rest, opt_state), mesh)
        params, rest, opt_state = state

    def record(step, metrics=None, force=False, spectrum=None, **more):
        if tracker is None or not (force or tracker.due(step)):
            return None
        m = {k: float(v) for k, v in jax.device_get(metrics or {}).items()}
        lr = float(lrs[max(step - 1, 0)])
        state = (params, rest) if mesh is None else _sharding.to_host((params, rest))
        rec = tracker.update(step, nnx.merge_state(*state), force=force, spectrum=spectrum,
                             lr=lr, **m, **more)
        if bar is not None and rec and "loss" in rec:
            bar.set_postfix(loss=f"{rec['loss']:.4g}", refresh=False)
        return rec

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=not show,
               file=sys.stderr, dynamic_ncols=True)
    final: dict = {}
    diverged = False
    interrupt = _interruptible()
    stopped = interrupt.__enter__()
    try:
        if tracker is not None and (tracker.last_step is None or tracker.last_step < start):
            final = record(start, force=True, spectrum=True, **_evaluate(eval_fn, params, rest, data,
                                                           config.batch_size, config.eval_batches,
                                                           prepare, task.kind)) or {}
        step = start
        while step < config.steps:
            if stopped():  # Ctrl-C: the records of steps <= step are on disk; checkpoint it
                if run_dir is not None:
                    save_checkpoint(os.path.join(run_dir, CHECKPOINT_FILE), step,
                                    (params, rest, opt_state))
                raise TrainingInterrupted(step, run_dir)
            x, y = data.train_batch(config.seed, step, config.batch_size)
            x, y = (prepare(x), y) if mesh is None else _sharding.shard_batch((prepare(x), y), mesh)
            params, rest, opt_state, metrics = step_fn(params, rest, opt_state, x, y)
            step += 1
            bar.update(1)
            last = step == config.steps
            evaluated = {}
            if last or (config.eval_every and step % config.eval_every == 0):
                evaluated = _evaluate(eval_fn, params, rest, data, config.batch_size,
                                      config.eval_batches, prepare, task.kind)
            rec = record(step, metrics, force=last or bool(evaluated), spectrum=last or None,
                         **evaluated)
            if rec is not None:
                final = rec
                if not math.isfinite(rec.get("loss", 0.0)):
                    diverged = True
            elif tracker is None and (last or step % 100 == 0):
                loss = float(metrics["loss"])
                final = {"step": step, "loss": loss, **evaluated}
                diverged = not math.isfinite(loss)
            if run_dir is not None and (last or diverged or step % config.checkpoint_every == 0):
                save_checkpoint(os.path.join(run_dir, CHECKPOINT_FILE), step, (params, rest, opt_state))
            if diverged:
                print(f"isometry train: the loss became non-finite at step {step}; stopping",
                      file=sys.stderr)
                break
    finally:
        interrupt.__exit__(None, None, None)
        bar.close()
        if tracker is not None:
            tracker.close()
    if not final and run_dir is not None:  # resumed a finished run: its last record
        from isometry.tracking import read_metrics
        final = (read_metrics(run_dir) or [{}])[-1]
    nnx.update(model, params, rest)
    return TrainResult(params, rest, step, final, diverged)

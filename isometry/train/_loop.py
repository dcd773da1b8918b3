"""`train`: the loop that steps, evaluates, records, checkpoints and stops.

Batch `s` (0-based) of the training stream is `data.train_batch(seed, s, batch_size)`, so the
data order, and with it the whole run, is a function of the seed: a run resumed from a
checkpoint ends where an uninterrupted one does (same compiled code, same inputs).
Checkpoints are written every `checkpoint_every` steps, at the end, on divergence and on
Ctrl-C, always after the records of steps <= k are on disk; resuming cuts records past k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from isometry._numerics import check_setting
from isometry.parallel._sharding import replicate, shard_batch, to_host
from isometry.spectrum._engine import Engine, engine_of
from isometry._stack import LayerStack
from isometry.calibrate import batchnorm_calibration, has_batchnorm
from isometry._adapters import graph_fn
from isometry.train._tracking import Tracker, is_writer
from isometry.train._checkpoint import save_checkpoint
from isometry.train._config import (CHECKPOINT_FILE, PARAM_LAYOUT, TrainConfig,
                                    TrainingInterrupted)
from isometry.train._optimizer import learning_rate_schedule, make_optimizer
from isometry.train._run_dir import check_run_dir, last_record, restore, run_settings, write_config
from isometry.train._step import evaluate, make_eval_step, make_train_step, prepare_inputs
from isometry.train._watchdog import DEFAULT_STALL_TIMEOUT, Watchdog

__all__ = ["TrainResult", "train"]


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final state, the last record, and how the run ended."""

    params: Any
    rest: Any
    step: int
    final: dict
    diverged: bool


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
    x = jnp.asarray(probe_inputs)
    if isinstance(model, LayerStack):
        x0 = graph_fn(graphdef_eval, "embed")(calibrated(nnx.state(model)), x)
        stack = graph_fn(graphdef_eval, "stack")
        return (lambda state, x: stack(calibrated(state), x)), x0
    apply = graph_fn(graphdef_eval)
    return (lambda state, x: apply(calibrated(state), x)), x



def _every_process_read(name: str) -> None:
    """A barrier of all processes (none with one process): no file changes before all read."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


@dataclasses.dataclass
class _Run:
    """One call of `train`: the jitted functions, the state, and where records and checkpoints go."""

    config: TrainConfig
    data: Any
    task_kind: str
    graphdef_eval: Any
    prepare: Callable
    step_fn: Callable
    eval_fn: Callable
    lrs: np.ndarray  # the learning rate of every step, for the records
    state: tuple  # (params, rest, opt_state)
    step: int = 0
    run_dir: str | None = None
    tracker: Tracker | None = None
    bar: Any = None
    final: dict = dataclasses.field(default_factory=dict)
    diverged: bool = False
    mesh: Any = None  # data-parallel: batches split over its "data" axis, state replicated
    watchdog: Watchdog = dataclasses.field(default_factory=lambda: Watchdog(None))
    checkpointed: int | None = None  # the step of the last checkpoint on disk

    @classmethod
    def start(cls, model: nnx.Module, data, config: TrainConfig, input_shape) -> "_Run":
        """Splits `model` into graph, `nnx.Param`s and the rest, and compiles its steps."""
        task_kind = data.task.kind
        model.eval()
        graphdef_eval = nnx.graphdef(model)
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        dtype = next((l.dtype for l in jax.tree_util.tree_leaves(params)
                      if jnp.issubdtype(l.dtype, jnp.floating)), jnp.float32)
        tx = make_optimizer(config, params)
        # one compiled call for every step's rate, not one per step
        lrs = np.asarray(jax.jit(jax.vmap(learning_rate_schedule(config.lr, config)))(
            jnp.arange(config.steps)))
        return cls(config, data, task_kind, graphdef_eval,
                   functools.partial(prepare_inputs, input_shape=input_shape, dtype=dtype),
                   make_train_step(graphdef, tx), make_eval_step(graphdef_eval), lrs,
                   (params, rest, tx.init(params)))

    def open_run_dir(self, run_dir: str, resume: bool, info: dict, model: nnx.Module, *,
                     probes: int, track_every: int, log_every: int, engine: Engine,
                     calibrate_batchnorm: bool) -> None:
        """Checks `run_dir`, resumes from its checkpoint, starts the tracker, writes config.json."""
        resuming = check_run_dir(run_dir, info, resume)  # checks only: writes nothing
        self.step, self.state = restore(run_dir, self.config, self.state, resuming)
        self.checkpointed = self.step if resuming else None
        _every_process_read("isometry.train: run directory checked")  # before process 0 writes
        apply_fn, x0 = None, None
        if probes:
            calib = (self.prepare(self.data.train_batch(self.config.seed, 0, self.config.batch_size)[0])
                     if calibrate_batchnorm else None)
            apply_fn, x0 = _spectrum_target(model, self.graphdef_eval,
                                            self.prepare(self.data.probe_inputs(probes)), calib)
        self.tracker = Tracker(run_dir, apply_fn=apply_fn, probes=x0, every=track_every,
                               log_every=log_every, engine=engine,
                               resume_step=self.step if resuming else None, mesh=self.mesh)
        self.run_dir = run_dir
        # a run that stopped on a non-finite loss stays stopped (resuming would train NaNs)
        self.diverged = bool(resuming and self.tracker.last_step == self.step
                             and "loss_nonfinite" in last_record(run_dir))
        try:  # every check passed: now the run's settings (new, or with changed intervals/steps)
            if self.tracker.writer:
                write_config(run_dir, info)
        except BaseException:
            self.tracker.close()
            raise

    def loop(self, progress: bool | None) -> None:
        """Steps to `config.steps` (or divergence), with a progress bar; Ctrl-C checkpoints."""
        show = (sys.stderr.isatty() if progress is None else progress) and is_writer()
        self.bar = tqdm(total=self.config.steps, initial=self.step, desc="train", unit="step",
                        disable=not show, file=sys.stderr, dynamic_ncols=True)
        try:
            with _interruptible() as stopped, self.watchdog:
                t = self.tracker
                if t is not None and (t.last_step is None or t.last_step < self.step):
                    self.final = self._record(self.step, force=True, spectrum=True,
                                              **self._evaluate()) or {}
                while self.step < self.config.steps and not self.diverged:
                    if stopped():  # Ctrl-C: the records of steps <= step are on disk
                        self._checkpoint()
                        raise TrainingInterrupted(self.step, self.run_dir)
                    self._advance()
        finally:
            self.bar.close()
            if self.tracker is not None:
                self.tracker.close()
        if not self.final and self.run_dir is not None:  # resumed a finished run: its last record
            self.final = last_record(self.run_dir)

    def _advance(self) -> None:
        """One optimizer step, then its evaluation, record and checkpoint when due."""
        c = self.config
        self.watchdog.beat(f"training step {self.step + 1}")
        x, y = self.data.train_batch(c.seed, self.step, c.batch_size)
        x, y = (self.prepare(x), y) if self.mesh is None else shard_batch((self.prepare(x), y),
                                                                          self.mesh)
        *state, metrics = self.step_fn(*self.state, x, y)
        self.state = tuple(state)
        self.step += 1
        self.bar.update(1)
        last = self.step == c.steps
        evaluated = self._evaluate() if last or (c.eval_every and self.step % c.eval_every == 0) else {}
        rec = self._record(self.step, metrics, force=last or bool(evaluated),
                           spectrum=last or None, **evaluated)
        if rec is not None:
            self.final = rec
            self.diverged = self.diverged or not math.isfinite(rec.get("loss", 0.0))
        elif self.tracker is None and (last or self.step % 100 == 0):
            loss = float(to_host(metrics["loss"]))
            self.final = {"step": self.step, "loss": loss, **evaluated}
            self.diverged = not math.isfinite(loss)
        if last or self.diverged or self.step % c.checkpoint_every == 0:
            self._checkpoint()
        if self.diverged and is_writer():
            print(f"isometry train: the loss became non-finite at step {self.step}; stopping",
                  file=sys.stderr)

    def _evaluate(self) -> dict:
        self.watchdog.beat(f"evaluating step {self.step}")
        params, rest, _ = self.state
        return evaluate(self.eval_fn, params, rest, self.data, self.config.batch_size,
                        self.config.eval_batches, self.prepare, self.task_kind)

    def _record(self, step: int, metrics=None, force=False, spectrum=None, **more) -> dict | None:
        """The tracker's record of `step` (None: none due, or no run directory)."""
        if self.tracker is None or not (force or self.tracker.due(step)):
            return None
        self.watchdog.beat(f"recording step {step}" + (
            " (its Jacobian spectrum)" if self.tracker.takes_spectrum(step, spectrum) else ""))
        m = {k: float(v) for k, v in to_host(metrics or {}).items()}
        params, rest, _ = self.state if self.mesh is None else to_host(self.state)
        rec = self.tracker.update(step, nnx.merge_state(params, rest), force=force,
                                  spectrum=spectrum, lr=float(self.lrs[max(step - 1, 0)]),
                                  **m, **more)
        if rec and "loss" in rec:
            self.bar.set_postfix(loss=f"{rec['loss']:.4g}", refresh=False)
        return rec

    def _checkpoint(self) -> None:
        if self.run_dir is not None:
            self.watchdog.beat(f"writing the checkpoint of step {self.step}")
            state = self.state if self.mesh is None else to_host(self.state)  # on every process
            if is_writer():
                save_checkpoint(os.path.join(self.run_dir, CHECKPOINT_FILE), self.step, state)
            self.checkpointed = self.step

    def resume_hint(self) -> str:
        """Where this run continues from, for a message that ends it."""
        if self.run_dir is None:
            return "no run directory: nothing was saved"
        if self.checkpointed is None:
            return f"no checkpoint yet: {self.run_dir} cannot be resumed; start it anew"
        return (f"{self.run_dir} has a checkpoint of step {self.checkpointed}: the same command "
                f"with --resume continues from there")


def _tracking_settings(probes: int, track_every: int, log_every: int, engine: Engine) -> dict:
    """The tracker's settings as config.json holds them, checked (probes >= 0, intervals >= 1):
    the engine by its name, and all its settings when they are not that engine's defaults."""
    check_setting("probes", probes, low=0, integer=True)
    check_setting("track_every", track_every, low=1, integer=True)
    check_setting("log_every", log_every, low=1, integer=True)
    out = {"probes": probes, "track_every": track_every, "log_every": log_every,
           "method": engine.name}
    if engine != engine_of(engine.name):
        out["engine"] = engine.to_dict()
    return out


def train(model: nnx.Module, data, config: TrainConfig, *, run_dir: str | None = None,
          resume: bool = False, run_info: dict | None = None, input_shape: tuple | None = None,
          probes: int = 8, track_every: int = 100, log_every: int = 10,
          method: str = "auto", engine: Engine | None = None, progress: bool | None = None,
          calibrate_batchnorm: bool = False, mesh=None,
          stall_timeout: float | None = DEFAULT_STALL_TIMEOUT) -> TrainResult:
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
      method, engine: the spectrum engine (as in `isometry.Tracker`).
      progress: show a tqdm bar (default: when stderr is a terminal).
      calibrate_batchnorm: tracked spectra with BatchNorm statistics of the first training
        batch (`isometry.calibrate`), not the running averages (which start at (0, 1)).
      mesh: data-parallel training over this `jax.sharding.Mesh` (`isometry.device_mesh`):
        batches split over its "data" axis, the state replicated (or sharded as the model
        was built with `mesh=`), the tracked spectra one program (`sharded_spectrum_fn`). Under `jax.distributed` call `train` in every process
        with the same arguments: process 0 alone prints and writes `run_dir`, which every
        process reads on `resume` (a shared filesystem).
      stall_timeout: seconds without progress after which the run says what it was doing
        and exits with code 4 (`isometry.train._watchdog`); None or 0: never.

    Returns:
      `TrainResult` with the final params/rest, the last step, the final record, and whether
      the loss became non-finite (training stops there).

    Raises:
      TrainingInterrupted: on Ctrl-C (SIGINT), after the current step finished and a
        checkpoint of it was written (`resume=True` continues from there).
      RunConfigError: `resume` with other settings, or missing or corrupt run files; nothing
        in `run_dir` is changed then.
    """
    engine = engine_of(method if engine is None else engine)
    tracking = _tracking_settings(probes, track_every, log_every, engine)
    watchdog = Watchdog(stall_timeout)  # checks the setting before anything is compiled
    run = _Run.start(model, data, config, input_shape)
    run.mesh, run.watchdog, watchdog.resume_hint = mesh, watchdog, run.resume_hint
    if run_dir is not None:
        info = run_settings({"param_layout": PARAM_LAYOUT, "train": dataclasses.asdict(config),
                             **tracking, "input_shape": input_shape,
                             "calibrate_batchnorm": calibrate_batchnorm, **(run_info or {})})
        run.open_run_dir(run_dir, resume, info, model, probes=probes, track_every=track_every,
                         log_every=log_every, engine=engine, calibrate_batchnorm=calibrate_batchnorm)
    if mesh is not None:  # after a resume restored the state from its checkpoint
        run.state = replicate(run.state, mesh)
    run.loop(progress)
    params, rest, _ = run.state
    nnx.update(model, params, rest)
    return TrainResult(params, rest, run.step, run.final, run.diverged)

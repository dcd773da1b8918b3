"""`diagnose` at every checkpoint of a training run directory (`isometry.train`).

A run directory (config.json + checkpoint.npz, `isometry.train`) holds the state after some
step; `diagnose_run(run_dir, model, x)` loads every checkpoint file in it (checkpoint.npz and
any kept copies checkpoint_<anything>.npz or checkpoints/*.npz), puts its parameters into a
copy of `model` (built as the run built it: same class and sizes), and diagnoses each one
with `isometry.diagnose`. `isometry train` overwrites checkpoint.npz, so a run that kept no
copies gives its last step only; `initial=True` adds `model` itself as step 0 (the run's
initialization when `model` was built with the run's seed, as `isometry diagnose --run` does).

Errors are `RunConfigError`s with one line that says what is wrong: not a run directory, no
checkpoint, or a checkpoint or config.json of another parameter layout.

Example:
    >>> import os, tempfile
    >>> diagnose_run(tempfile.mkdtemp(), None, None)      # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    isometry.train._config.RunConfigError: ... holds no config.json: it is not a run directory...
"""

from __future__ import annotations

import dataclasses
import glob
import os
import warnings

import numpy as np
from flax import nnx

from isometry.diagnosis._diagnose import diagnose
from isometry.diagnosis._result import Diagnosis
from isometry._io import jsonable
from isometry.spectrum._protocol import summarize
from isometry.plot.diagnosis import run_diagnosis_figure
from isometry.train import (CHECKPOINT_FILE, RunConfigError, TrainConfig, load_checkpoint,
                            make_optimizer, run_config)

__all__ = ["RunDiagnosis", "diagnose_run", "checkpoint_files"]

#: The columns of `RunDiagnosis.rows()` (and of the table), one row per step.
ROW_KEYS = ("step", "chi", "mean_log", "std_log", "isometry_share", "growth_rate", "phase",
            "depth_scale", "alpha_min", "alpha_max", "dead_branches", "findings")


def checkpoint_files(run_dir: str) -> list[str]:
    """checkpoint.npz and kept copies (checkpoint_*.npz, checkpoints/*.npz) in `run_dir`."""
    names = [os.path.join(run_dir, CHECKPOINT_FILE),
             *sorted(glob.glob(os.path.join(run_dir, "checkpoint_*.npz"))),
             *sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*.npz")))]
    return [n for n in names if os.path.isfile(n)]


def _train_config(config: dict) -> TrainConfig:
    """The run's `TrainConfig` from config.json (JSON lists back to tuples)."""
    try:
        train = dict(config["train"])
        train["decay_steps"] = tuple(train.get("decay_steps", ()))
        train["lr_factors"] = tuple(tuple(p) for p in train.get("lr_factors", ()))
        return TrainConfig(**train)
    except (KeyError, TypeError, ValueError) as err:
        raise RunConfigError(f"config.json holds no valid training settings "
                             f"({type(err).__name__}: {err})") from None


def _dead_branches(d: Diagnosis) -> int:
    return sum(1 for f in d.findings if f.code == "dead_branch")


def _row(step: int, d: Diagnosis) -> dict:
    """One step's main numbers (nan where not measured)."""
    s = summarize(d.spectrum) if d.spectrum is not None else {}
    alphas = [float(np.mean(v)) for v in d.alphas.values()]
    return dict(step=step, chi=s.get("chi", np.nan), mean_log=s.get("mean_log", np.nan),
                std_log=s.get("std_log", np.nan), isometry_share=s.get("isometry_share", np.nan),
                growth_rate=d.growth_rate, phase=d.phase, depth_scale=d.depth_scale,
                alpha_min=min(alphas, default=np.nan), alpha_max=max(alphas, default=np.nan),
                dead_branches=_dead_branches(d), findings=",".join(d.codes))


@dataclasses.dataclass(frozen=True)
class RunDiagnosis:
    """`diagnose` at each step of a run: `steps[i]` has `diagnoses[i]`; the checkpoint files
    in `files` (None for the initial model)."""

    run_dir: str
    steps: tuple
    diagnoses: tuple
    files: tuple

    def rows(self) -> list[dict]:
        """One dict of the main numbers (`ROW_KEYS`) per step."""
        return [_row(s, d) for s, d in zip(self.steps, self.diagnoses)]

    def table(self) -> str:
        """The main numbers as a plain-text table, one line per step."""
        rows = self.rows()
        cells = [[_cell(r[k]) for k in ROW_KEYS] for r in rows]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(ROW_KEYS)]
        lines = ["  ".join(k.ljust(w) for k, w in zip(ROW_KEYS, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)

    def to_json(self) -> dict:
        """Deprecated: `to_dict()`."""
        warnings.warn("to_json() is deprecated: use to_dict()", DeprecationWarning, stacklevel=2)
        return self.to_dict()

    def to_dict(self) -> dict:
        """Strict-JSON-ready: the rows and every step's full diagnosis."""
        return jsonable(dict(run_dir=self.run_dir, steps=list(self.steps), rows=self.rows(),
                             files=list(self.files),
                             diagnoses=[d.to_dict() for d in self.diagnoses]))

    def figure(self, title: str | None = None):
        """The main numbers over training (`isometry.plot.run_diagnosis_figure`)."""
        return run_diagnosis_figure(self.rows(), title=title or f"diagnosis over training: "
                                                                f"{self.run_dir}")


def _cell(v) -> str:
    if isinstance(v, (int, np.integer)) or isinstance(v, str):
        return str(v) if v != "" else "-"
    return f"{float(v):.4g}"


def _eval_copy(graphdef, params, rest) -> nnx.Module:
    """A new model of `graphdef` with these parameters, in eval mode."""
    model = nnx.merge(graphdef, params, rest)
    if hasattr(model, "eval"):
        model.eval()
    return model


def _load(path: str, graphdef, template) -> tuple[int, nnx.Module]:
    """(step, model) from one checkpoint file; the model in eval mode."""
    step, (params, rest, _) = load_checkpoint(path, template)
    return step, _eval_copy(graphdef, params, rest)


def diagnose_run(run_dir: str, model: nnx.Module, x, *, initial: bool = False,
                 **diagnose_kwargs) -> RunDiagnosis:
    """`isometry.diagnose` of every checkpoint in a training run directory, by step.

    Args:
      run_dir: a run directory written by `isometry.train.train` / `isometry train`.
      model: a model of the run's architecture (its parameters are replaced by each
        checkpoint's; it is not changed).
      x: one input as the model takes it (no batch axis), e.g. shaped by the run's
        input_shape.
      initial: also diagnose `model` as given, as step 0 (the run's initialization when it was
        built with the run's seed).
      **diagnose_kwargs: passed to `diagnose` (mean_field, burn_in, loss_fn, …).

    Returns:
      A `RunDiagnosis` (`.rows()`, `.table()`, `.to_dict()`, `.figure()`), sorted by step; a
      step found in two files is diagnosed once.

    Raises:
      RunConfigError: not a run directory, no checkpoint in it, or a checkpoint of another
        layout or of another model (one line each).
    """
    config = run_config(run_dir, "diagnose")
    files = checkpoint_files(run_dir)
    if not files:
        raise RunConfigError(f"run dir {run_dir!r} holds no checkpoint ({CHECKPOINT_FILE}): "
                             f"nothing to diagnose")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    template = (params, rest, make_optimizer(_train_config(config), params).init(params))
    found: dict[int, tuple] = {}
    if initial:
        found[0] = (None, _eval_copy(graphdef, params, rest))
    for path in files:
        step, loaded = _load(path, graphdef, template)
        found.setdefault(step, (path, loaded))
    steps = sorted(found)
    diagnoses = tuple(diagnose(found[s][1], x, **diagnose_kwargs) for s in steps)
    return RunDiagnosis(run_dir, tuple(steps), diagnoses, tuple(found[s][0] for s in steps))

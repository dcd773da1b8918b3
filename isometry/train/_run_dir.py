"""The run directory's config.json and where a resumed run starts.

  config.json      the run's settings; `resume=True` with different settings raises
                   `RunConfigError` naming the keys that differ. Written (strict JSON,
                   atomically) only after every check passed.
  checkpoint.npz   `isometry.train._checkpoint`; resuming continues from its step.

Nothing here writes before `write_config`: a refused resume leaves the directory as it was.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from isometry._io import jsonable, write_json
from isometry.train._tracking import METRICS_FILE, read_metrics
from isometry.train._checkpoint import load_checkpoint
from isometry.train._config import (CHECKPOINT_FILE, CONFIG_FILE, OLD_LAYOUT, PARAM_LAYOUT,
                                    RESUMABLE_CHANGES, RunConfigError, TrainConfig)

__all__ = ["check_run_dir", "restore", "write_config", "run_config", "run_settings", "flat_settings",
           "last_record"]


def flat_settings(d: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys.

    >>> flat_settings({"train": {"lr": 0.1, "steps": 5}, "probes": 8})
    {'train.lr': 0.1, 'train.steps': 5, 'probes': 8}
    """
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: What to do instead, when a run directory read to resume or diagnose holds no run.
_WITHOUT_A_RUN = {"resume": "leave out --resume to start a run there"}


def run_config(run_dir: str, action: str = "resume") -> dict:
    """config.json of a run directory of this parameter layout, read to `action` the run
    ("resume", "diagnose"): the one reader of a stored run's settings.

    Raises:
      RunConfigError: one line naming `action`, when `run_dir` is no directory or holds no
        config.json, when that is corrupt (not a JSON object), or of another parameter layout.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    hint = _WITHOUT_A_RUN.get(action, "give a run directory of isometry train")
    if not os.path.isdir(run_dir):
        raise RunConfigError(f"nothing to {action}: run dir {run_dir!r} is not a directory "
                             f"({hint})")
    if not os.path.exists(path):
        raise RunConfigError(f"nothing to {action}: {run_dir!r} holds no {CONFIG_FILE}: it is not "
                             f"a run directory ({hint})")
    try:
        with open(path) as f:
            stored = json.load(f)
        if not isinstance(stored, dict):
            raise ValueError(f"expected a JSON object, got {type(stored).__name__}")
    except (ValueError, OSError) as err:
        raise RunConfigError(f"{path} is corrupt ({err}); cannot {action} the run (nothing was "
                             f"changed)") from None
    layout = stored.get("param_layout")
    if layout is None:
        raise RunConfigError(f"run dir {run_dir!r} {OLD_LAYOUT}")
    if layout != PARAM_LAYOUT:
        raise RunConfigError(f"run dir {run_dir!r} has parameter layout {layout!r}, this isometry "
                             f"reads {PARAM_LAYOUT!r} only: cannot {action} it")
    return stored


def check_run_dir(run_dir: str, info: dict, resume: bool) -> bool:
    """Checks config.json (it writes nothing); True when resuming a run found there.

    A fresh run needs a run dir without config.json; `resume` needs one whose config.json
    equals `info` except for `RESUMABLE_CHANGES` (and `steps` for schedules that do not
    depend on it). The error names the keys that differ.
    """
    if not resume:
        if os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
            raise FileExistsError(f"run dir {run_dir!r} already holds a run; pass --resume "
                                  f"(resume=True) to continue it, or choose another run dir")
        return False
    old, new = flat_settings(run_config(run_dir)), flat_settings(info)
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


def _check_no_records_past_start(run_dir: str) -> None:
    """Resuming without a checkpoint restarts at step 0: refuse when records past 0 exist."""
    if not os.path.exists(os.path.join(run_dir, METRICS_FILE)):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = read_metrics(run_dir)
    last = max((r.get("step", 0) for r in records), default=0)
    if last > 0:
        raise RunConfigError(f"run dir {run_dir!r} has records up to step {last} but no "
                             f"{CHECKPOINT_FILE}: it cannot continue from there; start it anew "
                             f"in another run directory (or delete this one)")


def restore(run_dir: str, config: TrainConfig, state: Any, resuming: bool) -> tuple[int, Any]:
    """(first step, state): from the checkpoint when resuming a run that has one, else (0, state)."""
    ckpt = os.path.join(run_dir, CHECKPOINT_FILE)
    if not resuming:
        return 0, state
    if not os.path.exists(ckpt):
        _check_no_records_past_start(run_dir)
        return 0, state
    start, state = load_checkpoint(ckpt, state)
    if start > config.steps:
        raise RunConfigError(f"run dir {run_dir!r} is at step {start}, past the {config.steps} "
                             f"steps asked for: ask for at least {start}")
    return start, state


def write_config(run_dir: str, info: dict) -> None:
    """config.json: the run's settings as strict JSON (`isometry._io`), written atomically."""
    write_json(os.path.join(run_dir, CONFIG_FILE), info, indent=1)


def run_settings(settings: dict) -> dict:
    """The settings config.json stores, as the JSON they are compared in on resume.

    >>> run_settings({"input_shape": (3072,), "lr": float("nan")})
    {'input_shape': [3072], 'lr': None, 'lr_nonfinite': 'nan'}
    """
    return jsonable(settings)


def last_record(run_dir: str) -> dict:
    """The last record of metrics.jsonl ({}: none)."""
    return (read_metrics(run_dir) or [{}])[-1]

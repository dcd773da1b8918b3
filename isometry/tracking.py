"""Spectra, α's and losses recorded during training into a run directory.

`Tracker` is a plain object any training loop calls once per step:

    tracker = Tracker("runs/a", apply_fn=apply_fn, probes=x_probe, every=50)
    for step in range(1, steps + 1):
        params, loss = train_step(params, batch(step))
        tracker.update(step, params, loss=loss)

Every `log_every` steps it appends one record with the cheap scalars (loss, anything passed
as keyword, every α of the model by `isometry.alpha_values`); every `every` steps the record
also holds the Jacobian spectrum of `apply_fn(params, ·)` at the fixed `probes` (its summary
averaged over probes, and a histogram of log10 σ), and σ itself goes to `spectra/`.

Run directory layout:

  metrics.jsonl           one JSON object per line, steps strictly increasing; appended,
                          flushed and fsync'ed per record. Keys: "step", scalars, "alpha"
                          ({path: value}), and on spectrum steps "spectrum" (statistics averaged
                          over probes), "histogram" ({"range", "counts"} of log10 σ over all
                          probes; values outside the range counted in the end bins, exact zeros left
                          out and reported as the summary's "zero_share") and "spectrum_file".
                          Strict JSON: a NaN/Inf value is null with "KEY_nonfinite" beside it.
  spectra/STEP.npy        σ at that step, shape (probes, k), descending (np.load).
  config.json             written by the training loop (`isometry.train`).
  checkpoint.npz          written by the training loop.

A record is written after its spectrum file, so a crash leaves no record pointing at a missing
file. A torn last line (a crash mid-write) is detected on reading and cut off on resuming.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any, Callable

import jax
import numpy as np

from isometry._io import atomic_write, json_text, to_python

__all__ = ["Tracker", "RunDirError", "read_metrics", "read_spectrum", "METRICS_FILE",
           "SPECTRA_DIR"]

METRICS_FILE = "metrics.jsonl"
SPECTRA_DIR = "spectra"
#: Default log10 σ range of the recorded histograms (values outside land in the end bins).
HIST_RANGE = (-6.0, 3.0)


class RunDirError(ValueError):
    """A run directory's files are corrupt or incomplete (the message names the file)."""


def _parse_lines(path: str) -> tuple[list[dict], int, bool]:
    """(records, byte length of the good prefix, torn?) of a metrics file."""
    records, good = [], 0
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:
            break
        try:
            if last:  # no newline after it: the write was cut short
                raise ValueError("no trailing newline")
            records.append(json.loads(line))
        except ValueError:
            if last:
                return records, good, True
            raise RunDirError(f"{path}: line {i + 1} is not valid JSON (and not the last line, so "
                              f"not a torn write); the file is corrupt") from None
        good += len(line) + 1
    return records, good, False


def read_metrics(run_dir: str) -> list[dict]:
    """The records of `run_dir/metrics.jsonl`; a torn last line is skipped with a warning."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir!r}: not a run directory")
    records, _, torn = _parse_lines(path)
    if torn:
        warnings.warn(f"{path}: the last line is incomplete (a torn write) and was skipped",
                      stacklevel=2)
    return records


def read_spectrum(run_dir: str, record: dict) -> np.ndarray:
    """σ (probes, k) saved for a record that has a "spectrum_file"."""
    return np.load(os.path.join(run_dir, record["spectrum_file"]))


class Tracker:
    """Records loss, α per layer and Jacobian spectra on fixed probes into a run directory.

    Args:
      run_dir: the run directory (created if missing).
      apply_fn: `(params, x) -> y`, the function whose Jacobian ∂y/∂x is tracked; None tracks
        no spectra.
      probes: fixed inputs, a batch (leading axis = probes) of floating arrays.
      every: compute the spectrum every this many steps (and whenever `update(force=True)`).
      log_every: write a record every this many steps (spectrum steps always write one).
      method: "auto", "dense" or "lanczos" (see `isometry.spectrum_fn`).
      bins, hist_range: the log10 σ histogram stored in each spectrum record.
      resume_step: None for a fresh run (the directory must hold no records), or the step of
        the checkpoint a run resumes from: later records and spectra are deleted, a torn last
        line is cut off.
      **spectrum_options: passed to `isometry.spectrum_fn`.

    The spectrum function is built once; new parameter values reuse its compiled code.
    """

    def __init__(self, run_dir: str, *, apply_fn: Callable | None = None, probes: Any = None,
                 every: int = 100, log_every: int = 1, method: str = "auto", bins: int = 360,
                 hist_range: tuple[float, float] = HIST_RANGE, resume_step: int | None = None,
                 **spectrum_options):
        from isometry._spectrum import spectrum_fn

        if every < 1 or log_every < 1:
            raise ValueError(f"every and log_every must be >= 1, got {every} and {log_every}")
        if (apply_fn is None) != (probes is None):
            raise ValueError("pass both apply_fn and probes to track spectra, or neither")
        self.run_dir = run_dir
        self.every, self.log_every = every, log_every
        self.bins, self.hist_range = bins, tuple(hist_range)
        self.probes = probes
        self._sfn = spectrum_fn(apply_fn, method, batched=True, **spectrum_options) if apply_fn else None
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.last_step = self._prepare(resume_step)  # checks before it changes anything
        os.makedirs(os.path.join(run_dir, SPECTRA_DIR), exist_ok=True)
        self._file = open(self.path, "ab")

    # --- the run directory -------------------------------------------------------------------
    def _prepare(self, resume_step: int | None) -> int | None:
        if not os.path.exists(self.path):
            if resume_step:
                raise RunDirError(f"{self.path} is missing, so the records of steps 0..{resume_step} "
                                  f"(before the checkpoint) are gone: this run cannot be resumed "
                                  f"without a hole; start it anew in another run directory")
            return None
        records, good, torn = _parse_lines(self.path)
        if resume_step is None:
            if records or torn:
                raise FileExistsError(f"{self.path} already holds {len(records)} records; resume "
                                      f"that run (resume_step=..., `--resume`) or use a new run dir")
            return None
        keep = [r for r in records if r["step"] <= resume_step]
        expected = (resume_step // self.log_every) * self.log_every  # the last due record
        last = keep[-1]["step"] if keep else None
        if resume_step and (last is None or last < expected):
            raise RunDirError(
                f"{self.path} ends at step {last} but the checkpoint is at step {resume_step} "
                f"(records every {self.log_every} steps): the records of steps "
                f"{(last or 0) + 1}..{resume_step} are missing (the file was cut), so resuming "
                f"would leave a hole; start the run anew in another run directory")
        if torn:
            warnings.warn(f"{self.path}: cut off an incomplete last line (a torn write)", stacklevel=3)
        if len(keep) < len(records) or torn:
            data = b"".join(json_text(r).encode() + b"\n" for r in keep)
            atomic_write(self.path, data)
        spectra = os.path.join(self.run_dir, SPECTRA_DIR)
        for name in (os.listdir(spectra) if os.path.isdir(spectra) else []):
            stem = name.split(".")[0]
            if not stem.isdigit() or int(stem) > resume_step:
                os.remove(os.path.join(spectra, name))
        return keep[-1]["step"] if keep else None

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- recording ---------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether `update(step, ...)` writes a record (without `force`)."""
        return step % self.log_every == 0 or step % self.every == 0

    def update(self, step: int, params: Any = None, *, loss=None, force: bool = False,
               spectrum: bool | None = None, **scalars) -> dict | None:
        """Records step `step` if it is due (or `force`): scalars, α's, and the spectrum.

        Args:
          step: the training step (records must have strictly increasing steps).
          params: the parameters (any pytree `apply_fn` takes); α's are read from it.
          loss: the training loss (a scalar, device arrays are fine).
          force: write a record even if the step is not due.
          spectrum: True/False computes/skips the spectrum; None: every `every` steps.
          **scalars: more scalars (accuracy, learning rate, eval metrics, ...).

        Returns:
          The record written, or None when the step was not due.
        """
        if spectrum is None:
            spectrum = step % self.every == 0
        spectrum_due = self._sfn is not None and spectrum
        if not (force or spectrum_due or step % self.log_every == 0):
            return None
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"step {step} is not after the last recorded step {self.last_step}: "
                             f"records must have strictly increasing steps")
        record: dict[str, Any] = {"step": int(step)}
        scalars = {"loss": loss, **scalars}
        alphas = {}
        if params is not None:
            from isometry._params import alpha_values
            alphas = alpha_values(params)
        # one transfer for every scalar and α (not one device-to-host copy each)
        scalars, alphas = jax.device_get(({k: v for k, v in scalars.items() if v is not None}, alphas))
        record.update({k: to_python(v) for k, v in scalars.items()})
        if alphas:
            record["alpha"] = {k: to_python(v) for k, v in alphas.items()}
        if spectrum_due and params is not None:
            record.update(self._spectrum(step, params))
        self._write(record)
        return record

    def _spectrum(self, step: int, params) -> dict:
        try:
            spec = self._sfn(params, self.probes)
        except FloatingPointError as err:  # a diverged model: say so, keep training's record
            return {"spectrum_error": str(err).split(";")[0]}
        summary = {k: float(np.mean(v)) for k, v in spec.summary().items()}
        s = np.asarray(jax.device_get(spec.singular_values))
        from isometry._spectrum import Spectrum
        summary["engine"] = "dense" if isinstance(spec, Spectrum) else "lanczos"
        if summary["engine"] == "lanczos":  # estimates and bounds, not exact values
            summary["estimates"] = _MATRIX_FREE_ESTIMATES
            for name in ("zero_share", "below_resolution"):  # the engine cannot tell
                summary.pop(name, None)
        out: dict[str, Any] = {"spectrum": summary}
        lo, hi = self.hist_range
        positive = s[s > 0]  # exact zeros have no log10: counted by the summary's zero_share
        log10 = np.log10(positive.astype(np.float64))
        counts, _ = np.histogram(np.clip(log10, lo, hi), bins=self.bins, range=(lo, hi))
        out["histogram"] = {"range": [lo, hi], "counts": counts.tolist()}
        name = os.path.join(SPECTRA_DIR, f"{int(step):09d}.npy")
        buf = _npy_bytes(s)
        atomic_write(os.path.join(self.run_dir, name), buf)
        out["spectrum_file"] = name
        return out

    def _write(self, record: dict) -> None:
        line = json_text(record).encode() + b"\n"  # strict JSON: NaN/Inf as null, reason beside
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.last_step = record["step"]


#: What the matrix-free engine's statistics are (records say so beside them).
_MATRIX_FREE_ESTIMATES = {
    "chi": "Hutchinson estimate", "mean_log": "SLQ estimate", "std_log": "SLQ estimate",
    "isometry_share": "SLQ estimate", "sigma_max": "Ritz value (lower bound, converged)",
    "sigma_min": "upper bound (smallest Gauss node)",
    "condition_number": "lower bound", "singular_values": "top-k Ritz values"}


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()

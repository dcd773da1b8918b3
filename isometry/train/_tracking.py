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
                          probes; values outside the range counted in the end bins, the σ below
                          the resolution left out and reported as the summary's "zero_share"; expected counts
                          from the SLQ density for the matrix-free engine), "figure" (mean σ²,
                          median log10 σ, vanished share: `SpectrumResult.statistics`) and
                          "spectrum_file" (dense) or "density_file" (matrix-free).
                          Strict JSON: a NaN/Inf value is null with "KEY_nonfinite" beside it.
  spectra/STEP.npy        dense engine: σ at that step, shape (probes, k), descending (np.load).
  spectra/STEP.npz        matrix-free engine: `LanczosSpectrum.to_arrays()` (its SLQ nodes and
                          weights, chi, the top-k Ritz values as top_singular_values, their
                          error_bounds, rtol, …), read back by `LanczosSpectrum.from_arrays`.
  config.json             written by the training loop (`isometry.train`).
  checkpoint.npz          written by the training loop.

Several processes (`jax.distributed`): every process calls `update` at the same steps (with
`mesh=`, the spectra are one program over the mesh, which needs all of them); only the writer
(process 0 by default) touches the run directory, which every process must be able to read
(a shared filesystem) for the checks of a resume to agree.

The spectrum is summarized through `isometry.SpectrumResult`, whichever engine ran: the
matrix-free engine's statistics and histogram come from its density, never from its top k.
`load_spectrum` reads either file back as its result object.

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
from isometry.spectrum._lanczos_result import LanczosSpectrum
from isometry._numerics import check_setting
from isometry._params import alpha_values
from isometry.parallel._sharding import sharded_spectrum_fn, to_host
from isometry.spectrum._engine import Engine, engine_of
from isometry.spectrum._function import spectrum_fn
from isometry.spectrum._dense import Spectrum
from isometry.spectrum._protocol import summarize

__all__ = ["Tracker", "RunDirError", "is_writer", "read_metrics", "read_spectrum",
           "load_spectrum", "spectrum_arrays", "spectrum_from_arrays",
           "MATRIX_FREE_ESTIMATES", "METRICS_FILE", "SPECTRA_DIR"]

METRICS_FILE = "metrics.jsonl"
SPECTRA_DIR = "spectra"
#: Default log10 σ range of the recorded histograms (values outside land in the end bins).
HIST_RANGE = (-6.0, 3.0)


def is_writer() -> bool:
    """Whether this process writes run directories and prints: process 0 of a
    `jax.distributed` job (the only process otherwise)."""
    return jax.process_index() == 0


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
    """σ (probes, k) saved for a record that has a "spectrum_file" (the dense engine).

    A matrix-free record has a "density_file" instead (its σ are unknown): read it with
    `load_spectrum`.
    """
    if "spectrum_file" not in record and "density_file" in record:
        raise KeyError(f"step {record.get('step')} was computed matrix-free: it has a density, "
                       f"not every σ; use load_spectrum(run_dir, record)")
    return np.load(os.path.join(run_dir, record["spectrum_file"]))


def spectrum_arrays(spec: Spectrum | LanczosSpectrum) -> dict[str, np.ndarray]:
    """A spectrum result as plain numpy arrays (what the run directory and JSON records keep):
    the result's own `to_arrays()` — σ for the dense result; density, chi and the top k (as
    top_singular_values) for the matrix-free one. `spectrum_from_arrays` turns them back."""
    return spec.to_arrays()


def spectrum_from_arrays(arrays: dict) -> Spectrum | LanczosSpectrum:
    """The result `spectrum_arrays` describes (lists are fine: JSON records): the dense
    `Spectrum` when there are singular values, else the `LanczosSpectrum` (`from_arrays`)."""
    cls = Spectrum if "singular_values" in arrays else LanczosSpectrum
    return cls.from_arrays(arrays)


def load_spectrum(run_dir: str, record: dict) -> Spectrum | LanczosSpectrum:
    """The spectrum result saved for a record: a `Spectrum` (dense) or a `LanczosSpectrum`.

    Either is summarized through the same `isometry.SpectrumResult` interface
    (`to_dict()`, `histogram()`, …).
    """
    if "density_file" in record:
        with np.load(os.path.join(run_dir, record["density_file"])) as f:
            return LanczosSpectrum.from_arrays({name: f[name] for name in f.files})
    s = read_spectrum(run_dir, record)
    sizes = record.get("figure", {})  # older records: a square J
    return Spectrum.from_arrays({"singular_values": s, "sizes": [
        sizes.get("n_in", s.shape[-1]), sizes.get("n_out", s.shape[-1])]})


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class Tracker:
    """Records loss, α per layer and Jacobian spectra on fixed probes into a run directory.

    Args:
      run_dir: the run directory (created if missing).
      apply_fn: `(params, x) -> y`, the function whose Jacobian ∂y/∂x is tracked; None tracks
        no spectra.
      probes: fixed inputs, a batch (leading axis = probes) of floating arrays.
      every: compute the spectrum every this many steps (and whenever `update(force=True)`).
      log_every: write a record every this many steps (spectrum steps always write one).
      method, engine: the spectrum engine: the shorthand "auto", "dense" or "lanczos", or
        its settings `iso.dense(...)`, `iso.lanczos(...)`, `iso.auto(...)` (overrides method).
      bins, hist_range: the log10 σ histogram stored in each spectrum record.
      resume_step: None for a fresh run (the directory must hold no records), or the step of
        the checkpoint a run resumes from: later records and spectra are deleted, a torn last
        line is cut off.
      mesh: compute the spectra as one program over this device mesh, the probes split over
        its "data" axis (`isometry.sharded_spectrum_fn`); None: on the default device.
      writer: whether this process writes the run directory (default: process 0 only); the
        others check it on resume and compute the same records without writing them.

    The spectrum function is built once; new parameter values reuse its compiled code.
    """

    def __init__(self, run_dir: str, *, apply_fn: Callable | None = None, probes: Any = None,
                 every: int = 100, log_every: int = 1, method: str = "auto",
                 engine: Engine | None = None, bins: int = 360,
                 hist_range: tuple[float, float] = HIST_RANGE, resume_step: int | None = None,
                 mesh: Any = None, writer: bool | None = None):
        if every < 1 or log_every < 1:
            raise ValueError(f"every and log_every must be >= 1, got {every} and {log_every}")
        check_setting("bins", bins, low=1, integer=True)
        if len(hist_range) != 2 or not hist_range[0] < hist_range[1]:
            raise ValueError(f"hist_range must be (lo, hi) in log10 σ with lo < hi, got {hist_range}")
        if (apply_fn is None) != (probes is None):
            raise ValueError("pass both apply_fn and probes to track spectra, or neither")
        self.run_dir = run_dir
        self.every, self.log_every = every, log_every
        self.bins, self.hist_range = bins, tuple(hist_range)
        self.probes = probes
        self.writer = is_writer() if writer is None else writer
        #: The `SpectrumFunction` (or `ShardedSpectrumFunction`, with `mesh`) of the tracked
        #: spectra (None without apply_fn).
        #: The engine's settings (`iso.dense`, `iso.lanczos`, `iso.auto`).
        self.engine = engine_of(method if engine is None else engine)
        self.spectrum_fn = None if not apply_fn else (
            spectrum_fn(apply_fn, engine=self.engine, batched=True) if mesh is None
            else sharded_spectrum_fn(apply_fn, engine=self.engine, mesh=mesh))
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.last_step = self._prepare(resume_step)  # checks before it changes anything
        self._file = None
        if self.writer:
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
        if not self.writer:  # the checks agree; the writer repairs
            return keep[-1]["step"] if keep else None
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
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- recording ---------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether `update(step, ...)` writes a record (without `force`)."""
        return step % self.log_every == 0 or step % self.every == 0

    def takes_spectrum(self, step: int, spectrum: bool | None = None) -> bool:
        """Whether `update(step, spectrum=spectrum)` computes a spectrum (None: every `every`)."""
        due = step % self.every == 0 if spectrum is None else spectrum
        return self.spectrum_fn is not None and bool(due)

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
        spectrum_due = self.takes_spectrum(step, spectrum)
        if not (force or spectrum_due or step % self.log_every == 0):
            return None
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"step {step} is not after the last recorded step {self.last_step}: "
                             f"records must have strictly increasing steps")
        record: dict[str, Any] = {"step": int(step)}
        scalars = {"loss": loss, **scalars}
        alphas = {}
        if params is not None:
            alphas = alpha_values(params)
        # one transfer for every scalar and α (not one device-to-host copy each)
        scalars, alphas = to_host(({k: v for k, v in scalars.items() if v is not None}, alphas))
        record.update({k: to_python(v) for k, v in scalars.items()})
        if alphas:
            record["alpha"] = {k: to_python(v) for k, v in alphas.items()}
        if spectrum_due and params is not None:
            record.update(self._spectrum(step, params))
        self._write(record)
        return record

    def _spectrum(self, step: int, params) -> dict:
        try:
            spec = self.spectrum_fn(params, self.probes)
        except FloatingPointError as err:  # a diverged model: say so, keep training's record
            return {"spectrum_error": str(err).split(";")[0]}
        spec = to_host(spec)  # sharded over several processes, too
        summary = {k: float(np.mean(v)) for k, v in summarize(spec).items()}
        summary["engine"] = spec.engine
        if not spec.exact:  # estimates and bounds, not exact values
            summary["estimates"] = MATRIX_FREE_ESTIMATES
        counts = spec.binned_counts(self.bins, self.hist_range)
        figure = {**spec.statistics(), "n_in": spec.n_in, "n_out": spec.n_out}
        out: dict[str, Any] = {"spectrum": summary, "figure": figure,
                               "histogram": {"range": list(self.hist_range),
                                             "counts": counts.tolist()}}
        if spec.exact:
            name, data, key = f"{int(step):09d}.npy", \
                _npy_bytes(spec.to_arrays()["singular_values"]), "spectrum_file"
        else:
            name, data, key = f"{int(step):09d}.npz", _npz_bytes(spectrum_arrays(spec)), "density_file"
        if self.writer:
            atomic_write(os.path.join(self.run_dir, SPECTRA_DIR, name), data)
        out[key] = os.path.join(SPECTRA_DIR, name)
        return out

    def _write(self, record: dict) -> None:
        if self._file is not None:
            line = json_text(record).encode() + b"\n"  # strict JSON: NaN/Inf as null, reason beside
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        self.last_step = record["step"]


#: What the matrix-free engine's statistics are (records say so beside them).
MATRIX_FREE_ESTIMATES = {
    "chi": "Hutchinson estimate",
    "mean_log": "SLQ estimate over the σ above σ_max·eps·n (those below: zero_share)",
    "std_log": "SLQ estimate over the σ above σ_max·eps·n (those below: zero_share)",
    "zero_share": "SLQ estimate of the share of σ below σ_max·eps·n (zeros included)",
    "isometry_share": "SLQ estimate", "sigma_max": "Ritz value (lower bound, converged)",
    "sigma_min": "upper bound (smallest Gauss node)",
    "condition_number": "lower bound", "top_singular_values": "top-k Ritz values",
    "histogram": "expected counts from the SLQ density",
    "figure": "mean σ² from chi; median and vanished share from the SLQ density"}


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()

"""The dense `Spectrum` result: every singular value of an input-output Jacobian.

For J = ∂y/∂x with n_in inputs and n_out outputs, `Spectrum` holds the k = min(n_in, n_out)
singular values σ_1 ≥ … ≥ σ_k of J and

    chi = ||J||_F² / n_in = (1/n_in) Σ_i σ_i²,

the mean squared singular value (m₁ of docs/theory.md when J is square). Leading batch axes
(one spectrum per input of a batch) are kept on every field and every statistic.

Precision: a deep network's small singular values sit far below float32 resolution
(σ_min/σ_max < 1e-7 is common at depth ≥ 32). Enable `jax_enable_x64` and pass float64 inputs
when the bottom of the spectrum matters; σ is computed from J by an SVD, never from JJᵀ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from isometry._numerics import log10_sigma, numerically_zero
from isometry.spectrum._protocol import ISOMETRY_BAND, SpectrumStatistics

__all__ = ["Spectrum"]

Array = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Spectrum(SpectrumStatistics):
    """Singular values of a Jacobian J (n_out × n_in), descending, with summary statistics.

    A frozen pytree dataclass: it passes through `jax.jit` and `jax.vmap`. Implements
    `isometry.SpectrumResult` (statistics shared with the matrix-free result).

    Attributes:
      singular_values: σ, shape (..., k), k = min(n_in, n_out), descending.
      chi: ||J||_F² / n_in, shape (...).
      n_nonfinite: number of NaN/Inf entries found in J (0 for a valid spectrum), shape (...).
      n_in: number of inputs (static).
      n_out: number of outputs (static).

    Example:
      >>> import jax.numpy as jnp, isometry as iso
      >>> spec = iso.jacobian_spectrum(lambda x: 2.0 * x, jnp.ones(3))
      >>> spec.singular_values.tolist(), float(spec.chi)
      ([2.0, 2.0, 2.0], 4.0)
    """

    engine: ClassVar[str] = "dense"
    exact: ClassVar[bool] = True

    singular_values: Array
    chi: Array
    n_nonfinite: Array
    n_in: int = dataclasses.field(metadata=dict(static=True))
    n_out: int = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def from_singular_values(cls, s: Array, n_in: int, n_out: int, n_nonfinite: Array | None = None):
        """Builds a Spectrum from descending singular values `s` of shape (..., k)."""
        chi = jnp.sum(jnp.square(s), axis=-1) / n_in
        if n_nonfinite is None:
            n_nonfinite = jnp.zeros(s.shape[:-1], jnp.int32)
        return cls(s, chi, n_nonfinite, n_in, n_out)

    # --- files: the run directory's spectra/STEP.npy, JSON records --------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """σ and the sizes (n_in, n_out) as numpy arrays: what `from_arrays` reads back."""
        return {"singular_values": np.asarray(self.singular_values),
                "sizes": np.asarray([self.n_in, self.n_out])}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "Spectrum":
        """The result `to_arrays` describes (lists are fine: JSON records); numpy kept (float64
        stays float64), chi summed in float64."""
        n_in, n_out = (int(v) for v in np.ravel(arrays["sizes"]))
        s = np.asarray(arrays["singular_values"])
        return cls(s, np.sum(np.square(s, dtype=np.float64), axis=-1) / n_in,
                   np.zeros(s.shape[:-1], np.int32), n_in, n_out)

    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(log10 σ of every σ pooled over the batch, equal weights, no kernel)."""
        s = np.asarray(self.singular_values, dtype=np.float64).ravel()
        return log10_sigma(s), np.full(s.shape, 1.0 / max(s.size, 1)), 0.0

    def zero_mask(self) -> np.ndarray:
        """Which σ (pooled over the batch, as `log10_measure`) are below `resolution`."""
        s = np.asarray(self.singular_values)
        return np.asarray(numerically_zero(s, np.asarray(self.resolution)[..., None])).ravel()

    # --- statistics (all reduce over the last axis, keep batch axes) ---------------------
    @property
    def log_singular_values(self) -> Array:
        """Natural log of σ (−inf where σ = 0)."""
        return jnp.log(self.singular_values)

    def _resolved(self) -> Array:
        """The mask of σ above `resolution` (the σ that are not zero to the SVD's precision)."""
        return ~numerically_zero(self.singular_values, self.resolution[..., None])

    def _nonzero_log(self) -> tuple[Array, Array, Array]:
        """(ln σ with the σ below resolution masked to 0, the mask of the others, their number)."""
        s = self.singular_values
        resolved = self._resolved()
        log = jnp.where(resolved, jnp.log(jnp.where(resolved, s, 1)), 0)
        return log, resolved, jnp.sum(resolved, axis=-1).astype(log.dtype)

    @property
    def mean_log(self) -> Array:
        """Mean of ln σ over the σ above `resolution`: the log of their geometric mean.

        The σ below it (exact zeros — a dead ReLU unit, a zero-initialized branch — and the
        round-off the SVD leaves of them) have no meaningful logarithm: they are left out and
        counted by `zero_share`; −inf when every σ is zero.
        """
        log, _, count = self._nonzero_log()
        mean = jnp.sum(log, axis=-1) / jnp.maximum(count, 1)
        return jnp.where(count > 0, mean, -jnp.inf).astype(log.dtype)

    @property
    def std_log(self) -> Array:
        """Standard deviation of ln σ over the σ above `resolution` (NaN when none is)."""
        log, resolved, count = self._nonzero_log()
        mean = jnp.sum(log, axis=-1, keepdims=True) / jnp.maximum(count, 1)[..., None]
        var = jnp.sum(jnp.where(resolved, jnp.square(log - mean), 0), axis=-1) / jnp.maximum(count, 1)
        return jnp.where(count > 0, jnp.sqrt(var), jnp.nan).astype(log.dtype)

    @property
    def zero_share(self) -> Array:
        """Share of σ below `resolution`, exact zeros included: zero to the SVD's precision
        (left out of `mean_log`, `std_log` and histograms). When the small σ matter, compute in
        float64 (`jax_enable_x64`, float64 parameters and inputs): its resolution is lower."""
        s = self.singular_values
        return jnp.mean(~self._resolved(), axis=-1, dtype=s.dtype)

    @property
    def sigma_max(self) -> Array:
        """Largest singular value (the operator norm of J)."""
        return self.singular_values[..., 0]

    @property
    def sigma_min(self) -> Array:
        """Smallest of the k = min(n_in, n_out) singular values."""
        return self.singular_values[..., -1]

    @property
    def isometry_share(self) -> Array:
        """Share of σ inside `ISOMETRY_BAND` = [0.5, 2]: 1 for a perfectly isometric J."""
        lo, hi = ISOMETRY_BAND
        s = self.singular_values
        return jnp.mean((s >= lo) & (s <= hi), axis=-1, dtype=s.dtype)

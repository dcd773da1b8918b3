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

from isometry._numerics import log10_sigma
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

    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(log10 σ of every σ pooled over the batch, equal weights, no kernel)."""
        s = np.asarray(self.singular_values, dtype=np.float64).ravel()
        return log10_sigma(s), np.full(s.shape, 1.0 / max(s.size, 1)), 0.0

    # --- statistics (all reduce over the last axis, keep batch axes) ---------------------
    @property
    def log_singular_values(self) -> Array:
        """Natural log of σ (−inf where σ = 0)."""
        return jnp.log(self.singular_values)

    def _nonzero_log(self) -> tuple[Array, Array, Array]:
        """(ln σ with zeros masked to 0, the mask σ > 0, the number of σ > 0)."""
        s = self.singular_values
        positive = s > 0
        log = jnp.where(positive, jnp.log(jnp.where(positive, s, 1)), 0)
        return log, positive, jnp.sum(positive, axis=-1).astype(log.dtype)

    @property
    def mean_log(self) -> Array:
        """Mean of ln σ over the σ > 0: the log of their geometric mean.

        Exact zeros (a dead ReLU unit, a zero-initialized branch) have no logarithm: they are
        left out and counted by `zero_share`; −inf when every σ is 0.
        """
        log, _, count = self._nonzero_log()
        mean = jnp.sum(log, axis=-1) / jnp.maximum(count, 1)
        return jnp.where(count > 0, mean, -jnp.inf).astype(log.dtype)

    @property
    def std_log(self) -> Array:
        """Standard deviation of ln σ over the σ > 0 (NaN when every σ is 0)."""
        log, positive, count = self._nonzero_log()
        mean = jnp.sum(log, axis=-1, keepdims=True) / jnp.maximum(count, 1)[..., None]
        var = jnp.sum(jnp.where(positive, jnp.square(log - mean), 0), axis=-1) / jnp.maximum(count, 1)
        return jnp.where(count > 0, jnp.sqrt(var), jnp.nan).astype(log.dtype)

    @property
    def zero_share(self) -> Array:
        """Share of σ that are exactly 0 (left out of `mean_log`, `std_log` and histograms)."""
        s = self.singular_values
        return jnp.mean(s == 0, axis=-1, dtype=s.dtype)

    @property
    def below_resolution(self) -> Array:
        """Share of σ below `resolution` (zeros included): noise, not the network's spectrum.

        When it matters, compute in float64 (`jax_enable_x64`, float64 parameters and inputs).
        """
        s = self.singular_values
        return jnp.mean((s < self.resolution[..., None]) | (s == 0), axis=-1, dtype=s.dtype)

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

    def histogram(self, bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                  density: bool = True):
        """Histogram of log10 σ over all spectra in the batch (host-side, numpy).

        Exact zeros have no logarithm: they are left out (`zero_share` counts them), and the
        default range is that of the σ > 0. With `density`, the area is the share of non-zero σ
        inside the range (1 when there are no zeros), so spectra with and without zeros can
        share an axis; counts are 0 everywhere when every σ is 0.

        Args:
          bins: number of bins or bin edges.
          range: (lo, hi) in log10 σ; defaults to the range of the non-zero σ.
          density: normalize to a probability density in log10 σ (over all σ, zeros included).

        Returns:
          (counts, edges) as numpy arrays.
        """
        s = np.asarray(self.singular_values, dtype=np.float64).ravel()
        log10 = log10_sigma(s[s > 0])
        if range is None and np.ndim(bins) == 0:
            range = (float(log10.min()), float(log10.max())) if log10.size else (-1.0, 1.0)
            if range[1] - range[0] < 1e-12:
                range = (range[0] - 0.5, range[1] + 0.5)
        counts, edges = np.histogram(log10, bins=bins, range=range)
        if density:
            return counts / (max(s.size, 1) * np.diff(edges)), edges
        return counts, edges

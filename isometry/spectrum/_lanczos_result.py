"""The matrix-free `LanczosSpectrum` result: a density of log10 σ, chi, and the top k σ.

The matrix-free engine (`isometry.lanczos_spectrum`) does not know every singular value: it
knows the Gauss nodes and weights of stochastic Lanczos quadrature (a density of log10 σ), a
Hutchinson estimate of chi, and the top k Ritz values. The top k are stored as
`top_singular_values`, never as `singular_values`: every statistic of the whole spectrum
(`statistics`, `histogram`, `binned_counts`, `mean_log`, `isometry_share`, …) comes from the
density and chi, through the shared `isometry.SpectrumResult` interface.

Stated error (`statistic_errors`): the density's probes are independent, so each share
below a threshold has a standard error over the probes; the kernel of `bandwidth` decades
blurs the density by that much; chi has its Hutchinson standard error.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from scipy.special import ndtr as np_ndtr

from isometry._numerics import log10_sigma
from isometry.spectrum._protocol import ISOMETRY_BAND, VANISHED, SpectrumStatistics

__all__ = ["LanczosSpectrum", "TopSingularValues", "DEFAULT_BANDWIDTH"]

Array = Any

#: Kernel width of the density, in decades of σ.
DEFAULT_BANDWIDTH = 0.04


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LanczosSpectrum(SpectrumStatistics):
    """Matrix-free spectrum of J: top singular values, an SLQ density of log10 σ, and chi.

    Implements `isometry.SpectrumResult` (statistics shared with the dense `Spectrum`, from the
    density); leading batch axes are kept. Fields with a trailing probe axis p and step axis m
    hold the quadrature of each probe. There is no `singular_values`: the full σ are unknown.

    Attributes:
      top_singular_values: the top k Ritz values, descending (lower bounds on σ_1..σ_k),
        (..., k). Not the spectrum: never summarize them as one.
      residual_bounds: error bounds σ_i(J) − θ_i ≤ bound (`error_bounds`: the residual
        |β_m P_{m,i}| refined by the Ritz-value gaps), (..., k).
      sigma_min_estimate: the smallest Gauss node over the probes: an upper bound on σ_min,
        often far above it (the density's lowest node), (...).
      sigma_min_residual: its residual bound, (...).
      chi: Hutchinson estimate of ‖J‖_F²/n_in, (...).
      chi_stderr: its standard error over the probes, (...).
      nodes: Gauss nodes σ_i(B) of every probe, (..., p, m).
      weights: their quadrature weights (each probe's sum to 1), (..., p, m).
      n_nonfinite: number of non-finite bidiagonal coefficients (0 when J v is finite), (...).
      n_in, n_out: sizes of J (static).
      bandwidth: Gaussian kernel width of the density, in decades of σ (static).
    """

    engine: ClassVar[str] = "lanczos"
    exact: ClassVar[bool] = False

    top_singular_values: Array
    residual_bounds: Array
    sigma_min_estimate: Array
    sigma_min_residual: Array
    chi: Array
    chi_stderr: Array
    nodes: Array
    weights: Array
    n_nonfinite: Array
    n_in: int = dataclasses.field(metadata=dict(static=True))
    n_out: int = dataclasses.field(metadata=dict(static=True))
    bandwidth: float = dataclasses.field(default=DEFAULT_BANDWIDTH, metadata=dict(static=True))

    # --- statistics (reduce over the trailing probe and node axes, keep batch axes) --------
    @property
    def singular_values(self):
        raise AttributeError(
            "a matrix-free LanczosSpectrum does not know every singular value: use "
            "`top_singular_values` for the top k Ritz values, and `statistics()`, `histogram()` "
            "or `binned_counts()` for the spectrum (from its SLQ density)")

    def _log_nodes(self) -> Array:
        """ln of every Gauss node, clipped below at `resolution` (what lies lower is round-off)."""
        return jnp.log(jnp.maximum(self.nodes, self.resolution[..., None, None]))

    @property
    def below_resolution(self) -> Array:
        """SLQ estimate of the share of σ below `resolution` (zeros included): where it is
        above 0, `mean_log` is an upper bound and `std_log` a lower bound, not estimates."""
        return self._expect(jnp.where(self.nodes < self.resolution[..., None, None], 1.0, 0.0)
                            .astype(self.weights.dtype))

    def _expect(self, values: Array) -> Array:
        """E[f(σ)] under the SLQ measure: mean over probes of Σ_i w_i f(σ_i)."""
        return jnp.mean(jnp.sum(self.weights * values, axis=-1), axis=-1)

    @property
    def mean_log(self) -> Array:
        """SLQ estimate of the mean of ln σ over all k singular values, σ clipped below at
        `resolution`: an upper bound when `below_resolution` > 0 (the engine cannot see how
        far below its resolution those σ lie, or whether they are exact zeros)."""
        return self._expect(self._log_nodes())

    @property
    def std_log(self) -> Array:
        """SLQ estimate of the standard deviation of ln σ."""
        log = self._log_nodes()
        var = self._expect(jnp.square(log)) - jnp.square(self._expect(log))
        return jnp.sqrt(jnp.maximum(var, 0.0))

    @property
    def sigma_max(self) -> Array:
        """Largest singular value (converged to round-off in a few tens of steps)."""
        return self.top_singular_values[..., 0]

    @property
    def sigma_min(self) -> Array:
        """Smallest singular value, APPROXIMATE: an upper bound (see `sigma_min_estimate`)."""
        return self.sigma_min_estimate

    @property
    def isometry_share(self) -> Array:
        """Share of σ in `ISOMETRY_BAND` = [0.5, 2], from the smoothed SLQ density."""
        lo, hi = (math.log10(b) for b in ISOMETRY_BAND)
        x = log10_sigma(self.nodes)
        h = self.bandwidth
        return self._expect(ndtr((hi - x) / h) - ndtr((lo - x) / h))

    def converged(self, rtol: float = 1e-4) -> Array:
        """Which top singular values are certified: residual bound ≤ rtol · σ_i, (..., k).

        The residual bounds are those of the computed B: they do not include the round-off of
        the products themselves, about eps · σ_max (≈ 1e-7 relative in float32), so ask for
        rtol above that.
        """
        return self.residual_bounds <= rtol * self.top_singular_values

    def histogram(self, bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                  density: bool = True):
        """Smoothed SLQ density of log10 σ integrated over bins, pooled over the batch (numpy).

        Each Gauss node contributes its weight spread by a Gaussian of width `bandwidth`
        decades, integrated exactly over every bin.

        Args:
          bins: number of bins or bin edges.
          range: (lo, hi) in log10 σ; defaults to the nodes' range ± 3 bandwidths.
          density: a density in log10 σ whose area is the share of σ inside the range (1 for
            the default range, less over a part of the spectrum, as for the dense result);
            else expected counts (weights × k singular values per spectrum).

        Returns:
          (values, edges) as numpy arrays, like `numpy.histogram`.
        """
        s = np.asarray(self.nodes, dtype=np.float64)
        w = np.asarray(self.weights, dtype=np.float64)
        n_probes = s.shape[-2]
        x = log10_sigma(s).ravel()
        w = w.ravel() / n_probes
        h = self.bandwidth
        if np.ndim(bins) == 0:
            if range is None:
                heavy = w > 1e-6 * w.max()
                range = (x[heavy].min() - 3 * h, x[heavy].max() + 3 * h)
            edges = np.linspace(range[0], range[1], int(bins) + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
        cdf = np_ndtr((edges[None, :] - x[:, None]) / h)  # (nodes, edges)
        mass = w @ np.diff(cdf, axis=1)
        if density:  # as the dense result's: the area is the share of σ inside the range
            return mass / (max(w.sum(), np.finfo(np.float64).tiny) * np.diff(edges)), edges
        return mass * min(self.n_in, self.n_out), edges

    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(log10 of every Gauss node pooled over batch and probes, weights summing to 1, the
        kernel width `bandwidth`)."""
        x = log10_sigma(np.asarray(self.nodes, np.float64)).ravel()
        w = np.asarray(self.weights, np.float64).ravel()
        return x, w / max(np.prod(self.nodes.shape[:-1]), 1), float(self.bandwidth)

    def probe_shares_below(self, threshold: float) -> np.ndarray:
        """Share of σ below `threshold` seen by each probe (smoothed), all probes pooled, (P,)."""
        x = log10_sigma(np.asarray(self.nodes, np.float64))
        w = np.asarray(self.weights, np.float64)
        shares = np.sum(w * np_ndtr((np.log10(threshold) - x) / self.bandwidth), axis=-1)
        return shares.ravel()

    def share_stderr(self, threshold: float) -> float:
        """Standard error over the probes of `share_below(threshold)`."""
        shares = self.probe_shares_below(threshold)
        return float(np.std(shares, ddof=1) / math.sqrt(shares.size)) if shares.size > 1 else 1.0

    def statistic_errors(self, vanished: float = VANISHED) -> dict[str, float]:
        """The stated errors of `statistics()`: two standard errors over the probes (chi's
        Hutchinson error for mean σ²), plus the kernel's blur for shares and quantiles.

        * mean σ²: 2 · chi_stderr · n_in / k (pooled over the batch);
        * vanished share: 2 · its standard error over probes + the density's mass within
          ±2 bandwidths of log10 `vanished` (the kernel moves that much across it);
        * median log10 σ: 2 · bandwidth + 2 · the median's share error / the density there.
        """
        k = min(self.n_in, self.n_out)
        se = np.asarray(self.chi_stderr, np.float64).ravel() * self.n_in / k
        h, t = self.bandwidth, math.log10(vanished)
        near = self.share_below(10 ** (t + 2 * h)) - self.share_below(10 ** (t - 2 * h))
        median = self.quantile_log10(0.5)
        width = self.quantile_log10(0.6) - self.quantile_log10(0.4)  # 0.2 of the mass
        med_se = self.share_stderr(10 ** median)
        return {"mean_sigma2": float(2 * np.sqrt(np.sum(se ** 2)) / se.size),
                "vanished_share": 2 * self.share_stderr(vanished) + near,
                "median_log10": 2 * h + 2 * med_se * width / 0.2}

    def summary(self) -> dict[str, Any]:
        """The statistics as plain Python floats (lists for a batch): the keys of `Spectrum`."""
        return super().summary()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TopSingularValues:
    """The largest singular values of J from `top_singular_values`, with their certificates.

    Leading batch axes are kept (under `vmap`).

    Attributes:
      singular_values: θ_1 ≥ … ≥ θ_k, Ritz values: lower bounds on σ_1..σ_k, (..., k).
      error_bounds: σ_i − θ_i ≤ error_bounds_i (`error_bounds`: residual, gap and cluster
        bounds; round-off of the products, ≈ eps · σ_1, not included), (..., k).
      residual_bounds: the plain residuals |β_s P_{s,i}| (a singular value of J lies within
        each of θ_i), (..., k).
      converged: whether every error bound is ≤ rtol · θ_i, (...).
      steps: vectors of each Krylov basis: Golub–Kahan steps × block size, the products
        with J (and as many with Jᵀ), (...).
    """

    singular_values: Array
    error_bounds: Array
    residual_bounds: Array
    converged: Array
    steps: Array

    @property
    def relative_error_bounds(self) -> Array:
        """error_bounds / singular_values."""
        return self.error_bounds / self.singular_values

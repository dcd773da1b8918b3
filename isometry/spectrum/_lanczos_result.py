"""The matrix-free `LanczosSpectrum` result: a density of log10 σ, chi, and the top k σ.

The matrix-free engine (`isometry.lanczos_spectrum`) does not know every singular value: it
knows the Gauss nodes and weights of stochastic Lanczos quadrature (a density of log10 σ), a
Hutchinson estimate of chi, and the top k Ritz values. The top k are stored as
`top_singular_values`, never as `singular_values`: every statistic of the whole spectrum
(`statistics`, `histogram`, `binned_counts`, `mean_log`, `isometry_share`, …) comes from the
density and chi, through the shared `isometry.SpectrumResult` interface.

Certificates, one meaning on both results of the top-k run (`LanczosSpectrum` and
`TopSingularValues`): `error_bounds` are the refined bounds σ_i(J) − θ_i ≤ bound (residual,
gap and cluster bounds), `converged` says whether every top-k bound is ≤ rtol · θ_i with the
`rtol` the run used, and `relative_error_bounds` is bound / θ_i. `TopSingularValues` also keeps
the plain `residuals` |β P_{m,i}| (a singular value of J lies within each of θ_i).

The resolution: nodes below σ_max · ε · max(n_in, n_out) are round-off of the products; their
weight is the `zero_share`, and `mean_log` / `std_log` are over the other nodes, as the dense
result's are over its σ above the same resolution.

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

from isometry._io import jsonable
from isometry._numerics import log10_sigma, numerically_zero
from isometry.spectrum._protocol import ISOMETRY_BAND, VANISHED, SpectrumStatistics, deprecated

__all__ = ["LanczosSpectrum", "TopSingularValues", "Certified", "DEFAULT_BANDWIDTH", "FILE_RTOL"]

Array = Any

#: Kernel width of the density, in decades of σ.
DEFAULT_BANDWIDTH = 0.04
#: The rtol a result read from an older file (which did not record it) is taken to have run
#: with: the engine's default (`isometry.spectrum._lanczos.DEFAULT_RTOL`).
FILE_RTOL = 1e-6


class Certified:
    """`converged` and `relative_error_bounds` of a result with `error_bounds`, from its top
    values (`_top_values()`) and the `rtol` its run used."""

    rtol: float

    def _top_values(self) -> Array:
        raise NotImplementedError

    @property
    def relative_error_bounds(self) -> Array:
        """error_bounds / θ_i, (..., k)."""
        return self.error_bounds / self._top_values()

    @property
    def converged(self) -> Array:
        """Whether every top-k error bound is ≤ rtol · θ_i, `rtol` the run's, (...).

        The bounds are those of the computed bidiagonal: they leave out the round-off of the
        products themselves, about eps · σ_max (≈ 1e-7 relative in float32). For another
        tolerance compare `relative_error_bounds` with it.
        """
        return jnp.all(self.error_bounds <= self.rtol * self._top_values(), axis=-1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LanczosSpectrum(SpectrumStatistics, Certified):
    """Matrix-free spectrum of J: top singular values, an SLQ density of log10 σ, and chi.

    Implements `isometry.SpectrumResult` (statistics shared with the dense `Spectrum`, from the
    density); leading batch axes are kept. Fields with a trailing probe axis p and step axis m
    hold the quadrature of each probe. There is no `singular_values`: the full σ are unknown.

    Attributes:
      top_singular_values: the top k Ritz values, descending (lower bounds on σ_1..σ_k),
        (..., k). Not the spectrum: never summarize them as one.
      error_bounds: σ_i(J) − θ_i ≤ error_bounds_i (the residual |β_m P_{m,i}| refined by
        the Ritz-value gaps), (..., k); `converged` and `relative_error_bounds` follow.
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
      rtol: the tolerance the top-k run stopped at (static): `converged` is against it.
    """

    engine: ClassVar[str] = "lanczos"
    exact: ClassVar[bool] = False

    top_singular_values: Array
    error_bounds: Array
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
    rtol: float = dataclasses.field(default=FILE_RTOL, metadata=dict(static=True))

    @property
    def singular_values(self):
        raise AttributeError(
            "a matrix-free LanczosSpectrum does not know every singular value: use "
            "`top_singular_values` for the top k Ritz values, and `to_dict()`, `histogram()` "
            "or `binned_counts()` for the spectrum (from its SLQ density)")

    @property
    def residual_bounds(self) -> Array:
        """Deprecated: `error_bounds` (the same refined bounds)."""
        deprecated("LanczosSpectrum.residual_bounds", "error_bounds")
        return self.error_bounds

    def _top_values(self) -> Array:
        return self.top_singular_values

    # --- files: the run directory's spectra/STEP.npz, JSON records --------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every field as numpy arrays (sizes as "sizes"): what `from_arrays` reads back."""
        out = {"sizes": np.asarray([self.n_in, self.n_out]),
               "bandwidth": np.float64(self.bandwidth), "rtol": np.float64(self.rtol)}
        for field in dataclasses.fields(self):
            if not field.metadata.get("static"):
                out[field.name] = np.asarray(getattr(self, field.name))
        return out

    @classmethod
    def from_arrays(cls, arrays: dict) -> "LanczosSpectrum":
        """The result `to_arrays` describes (lists are fine: JSON records). Files written
        before the rename hold "residual_bounds" (the same bounds) and no "rtol"."""
        arrays = dict(arrays)
        if "error_bounds" not in arrays and "residual_bounds" in arrays:
            arrays["error_bounds"] = arrays["residual_bounds"]
        n_in, n_out = (int(v) for v in np.ravel(arrays["sizes"]))
        fields = {f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)
                  if not f.metadata.get("static")}
        return cls(**fields, n_in=n_in, n_out=n_out, bandwidth=float(arrays["bandwidth"]),
                   rtol=float(arrays.get("rtol", FILE_RTOL)))

    def _extra_dict(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth, "rtol": self.rtol, "chi_stderr": self.chi_stderr,
                "top_singular_values": self.top_singular_values,
                "error_bounds": self.error_bounds, "converged": self.converged}

    # --- statistics (reduce over the trailing probe and node axes, keep batch axes) --------
    def _resolved(self) -> Array:
        """The mask of nodes above `resolution` (the others count as zero)."""
        return ~numerically_zero(self.nodes, self.resolution[..., None, None])

    def _expect(self, values: Array) -> Array:
        """E[f(σ)] under the SLQ measure: mean over probes of Σ_i w_i f(σ_i)."""
        return jnp.mean(jnp.sum(self.weights * values, axis=-1), axis=-1)

    @property
    def zero_share(self) -> Array:
        """SLQ estimate of the share of σ below `resolution`, exact zeros included (the
        engine cannot tell them apart): the weight of the nodes there, left out of `mean_log`,
        `std_log` and histograms, as the dense result leaves out its σ below resolution."""
        return self._expect((~self._resolved()).astype(self.weights.dtype))

    def _resolved_log(self) -> tuple[Array, Array, Array]:
        """(ln of every node, 0 below resolution; the mask of the others; their total weight)."""
        resolved = self._resolved()
        log = jnp.where(resolved, jnp.log(jnp.where(resolved, self.nodes, 1)), 0)
        return log, resolved, self._expect(resolved.astype(self.weights.dtype))

    @property
    def mean_log(self) -> Array:
        """SLQ estimate of the mean of ln σ over the σ above `resolution` (−inf when no node
        is): the quadrature of ln σ over the nodes there, divided by their weight."""
        log, _, mass = self._resolved_log()
        mean = self._expect(log) / jnp.where(mass > 0, mass, 1)
        return jnp.where(mass > 0, mean, -jnp.inf).astype(log.dtype)

    @property
    def std_log(self) -> Array:
        """SLQ estimate of the standard deviation of ln σ over the σ above `resolution`."""
        log, resolved, mass = self._resolved_log()
        safe = jnp.where(mass > 0, mass, 1)
        mean = self._expect(log) / safe
        dev = jnp.where(resolved, jnp.square(log - mean[..., None, None]), 0)
        std = jnp.sqrt(jnp.maximum(self._expect(dev) / safe, 0.0))
        return jnp.where(mass > 0, std, jnp.nan).astype(log.dtype)

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

    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(log10 of every Gauss node pooled over batch and probes, weights summing to 1, the
        kernel width `bandwidth`)."""
        x = log10_sigma(np.asarray(self.nodes, np.float64)).ravel()
        w = np.asarray(self.weights, np.float64).ravel()
        return x, w / max(np.prod(self.nodes.shape[:-1]), 1), float(self.bandwidth)

    def zero_mask(self) -> np.ndarray:
        """Which nodes (pooled, as `log10_measure`) are below `resolution`."""
        return np.asarray(~self._resolved()).ravel()

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



@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TopSingularValues(Certified):
    """The largest singular values of J from `top_singular_values`, with their certificates.

    Leading batch axes are kept (under `vmap`).

    Attributes:
      singular_values: θ_1 ≥ … ≥ θ_k, Ritz values: lower bounds on σ_1..σ_k, (..., k).
      error_bounds: σ_i − θ_i ≤ error_bounds_i (residual, gap and cluster bounds; round-off
        of the products, ≈ eps · σ_1, not included), (..., k); as `LanczosSpectrum`'s.
      residuals: the plain residuals |β_s P_{s,i}| (a singular value of J lies within each
        of θ_i), (..., k).
      steps: vectors of each Krylov basis: Golub–Kahan steps × block size, the products
        with J (and as many with Jᵀ), (...).
      rtol: the tolerance the run stopped at (static): `converged` says whether every error
        bound is ≤ rtol · θ_i, (...).
    """

    singular_values: Array
    error_bounds: Array
    residuals: Array
    steps: Array
    rtol: float = dataclasses.field(default=FILE_RTOL, metadata=dict(static=True))

    def _top_values(self) -> Array:
        return self.singular_values

    @property
    def residual_bounds(self) -> Array:
        """Deprecated: `residuals` (the plain residuals; `error_bounds` are the refined bounds)."""
        deprecated("TopSingularValues.residual_bounds", "residuals")
        return self.residuals

    def to_dict(self) -> dict[str, Any]:
        """The values, their certificates and the run's size, strict-JSON-ready."""
        return jsonable({"singular_values": self.singular_values,
                         "error_bounds": self.error_bounds, "residuals": self.residuals,
                         "relative_error_bounds": self.relative_error_bounds,
                         "converged": self.converged, "rtol": self.rtol, "steps": self.steps})

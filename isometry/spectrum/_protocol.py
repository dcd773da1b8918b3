"""The spectrum protocol: what every spectrum result offers, and the statistics they share.

Two engines describe the singular values σ_1 ≥ … ≥ σ_k of a Jacobian J (k = min(n_in, n_out)):

* the dense engine knows every σ (`Spectrum`, in `isometry.spectrum._dense`);
* the matrix-free engine knows a *density* of log10 σ (stochastic Lanczos quadrature: Gauss
  nodes and weights, smoothed by a kernel of `bandwidth` decades), χ, and only the top few σ
  (`LanczosSpectrum`, in `isometry.spectrum._lanczos_result`, under `top_singular_values`).

`SpectrumResult` is the interface both implement; `SpectrumStatistics` implements, once, every
statistic that follows from a result's *measure* — the distribution of log10 σ it stands for:
σ themselves (equal weights, no kernel) or the SLQ nodes (quadrature weights, Gaussian kernel).
Statistics of the whole spectrum therefore never come from a top-k list.

One meaning per name, on both engines (and on their layerwise and sharded forms, which are the
same results with a leading axis):

* `zero_share`: the share of σ that are zero to the result's precision — below its
  `resolution` σ_max·ε·max(n_in, n_out) (`isometry._numerics.numerically_zero`), exact zeros
  included; `mean_log`, `std_log` and `histogram` are over the other σ;
* `histogram(bins, range, density=True)`: a density in log10 σ whose area is the share of σ
  inside the range (zeros have no bin);
* `to_dict()`: the one way to plain data (strict JSON); `to_arrays()` / `from_arrays()` the
  one way to files (`isometry.train._tracking` uses them);
* `statistics()`: Figure 4's three numbers at a fixed threshold (`VANISHED`, not the
  resolution), with σ = 0 counted as vanished.

Example:
    >>> import jax.numpy as jnp
    >>> from isometry.spectrum._dense import Spectrum
    >>> spec = Spectrum.from_singular_values(jnp.array([2.0, 1.0, 1e-8]), 3, 3)
    >>> isinstance(spec, SpectrumResult), spec.engine
    (True, 'dense')
    >>> stats = spec.statistics()
    >>> round(stats["mean_sigma2"], 4), round(stats["vanished_share"], 4)
    (1.6667, 0.3333)
    >>> spec.to_dict()["zero_share"]  # float32: 1e-8 < 2 · 1.2e-7 · 3
    0.3333333432674408
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import numpy as np
from scipy.special import ndtr

from isometry._io import jsonable
from isometry._numerics import resolution_of

__all__ = ["SpectrumResult", "SpectrumStatistics", "ISOMETRY_BAND", "VANISHED",
           "SUMMARY_STATISTICS", "PRECISION_STATISTICS", "summarize", "raise_if_nonfinite",
           "raise_if_nonfinite_values", "deprecated"]

Array = Any

#: The band of singular values counted as "near isometry" by `isometry_share`.
ISOMETRY_BAND = (0.5, 2.0)
#: Figure 4's fixed threshold: σ below it count as vanished (`statistics()["vanished_share"]`).
#: A number of the paper's, not the resolution (which is relative to σ_max and the dtype).
VANISHED = 1e-6
#: The statistics `to_dict()` reports on both results (one value per spectrum of a batch).
SUMMARY_STATISTICS = ("chi", "mean_log", "std_log", "sigma_max", "sigma_min",
                      "condition_number", "isometry_share")
#: The precision statistic beside them: the share of σ below the resolution (counted as zero).
PRECISION_STATISTICS = ("zero_share",)


def deprecated(old: str, new: str) -> None:
    """A DeprecationWarning: `old` is now `new` (shown at the caller's caller)."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


@runtime_checkable
class SpectrumResult(Protocol):
    """What every spectrum result offers (`Spectrum` and `LanczosSpectrum`).

    Per-spectrum statistics keep leading batch axes; `histogram`, `binned_counts` and
    `statistics` pool the batch on the host. `exact` tells whether σ are all known (dense)
    or estimated from a density (matrix-free). `zero_share` counts the σ below `resolution`;
    `mean_log`, `std_log` and `histogram` are over the rest.
    """

    engine: ClassVar[str]
    exact: ClassVar[bool]
    chi: Array
    n_nonfinite: Array
    n_in: int
    n_out: int

    @property
    def resolution(self) -> Array: ...
    @property
    def mean_sigma2(self) -> Array: ...
    @property
    def mean_log(self) -> Array: ...
    @property
    def std_log(self) -> Array: ...
    @property
    def zero_share(self) -> Array: ...
    @property
    def sigma_max(self) -> Array: ...
    @property
    def sigma_min(self) -> Array: ...
    @property
    def condition_number(self) -> Array: ...
    @property
    def isometry_share(self) -> Array: ...
    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]: ...
    def zero_mask(self) -> np.ndarray: ...
    def histogram(self, bins=50, range=None, density: bool = True): ...
    def binned_counts(self, bins: int, range: tuple[float, float]) -> np.ndarray: ...
    def statistics(self, vanished: float = VANISHED) -> dict[str, Any]: ...
    def to_dict(self) -> dict[str, Any]: ...
    def to_arrays(self) -> dict[str, np.ndarray]: ...


def _weighted_quantile(x: np.ndarray, w: np.ndarray, h: float, q: float) -> float:
    """The q-quantile of Σ w_i N(x_i, h²) (bisection on its CDF, to 1e-9 decades)."""
    lo, hi = float(x.min()) - 8 * h, float(x.max()) + 8 * h
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(w @ ndtr((mid - x) / h)) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-9:
            break
    return 0.5 * (lo + hi)


def _default_edges(bins: int, x: np.ndarray, w: np.ndarray, h: float) -> np.ndarray:
    """`bins` equal bins over the points' range (± 3 kernel widths for a density)."""
    if not x.size:
        lo, hi = -1.0, 1.0
    elif h == 0:
        lo, hi = float(x.min()), float(x.max())
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
    else:
        heavy = w > 1e-6 * w.max()
        lo, hi = float(x[heavy].min()) - 3 * h, float(x[heavy].max()) + 3 * h
    return np.linspace(lo, hi, int(bins) + 1)


def _bin_mass(x: np.ndarray, w: np.ndarray, h: float, edges: np.ndarray) -> np.ndarray:
    """The measure Σ w_i δ(x_i) (h = 0) or Σ w_i N(x_i, h²) in each bin between `edges`."""
    if h == 0:
        return np.histogram(x, bins=edges, weights=w)[0]
    return w @ np.diff(ndtr((edges[None, :] - x[:, None]) / h), axis=1)


class SpectrumStatistics:
    """The statistics both results share, from `chi` and the result's `log10_measure()`.

    A subclass sets `engine` and `exact`, has fields `chi`, `n_in`, `n_out`, and implements
    `log10_measure()`: (log10 σ points, their weights summing to 1, kernel width in decades),
    pooled over the batch, on the host (numpy), `zero_mask()`: which of those points are below
    the resolution, `sigma_max`, `to_arrays()` / `from_arrays()` and `_extra_dict()` (what
    `to_dict()` adds to the statistics).
    """

    engine: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    #: The names of the per-spectrum statistics in `to_dict()` (and `summarize`).
    statistic_names: ClassVar[tuple] = SUMMARY_STATISTICS + PRECISION_STATISTICS

    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]:
        raise NotImplementedError

    def zero_mask(self) -> np.ndarray:
        """Which points of `log10_measure()` lie below `resolution` (count as zero)."""
        raise NotImplementedError

    def _extra_dict(self) -> dict[str, Any]:
        return {}

    @property
    def resolution(self) -> Array:
        """σ_max · ε · max(n_in, n_out), ε of the result's dtype: σ below it are round-off of
        the SVD (dense) or of the products (matrix-free), not the network's spectrum; they
        count as zero (`zero_share`). `isometry._numerics.resolution_of` is the definition."""
        return resolution_of(self.sigma_max, self.n_in, self.n_out)

    @property
    def below_resolution(self) -> Array:
        """Deprecated: the same share as `zero_share`."""
        deprecated("below_resolution", "zero_share (the share of σ below the resolution)")
        return self.zero_share

    @property
    def mean_sigma2(self) -> Array:
        """Mean of σ² over the k = min(n_in, n_out) singular values: ‖J‖_F² / k, (...)."""
        return self.chi * (self.n_in / min(self.n_in, self.n_out))

    @property
    def condition_number(self) -> Array:
        """σ_max / σ_min (inf when σ_min = 0, without a divide-by-zero warning)."""
        with np.errstate(divide="ignore"):
            return self.sigma_max / self.sigma_min

    def _count(self) -> int:
        """σ described, pooled over the batch."""
        return min(self.n_in, self.n_out) * int(np.prod(np.shape(self.chi)))

    def share_below(self, threshold: float) -> float:
        """Share of σ below `threshold`, pooled over the batch (smoothed for a density)."""
        x, w, h = self.log10_measure()
        t = np.log10(threshold)
        if h == 0:
            return float(np.sum(w * (x < t)))
        return float(w @ ndtr((t - x) / h))

    def quantile_log10(self, q: float) -> float:
        """The q-quantile of log10 σ pooled over the batch (σ = 0 at log10 of tiny)."""
        x, w, h = self.log10_measure()
        if h == 0:
            return float(np.quantile(x, q))  # equal weights: numpy's definition (median: mean of two)
        return _weighted_quantile(x, w, h, q)

    def statistics(self, vanished: float = VANISHED) -> dict[str, Any]:
        """Figure 4's numbers, pooled over the batch: mean σ², median log10 σ, share σ < `vanished`.

        An internal helper of the figures and the tracker's "figure" record (`to_dict()` is the
        result's plain data): every σ counts here, zeros as vanished and at log10 of tiny in
        the median. From every σ (dense) or from χ and the density (matrix-free), never from
        a top-k list. Returns plain floats with "count" (σ described) and "engine".
        """
        return {"mean_sigma2": float(np.mean(np.asarray(self.mean_sigma2, np.float64))),
                "median_log10": self.quantile_log10(0.5),
                "vanished_share": self.share_below(vanished), "count": self._count(),
                "engine": self.engine}

    def _resolved_measure(self) -> tuple[np.ndarray, np.ndarray, float]:
        """`log10_measure()` without the points below the resolution (weights not rescaled)."""
        x, w, h = self.log10_measure()
        keep = ~self.zero_mask()
        return x[keep], w[keep], h

    def histogram(self, bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                  density: bool = True):
        """Histogram of log10 σ pooled over the batch (host-side, numpy), either engine.

        The σ below `resolution` (`zero_share`) have no bin. The dense result bins every other
        σ; the matrix-free one integrates its smoothed SLQ density (each Gauss node's weight
        spread by a Gaussian of `bandwidth` decades) exactly over every bin.

        Args:
          bins: number of bins or bin edges.
          range: (lo, hi) in log10 σ; defaults to the range of the σ above the resolution
            (the heavy nodes ± 3 bandwidths for the density).
          density: a density in log10 σ whose area is the share of all σ inside the range
            (1 − zero_share over the whole spectrum, less over a part of it); else counts
            (integers, dense) or expected counts (matrix-free), pooled over the batch.

        Returns:
          (values, edges) as numpy arrays, like `numpy.histogram`.
        """
        x, w, h = self._resolved_measure()
        if np.ndim(bins):
            edges = np.asarray(bins, np.float64)
        elif range is None:
            edges = _default_edges(bins, x, w, h)
        else:
            edges = np.linspace(range[0], range[1], int(bins) + 1)
        if density:
            return _bin_mass(x, w, h, edges) / np.diff(edges), edges
        if h == 0:
            return np.histogram(x, bins=edges)[0], edges
        return _bin_mass(x, w, h, edges) * self._count(), edges

    def binned_counts(self, bins: int, range: tuple[float, float]) -> np.ndarray:
        """How many σ (pooled over the batch) fall in each of `bins` bins of log10 σ over
        `range`, values outside counted in the end bins, the σ below the resolution left out:
        integers for the dense result, expected counts from the density for the matrix-free."""
        lo, hi = range
        x, w, h = self._resolved_measure()
        if h == 0:
            return np.histogram(np.clip(x, lo, hi), bins=bins, range=(lo, hi))[0]
        edges = np.linspace(lo, hi, int(bins) + 1)
        edges[0], edges[-1] = -np.inf, np.inf
        return _bin_mass(x, w, h, edges) * self._count()

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data, strict-JSON-ready (NaN/Inf as null, `isometry._io.jsonable`):
        engine, sizes, resolution, every statistic of `statistic_names` (a list for a batch)
        and what the engine adds (the matrix-free result: its top k and their certificates)."""
        return jsonable({"engine": self.engine, "n_in": self.n_in, "n_out": self.n_out,
                         "resolution": np.asarray(self.resolution, np.float64),
                         **summarize(self), **self._extra_dict()})

    def summary(self) -> dict[str, Any]:
        """Deprecated: `to_dict()` (plain data), or `summarize(spec)` for the raw statistics."""
        deprecated("summary()", "to_dict()")
        return summarize(self)


def summarize(spec) -> dict[str, Any]:
    """The statistics of `statistic_names` as host floats (lists for a batch), NaN and inf
    kept: an internal helper for tables and averages (`to_dict()` is the public plain data)."""
    return {name: np.asarray(getattr(spec, name), dtype=np.float64).tolist()
            for name in spec.statistic_names}


def raise_if_nonfinite_values(counts: dict) -> None:
    """FloatingPointError naming the input or the output when either holds NaN/Inf.

    `counts` maps "input" and "output" to the numbers of non-finite values (arrays; nothing
    is checked while tracing).
    """
    if any(isinstance(v, jax.core.Tracer) for v in counts.values()):
        return
    for what, hint in (("input", "check the data (e.g. jnp.isfinite(x).all())"),
                       ("output", "the parameters or the function are not finite there (NaN/Inf "
                                  "weights, log of a negative number, an overflow); a ReLU's "
                                  "derivative at NaN is 0, so J alone would look finite")):
        n = int(np.sum(np.asarray(counts[what])))
        if n:
            raise FloatingPointError(
                f"the model's {what} has {n} non-finite values (NaN/Inf): {hint}; no spectrum "
                f"is computed from it")


def raise_if_nonfinite(spec) -> None:
    """FloatingPointError when a spectrum result counts NaN/Inf entries of J (`n_nonfinite`)."""
    bad = spec.n_nonfinite
    if isinstance(bad, jax.core.Tracer):
        return
    total = int(np.sum(np.asarray(bad)))
    if total:
        entries = spec.n_in * spec.n_out * max(1, int(np.prod(np.shape(bad))))
        raise FloatingPointError(
            f"the Jacobian has {total} non-finite entries (NaN/Inf) out of {entries}: the model's "
            f"output or its derivative is not finite at these parameters and inputs; check the "
            f"forward pass (e.g. with jax.config.update('jax_debug_nans', True)), the inputs' "
            f"scale, or use float64")

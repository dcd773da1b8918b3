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

Example:
    >>> import jax.numpy as jnp
    >>> from isometry.spectrum._dense import Spectrum
    >>> spec = Spectrum.from_singular_values(jnp.array([2.0, 1.0, 1e-8]), 3, 3)
    >>> isinstance(spec, SpectrumResult), spec.engine
    (True, 'dense')
    >>> stats = spec.statistics()
    >>> round(stats["mean_sigma2"], 4), round(stats["vanished_share"], 4)
    (1.6667, 0.3333)
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

__all__ = ["SpectrumResult", "SpectrumStatistics", "ISOMETRY_BAND", "VANISHED",
           "SUMMARY_STATISTICS", "PRECISION_STATISTICS", "summarize", "raise_if_nonfinite",
           "raise_if_nonfinite_values"]

Array = Any

#: The band of singular values counted as "near isometry" by `isometry_share`.
ISOMETRY_BAND = (0.5, 2.0)
#: σ below this count as vanished (`vanished_share`, Figure 4's third number).
VANISHED = 1e-6
_LOG10_TINY = float(np.log10(np.finfo(np.float64).tiny))
#: The statistics `summary()` reports, shared by both results.
SUMMARY_STATISTICS = ("chi", "mean_log", "std_log", "sigma_max", "sigma_min",
                      "condition_number", "isometry_share")
#: More statistics, reported by results that have them (the dense `Spectrum` does).
PRECISION_STATISTICS = ("zero_share", "below_resolution")


@runtime_checkable
class SpectrumResult(Protocol):
    """What every spectrum result offers (`Spectrum` and `LanczosSpectrum`).

    Per-spectrum statistics keep leading batch axes; `histogram`, `binned_counts` and
    `statistics` pool the batch on the host. `exact` tells whether σ are all known (dense)
    or estimated from a density (matrix-free).
    """

    engine: ClassVar[str]
    exact: ClassVar[bool]
    chi: Array
    n_nonfinite: Array
    n_in: int
    n_out: int

    @property
    def mean_sigma2(self) -> Array: ...
    @property
    def mean_log(self) -> Array: ...
    @property
    def std_log(self) -> Array: ...
    @property
    def sigma_max(self) -> Array: ...
    @property
    def sigma_min(self) -> Array: ...
    @property
    def condition_number(self) -> Array: ...
    @property
    def isometry_share(self) -> Array: ...
    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]: ...
    def histogram(self, bins=50, range=None, density: bool = True): ...
    def binned_counts(self, bins: int, range: tuple[float, float]) -> np.ndarray: ...
    def statistics(self, vanished: float = VANISHED) -> dict[str, Any]: ...
    def summary(self) -> dict[str, Any]: ...


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


class SpectrumStatistics:
    """The statistics both results share, from `chi` and the result's `log10_measure()`.

    A subclass sets `engine` and `exact`, has fields `chi`, `n_in`, `n_out`, and implements
    `log10_measure()`: (log10 σ points, their weights summing to 1, kernel width in decades),
    pooled over the batch, on the host (numpy).
    """

    engine: ClassVar[str] = ""
    exact: ClassVar[bool] = True

    def log10_measure(self) -> tuple[np.ndarray, np.ndarray, float]:
        raise NotImplementedError

    @property
    def resolution(self) -> Array:
        """σ_max · ε · max(n_in, n_out), ε of the result's dtype: σ below it are round-off of
        the SVD (dense) or of the products (matrix-free), not the network's spectrum."""
        sigma_max = self.sigma_max
        return sigma_max * jnp.finfo(sigma_max.dtype).eps * max(self.n_in, self.n_out)

    @property
    def mean_sigma2(self) -> Array:
        """Mean of σ² over the k = min(n_in, n_out) singular values: ‖J‖_F² / k, (...)."""
        return self.chi * (self.n_in / min(self.n_in, self.n_out))

    @property
    def condition_number(self) -> Array:
        """σ_max / σ_min (inf when σ_min = 0, without a divide-by-zero warning)."""
        with np.errstate(divide="ignore"):
            return self.sigma_max / self.sigma_min

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

        From every σ (dense) or from χ and the density (matrix-free), never from a top-k
        list. Returns plain floats with "count" (σ described) and "engine".
        """
        k = min(self.n_in, self.n_out)
        count = k * int(np.prod(np.shape(self.chi)))
        return {"mean_sigma2": float(np.mean(np.asarray(self.mean_sigma2, np.float64))),
                "median_log10": self.quantile_log10(0.5),
                "vanished_share": self.share_below(vanished), "count": count,
                "engine": self.engine}

    def binned_counts(self, bins: int, range: tuple[float, float]) -> np.ndarray:
        """How many σ (pooled over the batch) fall in each of `bins` bins of log10 σ over
        `range`, values outside counted in the end bins: integers for the dense result (exact
        zeros left out), expected counts from the density for the matrix-free one."""
        lo, hi = range
        x, w, h = self.log10_measure()
        count = min(self.n_in, self.n_out) * int(np.prod(np.shape(self.chi)))
        if h == 0:  # exact zeros (log10_sigma puts them at log10 tiny) have no bin
            positive = x[x > _LOG10_TINY]
            return np.histogram(np.clip(positive, lo, hi), bins=bins, range=(lo, hi))[0]
        edges = np.linspace(lo, hi, int(bins) + 1)
        edges[0], edges[-1] = -np.inf, np.inf
        mass = w @ np.diff(ndtr((edges[None, :] - x[:, None]) / h), axis=1)
        return mass * count

    def summary(self) -> dict[str, Any]:
        """The statistics as plain Python floats (lists for a batch) for tables and JSON."""
        return summarize(self)


def summarize(spec) -> dict[str, Any]:
    """`SUMMARY_STATISTICS` and `PRECISION_STATISTICS` of a spectrum result as plain Python
    floats (lists for a batch); NaN for a statistic the result cannot give (the matrix-free
    result has no zero share)."""
    out = {}
    for name in SUMMARY_STATISTICS + PRECISION_STATISTICS:
        value = getattr(spec, name, None)
        if value is None:
            value = np.full(np.shape(spec.chi), np.nan)
        out[name] = np.asarray(value, dtype=np.float64).tolist()
    return out


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

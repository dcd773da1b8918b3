"""Histograms of log10 σ of Jacobian spectra, one panel per group (Figure 4 style).

A spectrum is read through its public interface only: `histogram(bins, range, density)` and
`singular_values` (both `Spectrum` and `LanczosSpectrum` have them), plus `zero_share` and
`resolution` where the result has them.
"""

from __future__ import annotations

import numpy as np

from isometry.plot.output import plt

__all__ = ["spectrum_histograms"]


def spectrum_histograms(panels: dict, bins: int = 50, range: tuple[float, float] | None = None,
                        title: str | None = None):
    """Histograms of log10 σ, one panel per key of `panels` (e.g. per depth), like Figure 4a.

    Exact zeros have no place on a log axis: they are left out of the curves, the axis is
    chosen from the non-zero σ, and each curve's legend entry says how many σ are 0 ("all σ = 0"
    for a zero Jacobian, which then has no curve).

    Args:
      panels: {panel title: {curve label: Spectrum}}; every spectrum in a panel shares the bins.
        Anything with a `histogram(bins, range, density)` method works (dense or matrix-free).
      bins: number of bins.
      range: (lo, hi) in log10 σ; default: the range of the non-zero σ of each panel.
      title: figure title.

    Returns:
      The figure.
    """
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items()):
        lo_hi = range or _common_range(curves.values())
        for i, (label, spec) in enumerate(curves.items()):
            _draw_curve(ax, label, spec, bins, lo_hi, _LINESTYLES[i % len(_LINESTYLES)],
                        linewidth=1.2 + 1.4 * (len(curves) - 1 - i) / max(len(curves) - 1, 1))
        _draw_resolution(ax, curves.values(), lo_hi)
        ax.set_title(name)
        ax.set_xlabel(r"$\log_{10}\,\sigma$")
        ax.set_ylabel("density")
        ax.set_xlim(*lo_hi)
        ax.axvline(0.0, color="0.6", linewidth=0.8, linestyle=":")
        ax.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


#: Curves of a panel that coincide (spectra that did not change) stay visible: each has its own
#: dash pattern, and the earlier ones are drawn wider, under the later ones.
_LINESTYLES = ("-", "--", "-.", ":")


def _draw_curve(ax, label: str, spec, bins: int, lo_hi, linestyle="-", linewidth=1.4) -> None:
    zero = _zero_share(spec)
    if zero is not None and zero >= 1.0:
        ax.plot([], [], linestyle="none", marker="x", color="0.3", label=f"{label} (all σ = 0)")
        return
    counts, edges = spec.histogram(bins=bins, range=lo_hi, density=True)
    if zero:
        label = f"{label} ({zero:.0%} of σ ≈ 0, not drawn)"
    ax.stairs(counts, edges, label=label, fill=False, linestyle=linestyle, linewidth=linewidth)


def _draw_resolution(ax, spectra, lo_hi) -> None:
    """The dtype's resolution σ_max·ε·n: below it, σ are round-off of the SVD."""
    resolutions = [(float(np.max(np.asarray(spec.resolution))), np.asarray(spec.resolution).dtype)
                   for spec in spectra if hasattr(spec, "resolution")]
    if resolutions:
        res, dtype = max(resolutions, key=lambda r: r[0])
        if res > 0 and lo_hi[0] < np.log10(res) < lo_hi[1]:
            ax.axvline(np.log10(res), color="tab:red", linewidth=0.9, linestyle="--",
                       label=f"{dtype.name} resolution σ_max·ε·n")


# `_zero_share` and `_log10_extent` use the shared spectrum protocol (`SpectrumResult`): both
# results have `zero_share` (the σ below the resolution, left out of `histogram`).
def _zero_share(spec) -> float | None:
    """Share of σ below the resolution over the batch (None for an object without one)."""
    if not hasattr(spec, "zero_share"):
        return None
    return float(np.mean(np.asarray(spec.zero_share)))


def _log10_extent(spec) -> tuple[float, float] | None:
    """(lo, hi) of log10 σ over the non-zero σ: the span of the spectrum's own default
    histogram (None when every σ is 0)."""
    zero = _zero_share(spec)
    if zero is not None and zero >= 1.0:
        return None
    counts, edges = spec.histogram(bins=1, density=False)
    return float(edges[0]), float(edges[-1])


def _common_range(spectra) -> tuple[float, float]:
    """The log10 range of the non-zero σ of all `spectra`, padded by 2% (±0.5 for one value)."""
    extents = [e for e in map(_log10_extent, spectra) if e is not None]
    if not extents:
        return (-1.0, 1.0)
    lo = min(e[0] for e in extents)
    hi = max(e[1] for e in extents)
    if hi - lo < 1e-6:
        return (lo - 0.5, hi + 0.5)
    pad = 0.02 * (hi - lo)
    return (lo - pad, hi + pad)

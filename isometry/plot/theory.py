"""Theory against measurement: measured histograms of log10 σ over predicted densities.

`theory_overlay` takes predictions (objects with `depth`, `weights`, `sigma_w2`, `sigma_b2`
and a `density` with `log10_sigma`, `density`, `point_sigma`, `point_mass`, `zero_mass`, as
`theory.SpectralPrediction` has) and arrays of measured σ; it computes no prediction.
"""

from __future__ import annotations

import numpy as np

from isometry.plot.output import plt

__all__ = ["theory_overlay"]

#: Measured σ below this fraction of σ_max count as zeros (ReLU's dead units).
ZERO_FRACTION = 1e-10


def _log10_ranges(pred, sv) -> list:
    """The log10 σ values that bound one prediction and its measurement."""
    out = []
    d = pred.density
    if len(d.density) and d.density.max() > 0:  # the central 99% of the continuous part
        cum = np.concatenate([[0.0], np.cumsum(np.diff(d.log10_sigma)
                                               * (d.density[1:] + d.density[:-1]) / 2)])
        out += [np.interp(0.005 * cum[-1], cum, d.log10_sigma), d.log10_sigma[-1]]
    if len(d.point_sigma):
        out += list(np.log10(d.point_sigma))
    if sv is not None:
        s = np.asarray(sv, np.float64)
        s = s[s >= ZERO_FRACTION * s.max()]
        out += [np.log10(s.min()), np.log10(s.max())]
    return out


def _draw_one(ax, pred, sv, edges, color) -> None:
    width = edges[1] - edges[0]
    d = pred.density
    label = f"L = {pred.depth}"
    if sv is not None:
        s = np.asarray(sv, np.float64).reshape(-1, np.shape(sv)[-1])
        zero = s < ZERO_FRACTION * s.max(axis=-1, keepdims=True)
        counts, _ = np.histogram(np.log10(s[~zero]), bins=edges)
        ax.stairs(counts / (s.size * width), edges, color=color, alpha=0.35, fill=True,
                  label=f"{label} measured ({s.shape[0]}×N={s.shape[1]}"
                        + (f", {zero.mean():.2f} below 1e-10 σ_max)" if zero.any() else ")"))
    if len(d.density):
        ax.plot(d.log10_sigma, d.density, color=color, linewidth=1.5,
                label=f"{label} theory" + (f" (+{d.zero_mass:.2f} at σ=0)" if d.zero_mass else ""))
    if len(d.point_sigma):
        heights, _ = np.histogram(np.log10(d.point_sigma), bins=edges, weights=d.point_mass)
        ax.stairs(heights / width, edges, color=color, linewidth=1.5, linestyle="--",
                  label=f"{label} theory, point mass{'es' if len(d.point_sigma) > 1 else ''}")


def theory_overlay(predictions: list, measured: list | None = None, *, bins: int = 60,
                   title: str | None = None):
    """Measured histograms of log10 σ against the predicted densities, several depths in one axes.

    Densities are per unit of log10 σ over *all* N singular values, so the area under a curve
    is the share of σ in view: singular values at 0 (ReLU's dead units, predicted mass
    `zero_mass`) fall outside, and are reported in the legend (measured: σ < 1e-10 σ_max).
    Predicted point masses (orthogonal nets) are drawn as a weighted histogram in the same bins.

    Args:
      predictions: `theory.SpectralPrediction`s (one per depth).
      measured: per prediction, an array (..., N) of measured singular values or None.
      bins: histogram bins over the shared range.
      title: figure title.
    """
    measured = measured or [None] * len(predictions)
    if len(measured) != len(predictions):
        raise ValueError(f"got {len(measured)} measured sets for {len(predictions)} predictions")
    ranges = [v for pred, sv in zip(predictions, measured) for v in _log10_ranges(pred, sv)]
    lo, hi = min(ranges), max(ranges)
    pad = 0.05 * max(hi - lo, 0.2)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (pred, sv) in enumerate(zip(predictions, measured)):
        _draw_one(ax, pred, sv, edges, colors[i % len(colors)])
    ax.axvline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(r"$\log_{10}\,\sigma$")
    ax.set_ylabel(r"density of $\log_{10}\sigma$")
    ax.legend(fontsize=7, frameon=False)
    p0 = predictions[0]
    ax.set_title(title or f"{p0.weights} weights, σ_w²={p0.sigma_w2:g}, σ_b²={p0.sigma_b2:g}: "
                          f"measured vs free-probability prediction")
    fig.tight_layout()
    return fig

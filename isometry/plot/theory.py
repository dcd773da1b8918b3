"""Theory against measurement: measured histograms of log10 σ over predicted densities.

`theory_overlay` takes predictions (objects with `depth`, `weights`, `sigma_w2`, `sigma_b2`
and a `density` with `log10_sigma`, `density`, `point_sigma`, `point_mass`, `zero_mass`, as
`theory.SpectralPrediction` has) and arrays of measured σ; it computes no prediction.
`residual_theory_figure` draws the records of `isometry theory --variant rezero` (moments and
densities as computed there).
"""

from __future__ import annotations

import math

import numpy as np

from isometry.plot.output import plt

__all__ = ["theory_overlay", "residual_theory_figure"]

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


def _moment_panel(ax, records, width) -> None:
    """log10 m_k against k: predicted (lines), scaling limit (dotted), measured (error bars)."""
    k = np.arange(1, 5)
    for i, rec in enumerate(records):
        color = f"C{i % 10}"
        ax.plot(k, [math.log10(rec["predicted"][f"m{j}"]) for j in k], "-", color=color,
                label=f"L={rec['depth']}, α={rec['alpha']:g} (t={rec['t']:.3g})")
        ax.plot(k, [math.log10(rec["scaling_limit"][f"m{j}"]) for j in k], ":", color=color)
        if "measured" in rec:
            m = np.array([rec["measured"]["mean"][f"m{j}"] for j in k])
            se = np.array([rec["measured"]["se"][f"m{j}"] for j in k])
            ax.errorbar(k, np.log10(m), yerr=se / (m * math.log(10)), fmt="o", color=color,
                        markersize=4, capsize=2)
    ax.set_xticks(k)
    ax.set_xlabel("k")
    ax.set_ylabel(r"$\log_{10} m_k$ of $JJ^T$")
    ax.set_title(f"(a) moments: measured (N={width}, dots), theory (lines), scaling limit "
                 f"(dotted)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)


def _density_panel(ax, records) -> None:
    """Predicted densities of log10 σ (lines) over measured histograms (shaded)."""
    for i, rec in enumerate(records):
        color = f"C{i % 10}"
        label = f"L={rec['depth']}, α={rec['alpha']:g}"
        if rec.get("histogram"):
            h = rec["histogram"]
            ax.stairs(h["density"], h["edges"], color=color, alpha=0.3, fill=True,
                      label=f"{label} measured")
        if rec.get("density"):
            ax.plot(rec["density"]["log10_sigma"], rec["density"]["density"], color=color,
                    linewidth=1.4, label=f"{label} theory")
    ax.axvline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xlabel(r"$\log_{10}\,\sigma$")
    ax.set_ylabel(r"density of $\log_{10}\sigma$")
    ax.set_title("(b) density of σ (bulk; S-transform, docs/theory.md §5)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)


def residual_theory_figure(records: list, activation: str, width: int):
    """Two panels for residual nets x + α φ(Wx + b): (a) log10 m_k of JJᵀ against k, predicted,
    scaling limit and measured; (b) the predicted density of log10 σ over measured histograms.

    Args:
      records: the "records" of `isometry theory --variant rezero`'s JSON: dicts with depth,
        alpha, t, predicted/scaling_limit {"m1".."m4"}, optional measured {"mean", "se"},
        optional density {"log10_sigma", "density"} and histogram {"edges", "density"}.
      activation, width: for the title.

    Example:
        >>> rec = dict(depth=8, alpha=0.3, t=0.72, predicted={f"m{k}": 2.0 ** k for k in
        ...            range(1, 5)}, scaling_limit={f"m{k}": 2.1 ** k for k in range(1, 5)},
        ...            density=dict(log10_sigma=[-0.5, 0.0, 0.5], density=[0.0, 1.0, 0.0]))
        >>> len(residual_theory_figure([rec], "linear", 512).axes)
        2
    """
    fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    _moment_panel(ax_m, records, width)
    _density_panel(ax_d, records)
    fig.suptitle(f"ReZero {activation} nets: free-probability theory against measurement")
    fig.tight_layout()
    return fig

"""Layer-by-layer profiles: chi_l and log10 σ quantiles of ∂x_l/∂x_0 against depth l.

`layerwise_profiles` draws summaries (what `isometry.depth_profile` returns); it computes no
spectrum.
"""

from __future__ import annotations

import numpy as np

from isometry.plot.axes import log_ticks
from isometry.plot.output import plt

__all__ = ["layerwise_profiles"]


def layerwise_profiles(profiles: dict, quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9),
                       title: str | None = None):
    """chi_l and quantiles of log10 σ(∂x_l/∂x_0) against depth l, one curve per variant.

    Args:
      profiles: {label: summary}, each summary a mapping with "chi" (array (L+1,)) and, for
        spectra, "log10_sigma_quantiles" (array (3, L+1)) — what
        `isometry.depth_profile(profile, quantiles)` returns.
      quantiles: the (low, middle, high) quantiles the summaries hold: the middle is drawn as a
        line and the band between low and high is shaded.
      title: figure title.

    Returns:
      The figure: left chi_l (log scale), right the log10 σ quantiles (spectra only).

    Example:
        >>> fig = layerwise_profiles({"identity": {"chi": np.ones(4)}})
        >>> fig.axes[0].get_yscale()
        'log'
    """
    fig, (ax_chi, ax_q) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, summary in profiles.items():
        if not hasattr(summary, "keys") or "chi" not in summary:
            raise TypeError(f"profile {label!r}: expected a summary with 'chi' "
                            f"(isometry.depth_profile(profile)), got {type(summary).__name__}")
        chi, color = np.asarray(summary["chi"]), None
        if "log10_sigma_quantiles" in summary:
            lo, mid, hi = np.asarray(summary["log10_sigma_quantiles"])
            depth = np.arange(len(mid))
            (line,) = ax_q.plot(depth, mid, label=label, linewidth=1.4)
            ax_q.fill_between(depth, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            color = line.get_color()
        ax_chi.plot(np.arange(len(chi)), chi, label=label, color=color, linewidth=1.4)
    ax_chi.set_yscale("log")
    ax_chi.set_xlabel("depth l")
    ax_chi.set_ylabel(r"$\chi_l = \|\partial x_l/\partial x_0\|_F^2 / n$")
    ax_chi.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    log_ticks(ax_chi)
    ax_chi.legend(fontsize=8, frameon=False)
    ax_q.set_xlabel("depth l")
    lo_q, mid_q, hi_q = quantiles
    ax_q.set_ylabel(rf"$\log_{{10}}\sigma$: median, {lo_q:g}–{hi_q:g} quantiles"
                    if mid_q == 0.5 else r"$\log_{10}\sigma$ quantiles")
    ax_q.axhline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    if ax_q.get_legend_handles_labels()[0]:
        ax_q.legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

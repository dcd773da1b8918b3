"""Axis helpers the figures share: a log axis that always carries numbers (`log_ticks`),
whole-number ticks for steps and layers (`integer_ticks`), a line style per variant that
keeps coinciding curves visible (`variant_style`), and a top limit that cuts early spikes but
no curve's end (`spike_top`).

Matplotlib's default log axis labels only the decades it ticks: a range inside one decade (χ
near 1) can show no number above 10^0, and on a wide range (a diverged run) the top label can
sit several decades under the top of the axis. `log_ticks` labels both.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.ticker import (FixedLocator, LogFormatterSciNotation, LogLocator, MaxNLocator,
                               NullFormatter, NullLocator, ScalarFormatter)

__all__ = ["log_ticks", "integer_ticks", "variant_style", "spike_top"]


def log_ticks(ax, axis: str = "y", numticks: int = 9) -> None:
    """Labelled ticks across the whole range of a log axis of `ax` (call it after drawing).

    A range of more than two decades is widened to whole labelled decades (at most
    `numticks` labels, every `stride`-th decade on a wide range), so both ends carry a number;
    one to two decades label the ticks between decades as well (2, 3, 4 × 10^k); less than a
    decade (χ near 1) gets evenly spaced plain numbers (0.9, 1.0, 1.1, …).

    Example:
        >>> from isometry.plot.output import plt
        >>> fig, ax = plt.subplots()
        >>> _ = ax.semilogy([0, 1], [0.9, 1.3])
        >>> log_ticks(ax)
        >>> fig.canvas.draw()
        >>> labels = [float(t.get_text()) for t in ax.get_yticklabels()]
        >>> len([v for v in labels if 1 < v <= 1.3]) >= 2  # numbers above 10^0 in view
        True
    """
    which = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if not (0 < lo < hi and math.isfinite(hi)):
        return
    decades = math.log10(hi / lo)
    if decades < 1:
        which.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10]))
        which.set_major_formatter(ScalarFormatter(useOffset=False))
        which.set_minor_locator(NullLocator())
        return
    which.set_major_formatter(LogFormatterSciNotation(base=10))
    if decades <= 2:
        which.set_major_locator(LogLocator(base=10))
        which.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
        which.set_minor_formatter(LogFormatterSciNotation(base=10, labelOnlyBase=False,
                                                          minor_thresholds=(2, 0.5)))
        return
    first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    stride = math.ceil((last - first) / (numticks - 1))
    first, last = stride * math.floor(first / stride), stride * math.ceil(last / stride)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(10.0 ** first, 10.0 ** last)
    which.set_major_locator(FixedLocator(10.0 ** np.arange(first, last + 1, stride)))
    which.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)) if stride == 1 else
                            FixedLocator(10.0 ** np.arange(first, last + 1)))
    which.set_minor_formatter(NullFormatter())


def integer_ticks(axis) -> None:
    """Whole-number ticks (steps, layers, depths) on `axis` (`ax.xaxis`): no tick at step 2.5
    on a short run."""
    axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 5, 10], integer=True))


def variant_style(label: str, index: int, points: int) -> dict:
    """Line style (keyword arguments of `plot`) of the `index`-th variant, a curve of `points`
    points: each variant its own marker and dash pattern, ReZero solid, thicker and on top, so
    curves that coincide (several variants at the same loss, or at χ = 1) stay visible.

    Example:
        >>> top, other = variant_style("ReZero α=0", 1, 40), variant_style("Post-Norm", 0, 40)
        >>> top["zorder"] > other["zorder"] and top["linestyle"] != other["linestyle"]
        True
    """
    rezero = "rezero" in label.lower()
    return {"marker": "os^vD"[index % 5], "markevery": max(1, points // 10), "markersize": 4,
            "linestyle": "-" if rezero else ("--", "-.", ":", (0, (5, 1)))[index % 4],
            "linewidth": 2.2 if rezero else 1.3, "zorder": 3 if rezero else 2}


def spike_top(curves, cap: float) -> float:
    """A top y limit for `curves` (arrays, NaN for missing points): `cap` cuts early spikes (a
    loss far above the rest at the start), but the limit never falls under the last finite
    point of a curve (+5%), so no curve leaves the picture."""
    ends = [float(y[np.isfinite(y)][-1]) for y in map(np.asarray, curves) if np.isfinite(y).any()]
    return max([cap] + [1.05 * e for e in ends])

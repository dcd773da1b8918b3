"""Matplotlib figures. Each function takes results (numbers, `Spectrum`s, records) and returns a
`matplotlib.figure.Figure`; `save(fig, path)` writes it atomically.

Sections: spectrum histograms (Figure 4 style); the toy model (Figure 2); theory overlays;
training runs (Figures 4b–d, 8).
"""

from __future__ import annotations

import os
import tempfile

import matplotlib

matplotlib.use("Agg") if not os.environ.get("MPLBACKEND") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["save", "spectrum_histograms"]


def save(fig, path: str | os.PathLike, dpi: int = 120) -> str:
    """Writes `fig` to `path` (format from the suffix) via a temp file and `os.replace`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path


# --- spectrum histograms (Figure 4 style) ------------------------------------------------------
def spectrum_histograms(panels: dict, bins: int = 50, range: tuple[float, float] | None = None,
                        title: str | None = None):
    """Histograms of log10 σ, one panel per key of `panels` (e.g. per depth), like Figure 4a.

    Args:
      panels: {panel title: {curve label: Spectrum}}; every spectrum in a panel shares the bins.
        Anything with a `histogram(bins, range, density)` method works (dense or matrix-free).
      bins: number of bins.
      range: (lo, hi) in log10 σ; default: the data range of each panel.
      title: figure title.

    Returns:
      The figure.
    """
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items()):
        lo_hi = range or _common_range(curves.values())
        for label, spec in curves.items():
            counts, edges = spec.histogram(bins=bins, range=lo_hi, density=True)
            ax.stairs(counts, edges, label=label, fill=False, linewidth=1.4)
        ax.set_title(name)
        ax.set_xlabel(r"$\log_{10}\,\sigma$")
        ax.set_ylabel("density")
        ax.axvline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    axes[0][-1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _common_range(spectra) -> tuple[float, float]:
    lows, highs = [], []
    for spec in spectra:
        _, edges = spec.histogram(bins=1)
        lows.append(edges[0])
        highs.append(edges[-1])
    lo, hi = min(lows), max(highs)
    return (lo - 0.5, hi + 0.5) if hi - lo < 1e-6 else (lo, hi)

"""Figures of a training run's records (`isometry.train._tracking.read_metrics`): loss curves, the
log10 σ histograms over steps (Figure 4b–d as a heat map), |α| over layers and steps
(Figure 8), and chi over steps. They take the records (and optionally the run directory's
saved σ files) and compute no experiment.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.colors import LogNorm

from isometry._io import NONFINITE_SUFFIX
from isometry.plot.axes import integer_ticks, log_ticks
from isometry.plot.output import plt

__all__ = ["training_curves", "spectrum_heatmap", "alpha_heatmap", "chi_curve"]

def _series(records: list, key: str, sub: str | None = None):
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, dict) and sub is not None:
            v = v.get(sub)
        if isinstance(v, (int, float)):
            steps.append(r["step"])
            values.append(v)
    return np.asarray(steps), np.asarray(values, dtype=float)


def _step_edges(steps) -> np.ndarray:
    """Cell edges around (possibly unevenly spaced) steps, for pcolormesh."""
    s = np.asarray(steps, dtype=float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _divergence_step(records: list) -> int | None:
    """The first step whose training loss is not finite (null in the JSON, with its reason)."""
    for r in records:
        loss = r.get("loss")
        if ("loss" in r and loss is None and r.get("loss_nonfinite")) or \
                (isinstance(loss, float) and not np.isfinite(loss)):
            return r["step"]
    return None


def _mark_divergence(ax, records: list, label: bool = True) -> int | None:
    """A vertical line at the first non-finite training loss, labelled with its step, the x
    range widened to show it (call it after drawing). Returns the step (None: no divergence)."""
    step = _divergence_step(records)
    if step is None:
        return None
    left, right = ax.get_xlim()
    ax.axvline(step, color="tab:red", linewidth=1.5, zorder=5,
               label=f"loss non-finite at step {step}" if label else None)
    pad = max(0.03 * (max(right, step) - min(left, step)), 0.5)
    ax.set_xlim(min(left, step - pad), max(right, step + pad))
    return step


def _eval_label(label: str, n: int) -> str:
    return f"{label} ({n} evaluation{'s' if n != 1 else ''}" + \
        (", set --eval-every for more)" if n <= 3 else ")")


def training_curves(records: list, title: str | None = None):
    """Training loss (and held-out loss) over steps; accuracy or bits per byte beside it.

    Held-out values are drawn as points (their count in the legend: by default a run
    evaluates only at its start and end); a diverged run (non-finite loss) is marked.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for key, label in (("loss", "train"), ("eval_loss", "held-out")):
        steps, v = _series(records, key)
        if len(steps) and key == "eval_loss":
            axes[0].plot(steps, v, label=_eval_label(label, len(steps)), marker="o", markersize=4,
                         linestyle="--" if len(steps) > 3 else "none", linewidth=0.8)
        elif len(steps):
            axes[0].plot(steps, v, label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("cross-entropy (nats)")
    second = [("eval_bpb", "held-out bits per byte")] if any("eval_bpb" in r for r in records) \
        else [("accuracy", "train accuracy"), ("eval_accuracy", "held-out accuracy")]
    for key, label in second:
        steps, v = _series(records, key)
        if len(steps) and key.startswith("eval"):
            axes[1].plot(steps, v, label=_eval_label(label, len(steps)), marker="o", markersize=4,
                         linestyle="--" if len(steps) > 3 else "none", linewidth=0.8)
        elif len(steps):
            axes[1].plot(steps, v, label=label)
    axes[1].set_ylabel("bits per byte" if second[0][0] == "eval_bpb" else "accuracy")
    axes[1].set_xlabel("step")
    for ax in axes:
        _mark_divergence(ax, records, label=ax is axes[0])
        integer_ticks(ax.xaxis)
        ax.legend(fontsize=8, frameon=False)
    log_ticks(axes[0])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _spectra_from_files(rows: list, run_dir: str | None) -> list | None:
    """σ of every row from the run's spectra/ files (None unless every file is there)."""
    if run_dir is None or not all("spectrum_file" in r for r in rows):
        return None
    paths = [os.path.join(run_dir, r["spectrum_file"]) for r in rows]
    if not all(os.path.exists(p) for p in paths):
        return None
    return [np.asarray(np.load(p), np.float64).ravel() for p in paths]


def _binned_density(sigmas: list, range, bins: int):
    """Density of log10 σ per saved spectrum over the data's range (or `range`); exact zeros are
    left out. Returns (density (steps, bins), lo, hi, note on the zeros)."""
    logs = [np.log10(s[np.isfinite(s) & (s > 0)]) for s in sigmas]
    zero = max(float(np.mean(s == 0)) for s in sigmas)
    note = f" ({zero:.0%} of σ = 0 at most, not drawn)" if zero else ""
    if range is None:
        present = [v for v in logs if v.size]
        lo = min(float(v.min()) for v in present) if present else -1.0
        hi = max(float(v.max()) for v in present) if present else 1.0
        pad = max(0.05 * (hi - lo), 0.05)
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = range
    counts = np.array([np.histogram(v, bins=bins, range=(lo, hi))[0] for v in logs], float)
    sizes = np.array([max(s.size, 1) for s in sigmas], float)[:, None]
    return counts / sizes / ((hi - lo) / bins), lo, hi, note


def _stored_density(rows: list, range):
    """Density of the histograms stored in the records, zoomed to their occupied rows (or
    `range`). Returns (density (steps, bins), lo, hi, (ylo, yhi))."""
    lo, hi = rows[0]["histogram"]["range"]
    counts = np.array([r["histogram"]["counts"] for r in rows], dtype=float)
    n = counts.shape[1]
    density = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) / ((hi - lo) / n)
    occupied = np.nonzero(density.sum(axis=0))[0]
    if range is not None:
        view = tuple(range)
    elif occupied.size:
        view = (lo + (hi - lo) * max(occupied[0] - 2, 0) / n,
                lo + (hi - lo) * min(occupied[-1] + 3, n) / n)
    else:
        view = (lo, hi)
    return density, lo, hi, view


def _mark_failed_spectra(ax, records: list) -> None:
    """A diverged model: its spectrum is not finite, say where."""
    failed = [r["step"] for r in records if "spectrum_error" in r]
    if not failed:
        return
    for i, step in enumerate(failed):
        ax.axvline(step, color="tab:red", linewidth=1.2, linestyle="--",
                   label="spectrum not finite (NaN/Inf)" if i == 0 else None)
    left = min(ax.get_xlim()[0], min(failed) - 1)
    ax.set_xlim(left, max(ax.get_xlim()[1], max(failed) + 1))


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kwargs)


def spectrum_heatmap(records: list, title: str | None = None, *, run_dir: str | None = None,
                     range: tuple[float, float] | None = None, bins: int = 120):
    """log10 σ histograms over training as a heat map (one column per spectrum step).

    Each column is the density of log10 σ over all probes at that step (Figure 4b–d of the
    paper shows the same histograms as curves); the dotted line marks σ = 1. With `run_dir`
    the columns are binned from the saved σ (spectra/*.npy) over the range of the data (or
    `range`), so a near-isometric run and a diverged one both fill the picture; exact zeros
    are not drawn and their largest share is given in the title. Without the files, the
    histograms stored in the records are drawn, zoomed to their occupied rows (or `range`).

    Args:
      records: the run's records (`isometry.read_metrics`).
      title: the title.
      run_dir: the run directory holding spectra/ (optional).
      range: (lo, hi) of log10 σ on the vertical axis.
      bins: rows of the heat map when binning the saved σ.
    """
    rows = [r for r in records if "histogram" in r]
    if not rows:
        raise ValueError("the run has no spectrum records (was it run with --probes 0?)")
    sigmas = _spectra_from_files(rows, run_dir)
    if sigmas is not None:
        density, lo, hi, note = _binned_density(sigmas, range, bins)
        view = (lo, hi)
    else:
        (density, lo, hi, view), note = _stored_density(rows, range), ""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    edges_y = np.linspace(lo, hi, density.shape[1] + 1)
    # a log color scale over three decades: a sharp column (σ = 1 at a ReZero start) does not
    # turn the spread-out ones black
    top = float(density.max()) if density.max() > 0 else 1.0
    cmap = plt.get_cmap("magma").with_extremes(bad="black")
    mesh = ax.pcolormesh(_step_edges([r["step"] for r in rows]), edges_y,
                         np.ma.masked_less_equal(density.T, 0), cmap=cmap, shading="flat",
                         norm=LogNorm(vmin=top * 1e-3, vmax=top, clip=True))
    fig.colorbar(mesh, ax=ax, label=r"density of $\log_{10}\sigma$ (log scale)")
    ax.axhline(0.0, color="w", linewidth=0.8, linestyle=":")
    _mark_failed_spectra(ax, records)
    _mark_divergence(ax, records)
    _legend(ax, loc="upper right")
    integer_ticks(ax.xaxis)
    ax.set_ylim(*view)
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\log_{10}\,\sigma$")
    ax.set_title((title or "Jacobian singular values during training") + note, fontsize=10)
    fig.tight_layout()
    return fig


def _mean_abs(value) -> float:
    """Mean |α| of one record's entry (a number or a list); nulls (non-finite) are missing."""
    a = np.abs(np.asarray(value if value is not None else np.nan, dtype=float))
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else np.nan


def alpha_heatmap(records: list, title: str | None = None):
    """|α_i| over layers (rows) and steps (columns), like Figure 8 of the paper.

    Non-finite α's (null in the records) are drawn grey; when the finite ones span more than
    six decades (a diverging run) the colour scale is logarithmic and exact zeros are white.
    A diverged run (non-finite loss) is marked.
    """
    rows = [r for r in records if r.get("alpha")]
    if not rows:
        raise ValueError("the run has no alpha records (the model has no parameter named alpha)")
    names = [n for n in dict.fromkeys(n for r in rows for n in r["alpha"])
             if not n.endswith(NONFINITE_SUFFIX)]
    values = np.array([[_mean_abs(r["alpha"].get(n)) for n in names] for r in rows])
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.8", under="w")
    norm, label, extend = None, r"$|\alpha_i|$", "neither"
    if positive.size and positive.max() > 1e6 * positive.min():
        norm = LogNorm(positive.min(), positive.max())
        label, extend = label + " (log scale; white: 0)", "min" if finite.min() == 0 else extend
        values = np.where(values == 0, positive.min() / 10, values)  # under the scale: white
    fig, ax = plt.subplots(figsize=(7, 3.8))
    mesh = ax.pcolormesh(_step_edges([r["step"] for r in rows]), np.arange(len(names) + 1) - 0.5,
                         np.ma.masked_invalid(values.T), cmap=cmap, norm=norm, shading="flat")
    fig.colorbar(mesh, ax=ax, label=label, extend=extend)
    _mark_divergence(ax, records)
    _legend(ax, loc="upper left")
    integer_ticks(ax.xaxis)
    integer_ticks(ax.yaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("layer i")
    ax.set_title((title or r"residual weights $|\alpha_i|$ during training") +
                 (" (grey: not finite)" if finite.size < values.size else ""), fontsize=10)
    fig.tight_layout()
    return fig


def chi_curve(records: list, title: str | None = None):
    """chi = ||J||_F²/n_in and the extreme singular values over steps (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for sub, label in (("chi", r"$\chi = \|J\|_F^2 / n_{in}$"), ("sigma_max", r"$\sigma_{max}$"),
                       ("sigma_min", r"$\sigma_{min}$")):
        steps, v = _series(records, "spectrum", sub)
        zeros = int(np.sum(v <= 0))
        if zeros:  # no place on a log axis: say so instead of dropping them quietly
            label += f" (= 0 at {zeros} of {len(v)} steps, not drawn)"
        if len(steps):
            ax.plot(steps, np.where(v > 0, v, np.nan), label=label, marker="o", markersize=3)
    ax.set_yscale("log")
    ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_ylabel(r"$\chi$ and $\sigma$ of $J$ (mean over probes)")
    ax.set_xlabel("step")
    _mark_failed_spectra(ax, records)
    _mark_divergence(ax, records)
    log_ticks(ax)
    integer_ticks(ax.xaxis)
    _legend(ax, frameon=False)
    ax.set_title(title or "Jacobian during training (mean over probes)")
    fig.tight_layout()
    return fig

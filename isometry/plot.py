"""Matplotlib figures. Each function takes results (numbers, `Spectrum`s, records) and returns a
`matplotlib.figure.Figure`; `save(fig, path)` writes it atomically.

Sections: spectrum histograms (Figure 4 style); the toy model (Figure 2); theory overlays;
training runs (Figures 4b–d, 8).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg") if not os.environ.get("MPLBACKEND") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from isometry._layerwise import depth_profile  # noqa: E402

__all__ = ["save", "spectrum_histograms", "toy_figure2", "toy_depth_sweep",
           "training_curves", "spectrum_heatmap", "alpha_heatmap", "chi_curve", "theory_overlay",
           "layerwise_profiles"]


def save(fig, path: str | os.PathLike, dpi: int = 120) -> str:
    """Writes `fig` to `path` (format from the suffix) atomically (`isometry._io.atomic_write`)."""
    import io

    from isometry._io import atomic_write

    path = os.fspath(path)
    fmt = (os.path.splitext(path)[1] or ".png")[1:]
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write(path, buf.getvalue())


# --- spectrum histograms (Figure 4 style) ------------------------------------------------------
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
        for label, spec in curves.items():
            zero = _zero_share(spec)
            if zero is not None and zero >= 1.0:
                ax.plot([], [], linestyle="none", marker="x", color="0.3",
                        label=f"{label} (all σ = 0)")
                continue
            counts, edges = spec.histogram(bins=bins, range=lo_hi, density=True)
            if zero:
                label = f"{label} ({zero:.0%} of σ = 0, not drawn)"
            ax.stairs(counts, edges, label=label, fill=False, linewidth=1.4)
        resolutions = [(float(np.max(np.asarray(spec.resolution))), np.asarray(spec.singular_values).dtype)
                       for spec in curves.values() if hasattr(spec, "resolution")]
        if resolutions:  # below it, σ are round-off of the SVD in this dtype
            res, dtype = max(resolutions, key=lambda r: r[0])
            if res > 0 and lo_hi[0] < np.log10(res) < lo_hi[1]:
                ax.axvline(np.log10(res), color="tab:red", linewidth=0.9, linestyle="--",
                           label=f"{dtype.name} resolution σ_max·ε·n")
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


def _zero_share(spec) -> float | None:
    """Share of exact zeros over the batch of a dense spectrum (None for the matrix-free one)."""
    if not hasattr(spec, "zero_share"):
        return None
    s = np.asarray(spec.singular_values)
    return float(np.mean(s == 0))


def _positive_log10(spec) -> np.ndarray:
    """log10 of the σ > 0 a spectrum holds (dense: σ; matrix-free: its weighted Gauss nodes)."""
    if hasattr(spec, "nodes") and hasattr(spec, "weights"):
        s, w = np.asarray(spec.nodes, np.float64).ravel(), np.asarray(spec.weights, np.float64).ravel()
        s = s[(w > 1e-6 * w.max()) & (s > 0)] if w.size else s[s > 0]
    else:
        s = np.asarray(spec.singular_values, np.float64).ravel()
        s = s[s > 0]
    return np.log10(s)


def _common_range(spectra) -> tuple[float, float]:
    """The log10 range of the non-zero σ of all `spectra`, padded by 2% (±0.5 for one value)."""
    logs = [v for spec in spectra for v in (_positive_log10(spec),) if v.size]
    if not logs:
        return (-1.0, 1.0)
    lo = min(float(v.min()) for v in logs)
    hi = max(float(v.max()) for v in logs)
    if hi - lo < 1e-6:
        return (lo - 0.5, hi + 0.5)
    pad = 0.02 * (hi - lo)
    return (lo - pad, hi + pad)


# --- the toy model (Figure 2) ---
def toy_figure2(result=None, *, levels: int = 30, residual: bool = True):
    """Figure 2 of the paper: log ‖∂C‖² over (w, α) with the ReZero descent paths in red.

    The zero-loss curve αw = T^{1/L} − 1 is drawn dashed; the vanilla residual paths (α fixed
    at 1) are drawn in blue when the result has them and `residual` is on.

    Args:
      result: a `toy.Figure2`, or `toy.Figure2Settings` / None to compute one
        (`toy.figure2`) — so `toy_figure2()` builds the whole figure at the paper's settings.
      levels: number of filled contour levels.
      residual: draw the residual paths.

    Returns:
      The figure.
    """
    from isometry import toy

    if result is None or isinstance(result, toy.Figure2Settings):
        result = toy.figure2(result)
    grid = result.grid
    w, alpha = np.asarray(grid.w), np.asarray(grid.alpha)
    z = np.asarray(grid.log_grad_norm)
    finite = z[np.isfinite(z)]
    lo, hi = np.percentile(finite, 1.0), finite.max()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    filled = ax.contourf(w, alpha, np.clip(np.where(np.isfinite(z), z, lo), lo, hi),
                         levels=np.linspace(lo, hi, levels), cmap="viridis")
    fig.colorbar(filled, ax=ax, label=r"$\ln\,\|\partial C\|^2$")
    product = result.solution_product
    ax.contour(w, alpha, alpha[:, None] * w[None, :], levels=[product], colors="white",
               linestyles="--", linewidths=1.2)
    ax.plot([], [], "w--", label=rf"$\alpha w = T^{{1/L}}-1 = {product:.4f}$")
    paths = [(result.rezero, "red", "ReZero (α₀ = 0)")]
    if residual and result.residual is not None:
        paths.append((result.residual, "tab:blue", "residual (α = 1 fixed)"))
    for traj, color, label in paths:
        for i, steps in enumerate(np.asarray(traj.steps)):
            pw = np.asarray(traj.w[i, : steps + 1])
            pa = np.asarray(traj.alpha[i, : steps + 1])
            ax.plot(pw, pa, color=color, linewidth=1.6, label=label if i == 0 else None)
            ax.plot(pw[:1], pa[:1], "o", color=color, markersize=4)
            ax.plot(pw[-1:], pa[-1:], "*", color=color, markersize=8)
    s = result.settings
    ax.set_xlim(w[0], w[-1])
    ax.set_ylim(alpha[0], alpha[-1])
    ax.set_xlabel("w")
    ax.set_ylabel(r"$\alpha$")
    ax.set_title(rf"$x_L = (1+\alpha w)^L x_0$, L = {s.depth}, T = {s.target:g}, λ = {s.lr:g}")
    ax.legend(fontsize=8, loc="lower left", framealpha=0.8)
    fig.tight_layout()
    return fig


def toy_depth_sweep(sweep):
    """Learning rate and steps versus depth for the residual (α = 1) and ReZero (α₀ = 0) toys.

    Left: the largest converging learning rate (log scale) with the exact α = 1 stability
    bound at the solution; right: the fewest steps to converge, runs that never converged
    within the budget marked at the budget.

    Args:
      sweep: a `toy.DepthSweep`.

    Returns:
      The figure.
    """
    depths = np.asarray(sweep.depths)
    budget = sweep.settings.max_steps
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, color in (("residual", "tab:blue"), ("rezero", "red")):
        search = getattr(sweep, name)
        fit = sweep.scaling(name)
        label = short = {"residual": "residual (α = 1)", "rezero": "ReZero (α₀ = 0)"}[name]
        if fit.get("better"):
            exp_fit, pow_fit = fit["exponential"], fit["power_law"]
            label += (f": fit exp({exp_fit['slope']:.2f} L) rms {exp_fit['rms_log_residual']:.2f}"
                      f", L^{pow_fit['slope']:.2f} rms {pow_fit['rms_log_residual']:.2f}")
        left.semilogy(depths, np.asarray(search.lr), "o-", color=color, label=label)
        steps = np.asarray(search.fastest_steps, float)
        right.semilogy(depths, np.where(steps >= 0, steps, np.nan), "o-", color=color, label=short)
        missing = steps < 0
        if missing.any():
            right.semilogy(depths[missing], np.full(missing.sum(), budget), "x", color=color,
                           markersize=8, label=f"{short}: not within {budget} steps")
    left.semilogy(depths, np.asarray(sweep.residual_bound), "k--", linewidth=1,
                  label=r"bound $1/(\langle x^2\rangle L^2 T^{2(L-1)/L})$ (α = 1)")
    left.set_xlabel("depth L")
    left.set_ylabel("largest converging learning rate")
    left.legend(fontsize=7, frameon=False)
    right.set_xlabel("depth L")
    right.set_ylabel("fewest steps to converge")
    right.axhline(budget, color="0.6", linestyle=":", linewidth=0.8)
    right.legend(fontsize=7, frameon=False)
    s = sweep.settings
    fig.suptitle(f"toy (1+αw)^L x₀ → T x₀, T = {s.target:g}, w₀ = {s.w0:g}, "
                 f"converged: loss ≤ {s.tol:g} within {budget} steps", fontsize=10)
    fig.tight_layout()
    return fig


# --- training runs ---
# Figures of a run directory's records (`isometry.tracking.read_metrics`): loss curves, the
# log10 σ histograms over steps (Figure 4b–d as a heat map), |α| over layers and steps
# (Figure 8), and chi over steps.

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
    diverged = _divergence_step(records)
    for ax in axes if diverged is not None else ():
        ax.axvline(diverged, color="tab:red", linewidth=1.0, linestyle="--",
                   label=f"loss not finite from step {diverged}" if ax is axes[0] else None)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("cross-entropy (nats)")
    axes[0].legend(fontsize=8, frameon=False)
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
    axes[1].legend(fontsize=8, frameon=False)
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
    note = ""
    if sigmas is not None:
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
        density = counts / sizes / ((hi - lo) / bins)
        ylo, yhi = lo, hi
    else:
        lo, hi = rows[0]["histogram"]["range"]
        counts = np.array([r["histogram"]["counts"] for r in rows], dtype=float)
        density = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) / ((hi - lo) / counts.shape[1])
        occupied = np.nonzero(density.sum(axis=0))[0]
        if range is not None:
            ylo, yhi = range
        elif occupied.size:
            ylo = lo + (hi - lo) * max(occupied[0] - 2, 0) / counts.shape[1]
            yhi = lo + (hi - lo) * min(occupied[-1] + 3, counts.shape[1]) / counts.shape[1]
        else:
            ylo, yhi = lo, hi
    fig, ax = plt.subplots(figsize=(7, 3.8))
    edges_y = np.linspace(lo, hi, density.shape[1] + 1)
    # a log color scale over three decades: a sharp column (σ = 1 at a ReZero start) does not
    # turn the spread-out ones black
    from matplotlib.colors import LogNorm

    top = float(density.max()) if density.max() > 0 else 1.0
    cmap = plt.get_cmap("magma").with_extremes(bad="black")
    mesh = ax.pcolormesh(_step_edges([r["step"] for r in rows]), edges_y,
                         np.ma.masked_less_equal(density.T, 0), cmap=cmap, shading="flat",
                         norm=LogNorm(vmin=top * 1e-3, vmax=top, clip=True))
    fig.colorbar(mesh, ax=ax, label=r"density of $\log_{10}\sigma$ (log scale)")
    ax.axhline(0.0, color="w", linewidth=0.8, linestyle=":")
    failed = [r["step"] for r in records if "spectrum_error" in r]
    if failed:  # a diverged model: its spectrum is not finite, say where
        for i, step in enumerate(failed):
            ax.axvline(step, color="tab:red", linewidth=1.2, linestyle="--",
                       label="spectrum not finite (NaN/Inf)" if i == 0 else None)
        left = min(ax.get_xlim()[0], min(failed) - 1)
        ax.set_xlim(left, max(ax.get_xlim()[1], max(failed) + 1))
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\log_{10}\,\sigma$")
    ax.set_title((title or "Jacobian singular values during training") + note, fontsize=10)
    fig.tight_layout()
    return fig


def alpha_heatmap(records: list, title: str | None = None):
    """|α_i| over layers (rows) and steps (columns), like Figure 8 of the paper."""
    rows = [r for r in records if r.get("alpha")]
    if not rows:
        raise ValueError("the run has no alpha records (the model has no parameter named alpha)")
    names = list(rows[0]["alpha"])
    values = np.array([[np.mean(np.abs(r["alpha"].get(n, np.nan))) for n in names] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    mesh = ax.pcolormesh(_step_edges([r["step"] for r in rows]), np.arange(len(names) + 1) - 0.5,
                         values.T, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label=r"$|\alpha_i|$")
    ax.set_xlabel("step")
    ax.set_ylabel("layer i")
    ax.set_title(title or r"residual weights $|\alpha_i|$ during training")
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
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or "Jacobian during training (mean over probes)")
    fig.tight_layout()
    return fig


# --- theory overlays ---------------------------------------------------------------------------


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
    ranges = []
    for pred, sv in zip(predictions, measured):
        d = pred.density
        if len(d.density) and d.density.max() > 0:  # the central 99% of the continuous part
            cum = np.concatenate([[0.0], np.cumsum(np.diff(d.log10_sigma)
                                                   * (d.density[1:] + d.density[:-1]) / 2)])
            ranges += [np.interp(0.005 * cum[-1], cum, d.log10_sigma), d.log10_sigma[-1]]
        if len(d.point_sigma):
            ranges += list(np.log10(d.point_sigma))
        if sv is not None:
            s = np.asarray(sv, np.float64)
            s = s[s >= 1e-10 * s.max()]
            ranges += [np.log10(s.min()), np.log10(s.max())]
    lo, hi = min(ranges), max(ranges)
    pad = 0.05 * max(hi - lo, 0.2)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    width = edges[1] - edges[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (pred, sv) in enumerate(zip(predictions, measured)):
        c = colors[i % len(colors)]
        d = pred.density
        label = f"L = {pred.depth}"
        if sv is not None:
            s = np.asarray(sv, np.float64).reshape(-1, np.shape(sv)[-1])
            zero = s < 1e-10 * s.max(axis=-1, keepdims=True)
            counts, _ = np.histogram(np.log10(s[~zero]), bins=edges)
            ax.stairs(counts / (s.size * width), edges, color=c, alpha=0.35, fill=True,
                      label=f"{label} measured ({s.shape[0]}×N={s.shape[1]}"
                            + (f", {zero.mean():.2f} below 1e-10 σ_max)" if zero.any() else ")"))
        if len(d.density):
            ax.plot(d.log10_sigma, d.density, color=c, linewidth=1.5,
                    label=f"{label} theory" + (f" (+{d.zero_mass:.2f} at σ=0)" if d.zero_mass else ""))
        if len(d.point_sigma):
            heights, _ = np.histogram(np.log10(d.point_sigma), bins=edges, weights=d.point_mass)
            ax.stairs(heights / width, edges, color=c, linewidth=1.5, linestyle="--",
                      label=f"{label} theory, point mass{'es' if len(d.point_sigma) > 1 else ''}")
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


# --- layer-by-layer profiles ---
def layerwise_profiles(profiles: dict, quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9),
                       title: str | None = None):
    """chi_l and quantiles of log10 σ(∂x_l/∂x_0) against depth l, one curve per variant.

    Args:
      profiles: {label: what `layerwise_spectrum_fn` returns (a `Spectrum` with a depth axis,
        batch axes pooled) or an array of chi_l (from `layerwise_chi_fn`, leading axes
        averaged)}; see `isometry.depth_profile`.
      quantiles: (low, middle, high) quantiles of log10 σ: the middle is drawn as a line and
        the band between low and high is shaded.
      title: figure title.

    Returns:
      The figure: left chi_l (log scale), right the log10 σ quantiles (spectra only).
    """
    fig, (ax_chi, ax_q) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, profile in profiles.items():
        summary = depth_profile(profile, quantiles)
        chi, color = summary["chi"], None
        if "log10_sigma_quantiles" in summary:
            lo, mid, hi = summary["log10_sigma_quantiles"]
            depth = np.arange(len(mid))
            (line,) = ax_q.plot(depth, mid, label=label, linewidth=1.4)
            ax_q.fill_between(depth, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            color = line.get_color()
        ax_chi.plot(np.arange(len(chi)), chi, label=label, color=color, linewidth=1.4)
    ax_chi.set_yscale("log")
    ax_chi.set_xlabel("depth l")
    ax_chi.set_ylabel(r"$\chi_l = \|\partial x_l/\partial x_0\|_F^2 / n$")
    ax_chi.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
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

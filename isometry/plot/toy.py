"""Figures of the toy x_L = (1 + αw)^L x_0 (Figure 2 and learning rate versus depth).

Both take plain data: arrays of the contour grid and paths, and the depth-sweep record
(`isometry.experiments.toy_depth.record`, i.e. lr_depth.json); they compute nothing.
"""

from __future__ import annotations

import numpy as np

from isometry.plot.output import plt

__all__ = ["toy_figure2", "toy_depth_sweep"]

#: (color, legend label) of each kind of path.
PATH_STYLES = {"rezero": ("red", "ReZero (α₀ = 0)"), "residual": ("tab:blue", "residual (α = 1 fixed)")}


def toy_figure2(w, alpha, log_grad_norm, paths: dict, *, solution_product: float, depth: int,
                target: float, lr: float, levels: int = 30):
    """Figure 2 of the paper: log ‖∂C‖² over (w, α) with the descent paths.

    The zero-loss curve αw = T^{1/L} − 1 is drawn dashed; ReZero paths in red, vanilla residual
    paths (α fixed at 1) in blue. Non-finite grid values (−inf where the gradient vanishes, NaN
    for a null in the JSON) are drawn at the lowest level.

    Args:
      w, alpha: grid values, shapes (n_w,) and (n_alpha,).
      log_grad_norm: log ‖∂C‖², shape (n_alpha, n_w) (`toy.GradientGrid.log_grad_norm`).
      paths: {"rezero" | "residual": [(w path, α path), ...]}, each path two 1-D arrays.
      solution_product: T^{1/L} − 1.
      depth, target, lr: L, T and λ, for the title.
      levels: number of filled contour levels.

    Returns:
      The figure.
    """
    w, alpha, z = (np.asarray(v, np.float64) for v in (w, alpha, log_grad_norm))
    finite = z[np.isfinite(z)]
    lo, hi = np.percentile(finite, 1.0), finite.max()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    filled = ax.contourf(w, alpha, np.clip(np.where(np.isfinite(z), z, lo), lo, hi),
                         levels=np.linspace(lo, hi, levels), cmap="viridis")
    fig.colorbar(filled, ax=ax, label=r"$\ln\,\|\partial C\|^2$")
    ax.contour(w, alpha, alpha[:, None] * w[None, :], levels=[solution_product], colors="white",
               linestyles="--", linewidths=1.2)
    ax.plot([], [], "w--", label=rf"$\alpha w = T^{{1/L}}-1 = {solution_product:.4f}$")
    for kind, kind_paths in paths.items():
        color, label = PATH_STYLES[kind]
        for i, (pw, pa) in enumerate(kind_paths):
            pw, pa = np.asarray(pw), np.asarray(pa)
            ax.plot(pw, pa, color=color, linewidth=1.6, label=label if i == 0 else None)
            ax.plot(pw[:1], pa[:1], "o", color=color, markersize=4)
            ax.plot(pw[-1:], pa[-1:], "*", color=color, markersize=8)
    ax.set_xlim(w[0], w[-1])
    ax.set_ylim(alpha[0], alpha[-1])
    ax.set_xlabel("w")
    ax.set_ylabel(r"$\alpha$")
    ax.set_title(rf"$x_L = (1+\alpha w)^L x_0$, L = {depth}, T = {target:g}, λ = {lr:g}")
    ax.legend(fontsize=8, loc="lower left", framealpha=0.8)
    fig.tight_layout()
    return fig


def _fit_label(short: str, fit: dict) -> str:
    if not fit.get("better"):
        return short
    exp_fit, pow_fit = fit["exponential"], fit["power_law"]
    return (short + f": fit exp({exp_fit['slope']:.2f} L) rms {exp_fit['rms_log_residual']:.2f}"
            f", L^{pow_fit['slope']:.2f} rms {pow_fit['rms_log_residual']:.2f}")


def _as_float(values) -> np.ndarray:
    """A JSON list (None for a non-finite number) as floats (None → NaN)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def toy_depth_sweep(record: dict):
    """Learning rate and steps versus depth for the residual (α = 1) and ReZero (α₀ = 0) toys.

    Left: the largest converging learning rate (log scale) with the exact α = 1 stability
    bound at the solution; right: the fewest steps to converge, runs that never converged
    within the budget marked at the budget.

    Args:
      record: the depth-sweep record (lr_depth.json: `experiments.toy_depth.record`).

    Returns:
      The figure.
    """
    depths = np.asarray(record["depths"])
    s = record["setup"]
    budget = s["max_steps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, short, color in (("residual", "residual (α = 1)", "tab:blue"),
                               ("rezero", "ReZero (α₀ = 0)", "red")):
        toy = record[name]
        left.semilogy(depths, _as_float(toy["lr_max"]), "o-", color=color,
                      label=_fit_label(short, toy["scaling"]))
        steps = _as_float(toy["fastest_steps"])
        right.semilogy(depths, steps, "o-", color=color, label=short)
        missing = ~np.isfinite(steps)
        if missing.any():
            right.semilogy(depths[missing], np.full(missing.sum(), budget), "x", color=color,
                           markersize=8, label=f"{short}: not within {budget} steps")
    left.semilogy(depths, _as_float(record["residual"]["stability_bound"]), "k--", linewidth=1,
                  label=r"bound $1/(\langle x^2\rangle L^2 T^{2(L-1)/L})$ (α = 1)")
    for ax, ylabel in ((left, "largest converging learning rate"),
                       (right, "fewest steps to converge")):
        ax.set_xlabel("depth L")
        ax.set_ylabel(ylabel)
    right.axhline(budget, color="0.6", linestyle=":", linewidth=0.8)
    left.legend(fontsize=7, frameon=False)
    right.legend(fontsize=7, frameon=False)
    fig.suptitle(f"toy (1+αw)^L x₀ → T x₀, T = {s['target']:g}, w₀ = {s['w0']:g}, "
                 f"converged: loss ≤ {s['tol']:g} within {budget} steps", fontsize=10)
    fig.tight_layout()
    return fig

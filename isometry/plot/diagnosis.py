"""Figures of `isometry.diagnose`: the four-panel figure of a `Diagnosis`
(`Diagnosis.figure()`, `iso.diagnosis_figure`: χ_l profile, σ histogram, token similarity by
depth, |α| and |∂L/∂α| by layer) and the main numbers over training (`run_diagnosis_figure`,
`RunDiagnosis.figure()`).

Data in, figure out: the panels draw what the diagnosis holds and compute nothing else.

Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> d = SimpleNamespace(chi_profile=0.9 ** np.arange(9), growth_rate=np.log(0.9),
    ...                     phase="ordered", theory=None, spectrum=None, token_cosine=None,
    ...                     alphas={}, layer_grad_norms={"blocks/0": 1.0, "blocks/1": 0.5},
    ...                     codes=["ordered"])
    >>> [ax.get_title() for ax in diagnosis_figure(d).axes][:2]
    ['(a) signal propagation by depth', '(b) singular values']
"""

from __future__ import annotations

import math

import numpy as np

from isometry._numerics import log10_sigma, resolution_of
from isometry.plot.axes import integer_ticks, log_ticks
from isometry.plot.output import plt

__all__ = ["diagnosis_figure", "run_diagnosis_figure"]


def _chi_panel(ax, d) -> None:
    """(a) χ_l against depth l (log scale), the fitted growth e^{g·l} and mean field's χ₁^l."""
    if d.chi_profile is not None:
        depth = np.arange(len(d.chi_profile))
        ax.plot(depth, d.chi_profile, "o-", markersize=3, linewidth=1.2, label="measured")
        if math.isfinite(d.growth_rate):
            fit = d.chi_profile[0] * np.exp(d.growth_rate * depth)
            ax.plot(depth, fit, "--", linewidth=1,
                    label=f"fit: ln χ per layer = {d.growth_rate:.3g} ({d.phase})")
        if d.theory:
            ax.plot(depth, d.chi_profile[0] * d.theory["chi_1"] ** depth, ":", linewidth=1.4,
                    label=f"mean field: χ₁ = {d.theory['chi_1']:.4g}")
        ax.set_yscale("log")
        ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        log_ticks(ax)
        integer_ticks(ax.xaxis)
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no layer stack:\nwhole-network J only", ha="center", va="center",
                transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])  # a note, not an empty plot
    ax.set_xlabel("depth l")
    ax.set_ylabel(r"$\chi_l = \|\partial x_l/\partial x_0\|_F^2/n_0$")
    ax.set_title("(a) signal propagation by depth", fontsize=10)


def _sigma_panel(ax, d, bins: int) -> None:
    """(b) the histogram of log10 σ(J) with the dtype's resolution and the band [0.5, 2]."""
    spec = d.spectrum
    if spec is not None:
        sv = np.asarray(spec.singular_values)
        s = sv.astype(np.float64).ravel()
        _, edges, _ = ax.hist(log10_sigma(sv).ravel(), bins=bins, color="C0", alpha=0.8)
        density = (d.theory or {}).get("density")
        if density:  # per unit of log10 σ: counts = density · n · bin width
            ax.plot(density["log10_sigma"], np.asarray(density["density"]) * sv.size
                    * (edges[1] - edges[0]), color="C1", linewidth=1.5,
                    label="theory (residual net, bulk)")
        floor = np.log10(resolution_of(s.max(), spec.n_in, spec.n_out, sv.dtype))
        ax.axvline(floor, color="C3", linewidth=1, linestyle="--",
                   label=f"{d.dtype} resolution ({100 * d.resolution_share:.0f}% below)")
        ax.axvspan(math.log10(0.5), math.log10(2.0), color="C2", alpha=0.15,
                   label="σ in [0.5, 2]")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel(r"$\log_{10}\sigma$ of $J = \partial x_L/\partial x_0$")
    ax.set_ylabel("count")
    ax.set_title(f"(b) singular values, χ = {float(np.mean(spec.chi)):.3g}"
                 if spec is not None else "(b) singular values", fontsize=10)


def _token_panel(ax, d) -> None:
    """(c) mean token cosine similarity, 1/stable rank and the attention gap by depth."""
    if d.token_cosine is not None:
        depth = np.arange(len(d.token_cosine))
        ax.plot(depth, d.token_cosine, "o-", markersize=3, label="mean token cosine")
        ax.plot(depth, d.inverse_stable_rank, "s-", markersize=3,
                label="1 / stable rank (1: rank one)")
        ax.set_ylim(-0.05, 1.05)
        if d.attention_ratio is not None:
            ax.plot(np.arange(len(d.attention_ratio)) + 0.5, d.attention_ratio, "^-",
                    markersize=3, label=r"attention $\sigma_2/\sigma_1$")
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "not a token sequence", ha="center", va="center",
                transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])  # a note, not an empty plot
    ax.set_xlabel("depth l")
    ax.set_title("(c) rank collapse of token representations", fontsize=10)


def _alpha_panel(ax, d) -> None:
    """(d) |α_l| and |∂L/∂α_l| by layer, or the per-layer gradient norms without α."""
    if d.alphas:
        a = np.array([float(np.mean(np.abs(v))) for v in d.alphas.values()])
        ga = np.array([float(np.mean(np.abs(v))) for v in d.alpha_grads.values()])
        layers = np.arange(len(a))
        for values, style, label in ((a, "o-", "|α_l|"), (ga, "s-", "|∂L/∂α_l|")):
            zeros = int(np.sum(values == 0))  # no place on the log axis: say so
            ax.plot(layers, np.where(values > 0, values, np.nan), style, markersize=3,
                    label=label + (f" (= 0 at {zeros} of {len(values)} layers, not drawn)"
                                   if zeros else ""))
        zero = (a == 0) & (ga == 0)
        if zero.any():
            ax.plot(layers[zero], np.ones(zero.sum()), "x", color="C3",
                    label="α = 0 and ∂L/∂α = 0 (dead)")
        ax.set_xlabel("layer")
        ax.set_title("(d) residual weights α and their gradients", fontsize=10)
    else:
        norms = np.array([d.layer_grad_norms[n] for n in d.layer_grad_norms])
        ax.plot(np.arange(len(norms)), np.where(norms > 0, norms, np.nan), "o-",
                markersize=3, label="‖∂L/∂θ‖ per layer")
        ax.set_xlabel("layer / module (in parameter order)")
        ax.set_title("(d) gradient norm by layer (no α)", fontsize=10)
    if any(np.isfinite(line.get_ydata()).any() for line in ax.get_lines()):
        ax.set_yscale("log")
        log_ticks(ax)
    integer_ticks(ax.xaxis)
    ax.legend(fontsize=8, frameon=False)


def diagnosis_figure(diagnosis, title: str | None = None, *, bins: int = 50):
    """The figure of a `Diagnosis`: four panels.

    (a) χ_l against depth l (log scale) with the fitted growth e^{g·l} and, when the diagnosis
    has a mean-field prediction, χ₁^l; (b) the histogram of log10 σ(J) with the dtype's
    resolution marked; (c) mean token cosine similarity and 1/stable rank by depth (or a note
    that the stream is not a token sequence); (d) |α_l| and |∂L/∂α_l| by layer (or the per-layer
    gradient norms when the model has no α).

    Args:
      diagnosis: what `isometry.diagnose` returns.
      title: figure title (default: the phase and the findings' codes).
      bins: histogram bins.

    Returns:
      A `matplotlib.figure.Figure` (`isometry.plot.save(fig, path)` writes it).
    """
    d = diagnosis
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax_chi, ax_hist, ax_tok, ax_alpha = axes.ravel()
    _chi_panel(ax_chi, d)
    _sigma_panel(ax_hist, d, bins)
    _token_panel(ax_tok, d)
    _alpha_panel(ax_alpha, d)
    if title is None:
        codes = ", ".join(d.codes) or "no findings"
        title = f"diagnosis: {d.phase or 'no layer stack'}; {codes}"
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _step_panel(ax, steps, rows, keys, ylabel: str, log: bool = False) -> None:
    """One panel of `run_diagnosis_figure`: the columns `keys` of the rows against step."""
    for key, label in keys:
        y = np.array([float(r[key]) for r in rows])
        ax.plot(steps, np.where(y > 0, y, np.nan) if log else y, "o-", markersize=3, label=label)
    if log and any(np.isfinite(line.get_ydata()).any() for line in ax.get_lines()):
        ax.set_yscale("log")
        log_ticks(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, frameon=False)


def run_diagnosis_figure(rows, title: str | None = None):
    """The main numbers of a diagnosis at each checkpoint of a run, against the step.

    (a) χ of J; (b) mean and std of ln σ and the share of σ in [0.5, 2]; (c) the growth rate
    ln χ per layer (0: critical); (d) min and max α and the number of dead branches.

    Args:
      rows: one dict per step with the keys of `isometry.RunDiagnosis.rows()` ("step",
        "chi", "mean_log", "std_log", "isometry_share", "growth_rate", "alpha_min",
        "alpha_max", "dead_branches").
      title: figure title.

    Returns:
      A `matplotlib.figure.Figure`.

    Example:
        >>> rows = [dict(step=s, chi=1.0 + s, mean_log=0.0, std_log=0.1 * s, isometry_share=1.0,
        ...              growth_rate=0.01 * s, alpha_min=0.0, alpha_max=0.1 * s,
        ...              dead_branches=0) for s in (0, 10)]
        >>> [ax.get_title() for ax in run_diagnosis_figure(rows).axes][0]
        '(a) χ of J'
    """
    steps = np.array([r["step"] for r in rows], np.float64)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    a, b, c, d = axes.ravel()
    _step_panel(a, steps, rows, [("chi", "χ = ‖J‖²_F / n")], "χ", log=True)
    a.set_title("(a) χ of J", fontsize=10)
    _step_panel(b, steps, rows, [("mean_log", "mean ln σ"), ("std_log", "std ln σ"),
                                 ("isometry_share", "share of σ in [0.5, 2]")], "")
    b.set_title("(b) singular values of J", fontsize=10)
    _step_panel(c, steps, rows, [("growth_rate", "ln χ per layer")], "g")
    c.axhline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    c.set_title("(c) per-layer growth rate (0: critical)", fontsize=10)
    _step_panel(d, steps, rows, [("alpha_min", "min α"), ("alpha_max", "max α"),
                                 ("dead_branches", "dead branches")], "")
    d.set_title("(d) residual weights and dead branches", fontsize=10)
    fig.suptitle(title or "diagnosis over training")
    fig.tight_layout()
    return fig

"""The four-panel figure of a `Diagnosis` (`Diagnosis.figure()`, `iso.diagnosis_figure`): χ_l
profile, σ histogram, token similarity by depth, |α| and |∂L/∂α| by layer."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["diagnosis_figure"]


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
    import matplotlib.pyplot as plt

    d = diagnosis
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax_chi, ax_hist, ax_tok, ax_alpha = axes.ravel()

    if d.chi_profile is not None:
        depth = np.arange(len(d.chi_profile))
        ax_chi.plot(depth, d.chi_profile, "o-", markersize=3, linewidth=1.2, label="measured")
        if math.isfinite(d.growth_rate):
            fit = d.chi_profile[0] * np.exp(d.growth_rate * depth)
            ax_chi.plot(depth, fit, "--", linewidth=1,
                        label=f"fit: ln χ per layer = {d.growth_rate:.3g} ({d.phase})")
        if d.theory:
            ax_chi.plot(depth, d.chi_profile[0] * d.theory["chi_1"] ** depth, ":", linewidth=1.4,
                        label=f"mean field: χ₁ = {d.theory['chi_1']:.4g}")
        ax_chi.set_yscale("log")
        ax_chi.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        ax_chi.legend(fontsize=8, frameon=False)
    else:
        ax_chi.text(0.5, 0.5, "no layer stack:\nwhole-network J only", ha="center", va="center",
                    transform=ax_chi.transAxes)
    ax_chi.set_xlabel("depth l")
    ax_chi.set_ylabel(r"$\chi_l = \|\partial x_l/\partial x_0\|_F^2/n_0$")
    ax_chi.set_title("(a) signal propagation by depth", fontsize=10)

    if d.spectrum is not None:
        s = np.asarray(d.spectrum.singular_values, np.float64).ravel()
        tiny = np.finfo(np.asarray(d.spectrum.singular_values).dtype).tiny
        ax_hist.hist(np.log10(np.clip(s, tiny, None)), bins=bins, color="C0", alpha=0.8)
        eps = np.finfo(np.asarray(d.spectrum.singular_values).dtype).eps
        floor = np.log10(s.max() * max(d.spectrum.n_in, d.spectrum.n_out) * eps)
        ax_hist.axvline(floor, color="C3", linewidth=1, linestyle="--",
                        label=f"{d.dtype} resolution ({100 * d.resolution_share:.0f}% below)")
        ax_hist.axvspan(math.log10(0.5), math.log10(2.0), color="C2", alpha=0.15,
                        label="σ in [0.5, 2]")
        ax_hist.legend(fontsize=8, frameon=False)
    ax_hist.set_xlabel(r"$\log_{10}\sigma$ of $J = \partial x_L/\partial x_0$")
    ax_hist.set_ylabel("count")
    ax_hist.set_title(f"(b) singular values, χ = {float(np.mean(d.spectrum.chi)):.3g}"
                      if d.spectrum is not None else "(b) singular values", fontsize=10)

    if d.token_cosine is not None:
        depth = np.arange(len(d.token_cosine))
        ax_tok.plot(depth, d.token_cosine, "o-", markersize=3, label="mean token cosine")
        ax_tok.plot(depth, d.inverse_stable_rank, "s-", markersize=3,
                    label="1 / stable rank (1: rank one)")
        ax_tok.set_ylim(-0.05, 1.05)
        if d.attention_ratio is not None:
            ax_tok.plot(np.arange(len(d.attention_ratio)) + 0.5, d.attention_ratio, "^-",
                        markersize=3, label=r"attention $\sigma_2/\sigma_1$")
        ax_tok.legend(fontsize=8, frameon=False)
    else:
        ax_tok.text(0.5, 0.5, "not a token sequence", ha="center", va="center",
                    transform=ax_tok.transAxes)
    ax_tok.set_xlabel("depth l")
    ax_tok.set_title("(c) rank collapse of token representations", fontsize=10)

    if d.alphas:
        a = np.array([float(np.mean(np.abs(v))) for v in d.alphas.values()])
        ga = np.array([float(np.mean(np.abs(v))) for v in d.alpha_grads.values()])
        layers = np.arange(len(a))
        ax_alpha.plot(layers, np.where(a > 0, a, np.nan), "o-", markersize=3, label="|α_l|")
        ax_alpha.plot(layers, np.where(ga > 0, ga, np.nan), "s-", markersize=3,
                      label="|∂L/∂α_l|")
        zero = (a == 0) & (ga == 0)
        if zero.any():
            ax_alpha.plot(layers[zero], np.ones(zero.sum()), "x", color="C3",
                          label="α = 0 and ∂L/∂α = 0 (dead)")
        ax_alpha.set_xlabel("layer")
        ax_alpha.set_title("(d) residual weights α and their gradients", fontsize=10)
    else:
        names = list(d.layer_grad_norms)
        norms = np.array([d.layer_grad_norms[n] for n in names])
        ax_alpha.plot(np.arange(len(norms)), np.where(norms > 0, norms, np.nan), "o-",
                      markersize=3, label="‖∂L/∂θ‖ per layer")
        ax_alpha.set_xlabel("layer / module (in parameter order)")
        ax_alpha.set_title("(d) gradient norm by layer (no α)", fontsize=10)
    if ax_alpha.get_lines() and np.any(np.isfinite(ax_alpha.get_lines()[0].get_ydata())):
        ax_alpha.set_yscale("log")
    ax_alpha.legend(fontsize=8, frameon=False)

    if title is None:
        codes = ", ".join(d.codes) or "no findings"
        title = f"diagnosis: {d.phase or 'no layer stack'}; {codes}"
    fig.suptitle(title)
    fig.tight_layout()
    return fig

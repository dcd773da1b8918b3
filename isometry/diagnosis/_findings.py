"""The findings of `diagnose`: each a problem in plain words, the number behind it, a change.

Every finding has a test that it fires on a model with the problem and stays silent on one
without (tests/test_diagnose.py). Thresholds are module constants, documented in `diagnose`.

Example:
    >>> f = resolution_finding(0.25, "float32", 64, 64)
    >>> f.code, f.value
    ('resolution', 0.25)
    >>> resolution_finding(0.0, "float32", 64, 64) is None
    True
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from isometry._numerics import resolution_of
import numpy as np

from isometry._io import jsonable
from isometry.spectrum._protocol import deprecated

__all__ = ["Finding", "FINDING_CODES", "nonfinite_finding", "phase_finding",
           "resolution_finding", "alpha_findings", "gradient_spread_finding",
           "rank_collapse_finding", "attention_finding", "sort_findings"]

#: The findings `diagnose` can report, by code.
FINDING_CODES = ("nonfinite", "ordered", "chaotic", "resolution", "dead_branch",
                 "negative_alpha", "inactive_alpha", "gradient_spread", "rank_collapse",
                 "attention_rank_one")

#: Thresholds of the findings (documented in `diagnose`).
RESOLUTION_SHARE = 0.01
INACTIVE_ALPHA = 0.01
GRADIENT_SPREAD_DECADES = 3.0
COLLAPSE_COSINE = 0.9
ATTENTION_RATIO = 0.1


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem `diagnose` found.

    Attributes:
      code: one of `FINDING_CODES`.
      message: the problem in plain words, with the number behind it.
      value: that number.
      suggestion: a change to try.
    """

    code: str
    message: str
    value: float
    suggestion: str

    def to_dict(self) -> dict:
        """The finding as plain data, strict-JSON-ready (a non-finite value as null)."""
        return jsonable(dataclasses.asdict(self))

    def to_json(self) -> dict:
        """Deprecated: `to_dict()`."""
        deprecated("Finding.to_json()", "to_dict()")
        return self.to_dict()



def sort_findings(findings) -> tuple:
    """The findings in the order of `FINDING_CODES`."""
    return tuple(sorted(findings, key=lambda f: FINDING_CODES.index(f.code)))


def nonfinite_finding(bad: int, total: int) -> Finding:
    """The output has `bad` NaN/Inf entries of `total` (nothing else is measured then)."""
    return Finding(
        "nonfinite", f"the output has {bad} NaN/Inf entries out of {total}: the forward "
                     f"pass overflows or divides by zero at this initialization", bad,
        "check the input and embedding scale (e.g. √d·Embed), normalization epsilons and "
        "the weight variance; run with jax_debug_nans to find the operation; try float64")


def phase_finding(phase, g, g_se, xi, n_layers, chi_last, theory_info) -> Finding:
    """An ordered or chaotic phase, with the critical σ_w² of mean field when known."""
    verb = "falls" if phase == "ordered" else "grows"
    what = "vanish" if phase == "ordered" else "explode"
    msg = (f"{phase} phase: χ_l {verb} by a factor e every ξ = {xi:.3g} layers (ln χ per "
           f"layer = {g:.3g} ± {g_se:.2g}), so signals and gradients {what} over the "
           f"{n_layers} layers (χ_L = {float(chi_last):.3g})")
    if theory_info and math.isfinite(theory_info.get("critical_sigma_w2", math.nan)):
        sug = (f"σ_w² = {theory_info['critical_sigma_w2']:.4g} puts χ₁ at 1 (mean field, "
               f"σ_b² = {theory_info['sigma_b2']:.3g}; now σ_w² = {theory_info['sigma_w2']:.4g}, "
               f"χ₁ = {theory_info['chi_1']:.4g})")
    else:
        factor = math.exp(-g)
        sug = (f"scale the weight variance by about e^(−ln χ₁) = {factor:.3g} (exact for "
               f"ReLU and linear layers), add ReZero connections (x + α·F(x)), or let "
               f"iso.tune_init find the scale")
    return Finding(phase, msg, g, sug)



def resolution_finding(share: float, dtype: str, n_in: int, n_out: int) -> Finding | None:
    """More than `RESOLUTION_SHARE` of σ(J) below the dtype's resolution."""
    if not share > RESOLUTION_SHARE:
        return None
    eps = resolution_of(1.0, n_in, n_out, dtype)  # relative to σ_max
    if dtype == "float64":
        sug = ("these directions are lost even in float64: move the model toward isometry "
               "(see the phase finding, iso.tune_init)")
    else:
        sug = (f"use float64 (jax.config.update('jax_enable_x64', True), "
               f"param_dtype=jnp.float64 and float64 inputs) to resolve them")
    return Finding("resolution", f"{100 * share:.0f}% of σ are below {dtype} resolution "
                                 f"(σ < {eps:.2g}·σ_max): the SVD cannot tell them from 0",
                   share, sug)


def alpha_findings(alphas: dict, alpha_grads: dict, layer_norms: dict) -> list[Finding]:
    """dead_branch, negative_alpha and inactive_alpha from the α's and their gradients."""
    out = []
    if not alphas:
        return out
    names = list(alphas)
    a = {n: np.asarray(v, np.float64) for n, v in alphas.items()}
    tiny = np.finfo(np.float64).tiny
    dead = []
    for n in names:
        ga = np.asarray(alpha_grads.get(n, np.nan), np.float64)
        layer = layer_norms.get(_alpha_layer_key(n), math.nan)
        if np.all(np.abs(ga) <= tiny) and layer <= tiny:
            dead.append(n)
    if dead:
        zero_gate = all(np.all(a[n] == 0) for n in dead)
        if zero_gate:
            why = "α = 0 and a branch output that is identically 0"
            sug = ("initialize α to a small non-zero value (α_init = 1e-3) when the branch "
                   "passes gradient at 0 (a zero-initialized linear output projection, tanh), "
                   "else the branch's last layer to non-zero weights")
        else:
            why = "a branch whose output and gradient are identically 0 (e.g. ReLU of 0)"
            sug = ("initialize the branch's weights to non-zero values: α alone cannot "
                   "revive a branch with zero output and zero derivative")
        out.append(Finding(
            "dead_branch", f"{why} in {len(dead)} of {len(names)} layers ({_span(dead)}): "
                           f"∂L/∂α = 0 and no parameter of these layers receives gradient, so "
                           f"they never move", float(len(dead)), sug))
    neg = [n for n in names if np.any(a[n] < 0)]
    if neg:
        worst = min(neg, key=lambda n: float(np.min(a[n])))
        out.append(Finding(
            "negative_alpha", f"α < 0 in {len(neg)} of {len(names)} layers ({_span(neg)}; "
                              f"{worst} = {float(np.min(a[worst])):.3g}): these layers "
                              f"subtract their branch", float(np.min(a[worst])),
            "give α its own optimizer without weight decay (iso.alpha_mask) and a smaller "
            "learning rate; check for instabilities before the sign change"))
    mags = np.array([float(np.max(np.abs(a[n]))) for n in names])
    values = np.concatenate([a[n].ravel() for n in names])
    if mags.max() > 0 and np.ptp(values) > 0:
        small = [n for n, m in zip(names, mags) if m < INACTIVE_ALPHA * mags.max()]
        if small:
            out.append(Finding(
                "inactive_alpha", f"|α| is below 1% of the largest |α| ({mags.max():.3g}) in "
                                  f"{len(small)} of {len(names)} layers ({_span(small)}): "
                                  f"these layers do nothing", float(len(small)),
                "give α its own learning rate (iso.alpha_mask), or drop the inactive layers"))
    return out



def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"


def _stacked_spread(layer_norms: dict):
    """(decades, (name, lo), (name, hi)) of the per-layer gradient norms of stacked layers."""
    stacked = {k: v for k, v in layer_norms.items()
               if k.rsplit("/", 1)[-1].isdigit() and v > 0 and math.isfinite(v)}
    if len(stacked) < 2:
        return None
    lo = min(stacked.items(), key=lambda kv: kv[1])
    hi = max(stacked.items(), key=lambda kv: kv[1])
    return math.log10(hi[1] / lo[1]), lo, hi


def _alpha_layer_key(name: str) -> str:
    """"blocks/3/alpha" → "blocks/3": the layer an α belongs to."""
    parts = name.split("/")
    return "/".join(parts[:parts.index("alpha")]) if "alpha" in parts else name



def gradient_spread_finding(layer_norms: dict) -> Finding | None:
    """Per-layer gradient norms of the stacked layers spanning > `GRADIENT_SPREAD_DECADES`."""
    spread = _stacked_spread(layer_norms)
    if spread is None or not spread[0] > GRADIENT_SPREAD_DECADES:
        return None
    decades, lo, hi = spread
    return Finding(
        "gradient_spread", f"per-layer gradient norms span {decades:.1f} decades "
                           f"({lo[0]}: {lo[1]:.2g} … {hi[0]}: {hi[1]:.2g}): layers train "
                           f"at very different speeds", decades,
        "move toward χ₁ = 1 (iso.tune_init), use ReZero (x + α·F(x), α_init = 0) or "
        "per-layer learning rates")


def rank_collapse_finding(cosine, stable_rank, n_layers: int, n_tokens: int) -> Finding | None:
    """Mean token cosine ≥ `COLLAPSE_COSINE` at x_L while below it at x_0."""
    if cosine is None or not (cosine[-1] >= COLLAPSE_COSINE and cosine[0] < COLLAPSE_COSINE):
        return None
    return Finding(
        "rank_collapse", f"token representations collapse: mean cosine similarity "
                         f"{cosine[0]:.2f} at x_0 → {cosine[-1]:.3f} at x_{n_layers}, stable "
                         f"rank {stable_rank[-1]:.2f} of {n_tokens} tokens", float(cosine[-1]),
        "keep the identity path dominant: ReZero (α_init = 0) or Pre-Norm instead of "
        "Post-Norm, fewer layers, or sharper attention at init")


def attention_finding(ratio) -> Finding | None:
    """In at least half of the layers the attention's mean σ₂/σ₁ < `ATTENTION_RATIO`."""
    if ratio is None or not np.mean(ratio < ATTENTION_RATIO) >= 0.5:
        return None
    n_low = int(np.sum(ratio < ATTENTION_RATIO))
    return Finding(
        "attention_rank_one", f"attention is nearly rank one in {n_low} of {ratio.size} layers "
                              f"(mean σ₂/σ₁ = {float(np.mean(ratio)):.3f}): each head averages "
                              f"the tokens, which drives rank collapse", float(np.mean(ratio)),
        "larger query/key initialization or a lower softmax temperature at init; keep the "
        "residual path (ReZero) so attention cannot average the stream away")

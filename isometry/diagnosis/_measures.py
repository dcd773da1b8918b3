"""Measurements `diagnose` makes on arrays: resolution, growth rate and phase, token rank.

Exposed for tests and for users' own streams. docs/theory.md §1: in a plain net at its fixed
point the growth rate g of ln χ_l is ln χ₁ (E[m₁] = χ₁^L).

Example:
    >>> g, se = growth_rate(np.exp(-0.2 * np.arange(11)))
    >>> round(g, 12), round(se, 12), phase_of(g, se, 10)
    (-0.2, 0.0, 'ordered')
    >>> token_statistics(np.ones((8, 16)))["cosine"]
    1.0
"""

from __future__ import annotations

import math

import numpy as np

from isometry._numerics import numerically_zero, resolution_of

__all__ = ["resolution_share", "growth_rate", "phase_of", "token_statistics", "attention_gap"]


def resolution_share(singular_values, n_in: int, n_out: int, dtype) -> float:
    """Share of σ below the resolution of `dtype`, σ_max · ε(dtype) · max(n_in, n_out)
    (`isometry._numerics.numerically_zero`), pooled over batch axes: a spectrum result's
    `zero_share` when `dtype` is its own.

    The tolerance is numpy's `matrix_rank` default: an SVD in `dtype` has absolute error of
    about that size, so such σ are indistinguishable from 0 (rounding noise).
    """
    s = np.asarray(singular_values, np.float64)
    s = s.reshape(-1, s.shape[-1])
    floor = resolution_of(s.max(axis=-1, keepdims=True), n_in, n_out, dtype)
    return float(np.mean(numerically_zero(s, floor)))


def growth_rate(chi, burn_in: int = 0) -> tuple[float, float]:
    """(g, se(g)): the mean per-layer increment of ln χ_l over l ≥ burn_in, and its error.

    Args:
      chi: χ_0 … χ_L (positive), or (n, L+1) of several nets or inputs (increments pooled).
      burn_in: layers skipped at the bottom (the transient before x_l reaches its fixed point).

    Returns:
      g = mean of d_l = ln χ_{l+1} − ln χ_l, and sd(d)/√(number of increments).
    """
    c = np.atleast_2d(np.asarray(chi, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.diff(np.log(c[:, burn_in:]), axis=-1).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, math.nan
    if d.size == 1:
        return float(d[0]), math.nan
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def phase_of(g: float, se: float, n_layers: int) -> str:
    """"ordered" (g < 0), "critical" or "chaotic" (g > 0) from the growth rate g ± se over L layers.

    Critical when χ changes by less than a factor 2 over the stack (|g|·L ≤ ln 2), or by less
    than a factor 10 with g within 3 standard errors of 0.
    """
    if not math.isfinite(g):
        return ""
    total = abs(g) * max(n_layers, 1)
    se = se if math.isfinite(se) else 0.0
    if total <= math.log(2) or (total <= math.log(10) and abs(g) <= 3 * se):
        return "critical"
    return "ordered" if g < 0 else "chaotic"


def token_statistics(x) -> dict[str, np.ndarray]:
    """Rank-collapse measures of token representations X (…, T, d), averaged over batch axes.

    Returns:
      dict of floats (batch-averaged): `cosine`, the mean cosine similarity of distinct tokens
      (1 when all tokens are parallel, 0 for orthogonal ones); `stable_rank` = ‖X‖_F²/‖X‖_2²
      ∈ [1, T]; `inverse_stable_rank` (1 for identical tokens, exactly 1/T for orthogonal
      tokens of equal norm); `rank_one_residual` = ‖X − 1x̄ᵀ‖_F/‖X‖_F (0 for identical tokens;
      Dong et al. 2021).

    Example:
      >>> round(token_statistics(np.eye(4))["inverse_stable_rank"], 12)    # orthogonal: 1/T
      0.25
    """
    X = np.asarray(x, np.float64)
    X = X.reshape(-1, *X.shape[-2:])
    T = X.shape[-2]
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    U = X / np.where(norms > 0, norms, 1.0)
    gram = U @ np.swapaxes(U, -1, -2)
    off = (gram.sum(axis=(-1, -2)) - np.trace(gram, axis1=-2, axis2=-1)) / max(T * (T - 1), 1)
    fro2 = np.sum(X ** 2, axis=(-1, -2))
    top = np.linalg.norm(X, ord=2, axis=(-2, -1)) ** 2
    srank = np.where(top > 0, fro2 / np.where(top > 0, top, 1.0), np.nan)
    resid = np.linalg.norm(X - X.mean(axis=-2, keepdims=True), axis=(-2, -1))
    rel = resid / np.where(fro2 > 0, np.sqrt(fro2), 1.0)
    return dict(cosine=float(off.mean()), stable_rank=float(np.nanmean(srank)),
                inverse_stable_rank=float(np.nanmean(1.0 / srank)),
                rank_one_residual=float(rel.mean()))


def attention_gap(weights) -> tuple[np.ndarray, np.ndarray]:
    """Top-two singular values of attention matrices A (…, T, T) and σ₂/σ₁, per matrix.

    A row-stochastic A has σ₁ ≥ 1 (A1 = 1). Uniform attention, A = 11ᵀ/T, has σ = (1, 0, …):
    the largest possible gap, every token replaced by the mean; A = I has σ₁ = σ₂ = 1.

    Returns:
      (σ of shape (…, 2), σ₂/σ₁ of shape (…)).
    """
    A = np.asarray(weights, np.float64)
    s = np.linalg.svd(A, compute_uv=False)[..., :2]
    if s.shape[-1] < 2:
        s = np.concatenate([s, np.zeros_like(s)], axis=-1)
    return s, s[..., 1] / np.where(s[..., 0] > 0, s[..., 0], 1.0)

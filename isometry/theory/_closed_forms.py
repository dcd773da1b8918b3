"""Closed forms the general machinery is checked against (docs/theory.md §2, §3).

Deep linear Gaussian nets follow the Fuss–Catalan law; Bernoulli-D nets (ReLU, hard-tanh) at
χ₁ = 1 have closed-form moments; linear residual nets have E[m₁] = (1 + α²σ_w²)^L exactly.

Example:
    >>> fuss_catalan_moments(2, 3)
    array([ 1.,  3., 12.])
    >>> fuss_catalan_edge(1), round(fuss_catalan_mean_sigma(1), 6)      # 8/(3π)
    (4.0, 0.848826)
    >>> bernoulli_moments(2, 0.5, 2)
    array([1., 5.])
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["fuss_catalan_moments", "fuss_catalan_density", "fuss_catalan_edge",
           "fuss_catalan_mean_sigma", "bernoulli_moments", "residual_linear_m1"]


def fuss_catalan_moments(depth: int, k: int, sigma_w2: float = 1.0) -> np.ndarray:
    """m_j = σ_w^{2Lj} C((L+1)j, j)/(Lj+1), j = 1..k: deep linear Gaussian nets."""
    j = np.arange(1, k + 1)
    return special.comb((depth + 1) * j, j, exact=False) / (depth * j + 1) * sigma_w2 ** (depth * j)


def fuss_catalan_edge(depth: int, sigma_w2: float = 1.0) -> float:
    """Top of the Fuss–Catalan support of λ: σ_w^{2L} (L+1)^{L+1}/L^L."""
    return sigma_w2 ** depth * (depth + 1) ** (depth + 1) / depth ** depth


def fuss_catalan_density(depth: int, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(λ, ρ(λ)) in parametric form, φ ∈ (0, π/(L+1)), σ_w = 1:

    λ(φ) = sin^{L+1}((L+1)φ) / (sin φ sin^L(Lφ)),  ρ = sin²φ sin^{L−1}(Lφ) / (π sin^L((L+1)φ)).
    """
    L = depth
    phi = np.asarray(phi, float)
    s1, sl, sl1 = np.sin(phi), np.sin(L * phi), np.sin((L + 1) * phi)
    lam = sl1 ** (L + 1) / (s1 * sl ** L)
    rho = s1 ** 2 * sl ** (L - 1) / (math.pi * sl1 ** L)
    return lam, rho


def fuss_catalan_mean_sigma(depth: int, sigma_w2: float = 1.0) -> float:
    """E[σ] = σ_w^L Γ((L+3)/2) / (Γ(3/2) Γ(L/2 + 2)) (L = 1: 8/(3π))."""
    L = depth
    return sigma_w2 ** (L / 2) * math.exp(special.gammaln((L + 3) / 2) - special.gammaln(1.5)
                                          - special.gammaln(L / 2 + 2))


def bernoulli_moments(depth: int, p: float, k: int) -> np.ndarray:
    """m_j = (1/j) Σ_{i=0}^{j−1} C(j, i+1) C(Lj, i) p^{−i}: Gaussian Bernoulli-D nets at χ₁ = 1."""
    out = []
    for j in range(1, k + 1):
        out.append(sum(special.comb(j, i + 1) * special.comb(depth * j, i) * p ** (-i)
                       for i in range(j)) / j)
    return np.array(out)


def residual_linear_m1(depth: int, alpha: float, sigma_w2: float) -> float:
    """E[m₁] = (1 + α² σ_w²)^L for x_{l+1} = x_l + α W_l x_l (exact at any width)."""
    return (1.0 + alpha ** 2 * sigma_w2) ** depth


"""The law of D² and the moments of JJᵀ for a product of free factors (free probability).

docs/theory.md §2 (Pennington, Schoenholz & Ganguli 2017, 2018): with m = ψ(z) the moment
generating function Σ_k m_k z^k and S(m) = ψ⁻¹(m)(1+m)/m, the S-transforms of free factors
multiply, S_{JJᵀ} = Π_l S_{WWᵀ} S_{D²} with S_{WWᵀ} = σ_w⁻²/(1+m) (Gaussian) or σ_w⁻²
(orthogonal). The moments m_1..m_k of JJᵀ follow by Lagrange inversion; relative variances
of free factors add: nvar = m₂/m₁² − 1 = L (μ₂/μ₁² − 1 + v_W), v_W = 1 (Gaussian) or 0.

Example:
    >>> jacobian_moments(d2_law("linear", 1.0), 2, 1.0)     # Fuss–Catalan, L = 2
    array([ 1.,  3., 12.])
    >>> d2_law("relu", 1.0).zero_mass
    0.5
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from isometry.theory._activations import WEIGHTS, resolve_activation
from isometry.theory._quadrature import z_rule

__all__ = ["D2Law", "d2_law", "jacobian_moments", "check_depth_weights"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class D2Law:
    """The distribution of φ′(h)², h ~ N(0, q): point masses `weights` at `values` (numpy).

    Exact for linear (one atom at 1) and Bernoulli activations (ReLU, hard-tanh: atoms at 0
    and 1); a quadrature rule of a few hundred nodes for smooth φ.
    """

    values: np.ndarray
    weights: np.ndarray

    def moments(self, k: int) -> np.ndarray:
        """μ_j = E d^j for j = 1..k."""
        return np.array([np.sum(self.weights * self.values ** j) for j in range(1, k + 1)])

    @property
    def zero_mass(self) -> float:
        """P(d = 0): the share of units with φ′ = 0."""
        return float(np.sum(self.weights[self.values == 0]))


def d2_law(activation, q: float, *, kinks=None) -> D2Law:
    """The law of D²'s diagonal entries φ′(√q z)², z ~ N(0, 1).

    Exact atoms from the activation's closed forms (linear: one atom at 1; ReLU, hard-tanh:
    Bernoulli atoms at 0 and 1); otherwise the quadrature rule's nodes, merged where φ′² is
    equal (piecewise-linear φ give a few atoms).
    """
    act = resolve_activation(activation, kinks)
    if act.closed_forms is not None:
        values, weights = act.closed_forms.d2_atoms(q)
        return D2Law(np.asarray(values, np.float64), np.asarray(weights, np.float64))
    with jax.enable_x64(True):
        (z, w), sq = z_rule(act, jnp.float64(q))
        d = np.asarray(act.dphi(sq * z) ** 2, np.float64)
        w = np.asarray(w, np.float64)
    values, inverse = np.unique(d, return_inverse=True)
    weights = np.bincount(inverse, weights=w)
    keep = weights > 0
    return D2Law(values[keep], weights[keep] / weights[keep].sum())


def check_depth_weights(depth: int, weights: str) -> float:
    """v_W, the relative variance of WWᵀ's law (1 Gaussian, 0 orthogonal), after checking."""
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; use one of {WEIGHTS}")
    return 1.0 if weights == "gaussian" else 0.0  # relative variance of WWᵀ's law


def _series_log(a: np.ndarray) -> np.ndarray:
    """log a(z) for a power series with a₀ = 1 (coefficients, truncated to len(a))."""
    n = len(a)
    out = np.zeros(n)
    for k in range(1, n):
        out[k] = a[k] - sum(j * out[j] * a[k - j] for j in range(1, k)) / k
    return out


def _series_exp(b: np.ndarray) -> np.ndarray:
    """exp b(z) for a power series with b₀ = 0."""
    n = len(b)
    out = np.zeros(n)
    out[0] = 1.0
    for k in range(1, n):
        out[k] = sum(j * b[j] * out[k - j] for j in range(1, k + 1)) / k
    return out


def _series_pow(a: np.ndarray, power: float) -> np.ndarray:
    return _series_exp(power * _series_log(a))


def _normalized_moments(mu: np.ndarray, depth: int, v: float, k: int) -> np.ndarray:
    """m̃_1..m̃_k of JJᵀ for D² moments μ̃ (μ̃₁ = 1) and σ̃_w² = 1, by Lagrange inversion.

    With m = ψ_D(z), R = m/z and x = 1/λ, the S-transform relation reads
    x = z (1+m)^{L(1−v)−1} R^{1−L}, so [x^j] ψ_J = (1/j) [z^{j−1}] ψ_D′ (1+m)^{j(1−L(1−v))} R^{j(L−1)}.
    """
    psi = np.concatenate([[0.0], mu[:k]])        # ψ_D(z) = Σ μ̃_j z^j, degree k
    dpsi = np.arange(1, k + 1) * mu[:k]          # ψ_D′, degree k−1
    one_plus_m = psi[:k].copy()
    one_plus_m[0] = 1.0
    r = mu[:k]                                   # R = ψ_D/z, R₀ = 1
    out = np.empty(k)
    for j in range(1, k + 1):
        series = np.convolve(dpsi, _series_pow(one_plus_m, j * (1 - depth * (1 - v))))[:k]
        series = np.convolve(series, _series_pow(r, j * (depth - 1)))[:k]
        out[j - 1] = series[j - 1] / j
    return out


def jacobian_moments(law: D2Law, depth: int, sigma_w2: float, weights: str = "gaussian",
                     k: int = 3) -> np.ndarray:
    """m_1..m_k of JJᵀ for L layers with diagonal law `law` (free probability, N → ∞).

    m₁ = χ₁^L and nvar = L (μ₂/μ₁² − 1 + v_W), v_W = 1 (Gaussian) or 0 (orthogonal).
    """
    v = check_depth_weights(depth, weights)
    mu = law.moments(k)
    if mu[0] <= 0:
        return np.zeros(k)
    chi = sigma_w2 * mu[0]
    tilde = _normalized_moments(mu / mu[0] ** np.arange(1, k + 1), depth, v, k)
    return tilde * chi ** (depth * np.arange(1, k + 1))



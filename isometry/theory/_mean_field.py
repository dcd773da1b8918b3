"""Mean field of a plain net: the q-map, its fixed point q*, χ₁, the c-map and depth scales.

docs/theory.md §1 (Poole et al. 2016; Schoenholz et al. 2017), with ∫Dz the standard Gaussian
measure:

    q-map     q′ = σ_w² ∫Dz φ(√q z)² + σ_b²,  fixed point q*,
    μ_k       = ∫Dz φ′(√q* z)^{2k},   χ₁ = σ_w² μ₁,   E[m₁] = χ₁^L,
    c-map     c′ = [σ_w² ∫Dz₁Dz₂ φ(u₁)φ(u₂) + σ_b²] / q*,
              u₁ = √q* z₁,  u₂ = √q* (c z₁ + √(1−c²) z₂),
    depth scales  ξ_c = −1/ln χ_c,  χ_c = ∂c′/∂c at the stable c* (= χ₁ when c* = 1),
                  ξ_q = −1/ln ∂q′/∂q|_{q*} = −1/ln(σ_w² ∫Dz [φ′² + φφ″]).

Each quantity uses the activation's closed forms where it has them (`Activation.closed_forms`),
quadrature otherwise.

Example:
    >>> round(q_star("tanh", 1.5, 0.0), 6), round(chi_1("tanh", 1.5, 0.0), 6)
    (0.286894, 1.040568)
    >>> round(critical_sigma_w2("tanh", 0.05), 6)
    1.760955
    >>> round(mean_field("tanh", 1.0, 0.05).chi_1, 6)
    0.759032
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from scipy import optimize

from isometry.theory._activations import Q_FLOOR, Activation, resolve_activation
from isometry.theory._quadrature import quadrature_fns, scalar

__all__ = ["q_map", "q_star", "phi_prime_moments", "chi_1", "c_map", "c_star", "depth_scales",
           "critical_sigma_w2", "MeanField", "mean_field", "check_variances"]


def check_variances(sigma_w2: float, sigma_b2: float) -> None:
    """Raises ValueError unless σ_w² > 0 and σ_b² ≥ 0 are finite."""
    if not (math.isfinite(sigma_w2) and sigma_w2 > 0):
        raise ValueError(f"sigma_w2 must be positive and finite, got {sigma_w2}")
    if not (math.isfinite(sigma_b2) and sigma_b2 >= 0):
        raise ValueError(f"sigma_b2 must be non-negative and finite, got {sigma_b2}")


def _second_moment(act: Activation, q: float) -> float:
    """E φ(√q z)²."""
    if act.closed_forms is not None:
        return float(act.closed_forms.second_moment(q))
    return scalar(quadrature_fns(act)["second_moment"], q)


def _second_moment_slope(act: Activation, q: float) -> float:
    """∂/∂q E φ(√q z)² = ∫Dz [φ′² + φφ″](√q z)."""
    if act.closed_forms is not None:
        return float(act.closed_forms.second_moment_slope(q))
    return scalar(quadrature_fns(act)["second_moment_slope"], q)


def q_map(activation, q: float, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None) -> float:
    """One step of the length map, q′ = σ_w² ∫Dz φ(√q z)² + σ_b² (closed form where known).

    Example:
      >>> q_map("relu", 3.0, 2.0, 0.1)
      3.1
    """
    return sigma_w2 * _second_moment(resolve_activation(activation, kinks), q) + sigma_b2


def _no_fixed_point(act, sigma_w2, sigma_b2):
    return ValueError(
        f"the q-map of {act.name} at sigma_w2={sigma_w2}, sigma_b2={sigma_b2} has no finite fixed "
        f"point: pre-activations grow without bound with depth; lower sigma_w2 (for linear and "
        f"relu below 1 and 2, or exactly there with sigma_b2=0)")


def _homogeneous_q_star(act, sigma_w2, sigma_b2, q0) -> float:
    """q* = σ_b²/(1 − σ_w² g) for a q-map linear in q, q′ = σ_w² g q + σ_b²."""
    slope = sigma_w2 * act.closed_forms.second_moment_slope(q0)
    if slope == 1 and sigma_b2 == 0:
        return float(q0)
    if slope >= 1:
        raise _no_fixed_point(act, sigma_w2, sigma_b2)
    return sigma_b2 / (1 - slope)


def _root(g, lo, hi) -> float:
    return optimize.brentq(g, lo, hi, xtol=1e-300, rtol=1e-15)


def q_star(activation, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None,
           q0: float = 1.0) -> float:
    """The fixed point q* of the q-map that a net reaches from input length q⁰ = `q0`.

    Where every q is a fixed point (linear at σ_w² = 1 and ReLU at σ_w² = 2, both with σ_b² = 0)
    the answer is q0. For odd φ with σ_b² = 0 in the ordered phase, q* = 0.

    Raises:
      ValueError: when q grows without bound (no finite fixed point).
    """
    check_variances(sigma_w2, sigma_b2)
    act = resolve_activation(activation, kinks)
    if act.closed_forms is not None and act.closed_forms.homogeneous:
        return _homogeneous_q_star(act, sigma_w2, sigma_b2, q0)

    def g(q):
        return q_map(act, q, sigma_w2, sigma_b2) - q

    g0 = g(q0)
    if abs(g0) <= 1e-14 * q0:
        return float(q0)
    if g0 > 0:  # q grows: the first root above q0
        lo, hi = q0, 4.0 * q0
        while g(hi) > 0:
            lo, hi = hi, 4.0 * hi
            if hi > 1e15:
                raise _no_fixed_point(act, sigma_w2, sigma_b2)
        return _root(g, lo, hi)
    # q shrinks: the largest root below q0
    if sigma_w2 * scalar(act.fn, 0.0) ** 2 + sigma_b2 > 0:  # q′(0) > 0, exactly
        return _root(g, 0.0, q0)
    hi, lo = q0, q0 / 8
    while g(lo) < 0:
        hi, lo = lo, lo / 8
        if lo < 1e-24:  # (q-maps below Q_FLOOR are not resolved)
            return 0.0
    return _root(g, lo, hi)


def phi_prime_moments(activation, q: float, k: int = 2, *, kinks=None) -> np.ndarray:
    """μ_j = ∫Dz φ′(√q z)^{2j} for j = 1..k (the moments of D²'s diagonal).

    Example:
      >>> phi_prime_moments("relu", 1.0, 3)
      array([0.5, 0.5, 0.5])
    """
    act = resolve_activation(activation, kinks)
    if act.closed_forms is not None:
        values, weights = act.closed_forms.d2_atoms(max(q, Q_FLOOR))
        return np.array([float(np.sum(weights * values ** j)) for j in range(1, k + 1)])
    fn = quadrature_fns(act)["mu"]
    with jax.enable_x64(True):
        return np.array([float(fn(np.float64(q), j)) for j in range(1, k + 1)])


def chi_1(activation, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None,
          q0: float = 1.0) -> float:
    """χ₁ = σ_w² ∫Dz φ′(√q* z)²: the mean squared singular value gained per layer.

    For homogeneous φ (`ClosedForms.homogeneous`: linear, ReLU) the law of φ′ does not depend
    on q, so χ₁ = σ_w² μ₁ holds also where q grows without bound (no finite q*).

    Example:
      >>> chi_1("relu", 2.0), chi_1("relu", 3.0)
      (1.0, 1.5)
    """
    act = resolve_activation(activation, kinks)
    if act.closed_forms is not None and act.closed_forms.homogeneous:
        check_variances(sigma_w2, sigma_b2)
        return sigma_w2 * float(phi_prime_moments(act, q0, 1)[0])
    q = q_star(act, sigma_w2, sigma_b2, q0=q0)
    return sigma_w2 * float(phi_prime_moments(act, q, 1)[0])


def _pair(act: Activation, c: float, q: float, slope: bool) -> float:
    """∫Dz₁Dz₂ φ(u₁)φ(u₂) (or φ′(u₁)φ′(u₂) when `slope`), closed form where known."""
    forms = act.closed_forms
    closed = None if forms is None else (forms.pair_slope if slope else forms.pair_moment)
    if closed is not None:
        return float(closed(c, q))
    return scalar(quadrature_fns(act)["pair_slope" if slope else "pair"], c, q)


def c_map(activation, c: float, sigma_w2: float, sigma_b2: float = 0.0, *, q: float | None = None,
          kinks=None) -> float:
    """c′ = [σ_w² ∫Dz₁Dz₂ φ(u₁)φ(u₂) + σ_b²]/q: the correlation map at length q (default q*).

    ReLU and linear use closed forms, e.g. ReLU c′ = [σ_w² q (√(1−c²) + (π − arccos c) c)/(2π)
    + σ_b²]/q; the rest a nested quadrature split where u₁ or u₂ crosses a kink.
    """
    act = resolve_activation(activation, kinks)
    if q is None:
        q = q_star(act, sigma_w2, sigma_b2)
    if not -1.0 <= c <= 1.0:
        raise ValueError(f"a correlation c must lie in [-1, 1], got {c}")
    if q <= 0:
        raise ValueError(f"the c-map needs q > 0 (q*={q}: all pre-activations vanish; "
                         f"use sigma_b2 > 0 or a larger sigma_w2)")
    return (sigma_w2 * _pair(act, c, q, slope=False) + sigma_b2) / q


def c_star(activation, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None,
           q0: float = 1.0) -> float:
    """The stable fixed point c* of the c-map: 1 in the ordered phase (χ₁ ≤ 1), < 1 if chaotic."""
    act = resolve_activation(activation, kinks)
    q = q_star(act, sigma_w2, sigma_b2, q0=q0)
    if q <= 0 or sigma_w2 * phi_prime_moments(act, q, 1)[0] <= 1.0:
        return 1.0
    h = lambda c: c_map(act, c, sigma_w2, sigma_b2, q=q) - c  # noqa: E731
    top = 1.0 - 1e-4  # the nested quadrature resolves c′ − c to ~1e-8 only: stay off c = 1
    if h(0.0) <= 0:
        return 0.0
    if h(top) >= 0:  # barely chaotic: c* within 1e-4 of 1
        return 1.0
    return optimize.brentq(h, 0.0, top, xtol=1e-14)


def _depth_scale(slope: float) -> float:
    return -1.0 / math.log(slope) if 0 < slope < 1 else math.inf


def depth_scales(activation, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None,
                 q0: float = 1.0) -> tuple[float, float]:
    """(ξ_c, ξ_q): depths over which correlations and lengths approach their fixed points.

    ξ_c = −1/ln χ_c at the stable c* (χ_c = χ₁ in the ordered phase); ξ_q = −1/ln ∂q′/∂q at q*.
    Both are inf where the slope is ≥ 1 (at criticality ξ_c diverges).
    """
    act = resolve_activation(activation, kinks)
    q = q_star(act, sigma_w2, sigma_b2, q0=q0)
    c = c_star(act, sigma_w2, sigma_b2, q0=q0)
    if c == 1.0:
        chi_c = sigma_w2 * float(phi_prime_moments(act, q, 1)[0])
    else:
        chi_c = sigma_w2 * _pair(act, c, q, slope=True)
    return _depth_scale(chi_c), _depth_scale(sigma_w2 * _second_moment_slope(act, q))


def critical_sigma_w2(activation, sigma_b2: float = 0.0, *, kinks=None) -> float:
    """σ_w² on the critical line χ₁(σ_w², σ_b²) = 1 (order-to-chaos edge) at bias variance σ_b².

    Homogeneous φ (linear, ReLU) are critical only at σ_b² = 0 (σ_w² = 1 and 2): with σ_b² > 0
    their q has no finite fixed point where χ₁ = 1, and a ValueError says so.
    """
    act = resolve_activation(activation, kinks)
    check_variances(1.0, sigma_b2)
    if act.closed_forms is not None and act.closed_forms.homogeneous:
        critical = 1.0 / float(phi_prime_moments(act, 1.0, 1)[0])
        if sigma_b2 > 0:
            raise ValueError(f"{act.name} has no critical point at sigma_b2={sigma_b2} > 0: χ₁ = 1 "
                             f"needs sigma_w2 = {critical:g}, where q diverges unless sigma_b2 = 0")
        return critical
    f = lambda t: math.log(chi_1(act, math.exp(t), sigma_b2))  # noqa: E731
    lo, hi = -1.0, 1.0
    while f(lo) > 0:
        lo -= 2.0
    while f(hi) < 0:
        hi += 2.0
        if hi > 30:
            raise ValueError(f"no critical sigma_w2 found for {act.name} at sigma_b2={sigma_b2}")
    return math.exp(optimize.brentq(f, lo, hi, xtol=1e-15))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MeanField:
    """Mean-field description of a plain net at (σ_w², σ_b²).

    Attributes:
      q_star: fixed point of the q-map.
      chi_1: σ_w² μ₁, the per-layer gain of m₁ (E[m₁] = χ₁^L).
      mu_1, mu_2: ∫Dz φ′(√q* z)² and ∫Dz φ′(√q* z)⁴.
      c_star: stable fixed point of the c-map (1 in the ordered phase).
      xi_c, xi_q: depth scales (inf where they diverge).
    """

    q_star: float
    chi_1: float
    mu_1: float
    mu_2: float
    c_star: float
    xi_c: float
    xi_q: float


def mean_field(activation, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None,
               q0: float = 1.0) -> MeanField:
    """Every mean-field quantity of a plain net at once (see `MeanField`)."""
    act = resolve_activation(activation, kinks)
    q = q_star(act, sigma_w2, sigma_b2, q0=q0)
    mu = phi_prime_moments(act, q, 2)
    xi_c, xi_q = depth_scales(act, sigma_w2, sigma_b2, q0=q0)
    return MeanField(q, sigma_w2 * float(mu[0]), float(mu[0]), float(mu[1]),
                     c_star(act, sigma_w2, sigma_b2, q0=q0), xi_c, xi_q)

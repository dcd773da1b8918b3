"""Theory to compare measured spectra against: mean field and free probability.

Conventions (THEORY.md §0). A plain net of width N and depth L:

    h^l = W^l x^{l−1} + b^l,   x^l = φ(h^l),   l = 1..L,
    J = ∂x^L/∂x^0 = D^L W^L ⋯ D^1 W^1,   D^l = diag φ′(h^l),

with Gaussian weights W_ij ~ N(0, σ_w²/N) or orthogonal W = σ_w·O (O Haar), biases
b_i ~ N(0, σ_b²). λ_i = σ_i² are the eigenvalues of JJᵀ, m_k = (1/N) Σ_i λ_i^k,
nvar = m₂/m₁² − 1; E[σ] is the mean *unsquared* singular value. "log" is the natural log;
densities are given per unit of log10 σ, the axis of our histograms.

Mean field (Poole et al. 2016; Schoenholz et al. 2017), with ∫Dz the standard Gaussian
measure:

    q-map     q′ = σ_w² ∫Dz φ(√q z)² + σ_b²,  fixed point q*,
    μ_k       = ∫Dz φ′(√q* z)^{2k},   χ₁ = σ_w² μ₁,   E[m₁] = χ₁^L,
    c-map     c′ = [σ_w² ∫Dz₁Dz₂ φ(u₁)φ(u₂) + σ_b²] / q*,
              u₁ = √q* z₁,  u₂ = √q* (c z₁ + √(1−c²) z₂),
    depth scales  ξ_c = −1/ln χ_c,  χ_c = ∂c′/∂c at the stable c* (= χ₁ when c* = 1),
                  ξ_q = −1/ln ∂q′/∂q|_{q*} = −1/ln(σ_w² ∫Dz [φ′² + φφ″]).

Free probability (Pennington, Schoenholz & Ganguli 2017, 2018): with m = ψ(z) the moment
generating function Σ_k m_k z^k and S(m) = ψ⁻¹(m)(1+m)/m, the S-transforms of free factors
multiply, S_{JJᵀ} = Π_l S_{W W ᵀ} S_{D²} with S_{WWᵀ} = σ_w⁻²/(1+m) (Gaussian) or σ_w⁻²
(orthogonal). The density of λ follows from λ = (1+m)/(m S_J(m)) solved at λ + i0 by root
continuation from the spectral edge: ρ(λ) = −Im m/(πλ), i.e. −(2 ln 10/π) Im m per unit of
log10 σ. Moments come from the same relation by Lagrange inversion.

Closed forms: linear q* = σ_b²/(1−σ_w²), χ₁ = σ_w²; ReLU q* = σ_b²/(1−σ_w²/2), χ₁ = σ_w²/2;
hard-tanh χ₁ = σ_w² erf(1/√(2q*)); deep linear Gaussian nets follow the Fuss–Catalan law;
ReLU and hard-tanh have Bernoulli D² (values 0 and 1).

Quadrature: Gaussian integrals use composite Gauss–Legendre on z ∈ [−10, 10], split at the
activation's kinks (points where φ′ jumps). Gauss–Hermite with an odd node count would put a
node on ReLU's kink; here nodes never sit on a declared kink. Give `kinks=` for your own
piecewise activations; smooth ones need none.

Example:
    >>> from isometry import theory
    >>> theory.q_star("tanh", 1.5, 0.0)          # 0.286894…
    >>> theory.critical_sigma_w2("tanh", 0.05)   # 1.760955…
    >>> pred = theory.predict_spectrum("relu", depth=16, sigma_w2=2.0, weights="orthogonal")
    >>> pred.nvar                                # 16.0 (= L for orthogonal ReLU at χ₁ = 1)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate, optimize, special

__all__ = [
    "ACTIVATIONS", "WEIGHTS", "Activation", "resolve_activation",
    "gaussian_expectation", "q_map", "q_star", "phi_prime_moments", "chi_1", "c_map",
    "c_star", "depth_scales", "critical_sigma_w2", "MeanField", "mean_field",
    "D2Law", "d2_law", "jacobian_moments", "SpectralDensity", "jacobian_density",
    "SpectralPrediction", "predict_spectrum",
    "fuss_catalan_moments", "fuss_catalan_density", "fuss_catalan_edge",
    "fuss_catalan_mean_sigma", "bernoulli_moments", "residual_linear_m1",
    "spectrum_moments", "mean_and_sem",
]

# --- activations -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Activation:
    """A pointwise nonlinearity φ with the points where φ′ jumps (its kinks).

    Attributes:
      name: "linear", "relu", "hardtanh", "tanh", "gelu" (closed forms where they exist), or
        the name of a user function (quadrature only).
      phi: the JAX function h ↦ φ(h), elementwise.
      kinks: pre-activations h where φ′ is discontinuous; quadrature splits there.
    """

    name: str
    phi: Callable
    kinks: tuple[float, ...] = ()

    def dphi(self, h):
        """φ′(h), elementwise, by autodiff."""
        return jnp.vectorize(jax.grad(self.phi))(h)


def _linear(h):
    return h


def _hardtanh(h):
    return jnp.clip(h, -1.0, 1.0)


#: Activations known by name (the same functions as `models.ACTIVATIONS`), with their kinks.
ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation("linear", _linear),
    "relu": Activation("relu", jax.nn.relu, (0.0,)),
    "hardtanh": Activation("hardtanh", _hardtanh, (-1.0, 1.0)),
    "tanh": Activation("tanh", jnp.tanh),
    "gelu": Activation("gelu", jax.nn.gelu),
}
#: Weight laws: Gaussian W_ij ~ N(0, σ_w²/N) or orthogonal W = σ_w·O.
WEIGHTS = ("gaussian", "orthogonal")


def resolve_activation(activation: str | Callable | Activation,
                       kinks: tuple[float, ...] | None = None) -> Activation:
    """An `Activation` from a name, an `Activation`, or a JAX function plus its kinks.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(activation, Activation):
        return activation if kinks is None else dataclasses.replace(activation, kinks=tuple(kinks))
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)} "
                             f"or pass a JAX function (with kinks=(...) if φ′ jumps)")
        act = ACTIVATIONS[activation]
        return act if kinks is None else dataclasses.replace(act, kinks=tuple(kinks))
    if callable(activation):
        return Activation(getattr(activation, "__name__", "custom"), activation,
                          tuple(sorted(float(k) for k in (kinks or ()))))
    raise TypeError(f"activation must be a name, an Activation or a function, got {activation!r}")


# --- Gaussian quadrature ---------------------------------------------------------------------

_Z_MAX = 10.0  # ∫_{|z|>10} Dz ≈ 1.5e-23
_PANELS = 32
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(20)
_Q_FLOOR = 1e-30  # q = 0 is evaluated as this limit (φ′ of a vanishing pre-activation)


def _rule(breaks):
    """Nodes z and weights w with Σ w g(z) ≈ ∫Dz g(z), for g smooth between `breaks`.

    breaks: (..., S+1) increasing points in [−Z, Z]; each of the S segments gets `_PANELS`
    Gauss–Legendre panels. Returns z, w of shape (..., S·panels·20).
    """
    a, b = breaks[..., :-1, None, None], breaks[..., 1:, None, None]
    t = (np.arange(_PANELS)[:, None] + (_GL_NODES[None, :] + 1) / 2) / _PANELS
    t = jnp.asarray(t.reshape((1,) * (breaks.ndim - 1) + (1, *t.shape)))
    gl = jnp.asarray(_GL_WEIGHTS.reshape((1,) * (t.ndim - 1) + (-1,)))
    z = a + (b - a) * t
    w = (b - a) / _PANELS * gl / 2 * jnp.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    shape = (*breaks.shape[:-1], -1)
    return z.reshape(shape), w.reshape(shape)


def _breaks(kinks_z):
    """[−Z, kinks (clipped, sorted), Z] along the last axis."""
    k = jnp.clip(jnp.sort(kinks_z, axis=-1), -_Z_MAX, _Z_MAX)
    lo = jnp.full((*k.shape[:-1], 1), -_Z_MAX)
    return jnp.concatenate([lo, k, -lo], axis=-1)


def _z_rule(act: Activation, q):
    """∫Dz rule for integrands g(φ(√q z), φ′(√q z)): split at z = kink/√q."""
    sq = jnp.sqrt(jnp.maximum(q, _Q_FLOOR))
    return _rule(_breaks(jnp.asarray(act.kinks, dtype=jnp.float64) / sq)), sq


def gaussian_expectation(f: Callable, q: float, kinks: tuple[float, ...] = ()) -> float:
    """E f(h) for h ~ N(0, q), by composite Gauss–Legendre split at `kinks` (in h units).

    Accurate to ~1e-12 for f smooth between the kinks and of at most polynomial growth.

    Example:
      >>> gaussian_expectation(lambda h: jnp.maximum(h, 0) ** 2, 2.0, kinks=(0.0,))   # 1.0
    """
    with jax.enable_x64(True):
        act = Activation("f", f, tuple(kinks))
        return float(_expect_fn(act)(jnp.float64(q)))


@functools.lru_cache(maxsize=None)
def _expect_fn(act: Activation):
    @jax.jit
    def expect(q):
        (z, w), sq = _z_rule(act, q)
        return jnp.sum(w * act.phi(sq * z))
    return expect


@functools.lru_cache(maxsize=None)
def _quadrature_fns(act: Activation):
    """Jitted quadrature pieces of the mean field of `act` (compiled once per activation)."""

    def qmap(q, sw2, sb2):
        (z, w), sq = _z_rule(act, q)
        return sw2 * jnp.sum(w * act.phi(sq * z) ** 2) + sb2

    def mu(q, k):
        (z, w), sq = _z_rule(act, q)
        return jnp.sum(w * act.dphi(sq * z) ** (2 * k))

    def pair(c, q, f):
        """∫Dz₁Dz₂ f(u₁) f(u₂): inner z₂ rule split where u₂ crosses a kink, per z₁ node."""
        (z1, w1), sq = _z_rule(act, q)
        s = jnp.sqrt(jnp.maximum(1.0 - c * c, 1e-300))
        kz = jnp.asarray(act.kinks, dtype=jnp.float64) / sq
        inner_breaks = _breaks((kz[None, :] - c * z1[:, None]) / s)
        z2, w2 = _rule(inner_breaks)
        u2 = sq * (c * z1[:, None] + s * z2)
        inner = jnp.sum(w2 * f(u2), axis=-1)
        return jnp.sum(w1 * f(sq * z1) * inner)

    def cmap(c, q, sw2, sb2):
        return (sw2 * pair(c, q, act.phi) + sb2) / q

    def chi_c(c, q, sw2):
        return sw2 * pair(c, q, act.dphi)

    return dict(qmap=jax.jit(qmap), dqmap=jax.jit(jax.grad(qmap)), mu=jax.jit(mu, static_argnums=1),
                cmap=jax.jit(cmap), chi_c=jax.jit(chi_c))


def _hardtanh_qmap(q, sw2, sb2):
    """σ_w² E clip(√q z)² + σ_b² = σ_w² [q erf(a/√2) − 2√q N(a) + erfc(a/√2)] + σ_b², a = 1/√q."""
    q = jnp.maximum(q, _Q_FLOOR)
    a = 1.0 / jnp.sqrt(q)
    pdf = jnp.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    e = jax.scipy.special.erf(a / math.sqrt(2))
    return sw2 * (q * e - 2 * jnp.sqrt(q) * pdf + (1 - e)) + sb2


_HARDTANH_DQMAP = jax.jit(jax.grad(_hardtanh_qmap))


# --- mean field ------------------------------------------------------------------------------


def _check_variances(sigma_w2: float, sigma_b2: float) -> None:
    if not (math.isfinite(sigma_w2) and sigma_w2 > 0):
        raise ValueError(f"sigma_w2 must be positive and finite, got {sigma_w2}")
    if not (math.isfinite(sigma_b2) and sigma_b2 >= 0):
        raise ValueError(f"sigma_b2 must be non-negative and finite, got {sigma_b2}")


def q_map(activation, q: float, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None) -> float:
    """One step of the length map, q′ = σ_w² ∫Dz φ(√q z)² + σ_b² (closed form where known)."""
    act = resolve_activation(activation, kinks)
    match act.name:
        case "linear":
            return sigma_w2 * q + sigma_b2
        case "relu":
            return sigma_w2 * q / 2 + sigma_b2
    with jax.enable_x64(True):
        if act.name == "hardtanh" and act.kinks == (-1.0, 1.0):
            return float(_hardtanh_qmap(jnp.float64(q), sigma_w2, sigma_b2))
        return float(_quadrature_fns(act)["qmap"](jnp.float64(q), sigma_w2, sigma_b2))


def _q_map_slope(act: Activation, q: float, sigma_w2: float, sigma_b2: float) -> float:
    """∂q′/∂q = σ_w² ∫Dz [φ′² + φφ″](√q z)."""
    match act.name:
        case "linear":
            return sigma_w2
        case "relu":
            return sigma_w2 / 2
    with jax.enable_x64(True):
        if act.name == "hardtanh" and act.kinks == (-1.0, 1.0):
            return float(_HARDTANH_DQMAP(jnp.float64(q), sigma_w2, sigma_b2))
        return float(_quadrature_fns(act)["dqmap"](jnp.float64(q), sigma_w2, sigma_b2))


def _no_fixed_point(act, sigma_w2, sigma_b2):
    return ValueError(
        f"the q-map of {act.name} at sigma_w2={sigma_w2}, sigma_b2={sigma_b2} has no finite fixed "
        f"point: pre-activations grow without bound with depth; lower sigma_w2 (for linear and "
        f"relu below 1 and 2, or exactly there with sigma_b2=0)")


def q_star(activation, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None,
           q0: float = 1.0) -> float:
    """The fixed point q* of the q-map that a net reaches from input length q⁰ = `q0`.

    Where every q is a fixed point (linear at σ_w² = 1 and ReLU at σ_w² = 2, both with σ_b² = 0)
    the answer is q0. For odd φ with σ_b² = 0 in the ordered phase, q* = 0.

    Raises:
      ValueError: when q grows without bound (no finite fixed point).
    """
    _check_variances(sigma_w2, sigma_b2)
    act = resolve_activation(activation, kinks)
    if act.name in ("linear", "relu"):
        slope = sigma_w2 if act.name == "linear" else sigma_w2 / 2
        if slope == 1 and sigma_b2 == 0:
            return float(q0)
        if slope >= 1:
            raise _no_fixed_point(act, sigma_w2, sigma_b2)
        return sigma_b2 / (1 - slope)

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
        return optimize.brentq(g, lo, hi, xtol=1e-300, rtol=1e-15)
    # q shrinks: the largest root below q0
    with jax.enable_x64(True):
        at_zero = sigma_w2 * float(act.phi(jnp.float64(0.0))) ** 2 + sigma_b2  # q′(0), exactly
    if at_zero > 0:
        return optimize.brentq(g, 0.0, q0, xtol=1e-300, rtol=1e-15)
    hi, lo = q0, q0 / 8
    while g(lo) < 0:
        hi, lo = lo, lo / 8
        if lo < 1e-24:  # (q-maps below _Q_FLOOR are not resolved)
            return 0.0
    return optimize.brentq(g, lo, hi, xtol=1e-300, rtol=1e-15)


def phi_prime_moments(activation, q: float, k: int = 2, *, kinks=None) -> np.ndarray:
    """μ_j = ∫Dz φ′(√q z)^{2j} for j = 1..k (the moments of D²'s diagonal)."""
    act = resolve_activation(activation, kinks)
    if act.name == "linear":
        return np.ones(k)
    if act.name == "relu":
        return np.full(k, 0.5)
    if act.name == "hardtanh" and act.kinks == (-1.0, 1.0):
        return np.full(k, math.erf(1 / math.sqrt(2 * max(q, _Q_FLOOR))))
    with jax.enable_x64(True):
        fn = _quadrature_fns(act)["mu"]
        return np.array([float(fn(jnp.float64(q), j)) for j in range(1, k + 1)])


def chi_1(activation, sigma_w2: float, sigma_b2: float = 0.0, *, kinks=None,
          q0: float = 1.0) -> float:
    """χ₁ = σ_w² ∫Dz φ′(√q* z)²: the mean squared singular value gained per layer."""
    q = q_star(activation, sigma_w2, sigma_b2, kinks=kinks, q0=q0)
    return sigma_w2 * float(phi_prime_moments(activation, q, 1, kinks=kinks)[0])


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
    match act.name:
        case "linear":
            return (sigma_w2 * q * c + sigma_b2) / q
        case "relu":
            return (sigma_w2 * q * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c)
                    / (2 * math.pi) + sigma_b2) / q
    with jax.enable_x64(True):
        return float(_quadrature_fns(act)["cmap"](jnp.float64(c), jnp.float64(q), sigma_w2, sigma_b2))


def _chi_c(act: Activation, c: float, q: float, sigma_w2: float) -> float:
    """χ_c = ∂c′/∂c = σ_w² ∫Dz₁Dz₂ φ′(u₁)φ′(u₂)."""
    match act.name:
        case "linear":
            return sigma_w2
        case "relu":
            return sigma_w2 * (math.pi - math.acos(c)) / (2 * math.pi)
    with jax.enable_x64(True):
        return float(_quadrature_fns(act)["chi_c"](jnp.float64(c), jnp.float64(q), sigma_w2))


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
        chi_c = _chi_c(act, c, q, sigma_w2)
    return _depth_scale(chi_c), _depth_scale(_q_map_slope(act, q, sigma_w2, sigma_b2))


def critical_sigma_w2(activation, sigma_b2: float = 0.0, *, kinks=None) -> float:
    """σ_w² on the critical line χ₁(σ_w², σ_b²) = 1 (order-to-chaos edge) at bias variance σ_b².

    Linear and ReLU are critical only at σ_b² = 0 (σ_w² = 1 and 2): with σ_b² > 0 their q has no
    finite fixed point where χ₁ = 1, and a ValueError says so.
    """
    act = resolve_activation(activation, kinks)
    _check_variances(1.0, sigma_b2)
    if act.name in ("linear", "relu"):
        if sigma_b2 > 0:
            raise ValueError(f"{act.name} has no critical point at sigma_b2={sigma_b2} > 0: χ₁ = 1 "
                             f"needs sigma_w2 = {1 if act.name == 'linear' else 2}, where q diverges "
                             f"unless sigma_b2 = 0")
        return 1.0 if act.name == "linear" else 2.0
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
    """Every mean-field quantity of a plain net at once (see `MeanField`).

    Example:
      >>> mean_field("tanh", 1.0, 0.05).chi_1     # 0.759032…
    """
    act = resolve_activation(activation, kinks)
    q = q_star(act, sigma_w2, sigma_b2, q0=q0)
    mu = phi_prime_moments(act, q, 2)
    xi_c, xi_q = depth_scales(act, sigma_w2, sigma_b2, q0=q0)
    return MeanField(q, sigma_w2 * float(mu[0]), float(mu[0]), float(mu[1]),
                     c_star(act, sigma_w2, sigma_b2, q0=q0), xi_c, xi_q)


# --- the law of D² ---------------------------------------------------------------------------


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
    """The law of D²'s diagonal entries φ′(√q z)², z ~ N(0, 1)."""
    act = resolve_activation(activation, kinks)
    if act.name == "linear":
        return D2Law(np.ones(1), np.ones(1))
    if act.name in ("relu", "hardtanh") and act.kinks == ACTIVATIONS[act.name].kinks:
        p = 0.5 if act.name == "relu" else math.erf(1 / math.sqrt(2 * max(q, _Q_FLOOR)))
        return D2Law(np.array([0.0, 1.0]), np.array([1 - p, p]))
    with jax.enable_x64(True):
        (z, w), sq = _z_rule(act, jnp.float64(q))
        d = np.asarray(act.dphi(sq * z) ** 2, np.float64)
        w = np.asarray(w, np.float64)
    values, inverse = np.unique(d, return_inverse=True)  # piecewise-linear φ: a few atoms
    weights = np.bincount(inverse, weights=w)
    keep = weights > 0
    return D2Law(values[keep], weights[keep] / weights[keep].sum())


def _check_depth_weights(depth: int, weights: str) -> float:
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; use one of {WEIGHTS}")
    return 1.0 if weights == "gaussian" else 0.0  # relative variance of WWᵀ's law


# --- power series (moments by Lagrange inversion) --------------------------------------------


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

    Example:
      >>> jacobian_moments(d2_law("linear", 1.0), 2, 1.0)    # Fuss–Catalan: [1, 3, 12]
    """
    v = _check_depth_weights(depth, weights)
    mu = law.moments(k)
    if mu[0] <= 0:
        return np.zeros(k)
    chi = sigma_w2 * mu[0]
    tilde = _normalized_moments(mu / mu[0] ** np.arange(1, k + 1), depth, v, k)
    return tilde * chi ** (depth * np.arange(1, k + 1))


# --- spectral density by root continuation ---------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpectralDensity:
    """Predicted law of the singular values σ of J (large N).

    Attributes:
      log10_sigma: ascending grid of log10 σ (numpy).
      density: the continuous part, per unit of log10 σ, on that grid.
      edge: the spectral edge, the top of the support of λ = σ² (so σ_max = √edge).
      zero_mass: mass of the atom at σ = 0 (share of φ′ = 0 units, e.g. 1/2 for ReLU).
      point_sigma, point_mass: other atoms (orthogonal nets whose spectrum is discrete, e.g.
        linear: σ = σ_w^L with mass 1); empty otherwise.
      mass: mass of the continuous part captured on the grid (≤ 1 − zero_mass − Σ point_mass).
      mean_sigma: E[σ] (zeros count as σ = 0).
    """

    log10_sigma: np.ndarray
    density: np.ndarray
    edge: float
    zero_mass: float
    point_sigma: np.ndarray
    point_mass: np.ndarray
    mass: float
    mean_sigma: float

    def density_lambda(self) -> tuple[np.ndarray, np.ndarray]:
        """(λ, ρ(λ)): the density of λ = σ² on the grid (ρ_λ = ρ_{log10 σ} / (2 ln 10 λ))."""
        lam = 10.0 ** (2 * self.log10_sigma)
        return lam, self.density / (2 * math.log(10) * lam)


class _Law:
    """ψ(z) = Σ w z d/(1 − z d) and its derivative for the normalized law d̃ = d/μ₁.

    1 + ψ = Σ w/(1 − z d) (zeros included) is summed directly: it stays accurate where
    m → −1 (λ → 0), where 1 + m computed from m would cancel.
    """

    def __init__(self, law: D2Law):
        mu1 = float(np.sum(law.weights * law.values))
        keep = law.values > 0
        self.d = law.values[keep] / mu1
        self.w = law.weights[keep]
        self.zero = float(np.sum(law.weights[~keep]))

    def psi(self, z):
        """(m, 1 + m, dm/dz) at z."""
        t = 1.0 / (1.0 - z * self.d)
        wt = self.w * t
        return np.sum(wt * z * self.d), self.zero + np.sum(wt), np.sum(wt * self.d * t)


@np.errstate(all="ignore")  # poles and the real axis beyond them are visited on purpose
def _log_lambda_terms(law: _Law, z, depth: int, v: float):
    """E₀(z) = log m − log(1+m) + L (log z − log m + (1−v) log(1+m)) and E₀′; λ̃(z) = e^{−E₀}."""
    m, opm, dm = law.psi(z)
    e = np.log(m) - np.log(opm) + depth * (np.log(z) - np.log(m) + (1 - v) * np.log(opm))
    de = dm / m - dm / opm + depth * (1 / z - dm / m + (1 - v) * dm / opm)
    return e, de, m


def _edge(law: _Law, depth: int, v: float):
    """The top of the continuous spectrum as (kind, z*, log λ̃₊), or None if there is none.

    Follows the real branch z ↦ λ̃(z) from z = 0⁺ (λ̃ = ∞) to its first minimum z* ("soft"
    edge, square-root density there). Before the pole 1/d̃_max for laws with a continuous part;
    for one nonzero atom the branch crosses the pole (m = ±∞, where λ̃ stays finite), and when
    the minimum sits exactly there (orthogonal Bernoulli nets with L·P(d=0) = 1, e.g. ReLU at
    L = 2) the edge is "hard" (inverse-square-root density, the arcsine law).
    """
    z_pole = 1.0 / law.d.max()
    slope = lambda z: _log_lambda_terms(law, z, depth, v)[1]  # noqa: E731
    t = np.concatenate([np.linspace(1e-6, 0.99, 400), 1 - np.logspace(-2, -13, 200)])
    if len(law.d) == 1:  # and past the pole, up to where m → −w (z → ∞)
        t = np.concatenate([t, 1 + np.logspace(-13, 6, 400)])
    values = np.array([slope(tt * z_pole) for tt in t])
    neg = np.nonzero(values < 0)[0]
    if len(neg) == 0:
        return None
    i = neg[0]
    lo, hi = (t[i - 1] if i > 0 else 0.0) * z_pole, t[i] * z_pole
    if lo < z_pole < hi:  # the sign changes across the pole: a hard edge at m = ∞
        return "hard", z_pole, _hard_edge_log(law, depth)
    zs = optimize.brentq(slope, lo, hi, xtol=1e-300, rtol=1e-15)
    if abs(zs / z_pole - 1) < 1e-6:  # rounding hid the pole between two scan points
        return "hard", z_pole, _hard_edge_log(law, depth)
    return "soft", zs, -float(_log_lambda_terms(law, complex(zs), depth, v)[0].real)


def _hard_edge_log(law: _Law, depth: int) -> float:
    """log λ̃ at m = ∞ for one nonzero atom d̃ = 1/p, orthogonal weights: λ̃₊ = p^{−L}."""
    return depth * math.log(law.d[0])


def _newton(law: _Law, z, log_lam: float, depth: int, v: float, max_iter: int = 60):
    """Solves E₀(z) + log λ̃ ≡ 0 (mod 2πi) from z; returns (z, 1 + m) or None when it fails."""
    for _ in range(max_iter):
        e, de, m = _log_lambda_terms(law, z, depth, v)
        residual = 1 - np.exp(-(e + log_lam))
        step = -residual / de
        z = z + step
        if not np.isfinite(z):
            return None
        if abs(step) <= 1e-14 * abs(z) or abs(residual) <= 1e-14:
            opm = law.psi(z)[1]  # Im m = Im (1 + m), computed without cancellation
            return (z, opm) if opm.imag <= 1e-10 * abs(opm) else None
    return None


def _continue(law: _Law, depth: int, v: float, edge, u: np.ndarray):
    """1 + m at log10 σ̃ = s₊ − u² for increasing u > 0, on the branch with Im m < 0.

    Past a lower edge of the support (density below 1e-3 of its peak where Newton stalls)
    the rest is set to density 0.
    """
    kind, zs, log_edge = edge
    ln10 = math.log(10)
    s_edge = log_edge / (2 * ln10)
    if kind == "soft":  # log λ̃ ≈ log λ̃₊ + ½ f″ (z − z*)²  ⇒  z ≈ z* − i rate·u
        h = 1e-7 * zs
        curvature = -(_log_lambda_terms(law, zs + h, depth, v)[1]
                      - _log_lambda_terms(law, zs - h, depth, v)[1]) / (2 * h)
        dz = complex(0, -math.sqrt(4 * ln10 / curvature))
    else:  # log λ̃ ≈ log λ̃₊ + c₂/m², c₂ = (L − 1 − L p²)/2, and z ≈ p (1 − p/m)
        p = law.w[0]
        c2 = (depth - 1 - depth * p * p) / 2
        dz = complex(0, -zs * p * math.sqrt(2 * ln10 / c2))
    out = np.ones(len(u), complex)
    prev_u, prev_z, prev_dz, peak = 0.0, complex(zs), dz, 0.0
    for i, target in enumerate(u):
        stack = [target]
        while stack:
            uu = stack[-1]
            guess = prev_z + prev_dz * (uu - prev_u)
            sol = _newton(law, guess, 2 * ln10 * (s_edge - uu * uu), depth, v)
            if sol is None or abs(sol[0] - guess) > 0.25 * abs(prev_z) + 1e-300:
                if len(stack) > 40:
                    if i > 0 and -out[i - 1].imag < 1e-3 * peak:
                        return out  # below a lower edge: zero density from here on
                    raise FloatingPointError(f"root continuation stalled at log10 sigma = "
                                             f"{s_edge - uu * uu:.4g}")
                stack.append((prev_u + uu) / 2)
                continue
            stack.pop()
            z_new, opm = sol
            prev_dz = (z_new - prev_z) / (uu - prev_u)
            prev_u, prev_z = uu, z_new
        out[i] = opm
        peak = max(peak, -opm.imag)
    return out


def jacobian_density(law: D2Law, depth: int, sigma_w2: float, weights: str = "gaussian", *,
                     log10_sigma: np.ndarray | None = None, decades: float = 24.0,
                     nodes: int = 4000) -> SpectralDensity:
    """Density of log10 σ for J of L layers with diagonal law `law`, from the S-transform.

    Solves λ = (1+m)/(m S_J(m)) by Newton root continuation from the spectral edge into the
    bulk on the grid log10 σ = edge − u² (uniform in u, which makes the square-root edge smooth),
    and returns ρ = −(2 ln 10/π) Im m per unit of log10 σ.

    Args:
      law: the law of φ′(h)² (`d2_law`).
      depth: L.
      sigma_w2: weight variance × width.
      weights: "gaussian" or "orthogonal".
      log10_sigma: evaluate here instead of the default grid (points above the edge get 0).
      decades: the default grid reaches this many decades of σ below the edge.
      nodes: points of the default grid.

    Returns:
      `SpectralDensity`; `mean_sigma` and `mass` integrate the default grid (Simpson in u).
    """
    v = _check_depth_weights(depth, weights)
    mu1 = float(np.sum(law.weights * law.values))
    zero = law.zero_mass
    empty = np.zeros(0)
    if mu1 <= 0:
        return SpectralDensity(empty, empty, 0.0, 1.0, empty, empty, 0.0, 0.0)
    scale = (sigma_w2 * mu1) ** depth  # λ = χ₁^L λ̃
    shift = 0.5 * math.log10(scale)
    nl = _Law(law)
    atomic = v == 0 and (depth == 1 or (len(nl.d) == 1 and nl.zero == 0))
    edge = None if atomic else _edge(nl, depth, v)
    if edge is None:  # a discrete spectrum: orthogonal nets with one layer or no spread in D²
        lam = (nl.d ** depth if depth > 1 else nl.d) * scale
        sig = np.sqrt(lam)
        grid = np.zeros(0) if log10_sigma is None else np.asarray(log10_sigma, float)
        return SpectralDensity(grid, np.zeros_like(grid), float(lam.max()), zero, sig, nl.w.copy(),
                               0.0, float(np.sum(nl.w * sig)))
    point_sigma, point_mass = empty, empty
    top = 1.0 - depth * zero
    if v == 0 and len(nl.d) == 1 and top > 0:
        # L free projections of trace p = 1 − zero meet in a subspace of dimension 1 − L(1 − p):
        # there J is σ_w^L times an isometry
        point_sigma, point_mass = np.array([math.sqrt(scale * nl.d[0] ** depth)]), np.array([top])
    s_edge = edge[2] / (2 * math.log(10))
    u_default = math.sqrt(decades) * np.arange(1, nodes + 1) / nodes
    opm = _continue(nl, depth, v, edge, u_default)
    dens = np.maximum(-2 * math.log(10) / math.pi * opm.imag, 0.0)
    u_all = np.concatenate([[0.0], u_default])
    d_all = np.concatenate([[0.0], dens]) if edge[0] == "soft" else np.concatenate([[dens[0]], dens])
    s_all = s_edge - u_all ** 2
    mass = integrate.simpson(d_all * 2 * u_all, x=u_all)
    mean_sigma = integrate.simpson(10.0 ** (s_all + shift) * d_all * 2 * u_all, x=u_all)
    mean_sigma += float(np.sum(point_sigma * point_mass))
    if log10_sigma is None:
        grid, density = s_all[::-1] + shift, d_all[::-1]
    else:
        grid = np.asarray(log10_sigma, float)
        density = np.zeros_like(grid)
        uu = np.sqrt(np.maximum(s_edge + shift - grid, 0.0))
        inside = np.nonzero(uu > 0)[0]
        order = inside[np.argsort(uu[inside])]
        if len(order):
            density[order] = np.maximum(
                -2 * math.log(10) / math.pi * _continue(nl, depth, v, edge, uu[order]).imag, 0.0)
    top_edge = max(math.exp(edge[2]) * scale, float(np.max(point_sigma ** 2, initial=0.0)))
    return SpectralDensity(grid, density, top_edge, zero, point_sigma,
                           point_mass, float(mass), float(mean_sigma))


# --- predictions for a plain net -------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpectralPrediction:
    """Predicted Jacobian spectrum of a plain net (N → ∞) at its mean-field fixed point.

    Attributes:
      depth, weights: L and "gaussian"/"orthogonal" (static).
      sigma_w2, sigma_b2: the initialization.
      q_star, chi_1: mean field (`q_star`, `chi_1`); q_star is nan for linear and ReLU nets
        whose q grows without bound (their Jacobian does not depend on q).
      moments: m_1..m_k of JJᵀ (m₁ = χ₁^L).
      nvar: m₂/m₁² − 1.
      density: the `SpectralDensity` (edge, E[σ], density of log10 σ, atoms).
    """

    sigma_w2: float
    sigma_b2: float
    q_star: float
    chi_1: float
    moments: np.ndarray
    nvar: float
    density: SpectralDensity
    depth: int = dataclasses.field(metadata=dict(static=True))
    weights: str = dataclasses.field(metadata=dict(static=True))

    @property
    def edge(self) -> float:
        """Top of the support of λ = σ²."""
        return self.density.edge

    @property
    def mean_sigma(self) -> float:
        """E[σ]."""
        return self.density.mean_sigma

    def summary(self) -> dict[str, float]:
        """q*, χ₁, m1.., nvar, edge, E[σ] and the mass at σ = 0 as plain floats (for JSON)."""
        out = dict(q_star=self.q_star, chi_1=self.chi_1)
        out.update({f"m{j + 1}": float(m) for j, m in enumerate(self.moments)})
        out.update(nvar=self.nvar, edge=self.edge, mean_sigma=self.mean_sigma,
                   zero_mass=self.density.zero_mass)
        return out


def predict_spectrum(activation, depth: int, sigma_w2: float, sigma_b2: float = 0.0,
                     weights: str = "gaussian", *, kinks=None, q0: float = 1.0, k: int = 3,
                     decades: float = 24.0, nodes: int = 4000) -> SpectralPrediction:
    """Mean field plus free probability: the Jacobian spectrum of a plain net of depth L.

    Example:
      >>> p = predict_spectrum("linear", 4, 1.0)       # Fuss–Catalan, L = 4
      >>> p.moments, p.nvar, p.edge                     # [1, 5, 35], 4, 5⁵/4⁴
    """
    act = resolve_activation(activation, kinks)
    try:
        q = q_star(act, sigma_w2, sigma_b2, q0=q0)
    except ValueError:
        if act.name not in ("linear", "relu"):
            raise
        q = math.nan  # no finite q*, but φ′'s law does not depend on q for these two
    law = d2_law(act, q)
    moments = jacobian_moments(law, depth, sigma_w2, weights, k=max(k, 2))
    dens = jacobian_density(law, depth, sigma_w2, weights, decades=decades, nodes=nodes)
    nvar = float(moments[1] / moments[0] ** 2 - 1) if moments[0] > 0 else math.nan
    return SpectralPrediction(float(sigma_w2), float(sigma_b2), float(q),
                              float(sigma_w2 * law.moments(1)[0]), moments[:k], nvar, dens,
                              int(depth), weights)


# --- closed forms ----------------------------------------------------------------------------


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


# --- measured statistics ---------------------------------------------------------------------


def spectrum_moments(singular_values: Any, k: int = 3) -> dict[str, np.ndarray]:
    """Per-spectrum statistics comparable to `SpectralPrediction.summary()`.

    Args:
      singular_values: (..., N) singular values of square Jacobians.

    Returns:
      dict of arrays of shape (...): m1..mk, nvar, edge (max λ), mean_sigma, zero_fraction
      (σ < 1e-10 σ_max: the numerically zero singular values).
    """
    s = np.asarray(singular_values, np.float64)
    lam = s ** 2
    out = {f"m{j}": np.mean(lam ** j, axis=-1) for j in range(1, max(k, 2) + 1)}
    out["nvar"] = out["m2"] / out["m1"] ** 2 - 1
    out["edge"] = lam.max(axis=-1)
    out["mean_sigma"] = s.mean(axis=-1)
    out["zero_fraction"] = np.mean(s < 1e-10 * s.max(axis=-1, keepdims=True), axis=-1)
    return {key: val for key, val in out.items() if not (key.startswith("m") and key[1:].isdigit()
                                                         and int(key[1:]) > k)}


def mean_and_sem(values: Any) -> tuple[float, float]:
    """(mean, standard error of the mean) over the first axis (n ≥ 2 samples)."""
    x = np.asarray(values, np.float64)
    if x.shape[0] < 2:
        raise ValueError("a standard error needs at least 2 samples")
    return float(x.mean(axis=0)), float(x.std(axis=0, ddof=1) / math.sqrt(x.shape[0]))

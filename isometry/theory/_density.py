"""The density of the Jacobian's singular values from the S-transform, by root continuation.

docs/theory.md §2: the density of λ = σ² follows from λ = (1+m)/(m S_J(m)) solved at λ + i0 by
Newton root continuation from the spectral edge into the bulk: ρ(λ) = −Im m/(πλ), i.e.
−(2 ln 10/π) Im m per unit of log10 σ (the axis of our histograms). The grid is
log10 σ = edge − u², uniform in u, which makes the square-root edge smooth. For deep linear
Gaussian nets this reproduces the Fuss–Catalan density to 1e-8.

Example:
    >>> from isometry.theory._d2 import d2_law
    >>> d = jacobian_density(d2_law("linear", 1.0), 1, 1.0, nodes=400)
    >>> round(d.edge, 10), round(d.mean_sigma, 6), round(8 / (3 * math.pi), 6)   # λ₊ = 4
    (4.0, 0.848826, 0.848826)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from scipy import integrate, optimize

from isometry.theory._d2 import D2Law, check_depth_weights

__all__ = ["SpectralDensity", "jacobian_density"]

_LN10 = math.log(10)


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


def _discrete(law: _Law, depth: int, scale: float, zero: float, log10_sigma) -> SpectralDensity:
    """A discrete spectrum: orthogonal nets with one layer or no spread in D²."""
    lam = (law.d ** depth if depth > 1 else law.d) * scale
    sig = np.sqrt(lam)
    grid = np.zeros(0) if log10_sigma is None else np.asarray(log10_sigma, float)
    return SpectralDensity(grid, np.zeros_like(grid), float(lam.max()), zero, sig, law.w.copy(),
                           0.0, float(np.sum(law.w * sig)))


def _density_at(opm: np.ndarray) -> np.ndarray:
    """ρ per unit of log10 σ from 1 + m on the branch Im m < 0."""
    return np.maximum(-2 * _LN10 / math.pi * opm.imag, 0.0)


def _on_grid(law: _Law, depth: int, v: float, edge, grid: np.ndarray, top: float) -> np.ndarray:
    """The density at the points `grid` of log10 σ (0 above `top`, the edge in log10 σ)."""
    density = np.zeros_like(grid)
    uu = np.sqrt(np.maximum(top - grid, 0.0))
    inside = np.nonzero(uu > 0)[0]
    order = inside[np.argsort(uu[inside])]
    if len(order):
        density[order] = _density_at(_continue(law, depth, v, edge, uu[order]))
    return density


def _top_atom(law: _Law, depth: int, v: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(σ, mass) of the atom at σ_w^L of orthogonal Bernoulli nets with L·P(d = 0) < 1.

    L free projections of trace p = 1 − zero meet in a subspace of dimension 1 − L(1 − p):
    there J is σ_w^L times an isometry.
    """
    top = 1.0 - depth * law.zero
    if v == 0 and len(law.d) == 1 and top > 0:
        return np.array([math.sqrt(scale * law.d[0] ** depth)]), np.array([top])
    return np.zeros(0), np.zeros(0)


def jacobian_density(law: D2Law, depth: int, sigma_w2: float, weights: str = "gaussian", *,
                     log10_sigma: np.ndarray | None = None, decades: float = 24.0,
                     nodes: int = 4000) -> SpectralDensity:
    """Density of log10 σ for J of L layers with diagonal law `law`, from the S-transform.

    Args:
      law: the law of φ′(h)² (`d2_law`); depth: L; sigma_w2: weight variance × width;
        weights: "gaussian" or "orthogonal".
      log10_sigma: evaluate here instead of the default grid (points above the edge get 0).
      decades, nodes: the default grid reaches `decades` of σ below the edge in `nodes` points.

    Returns:
      `SpectralDensity`; `mean_sigma` and `mass` integrate the default grid (Simpson in u).
    """
    v = check_depth_weights(depth, weights)
    mu1, zero, empty = float(np.sum(law.weights * law.values)), law.zero_mass, np.zeros(0)
    if mu1 <= 0:
        return SpectralDensity(empty, empty, 0.0, 1.0, empty, empty, 0.0, 0.0)
    scale = (sigma_w2 * mu1) ** depth  # λ = χ₁^L λ̃
    shift = 0.5 * math.log10(scale)
    nl = _Law(law)
    atomic = v == 0 and (depth == 1 or (len(nl.d) == 1 and nl.zero == 0))
    edge = None if atomic else _edge(nl, depth, v)
    if edge is None:
        return _discrete(nl, depth, scale, zero, log10_sigma)
    point_sigma, point_mass = _top_atom(nl, depth, v, scale)
    s_edge = edge[2] / (2 * _LN10)
    u_default = math.sqrt(decades) * np.arange(1, nodes + 1) / nodes
    dens = _density_at(_continue(nl, depth, v, edge, u_default))
    u_all = np.concatenate([[0.0], u_default])
    d_all = np.concatenate([[0.0 if edge[0] == "soft" else dens[0]], dens])
    s_all = s_edge - u_all ** 2
    mass = integrate.simpson(d_all * 2 * u_all, x=u_all)
    mean_sigma = integrate.simpson(10.0 ** (s_all + shift) * d_all * 2 * u_all, x=u_all)
    mean_sigma += float(np.sum(point_sigma * point_mass))
    if log10_sigma is None:
        grid, density = s_all[::-1] + shift, d_all[::-1]
    else:
        grid = np.asarray(log10_sigma, float)
        density = _on_grid(nl, depth, v, edge, grid, s_edge + shift)
    top_edge = max(math.exp(edge[2]) * scale, float(np.max(point_sigma ** 2, initial=0.0)))
    return SpectralDensity(grid, density, top_edge, zero, point_sigma,
                           point_mass, float(mass), float(mean_sigma))
